"""BERT workflows end to end: mlm (with NSP / SOP) and classification on the one trainer,
metrics against scikit-learn, early stopping, init_from across heads, the predict /
fill-mask / tokenizer CLI, the shipped sets, and one-line errors for bad input."""

import csv
import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import build_local_tfds
from jaxlm.checkpoint import Checkpoints
from jaxlm.cli import main
from jaxlm.config import EarlyStoppingConfig, load_config, resume_conflicts
from jaxlm.data import labeled
from jaxlm.data.sets import generate
from jaxlm.data.tokenizer import train_wordpiece
from jaxlm.errors import ConfigError, DataError
from jaxlm.tasks.classification import ClassificationTask
from jaxlm.tasks.mlm import ScoredPositions
from jaxlm.train.early_stopping import EarlyStopping
from jaxlm.train.losses import cross_entropy_sum
from jaxlm.train.logging import read_metrics

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64, "vocab_size": 300}


def overrides(out_dir, **extra) -> list[str]:
    base = {"run.out_dir": out_dir, "data.seq_len": 32, "data.tokenizer.vocab_size": 300, "trainer.batch_size": 8,
            "trainer.max_steps": 4, "trainer.log_every": 1, "trainer.eval_every": 2, "trainer.progress_bar": False,
            "checkpoint.every": 2, "schedule.warmup_steps": 1, **{f"model.{k}": v for k, v in TINY_BERT.items()}}
    base.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def train(config, out_dir, **extra) -> int:
    return main(["train", f"configs/{config}.yaml", *overrides(out_dir, **extra)])


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    return err


LONGER = {"data.seq_len": 128, "model.max_position_embeddings": 128}  # every shipped review fits


def reviews(n=60):
    """``(text, label)`` rows of the shipped English set."""
    table = labeled.read_dataset("sentiment_en", None, "train")
    return list(zip(table.columns["text"], table.columns["label"]))[:n]


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- metrics ---------------------------------------------------------------------------


class Predicts:
    """A stand-in model whose logits pick given classes (eval_sums only reads ``.logits``)."""

    def __init__(self, predictions, num_labels):
        self.logits = jnp.eye(num_labels)[predictions]

    def apply(self, variables, **inputs):
        return self


