"""Faults that must never lose or garble data, driven through the CLI as a user meets them:
two runs on one directory, a full disk, damaged checkpoints read by every command, SIGKILL
during saves. Each failure is one short message (exit 2) and leaves the data intact."""

import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import small_corpus, tiny_overrides
from jaxlm.train.logging import read_metrics
from test_checkpoint import assert_same_losses, command, losses, reference, run, start  # noqa: F401 (reference: a fixture)


def short_failure(code, out, err, *needles):
    """Exit 2, at most three lines in all, the error on the last line of stderr, no traceback."""
    lines = (out + err).strip().splitlines()
    assert code == 2 and len(lines) <= 3 and "Traceback" not in out + err, out + err
    for needle in needles:
        assert needle in err.strip().splitlines()[-1], err
    return err.strip().splitlines()[-1]


def steps_increase(run_dir):
    """``metrics.jsonl`` holds each step's training record, then its eval record, in order."""
    records = read_metrics(run_dir)
    for kind in ("loss", "eval_loss"):
        steps = [r["step"] for r in records if kind in r]
        assert steps == sorted(set(steps)), (kind, steps)


def checkpoints(run_dir):
    return sorted(int(d.name) for d in (run_dir / "checkpoints").iterdir() if d.name.isdigit())


# --- one writer per run directory ------------------------------------------------------------


def test_a_second_train_on_the_same_directory_refuses_at_once(reference, tmp_path):
    corpus, expected = reference
    run_dir = tmp_path / "run"
    first = start(command(run_dir, corpus))
    lock = run_dir / ".jaxlm-lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGSTOP)  # the first run holds the directory for as long as the second tries
    try:
        started = time.monotonic()
        code, out, err = run(command(run_dir, corpus))
        took = time.monotonic() - started
    finally:
        os.kill(first.pid, signal.SIGCONT)
    short_failure(code, out, err, f"{run_dir} is in use by jaxlm train pid {first.pid}", "choose another run.out_dir")
    assert took < 60, took  # the time to start Python and JAX: it never waits for the lock
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert_same_losses(run_dir, expected)
    steps_increase(run_dir)


def test_the_lock_dies_with_its_process(reference, tmp_path):
    corpus, expected = reference
    p = start(command(tmp_path / "run", corpus))
    while not (tmp_path / "run" / "metrics.jsonl").exists():
        assert p.poll() is None, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    code, _, err = run(command(tmp_path / "run", corpus))
    assert code == 0, err
    assert_same_losses(tmp_path / "run", expected)


# --- a full disk -----------------------------------------------------------------------------

# The tiny run's checkpoints take about 0.6 MB each: one fits beside the tokenizer, two do not.
SMALL_DISK = "1000k"

# Runs the CLI with the disk's free space misreported as plenty, so the save starts and fails
# inside orbax's background write, as it does when another program fills the disk mid-save.
DISK_SEEMS_FREE = """
import collections, shutil, sys
from jaxlm import checkpoint
usage = collections.namedtuple("usage", "total used free")
checkpoint.shutil.disk_usage = lambda path: usage(1 << 40, 0, 1 << 40)
from jaxlm.cli import console
console()
"""

