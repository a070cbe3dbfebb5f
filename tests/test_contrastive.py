"""task: contrastive end to end: SimCLR on digits, SimCSE on text, the mesh, resume, bad input."""

import json

import pytest
import yaml

from test_checkpoint import KILL_DURING_SAVE, assert_same_losses, losses, run
from test_cli import jaxlm, one_line_error
from test_tasks_bert import TINY_BERT

SIMCLR = {"trainer.batch_size": 16, "trainer.max_steps": 4, "trainer.log_every": 1, "trainer.eval_every": 4,
          "trainer.eval_batches": 2, "trainer.progress_bar": "false", "model.stage_sizes": "[1]",
          "model.stage_widths": "[8]", "task.projection_dims": "[16]", "checkpoint.every": 2}


def simclr(out, **extra):
    return ["train", "configs/simclr-digits.yaml", f"run.out_dir={out}",
            *[f"{k}={v}" for k, v in {**SIMCLR, **extra}.items()]]


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_8_device_mesh_computes_the_loss_of_one_device(tmp_path):
    for devices in (1, 8):
        out = jaxlm(*simclr(tmp_path / str(devices), **{"trainer.max_steps": 2, "trainer.eval_every": 2}),
                    devices=devices)
        assert out.returncode == 0, out.stderr
    one, eight = logged(tmp_path / "1"), logged(tmp_path / "8")
    for a, b in zip(one, eight):
        for key in ("loss", "grad_norm", "eval_loss", "eval_alignment", "eval_uniformity"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (key, a, b)
    assert "eval_top1" in one[-1] and one[0]["loss"] > 0


def test_sigkill_during_a_simclr_save_then_resume(tmp_path):
    code, _, err = run(simclr(tmp_path / "whole"))
    assert code == 0, err
    expected = losses(tmp_path / "whole")
    code, _, _ = run(simclr(tmp_path / "killed"), script=KILL_DURING_SAVE, KILL_AT_SAVE="2")
    assert code < 0
    code, _, err = run(simclr(tmp_path / "killed"))
    assert code == 0, err
    assert_same_losses(tmp_path / "killed", expected)


def bert(out, **extra):
    settings = {"run.out_dir": out, "data.seq_len": 32, "data.tokenizer.vocab_size": 300, "trainer.batch_size": 8,
                "trainer.max_steps": 3, "trainer.log_every": 1, "trainer.eval_every": 3, "trainer.eval_batches": 2,
                "trainer.progress_bar": "false", "task.projection_dims": "[16]", "checkpoint.every": 3,
                **{f"model.{k}": v for k, v in TINY_BERT.items()}, **extra}
    return ["train", "configs/simcse-bert.yaml", *[f"{k}={v}" for k, v in settings.items()]]


def test_unsupervised_simcse_on_sentences(tmp_path, corpus_file):
    out = jaxlm(*bert(tmp_path / "run", **{"data.paths": corpus_file}))
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 <= metrics["eval_alignment"] <= 4 and metrics["eval_uniformity"] < 0 and 0 <= metrics["eval_top1"] <= 1
    one_line_error(jaxlm(*bert(tmp_path / "r2", **{"data.paths": corpus_file, "model.hidden_dropout_prob": 0,
                                                   "model.attention_probs_dropout_prob": 0})), "dropout")


@pytest.mark.parametrize("model", ["bert", "distilbert"])
def test_supervised_simcse_on_jsonl_pairs(tmp_path, model, corpus_file):
    from jaxlm.data.bert_inputs import split_sentences

    sentences = split_sentences(corpus_file.read_text())
    rows = [{"text": a, "text_pair": b} for a, b in zip(sentences[::2], sentences[1::2])]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    extra = {"data.paths": tmp_path / "pairs.jsonl", "task.pooling": "mean"}
    args = bert(tmp_path / "run", **extra)
    if model == "distilbert":  # the same run on a DistilBERT: a copy of the config with its model section
        config = yaml.safe_load(open("configs/simcse-bert.yaml"))
        config["model"] = {"type": "distilbert", "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
                           "vocab_size": 300, "max_position_embeddings": 64}
        (tmp_path / "distilbert.yaml").write_text(yaml.safe_dump(config))
        args = ["train", tmp_path / "distilbert.yaml", *[a for a in args[2:] if not a.startswith("model.")]]
    out = jaxlm(*args)
    assert out.returncode == 0, out.stderr
    assert "eval_alignment" in out.stdout


@pytest.mark.parametrize("extra,needles", [
    ({"trainer.batch_size": 1}, ["needs a batch of 2", "trainer.batch_size"]),
    ({"task.num_negatives": 64}, ["task.num_negatives=64", "batch of 33"]),
    ({"task.loss": "infonce", "task.positives": "labels"}, ["task.loss=infonce"]),
    ({"trainer.grad_accum_steps": 2}, ["grad_accum_steps=1"]),
])
def test_bad_settings_are_one_line_errors(tmp_path, extra, needles):
    one_line_error(jaxlm(*simclr(tmp_path / "run", **extra)), *needles)


def test_a_model_without_embedding_output_is_refused(tmp_path):
    out = jaxlm("train", "configs/seq2seq-reverse.yaml", f"run.out_dir={tmp_path}", "task=contrastive")
    one_line_error(out, "transformer_seq2seq", "no embedding output")


def test_embed_prints_writes_and_plots(tmp_path):
    import numpy as np

    assert jaxlm(*simclr(tmp_path / "run", **{"trainer.max_steps": 1, "trainer.eval_every": 1})).returncode == 0
    out = jaxlm("embed", "--run", tmp_path / "run", "digits:0-2")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["input"] for r in rows] == ["digits:0", "digits:1", "digits:2"] and [r["label"] for r in rows] == \
        ["0", "1", "2"] and len(rows[0]["embedding"]) == 8
    assert jaxlm("embed", "--run", tmp_path / "run", "digits:0-9", "--out", tmp_path / "e.npy").returncode == 0
    vectors = np.load(tmp_path / "e.npy")
    assert vectors.shape == (10, 8)
    np.testing.assert_allclose(vectors[:3], [r["embedding"] for r in rows], atol=1e-5)
    out = jaxlm("embed", "--run", tmp_path / "run", "digits:0-39", "--plot", "pca", "--out", tmp_path / "p.png")
    assert out.returncode == 0 and (tmp_path / "p.png").stat().st_size > 1000
    one_line_error(jaxlm("embed", "--run", tmp_path / "run", "digits:0-3", "--labels", "a", "b"), "--labels gives 2")
    one_line_error(jaxlm("embed", "--run", tmp_path / "run", "digits:0-3", "--out", tmp_path / "e.txt"), ".npy")
    assert not list(tmp_path.glob(".*tmp*"))