@pytest.mark.parametrize("num_labels", [2, 4])
def test_metrics_match_scikit_learn(num_labels):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(num_labels)
    true = rng.integers(0, num_labels, 301)
    predicted = rng.integers(0, num_labels - 1, 301)  # the last class is never predicted: zero division
    task = object.__new__(ClassificationTask)
    task.num_labels, task.token_types = num_labels, True
    batch = {"input_ids": np.zeros((301, 4), np.int32), "token_type_ids": np.zeros((301, 4), np.int32),
             "attention_mask": np.ones((301, 4), np.int32), "label": true}
    batch["attention_mask"][-20:] = 0  # padding rows of an eval batch count for nothing
    sums = task.eval_sums(Predicts(predicted, num_labels), None, batch)
    got = task.summarize({k: np.asarray(v) for k, v in sums.items()}, True)
    t, p = true[:-20], predicted[:-20]
    assert got["eval_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(t, p))
    for average in ("macro", "binary") if num_labels == 2 else ("macro",):
        precision, recall, f1, _ = sklearn_metrics.precision_recall_fscore_support(t, p, average=average,
                                                                                    zero_division=0)
        suffix = "_macro" if average == "macro" else ""
        assert got[f"eval_precision{suffix}"] == pytest.approx(precision)
        assert got[f"eval_recall{suffix}"] == pytest.approx(recall)
        assert got[f"eval_f1{suffix}"] == pytest.approx(f1)
    confusion = sklearn_metrics.confusion_matrix(t, p, labels=range(num_labels))
    for i in range(num_labels):
        for j in range(num_labels):
            assert got[f"eval_confusion_{i}_{j}"] == confusion[i, j]


# --- classification --------------------------------------------------------------------


def test_classify_early_stop_predict_and_eval(tmp_path, capsys):
    run = tmp_path / "run"
    # min_delta 2 can never be beaten after the first evaluation: stops at the third (step 3).
    stop = {"trainer.eval_every": 1, "trainer.max_steps": 50, "trainer.early_stopping.patience": 2,
            "trainer.early_stopping.min_delta": 2.0, "checkpoint.every": 50}
    assert train("bert-classify", run, **stop) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    final = json.loads(printed[-1])
    progress = [line for line in printed if line.startswith("step 1: ")]  # the matrix stays out of the log
    assert len(progress) == 1 and "eval_accuracy=" in progress[0] and "eval_confusion" not in progress[0]
    evals = [r for r in read_metrics(run) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert {"eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1", "eval_f1_macro",
            "eval_confusion_1_0"} <= set(final)
    assert sum(final[f"eval_confusion_{i}_{j}"] for i in (0, 1) for j in (0, 1)) == 120  # 15 % of 800
    ckpt = Checkpoints(run, read_only=True)
    best = ckpt.best_step()
    assert set(ckpt.all_steps()) <= {1, 2, 3} and 3 in ckpt.all_steps()  # only bests and the stop are saved
    assert ckpt.read_meta(best)["metrics"]["eval_accuracy"] == max(r["eval_accuracy"] for r in evals)
    ckpt.close()

    assert train("bert-classify", run, **stop) == 0  # rerun: already stopped, no further steps
    assert max(r["step"] for r in read_metrics(run)) == 3
    capsys.readouterr()

    assert main(["predict", "--run", str(run), "--best", "What a wonderful film, I loved it."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    probs = {line.split()[1]: float(line.split()[0]) for line in lines[1:]}
    assert set(probs) == {"negative", "positive"} and lines[0] == max(probs, key=probs.get)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)

    assert main(["eval", "configs/bert-classify.yaml", *overrides(run, **{"task.eval_split": "test"}), "--best"]) == 0
    tested = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tested["step"] == best and sum(tested[f"eval_confusion_{i}_{j}"] for i in (0, 1) for j in (0, 1)) == 120


def test_early_stopping_counts_progress_beyond_min_delta_and_resumes():
    stopping = EarlyStopping(EarlyStoppingConfig(metric="eval_f1", mode="max", patience=2, min_delta=0.05))
    saves = [stopping.update({"eval_f1": v}) for v in (0.5, 0.53, 0.52, 0.6, 0.61)]
    assert saves == [True, True, False, True, True] and stopping.stale == 1 and not stopping.stop
    resumed = EarlyStopping(stopping.config)
    resumed.restore(json.loads(json.dumps(stopping.state())))
    assert [resumed.update({"eval_f1": 0.62}), resumed.stop] == [True, True]  # 0.62 is not 0.05 past 0.6
    other = EarlyStopping(EarlyStoppingConfig(metric="eval_loss"))
    other.restore(stopping.state())  # a record of another metric is not continued
    assert other.best is None and other.stale == 0
    with pytest.raises(ConfigError, match="'eval_f1' is not reported by this task; it reports eval_loss"):
        stopping.update({"eval_loss": 1.0})


def test_text_pairs_from_jsonl_with_three_labels(tmp_path, capsys):
    texts = [text for text, _ in reviews(37)]
    names = ["contradiction", "neutral", "entailment"]
    rows = [{"text": a, "text_pair": b, "label": names[i % 3]}
            for i, (a, b) in enumerate(zip(texts, texts[1:]))]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"task.dataset": None, "data.paths": tmp_path / "pairs.jsonl", "model.num_labels": 3,
                "model.id2label": "{0: contradiction, 1: neutral, 2: entailment}", "trainer.batch_size": 4, "trainer.max_steps": 2,
                "trainer.early_stopping": None, "checkpoint.keep_best": 0}
    config = load_config("configs/bert-classify.yaml", overrides(tmp_path / "run", **settings))
    task = ClassificationTask(config, tmp_path / "run")
    assert [len(task.train["label"]), len(task.valid["label"])] == [24, 6]  # 70 / 15 per class
    assert np.bincount(task.valid["label"]).tolist() == [2, 2, 2]
    row = task.train["token_type_ids"][0]
    assert row.max() == 1 and (np.diff(row[: task.train["attention_mask"][0].sum()]) >= 0).all()
    assert train("bert-classify", tmp_path / "run", **settings) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "eval_confusion_2_2" in final and "eval_f1_macro" in final
    assert main(["predict", "--run", str(tmp_path / "run"), texts[0], texts[1]]) == 0
    assert {line.split()[-1] for line in capsys.readouterr().out.strip().splitlines()[1:]} == set(names)


def test_stratified_split_is_per_class_and_seeded():
    labels = np.array([0] * 100 + [1] * 40)
    parts = labeled.stratified_split(labels, [0.7, 0.15, 0.15], seed=0)
    assert [np.bincount(labels[p]).tolist() for p in parts] == [[70, 28], [15, 6], [15, 6]]
    assert sorted(np.concatenate(parts).tolist()) == list(range(140))
    again = labeled.stratified_split(labels, [0.7, 0.15, 0.15], seed=0)
    other = labeled.stratified_split(labels, [0.7, 0.15, 0.15], seed=1)
    assert all((a == b).all() for a, b in zip(parts, again)) and not (parts[1] == other[1]).all()


def test_bad_classification_input_is_one_line(tmp_path, capsys):
    csv_settings = {"task.dataset": None, "trainer.early_stopping": None, "checkpoint.keep_best": 0}
    good = reviews()

    write_csv(tmp_path / "odd.csv", good + [("so so", "neutral")])
    assert train("bert-classify", tmp_path / "a", **csv_settings, **{"data.paths": tmp_path / "odd.csv"}) == 2
    one_line_error(capsys, "odd.csv row 61: label 'neutral' is not one of the configured classes "
                           "(negative, positive)")

    write_csv(tmp_path / "review.csv", good, header=("review", "label"))
    assert train("bert-classify", tmp_path / "b", **csv_settings, **{"data.paths": tmp_path / "review.csv"}) == 2
    one_line_error(capsys, "has no 'text' column (it has: review, label); set task.text_column")

    long_text = " ".join(["word"] * 200)
    write_csv(tmp_path / "long.csv", good + [(long_text, "positive")])
    long = {**csv_settings, "data.paths": tmp_path / "long.csv", "task.truncation": "error", **LONGER}
    assert train("bert-classify", tmp_path / "c", **long) == 2
    one_line_error(capsys, "long.csv row 61 and 0 more are longer than data.seq_len=128 tokens (the model holds 128)",
                   "task.truncation=truncate")

    assert train("bert-classify", tmp_path / "d", **{**csv_settings, "data.paths": tmp_path / "odd.csv",
                                                     "task.dataset": "sentiment_en"}) == 2
    one_line_error(capsys, "either data.paths", "or task.dataset")


def test_truncation_is_counted_in_the_log(tmp_path, caplog):
    write_csv(tmp_path / "long.csv", reviews() + [(" ".join(["word"] * 200), "positive")])
    config = load_config("configs/bert-classify.yaml", overrides(
        tmp_path / "run", **{"task.dataset": None, "data.paths": tmp_path / "long.csv", **LONGER}))
    with caplog.at_level("INFO", logger="jaxlm"):
        task = ClassificationTask(config, tmp_path / "run")
    assert "truncated 1 of 61 texts" in caplog.text and "task.truncation=error" in caplog.text
    assert task.train["attention_mask"].sum(1).max() == 128


def test_tokenizer_size_must_match_the_model(tmp_path, capsys):
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "200", "--out", str(tmp_path / "wp")]) == 0
    out = capsys.readouterr().out
    assert "wrote a wordpiece tokenizer with 200 tokens" in out and "data.tokenizer.path=" in out
    assert train("bert-classify", tmp_path / "run", **{"data.tokenizer.path": tmp_path / "wp"}) == 2
    one_line_error(capsys, "has 200 tokens but model.vocab_size=300; set model.vocab_size=200")