# Runs the CLI with the checkpoint writer failing as a full disk makes it fail: for machines
# where no small file system can be mounted.
WRITER_FAILS_AT_STEP_8 = """
import errno, sys
import orbax.checkpoint as ocp
original = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
    if step == 8:
        raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
from jaxlm.cli import console
console()
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 1000 KB tmpfs (where this machine lets the tests mount one)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(where)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission); "
                    "test_a_failing_checkpoint_writer_stops_training covers the failure path")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def resumes_elsewhere(run_dir, tmp_path, corpus, expected):
    """The run moved to a roomier disk resumes from its last complete checkpoint to the
    losses of an uninterrupted run."""
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    code, _, err = run(command(moved, corpus))
    assert code == 0 and "resumed from" in err, err
    assert_same_losses(moved, expected)


@pytest.mark.parametrize("script", [None, DISK_SEEMS_FREE], ids=["space-checked-first", "write-fails-in-orbax"])
def test_a_full_disk_stops_training_at_the_failed_save(reference, small_disk, tmp_path, script):
    corpus, expected = reference
    run_dir = small_disk / "run"
    code, out, err = run(command(run_dir, corpus), script=script)
    short_failure(code, out, err, "checkpoint 8 could not be written", "the disk is full", "MB",
                  "checkpoint 4 is intact", "rerun the same command to resume")
    assert checkpoints(run_dir) == [4]
    assert not list((run_dir / "checkpoints").glob("*tmp*"))  # the partial save was removed
    # Stopped as soon as orbax reported the failure: at the latest, at the next save, which it did not start.
    assert max(r["step"] for r in read_metrics(run_dir)) <= 12
    steps_increase(run_dir)
    resumes_elsewhere(run_dir, tmp_path, corpus, expected)


def test_a_failing_checkpoint_writer_stops_training(reference, tmp_path):
    corpus, expected = reference
    run_dir = tmp_path / "run"
    code, out, err = run(command(run_dir, corpus), script=WRITER_FAILS_AT_STEP_8)
    short_failure(code, out, err, "checkpoint 8 could not be written", "the disk is full", "checkpoint 4 is intact")
    assert checkpoints(run_dir) == [4] and max(r["step"] for r in read_metrics(run_dir)) == 8
    code, _, err = run(command(run_dir, corpus))
    assert code == 0 and "resumed from" in err and "at step 4" in err, err
    assert_same_losses(run_dir, expected)


# --- damaged checkpoints, read by every command -----------------------------------------------


def damage(checkpoint, how="truncate"):
    if how == "manifest":
        (checkpoint / "params" / "manifest.ocdbt").write_bytes(b"garbage")
        return
    for f in (checkpoint / "params").rglob("*"):
        if f.is_file() and "/d/" in str(f):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def cli(*args):
    return run([str(a) for a in args])


def falls_back(code, out, err, newest, to_step):
    assert code == 0 and "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and f"checkpoint {newest} is damaged" in warnings[0], err
    assert f"reading checkpoint {to_step} instead" in warnings[0]
    assert len(err.strip().splitlines()) <= 3, err


@pytest.fixture(scope="module")
def damaged_runs(tmp_path_factory):
    """A GPT-2 and a BERT classifier run, each with readable checkpoints 1 and 2 and a damaged newest 3."""
    root = tmp_path_factory.mktemp("damaged")
    corpus = small_corpus(root)
    steps = {"trainer.max_steps": 3, "checkpoint.every": 1, "checkpoint.keep": 3, "trainer.eval_every": 1000}
    gpt2 = root / "gpt2"
    code, _, err = run(["train", "configs/gpt2-tiny.yaml",
                        *tiny_overrides(gpt2, **{"data.paths": corpus, "model.positions": "learned", **steps})])
    assert code == 0, err
    bert = root / "bert"
    code, _, err = run(["train", "configs/bert-classify.yaml", f"run.out_dir={bert}", "trainer.batch_size=8",
                        "trainer.progress_bar=false", "trainer.early_stopping=null", "checkpoint.keep_best=0",
                        "model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=1",
                        *[f"{k}={v}" for k, v in steps.items()]])
    assert code == 0, err
    damage(gpt2 / "checkpoints" / "3")  # array data cut short: OUT_OF_RANGE when read
    damage(bert / "checkpoints" / "3", how="manifest")  # garbled OCDBT manifest: DATA_LOSS when read
    return gpt2, bert, corpus


def test_read_commands_fall_back_from_a_damaged_newest_checkpoint(damaged_runs, tmp_path):
    gpt2, bert, corpus = damaged_runs
    newest = gpt2 / "checkpoints" / "3"
    falls_back(*cli("generate", "--run", gpt2, "--prompt", "The", "--max-new-tokens", 3), newest, 2)
    code, out, err = cli("eval", "configs/gpt2-tiny.yaml",
                         *tiny_overrides(gpt2, **{"data.paths": corpus, "model.positions": "learned"}))
    falls_back(code, out, err, newest, 2)
    assert '"step": 2' in out
    falls_back(*cli("convert", "--to-torch", gpt2, "--out", tmp_path / "hf"), newest, 2)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    falls_back(*cli("predict", "--run", bert, "A wonderful film."), bert / "checkpoints" / "3", 2)
    code, out, err = cli("checkpoints", gpt2)
    assert code == 0 and "(latest" in out, err
    short_failure(*cli("attention", "--run", bert, "--image", "digits:0"), "holds a bert model",
                  "give a ViT run")


def test_a_damaged_checkpoint_asked_for_by_its_step_is_named(damaged_runs):
    gpt2, _, _ = damaged_runs
    short_failure(*cli("generate", "--run", gpt2, "--step", 3, "--prompt", "The"),
                  f"checkpoint {gpt2 / 'checkpoints' / '3'} is damaged", "--step", "[1, 2]")
    short_failure(*cli("generate", "--run", gpt2 / "checkpoints" / "3", "--prompt", "The"), "is damaged")


# --- nothing half-made -----------------------------------------------------------------------


def test_resuming_a_missing_step_names_it_and_leaves_nothing(reference, tmp_path):
    corpus, _ = reference
    assert run(command(tmp_path / "ref", corpus, **{"trainer.max_steps": 4}))[0] == 0
    code, out, err = run(command(tmp_path / "new", corpus,
                                 **{"checkpoint.resume": tmp_path / "ref" / "checkpoints" / "77"}))
    short_failure(code, out, err, "has no checkpoint at step 77", "it has [4]")
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_before_its_first_step_leaves_no_directory(reference, tmp_path):
    corpus, _ = reference
    code, out, err = run(command(tmp_path / "bad", corpus, **{"trainer.eval_batch_size": 3}),
                         XLA_FLAGS="--xla_force_host_platform_device_count=2")
    short_failure(code, out, err, "trainer.eval_batch_size=3 is not divisible by the 2 data-parallel devices")
    assert not (tmp_path / "bad").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    code, out, err = run(command(existing, tmp_path / "missing.txt"))
    short_failure(code, out, err, "no file matches")
    assert (existing / "notes.txt").read_text() == "keep me"  # a directory the run did not create stays


def test_convert_leaves_no_half_written_out_directory(reference, tmp_path):
    corpus, _ = reference
    assert run(command(tmp_path / "rotary", corpus, **{"trainer.max_steps": 2}))[0] == 0
    code, out, err = cli("convert", "--to-torch", tmp_path / "rotary", "--out", tmp_path / "hf")
    assert code == 2, err
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf*"))


# --- a run keeps its tokenizer ---------------------------------------------------------------


def test_a_run_keeps_a_copy_of_the_tokenizer_it_loaded(reference, tmp_path):
    corpus, _ = reference
    tok = tmp_path / "tok"
    code, _, err = cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", 300, "--out", tok, corpus)
    assert code == 0, err
    assert run(command(tmp_path / "run", corpus, **{"trainer.max_steps": 2, "data.tokenizer.path": tok}))[0] == 0
    tok.rename(tmp_path / "moved")
    code, out, err = cli("generate", "--run", tmp_path / "run", "--prompt", "The", "--max-new-tokens", 2)
    assert code == 0 and out.startswith("The"), err
    # eval of the run's own config (data.tokenizer.path still names the old place) reads the copy
    code, out, err = cli("eval", tmp_path / "run" / "config.yaml")
    assert code == 0 and '"step": 2' in out and "reading the run's copy" in err, err


# --- SIGKILL during saves, again and again (slow) --------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_of_saves_twenty_times(reference, tmp_path):
    """Every step saves, so a kill at a random moment lands inside a save or close to one; the
    run is killed twenty times in a row, each time after it committed a new checkpoint, and
    then logs exactly the losses of an uninterrupted run."""
    corpus, _ = reference
    settings = {"trainer.max_steps": 40, "checkpoint.every": 1, "checkpoint.keep": 2}
    code, _, err = run(command(tmp_path / "reference", corpus, **settings))
    assert code == 0, err
    run_dir, rng = tmp_path / "run", random.Random(0)
    for _ in range(20):
        resumed_from = max(checkpoints(run_dir), default=0) if (run_dir / "checkpoints").is_dir() else 0
        p = start(command(run_dir, corpus, **settings))
        while not ((run_dir / "checkpoints").is_dir() and max(checkpoints(run_dir), default=0) > resumed_from):
            assert p.poll() is None, p.communicate()
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert max(checkpoints(run_dir)) < 40
    code, _, err = run(command(run_dir, corpus, **settings))
    assert code == 0, err
    assert_same_losses(run_dir, losses(tmp_path / "reference"))
    steps_increase(run_dir)
