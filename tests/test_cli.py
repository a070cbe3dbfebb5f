"""Every error a user can cause: a non-zero exit and exactly one line on stderr."""

import os
import subprocess
import sys

import pytest

from conftest import tiny_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jaxlm(*args, devices=1):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxlm.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_help():
    out = jaxlm("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("train", "eval", "generate"))
    assert jaxlm("train", "--help").returncode == 0


@pytest.mark.parametrize("overrides,needles", [
    (["trainer.max_step=5"], ["unknown config key 'trainer.max_step'", "did you mean 'trainer.max_steps'"]),
    (["trainer.batch_size=lots"], ["'trainer.batch_size'='lots'", "expected int"]),
    (["data.paths=/nonexistent/*.txt"], ["no file matches '/nonexistent/*.txt'"]),
    (["data.seq_len=4096"], ["data.seq_len=4096 exceeds the model's 128 positions"]),
])
def test_bad_config(overrides, needles):
    one_line_error(jaxlm("train", "configs/gpt2-tiny.yaml", *overrides), *needles)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    result = jaxlm("train", "configs/gpt2-tiny.yaml", *tiny_overrides(tmp_path / "run", **{"data.paths": tmp_path / "empty.txt"}))
    one_line_error(result, "corpus is empty")


def test_batch_not_divisible_by_devices(tmp_path):
    result = jaxlm("train", "configs/gpt2-tiny.yaml", *tiny_overrides(tmp_path / "run", **{"trainer.batch_size": 3}),
                   devices=2)
    one_line_error(result, "trainer.batch_size=3 is not divisible by the 2 data-parallel devices")


def test_missing_config_and_run(tmp_path):
    one_line_error(jaxlm("train", tmp_path / "nope.yaml"), "does not exist")
    one_line_error(jaxlm("generate", "--run", tmp_path, "--prompt", "x"), "is not a jaxlm run or checkpoint directory")


@pytest.mark.parametrize("override,needle", [
    ("model.n_layer=-1", "model.n_layer=-1 must be at least 1"),
    ("model.n_embd=-128", "model.n_embd=-128 must be at least 1"),
    ("model.n_head=0", "model.n_head=0 must be at least 1"),
    ("model.resid_pdrop=1.5", "model.resid_pdrop=1.5 is a dropout rate: use a value in [0, 1)"),
])
def test_nonsense_sizes_and_rates_are_refused(tmp_path, override, needle):
    one_line_error(jaxlm("train", "configs/gpt2-tiny.yaml", override, f"run.out_dir={tmp_path / 'run'}"), needle)
    assert not (tmp_path / "run").exists()


CLASSIFY = ["configs/bert-classify.yaml", "task.dataset=null", "trainer.max_steps=1", "trainer.batch_size=4",
            "trainer.progress_bar=false", "trainer.early_stopping=null", "checkpoint.keep_best=0",
            "model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=1"]


def test_classification_data_without_rows_or_with_one_class(tmp_path):
    (tmp_path / "header.csv").write_text("text,label\n")
    one_line_error(jaxlm("train", *CLASSIFY, f"data.paths={tmp_path / 'header.csv'}", f"run.out_dir={tmp_path / 'a'}"),
                   "holds no labelled rows")
    (tmp_path / "one.csv").write_text("text,label\n" + "".join(f"review {i},positive\n" for i in range(10)))
    one_line_error(jaxlm("train", *CLASSIFY, f"data.paths={tmp_path / 'one.csv'}", f"run.out_dir={tmp_path / 'b'}"),
                   "examples of one class only ('positive')")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_advice_of_an_error_is_a_value_the_schema_accepts(tmp_path):
    rows = [f"{w} film,{label}" for w, label in [("good", "positive"), ("bad", "negative")] * 6]
    (tmp_path / "small.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    data = f"data.paths={tmp_path / 'small.csv'}"
    line = one_line_error(jaxlm("train", *CLASSIFY, data, f"run.out_dir={tmp_path / 'a'}"),
                          "set data.tokenizer.vocab_size=")
    size = int(line.split("set data.tokenizer.vocab_size=")[1].split()[0])
    assert size < 256  # a WordPiece of a tiny text; the schema once refused sizes under 257
    result = jaxlm("train", *CLASSIFY, data, f"data.tokenizer.vocab_size={size}", f"model.vocab_size={size}",
                   f"run.out_dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr


def test_a_byte_level_bpe_needs_its_byte_tokens(tmp_path, corpus_file):
    one_line_error(jaxlm("tokenizer", "train", "--kind", "bpe", "--vocab-size", 100, "--out", tmp_path / "tok",
                         corpus_file), "cannot hold its 256 byte tokens", "at least 257")
    assert not (tmp_path / "tok").exists()