def test_hf_datasets_and_tfds_sources(monkeypatch, tmp_path):
    """The real libraries on data built here: a ``save_to_disk`` directory and a tfds dataset."""
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["good film", "bad film"], "label": [1, 0]})}
                         ).save_to_disk(str(tmp_path / "hf"))
    table = labeled.read_dataset(str(tmp_path / "hf"), None, "train")
    assert labeled.label_ids(table.column("label", "task.label_column"), ["neg", "pos"], 2, table.where).tolist() == [1, 0]
    with pytest.raises(DataError, match="task.dataset='no_such_set_here': Hugging Face datasets could not load"):
        labeled.read_dataset("no_such_set_here", None, "train")

    build_local_tfds("tiny_imdb", [("fine", 1), ("poor", 0)])
    table = labeled.read_dataset("tfds:tiny_imdb", None, "train")
    assert sorted(zip(table.columns["text"], table.columns["label"])) == [("fine", 1), ("poor", 0)]

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match="Hugging Face datasets, which is not installed: pip install 'jaxlm\\[data\\]'"):
        labeled.read_dataset("imdb", None, "train")


def test_shipped_sets_are_reproducible_and_balanced():
    for name, (write_one, per_label) in generate.SETS.items():
        path = labeled.shipped_sets()[name]
        assert path.read_text(encoding="utf-8") == generate.as_csv(generate.reviews(write_one, per_label, generate.SEED))
        table = labeled.read_dataset(name, None, "train")
        assert sorted(set(table.columns["label"])) == ["negative", "positive"]
        assert table.columns["label"].count("positive") == per_label and len(set(table.columns["text"])) == 2 * per_label


