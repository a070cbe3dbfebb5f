"""Augmentation (EDA's counts, seeds, the task's per-epoch draws and resume, the file
command, masked-LM and back-translation augmenters), jieba segmentation, long-text windows."""

import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.text_augment import EDA, BackTranslation, ContextualSubstitution, synonyms
from jaxlm.data.windows import pool_logits, window_starts

SENTENCE = "the happy actor gave a good performance in a large old house near the quiet river"


def test_operation_counts_follow_alpha():
    words = SENTENCE.split()  # l = 16
    assert EDA.count(0.1, 16) == 1 and EDA.count(0.2, 16) == 3 and EDA.count(0.5, 16) == 8
    assert EDA.count(0.01, 16) == 1  # n = max(1, int(alpha * l))
    for alpha in (0.1, 0.2, 0.5):
        eda = EDA(alpha_sr=alpha, alpha_ri=alpha, alpha_rs=alpha)
        n = EDA.count(alpha, len(words))
        rng = np.random.default_rng(0)
        assert len(eda.random_insertion(words, rng)) == len(words) + n
        replaced = eda.synonym_replacement(words, rng)
        changed = [i for i, (a, b) in enumerate(zip(words, replaced)) if a != b]
        assert len(replaced) == len(words) and len(changed) == n  # enough words here have synonyms
        assert all(replaced[i] in synonyms(words[i]) for i in changed)
        assert all(words[i] not in ("the", "a", "in") for i in changed)  # stop words stay
        swapped = eda.random_swap(words, rng)
        assert sorted(swapped) == sorted(words) and sum(a != b for a, b in zip(words, swapped)) <= 2 * n
    deleted = [len(EDA(p_rd=0.3).random_deletion(words, np.random.default_rng(s))) for s in range(400)]
    assert np.mean(deleted) == pytest.approx(len(words) * 0.7, rel=0.05)


def test_same_seed_same_augmentation():
    eda = EDA(num_aug=8)
    a = eda.variants(SENTENCE, np.random.default_rng([3, 1]))
    assert a == eda.variants(SENTENCE, np.random.default_rng([3, 1])) and len(a) == 8
    assert a != eda.variants(SENTENCE, np.random.default_rng([3, 2]))
    drawn = [eda(SENTENCE, np.random.default_rng([0, epoch, 5])) for epoch in range(30)]
    assert drawn == [eda(SENTENCE, np.random.default_rng([0, epoch, 5])) for epoch in range(30)]
    assert SENTENCE in drawn and len(set(drawn)) > 10  # the original about 1 in 9 times, variants otherwise


def test_chinese_eda_uses_cilin():
    assert "优美" in synonyms("美丽", "zh") and "美丽" in synonyms("优美", "zh")
    eda = EDA(alpha_sr=0.3, lang="zh")
    out = eda.apply("sr", "这部电影的画面非常美丽", np.random.default_rng(0))
    assert out != "这部电影的画面非常美丽" and " " not in out


def task_overrides(out, **extra):
    base = {"run.out_dir": out, "trainer.max_steps": 4, "trainer.eval_every": 4, "trainer.log_every": 2,
            "trainer.progress_bar": False, "trainer.batch_size": 16, "data.seq_len": 24, "model.num_filters": 8,
            "model.embedding_dim": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_task_augments_each_epoch_and_resumes_exactly(tmp_path):
    from jaxlm.tasks import build_task

    config = load_config("configs/textcnn-sentiment.yaml", task_overrides(tmp_path, **{"task.augment.method": "eda"}))
    task = build_task(config, tmp_path)
    data = task.train_iterator(16)
    per_epoch = data.batches.batches_per_epoch
    first = [next(data) for _ in range(per_epoch + 2)]
    state = data.state()
    expected = [next(data) for _ in range(3)]
    again = build_task(config, tmp_path).train_iterator(16)
    again.restore(state)
    for a, b in zip(expected, (next(again) for _ in range(3))):
        assert all(np.array_equal(a[k], b[k]) for k in a) and set(a) == {"input_ids", "attention_mask", "label"}
    plain = build_task(load_config("configs/textcnn-sentiment.yaml", task_overrides(tmp_path / "p")), tmp_path / "p")
    batches = plain.train_iterator(16)
    unaugmented = [next(batches) for _ in range(per_epoch + 2)]
    assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, unaugmented))
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(first, unaugmented))


def test_eda_config_trains(tmp_path, capsys):
    assert main(["train", "configs/textcnn-sentiment-eda.yaml", *task_overrides(tmp_path)]) == 0
    assert "eval_accuracy" in capsys.readouterr().out


