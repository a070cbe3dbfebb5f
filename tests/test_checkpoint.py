"""Fault tolerance: a killed, preempted or corrupted run resumes to exactly the same losses."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import small_corpus, tiny_overrides
from jaxlm.data.corpus import embedded_corpus
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.train.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEPS = 24

# Runs the CLI, but SIGKILLs itself right after the asynchronous save of step $KILL_AT_SAVE starts.
KILL_DURING_SAVE = """
import os, signal, sys
from jaxlm import checkpoint
original = checkpoint.Checkpoints.save
def save(self, step, *args, **kwargs):
    started = original(self, step, *args, **kwargs)
    if started and step == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return started
checkpoint.Checkpoints.save = save
from jaxlm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def command(run_dir, corpus, **extra):
    settings = {"data.paths": corpus, "trainer.max_steps": MAX_STEPS, "trainer.log_every": 1,
                "trainer.eval_every": 1000, "checkpoint.every": 4, "checkpoint.keep": 3, **extra}
    return ["train", "configs/gpt2-tiny.yaml", *tiny_overrides(run_dir, **settings)]


def start(args, script=None, **env):
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "jaxlm.cli", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args, **kw):
    p = start(args, **kw)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def losses(run_dir):
    records = [r for r in read_metrics(run_dir) if "loss" in r]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"each step logged once: {steps}"
    return {r["step"]: r["loss"] for r in records}


def wait_for_step(run_dir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] >= step for r in read_metrics(run_dir)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError(step)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    corpus = small_corpus(root)
    code, _, err = run(command(root / "run", corpus))
    assert code == 0, err
    return corpus, losses(root / "run")


def assert_same_losses(run_dir, expected):
    got = losses(run_dir)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])