def test_chinese_set_tokenizes_by_character(tmp_path):
    tok = train_wordpiece(labeled.read_dataset("sentiment_zh", None, "train").columns["text"], 1000)
    assert tok.tok.encode("这部电影真的很精彩。", add_special_tokens=False).tokens == list("这部电影真的很精彩。")
    assert tok.vocab_size < 400  # the alphabet: one piece per character
    tok.save(tmp_path / "tokenizer")
    config = load_config("configs/bert-classify.yaml", overrides(
        tmp_path / "run", **{"task.dataset": "sentiment_zh", "data.tokenizer.path": tmp_path / "tokenizer",
                             "model.vocab_size": tok.vocab_size}))
    task = ClassificationTask(config, tmp_path / "run")
    assert len(task.train["label"]) == 280 and (task.train["attention_mask"].sum(1) > 5).all()


# --- mlm, init_from, fill-mask -----------------------------------------------------------


def scored_loss(model, params, labels, most):
    scored = ScoredPositions.of(labels, jnp.ones_like(labels), most)
    logits = model.apply({"params": params}, jnp.ones_like(labels), masked_positions=scored.positions).logits
    return scored.checked(cross_entropy_sum(logits, scored.targets, scored.weights))


def test_scoring_only_the_masked_positions_gives_the_full_heads_loss_and_gradients():
    import jax

    from jaxlm.models.bert import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(**TINY_BERT))
    labels = jnp.full((3, 16), -100).at[0, [2, 9, 15]].set(7).at[1, 0].set(299)  # row 2 scores nothing
    params = model.init(jax.random.key(0), jnp.ones_like(labels))["params"]
    loss_and_grads = jax.jit(jax.value_and_grad(scored_loss, argnums=1, has_aux=True), static_argnums=(0, 3))
    (full, count), full_grads = loss_and_grads(model, params, labels, 16)
    assert ScoredPositions.of(labels, jnp.ones_like(labels), 16).positions is None
    (some, some_count), some_grads = loss_and_grads(model, params, labels, 3)
    assert count == some_count == 4
    np.testing.assert_allclose(some, full, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(full_grads), jax.tree.leaves(some_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    loss, _ = jax.jit(scored_loss, static_argnums=(0, 3))(model, params, labels, 2)  # row 0 scores 3: not dropped
    assert np.isnan(loss)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """A few steps of MLM + NSP on six pydoc documents."""
    from jaxlm.data.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("mlm")
    (root / "corpus.txt").write_text("\n\n".join(embedded_corpus()[:40]))
    settings = {"data.paths": root / "corpus.txt", "task.sentence_pairs": "nsp", "task.masking": "whole_word"}
    assert train("bert-tiny-mlm", root / "run", **settings) == 0
    return root, settings


def test_mlm_with_next_sentence_prediction_resumes_exactly(mlm_run, tmp_path):
    root, settings = mlm_run
    records = read_metrics(root / "run")
    evals = [r for r in records if "eval_loss" in r]
    assert {"eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_loss", "eval_nsp_accuracy"} <= set(evals[-1])
    assert evals[-1]["eval_loss"] == pytest.approx(evals[-1]["eval_mlm_loss"] + evals[-1]["eval_nsp_loss"])
    # Stop after 2 steps, then continue to 4: the same losses as the uninterrupted run. (The same
    # tokenizer: HF's WordPiece trainer breaks ties between equally frequent pieces in hash order.)
    settings = {**settings, "data.tokenizer.path": root / "run" / "tokenizer"}
    assert train("bert-tiny-mlm", tmp_path / "split", **settings, **{"trainer.max_steps": 2}) == 0
    assert train("bert-tiny-mlm", tmp_path / "split", **settings) == 0
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "split") if "loss" in r}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in records if "loss" in r}, abs=1e-6)