def test_augment_file_command(tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text('id,text,label\n1,"the happy actor gave a good performance",positive\n2,"a dull old film",negative\n')
    out = tmp_path / "out.csv"
    assert main(["data", "augment", str(src), "--out", str(out), "--num-aug", "3", "--seed", "7"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and [r["id"] for r in rows] == ["1"] * 4 + ["2"] * 4
    assert rows[0]["text"] == "the happy actor gave a good performance" and rows[4]["label"] == "negative"
    first = out.read_text()
    assert main(["data", "augment", str(src), "--out", str(out), "--num-aug", "3", "--seed", "7"]) == 0
    assert out.read_text() == first
    capsys.readouterr()
    assert main(["data", "augment", str(src), "--out", str(out), "--method", "contextual"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs --model-run" in err


def test_augmentation_of_a_model_that_reads_no_text(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("task: {type: classification, dataset: sentiment_en, augment: {method: eda}}\n"
                      "model: {type: resnet}\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.type=resnet reads no text" in err
    run = tmp_path / "vit"
    assert main(["train", "configs/vit-digits.yaml", f"run.out_dir={run}", "trainer.max_steps=1",
                 "trainer.eval_every=1", "trainer.progress_bar=false", "trainer.eval_batches=1"]) == 0
    capsys.readouterr()
    src = tmp_path / "in.txt"
    src.write_text("a good film\n")
    assert main(["data", "augment", str(src), "--out", str(tmp_path / "o.txt"), "--method", "contextual",
                 "--model-run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reads no text" in err and "masked LM" in err


@pytest.mark.slow
def test_contextual_substitution_and_back_translation(tmp_path):
    mlm, s2s = tmp_path / "mlm", tmp_path / "s2s"
    small = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.progress_bar=false",
             "data.tokenizer.vocab_size=512", "model.vocab_size=512", "model.hidden_size=32", "model.intermediate_size=64",
             "model.num_hidden_layers=1", "data.seq_len=32", "model.max_position_embeddings=32"]
    assert main(["train", "configs/bert-tiny-mlm.yaml", f"run.out_dir={mlm}", *small]) == 0
    aug = ContextualSubstitution(str(mlm), alpha=0.25, top_k=3)
    words = "the import statement binds a name in the module".split()
    out = aug(" ".join(words), np.random.default_rng(0)).split()
    assert len(out) == len(words) and 1 <= sum(a != b for a, b in zip(words, out)) <= EDA.count(0.25, len(words))
    assert out == aug(" ".join(words), np.random.default_rng(0)).split()
    assert main(["train", "configs/seq2seq-reverse.yaml", f"run.out_dir={s2s}", "trainer.max_steps=2",
                 "trainer.eval_every=2", "trainer.progress_bar=false", "task.num_train_examples=64",
                 "task.num_eval_examples=8"]) == 0
    back = BackTranslation(str(s2s), str(s2s), max_new_tokens=8)
    text = "1 2 3 4"
    assert back(text, np.random.default_rng(1)) == back(text, np.random.default_rng(1))
    assert isinstance(back(text, np.random.default_rng(2)), str)


def test_jieba_segmenter_builds_word_vocabulary(tmp_path, capsys):
    args = task_overrides(tmp_path, **{"task.dataset": "sentiment_zh", "data.tokenizer.segmenter": "jieba"})
    assert main(["train", "configs/textcnn-sentiment.yaml", *args]) == 0
    vocab = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "电影" in vocab and sum(len(w) > 1 for w in vocab if w[0] >= "\u4e00") > 50
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path), "这部电影太精彩了"]) == 0
    assert capsys.readouterr().out.splitlines()[0] in ("positive", "negative")


def test_window_starts_and_pooling():
    assert window_starts(5, 8, 4) == [0]
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(21, 8, 5) == [0, 5, 10, 13]
    logits = jnp.asarray([[1.0, 0.0], [3.0, 2.0], [9.0, 9.0], [0.0, 1.0], [5.0, 5.0], [5.0, 5.0]])
    mask = jnp.asarray([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(pool_logits(logits, mask, "mean"), [[2.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool_logits(logits, mask, "max"), [[3.0, 2.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool_logits(logits, jnp.zeros((2, 3), int), "max"), 0.0)


def test_long_texts_as_windows_train_and_predict(tmp_path, capsys):
    long_text = " ".join(["a wonderful film"] * 30)
    src = tmp_path / "long.csv"
    rows = [(f"{long_text} {'great' if i % 2 else 'awful'} {i}", "positive" if i % 2 else "negative") for i in range(64)]
    src.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    args = task_overrides(tmp_path / "run", **{"task.dataset": "null", "data.paths": src, "task.long_text": "windows",
                                               "data.seq_len": 16, "task.window_stride": 12, "task.max_windows": 10,
                                               "task.window_pooling": "max"})
    assert main(["train", "configs/textcnn-sentiment.yaml", *args]) == 0
    from jaxlm.tasks import build_task

    task = build_task(load_config("configs/textcnn-sentiment.yaml", args), tmp_path / "run")
    assert task.train["input_ids"].shape[1:] == (10, 16) and task.train["window_mask"].sum(1).max() == 8
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path / "run"), long_text + " great"]) == 0
    assert capsys.readouterr().out.splitlines()[0] in ("positive", "negative")