def test_sigkill_at_a_random_step_then_resume(reference, tmp_path):
    corpus, expected = reference
    kill_at = random.Random(os.getpid()).randint(5, MAX_STEPS - 4)
    p = start(command(tmp_path / "run", corpus))
    wait_for_step(tmp_path / "run", kill_at, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    code, _, err = run(command(tmp_path / "run", corpus))
    assert code == 0, err
    assert "resumed from" in err or "Traceback" not in err
    assert_same_losses(tmp_path / "run", expected)


def test_sigkill_during_an_async_save(reference, tmp_path):
    corpus, expected = reference
    code, _, _ = run(command(tmp_path / "run", corpus), script=KILL_DURING_SAVE, KILL_AT_SAVE="12")
    assert code == -signal.SIGKILL
    code, _, err = run(command(tmp_path / "run", corpus))
    assert code == 0, err
    assert_same_losses(tmp_path / "run", expected)


def test_sigterm_saves_and_exits_zero(reference, tmp_path):
    corpus, expected = reference
    p = start(command(tmp_path / "run", corpus, **{"checkpoint.every": 1000}))
    wait_for_step(tmp_path / "run", 6, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    stopped = max(r["step"] for r in read_metrics(tmp_path / "run"))
    assert stopped < MAX_STEPS and f"stopped by SIGTERM at step {stopped}" in err
    assert sorted(int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit()) == [stopped]
    code, _, err = run(command(tmp_path / "run", corpus, **{"checkpoint.every": 1000}))
    assert code == 0 and f"at step {stopped}" in err, err
    assert_same_losses(tmp_path / "run", expected)


def test_corrupted_newest_checkpoint_falls_back(reference, tmp_path):
    corpus, _ = reference
    short = {"trainer.max_steps": 8}
    assert run(command(tmp_path / "run", corpus, **short))[0] == 0
    newest = tmp_path / "run" / "checkpoints" / "8"
    for f in (newest / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _, err = run(command(tmp_path / "run", corpus, **{"trainer.max_steps": 12}))
    assert code == 0, err
    assert f"checkpoint {newest} is damaged" in err and "at step 4" in err
    assert list((tmp_path / "run" / "corrupt").iterdir())
    assert max(losses(tmp_path / "run")) == 12


def test_keep_last_and_best(reference, tmp_path):
    corpus, _ = reference
    settings = {"trainer.max_steps": 16, "trainer.eval_every": 4, "checkpoint.keep": 1, "checkpoint.keep_best": 1,
                "trainer.label_smoothing": 0.0}
    assert run(command(tmp_path / "run", corpus, **settings))[0] == 0
    kept = sorted(int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit())
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(tmp_path / "run") if "eval_loss" in r}
    best = min(evals, key=evals.get)
    assert kept == sorted({16, best})
    code, out, _ = run(["checkpoints", tmp_path / "run"])
    assert code == 0 and "latest" in out and "best" in out


def one_line(code, err, *needles):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_resume_with_an_incompatible_config_fails_clearly(reference, tmp_path):
    corpus, _ = reference
    assert run(command(tmp_path / "run", corpus, **{"trainer.max_steps": 4}))[0] == 0
    code, _, err = run(command(tmp_path / "run", corpus, **{"model.n_layer": 3}))
    one_line(code, err, "cannot resume", "model.n_layer: 2 in the checkpoint, 3 now")
    code, _, err = run(command(tmp_path / "run", corpus, **{"optimizer.name": "sgd"}))
    one_line(code, err, "optimizer.name: 'adamw' in the checkpoint, 'sgd' now")
    code, _, err = run(command(tmp_path / "run", corpus, **{"checkpoint.resume": "never"}))
    one_line(code, err, "already holds checkpoints")
    # Harmless changes resume fine.
    code, _, err = run(command(tmp_path / "run", corpus, **{"trainer.max_steps": 6, "trainer.log_every": 2}))
    assert code == 0, err


def test_init_from(reference, tmp_path):
    corpus, _ = reference
    assert run(command(tmp_path / "src", corpus, **{"trainer.max_steps": 4}))[0] == 0
    code, _, err = run(command(tmp_path / "a", corpus, **{"model.init_from": tmp_path / "nothing"}))
    one_line(code, err, "is not a jaxlm run or checkpoint directory")
    code, _, err = run(command(tmp_path / "b", corpus, **{"model.init_from": tmp_path / "src", "model.n_embd": 48}))
    one_line(code, err.strip().splitlines()[-1], "does not fit this model",  # after "using its tokenizer"
             "transformer/h_0/attn/c_attn/kernel: shape (32, 3, 4, 8)", "vs (48, 3, 4, 12)")
    code, _, err = run(command(tmp_path / "c", corpus, **{"model.init_from": tmp_path / "src" / "checkpoints" / "4",
                                                        "trainer.max_steps": 2}))
    assert code == 0 and "initialised params from" in err, err
    src_loss = losses(tmp_path / "src")
    assert losses(tmp_path / "c")[1] < src_loss[1]  # starts where the source left off, not from scratch


def test_init_from_reads_the_tokens_with_the_bases_tokenizer(reference, tmp_path):
    """A tokenizer trained afresh on other text would number the tokens differently and scramble the
    base's embeddings: a run from a base uses the base's tokenizer, and a configured one must agree."""
    corpus, _ = reference
    other = tmp_path / "other.txt"
    other.write_text("\n".join(embedded_corpus()[6:20]))  # not the reference corpus's documents
    assert run(command(tmp_path / "base", corpus, **{"trainer.max_steps": 2}))[0] == 0
    base_vocab = load_tokenizer(tmp_path / "base" / "tokenizer").tok.get_vocab()
    code, _, err = run(command(tmp_path / "tuned", other, **{"model.init_from": tmp_path / "base",
                                                              "trainer.max_steps": 2}))
    assert code == 0 and "using its tokenizer" in err, err
    assert load_tokenizer(tmp_path / "tuned" / "tokenizer").tok.get_vocab() == base_vocab
    saved = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text())
    assert saved["data"]["tokenizer"]["path"] == str(tmp_path / "base" / "tokenizer")

    assert run(["tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                str(other)])[0] == 0
    code, _, err = run(command(tmp_path / "mixed", other, **{"model.init_from": tmp_path / "base",
                                                              "data.tokenizer.path": tmp_path / "tok"}))
    one_line(code, err, f"data.tokenizer.path={tmp_path / 'tok'} numbers tokens differently",
             f"set data.tokenizer.path={tmp_path / 'base' / 'tokenizer'}")
    assert not (tmp_path / "mixed").exists()

    # A run begun with a tokenizer of its own keeps it when a base is named on resuming.
    assert run(command(tmp_path / "own", other, **{"trainer.max_steps": 2}))[0] == 0
    own_vocab = load_tokenizer(tmp_path / "own" / "tokenizer").tok.get_vocab()
    code, _, err = run(command(tmp_path / "own", other, **{"model.init_from": tmp_path / "base",
                                                            "trainer.max_steps": 4}))
    assert code == 0 and "using its tokenizer" not in err, err
    assert load_tokenizer(tmp_path / "own" / "tokenizer").tok.get_vocab() == own_vocab != base_vocab


def test_resume_from_another_runs_checkpoint(reference, tmp_path):
    corpus, expected = reference
    assert run(command(tmp_path / "src", corpus, **{"trainer.max_steps": 8}))[0] == 0
    code, _, err = run(command(tmp_path / "dst", corpus, **{"checkpoint.resume": tmp_path / "src" / "checkpoints" / "8",
                                                          "trainer.max_steps": 10}))
    assert code == 0 and "started from" in err, err
    assert min(losses(tmp_path / "dst")) == 9