def test_mlm_settings_are_part_of_the_resume_check(mlm_run):
    root, _ = mlm_run
    saved = json.loads(json.dumps(load_config(root / "run" / "config.yaml").model_dump(mode="json")))
    now = load_config(root / "run" / "config.yaml", ["task.mask_probability=0.2"])
    assert resume_conflicts(saved, now) == ["task.mask_probability: 0.15 in the checkpoint, 0.2 now"]
    assert resume_conflicts({**saved, "task": "causal_lm"}, now)[0].startswith("task.")
    gpt2 = load_config("configs/gpt2-tiny.yaml")
    assert resume_conflicts({**gpt2.model_dump(mode="json"), "task": "causal_lm"}, gpt2) == []


def test_fill_mask_on_a_run(mlm_run, capsys):
    root, _ = mlm_run
    capsys.readouterr()
    assert main(["fill-mask", "--run", str(root / "run"), "the [MASK] statement", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(0 < float(line.split()[0]) < 1 for line in lines)


def test_init_from_an_mlm_run_initialises_the_classifier(mlm_run, tmp_path, capsys, caplog):
    root, _ = mlm_run
    settings = {"model.init_from": root / "run", "data.tokenizer.path": root / "run" / "tokenizer",
                "trainer.max_steps": 1}
    with caplog.at_level("INFO", logger="jaxlm"):
        assert train("bert-classify", tmp_path / "tuned", **settings) == 0
    # BertForPreTraining (MLM + NSP) has the pooler; its cls heads are dropped.
    assert "lacks 2 params of this model, initialised afresh: classifier/bias, classifier/kernel" in caplog.text
    assert "7 of its params are not in this model and were skipped: cls/predictions/bias" in caplog.text
    assert "cls/seq_relationship/kernel" in caplog.text
    capsys.readouterr()
    wider = {**settings, "model.intermediate_size": 48}
    assert train("bert-classify", tmp_path / "wider", **wider) == 2
    one_line_error(capsys, "does not fit this model", "bert/layer_0/intermediate/kernel: shape (32, 64)",
                   "vs (32, 48)")


@pytest.mark.torch
def test_init_from_a_converted_pytorch_masked_lm(tmp_path, capsys, caplog):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from jaxlm.interop.parity import random_checkpoint

    hf = random_checkpoint("BertForMaskedLM", tmp_path / "hf", vocab_size=300, max_position_embeddings=64)
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "300", "--out", str(hf)]) == 0
    assert main(["convert", "--from-torch", str(hf), "--out", str(tmp_path / "converted")]) == 0
    model = json.loads((hf / "config.json").read_text())
    settings = {"model.init_from": tmp_path / "converted", "data.tokenizer.path": hf, "trainer.max_steps": 1,
                **{f"model.{k}": model[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                     "num_attention_heads", "intermediate_size",
                                                     "max_position_embeddings")}}
    with caplog.at_level("INFO", logger="jaxlm"):
        assert train("bert-classify", tmp_path / "tuned", **settings) == 0
    # BertForMaskedLM has no pooler: it starts fresh along with the classifier.
    assert "lacks 4 params of this model, initialised afresh: classifier/bias, classifier/kernel, bert/pooler/bias, " \
           "bert/pooler/kernel" in caplog.text
