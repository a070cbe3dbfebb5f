"""A real two-process job (2 processes x 4 CPU devices, gloo) that is killed and resumes as
one process with 8 devices: the checkpoint reshards on restore and the losses carry on. The
corpus is a text file, so every run streams prepared token shards (jaxlm.data.prepare)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from jaxlm.train.logging import read_metrics

pytestmark = pytest.mark.multiprocess
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_args(run_dir, corpus, **mesh):
    return ["train", "configs/gpt2-tiny.yaml", *tiny_overrides(run_dir, **{
        "data.paths": corpus, "trainer.batch_size": 8, "trainer.max_steps": 12, "trainer.log_every": 1,
        "trainer.eval_every": 12, "checkpoint.every": 4, **mesh})]


def launch(run_dir, corpus, **mesh):
    return subprocess.Popen(
        [sys.executable, "launch/local.py", "--processes", "2", "--devices", "4", "--", sys.executable, "-m",
         "jaxlm.cli", *map(str, train_args(run_dir, corpus, **mesh))],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from jaxlm.data.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("multiprocess")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(embedded_corpus()[:6]))
    result = single_process(train_args(root / "reference", corpus))
    assert result.returncode == 0, result.stderr[-2000:]
    return corpus, losses(root / "reference")


def assert_same_losses(got, expected):
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= 2e-5 * abs(loss), (step, got[step], loss)


def single_process(args, devices=8):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_two_processes_killed_then_resumed_as_one(reference, tmp_path):
    corpus, expected = reference
    run = tmp_path / "run"
    launcher = launch(run, corpus)
    deadline = time.time() + 400
    while not ((run / "checkpoints" / "4").is_dir() and max(losses(run), default=0) >= 6):
        assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()[-2000:]
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    assert max(losses(run)) < 12

    resumed = single_process(train_args(run, corpus))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert_same_losses(losses(run), expected)
    manifests = [json.loads(m.read_text()) for m in Path(os.environ["JAXLM_CACHE_DIR"]).glob("*/manifest.json")]
    assert any(f[0] == str(corpus.resolve()) for m in manifests for f in m["sources"]["files"])  # streamed shards


def test_data_across_processes_fsdp_within(reference, tmp_path):
    """mesh.dcn_data=2: the data axis spans the two processes, fsdp stays inside each."""
    corpus, expected = reference
    launcher = launch(tmp_path / "run", corpus, **{"mesh.data": 2, "mesh.fsdp": 4, "mesh.dcn_data": 2})
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err[-2000:]
    assert_same_losses(losses(tmp_path / "run"), expected)


def test_unreachable_coordinator_fails_in_time(tmp_path):
    from test_cli import one_line_error

    env = {**os.environ, "JAXLM_COORDINATOR": "127.0.0.1:9", "JAXLM_NUM_PROCESSES": "2", "JAXLM_PROCESS_ID": "1",
           "JAXLM_INIT_TIMEOUT": "3", "JAX_PLATFORMS": "cpu"}
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "jaxlm.cli", "train", "configs/gpt2-tiny.yaml",
                             f"run.out_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    one_line_error(result, "the coordinator 127.0.0.1:9 did not answer within 3s")
    assert time.time() - start < 60
    env["JAXLM_PROCESS_ID"] = "x"
    del env["JAXLM_NUM_PROCESSES"]
    result = subprocess.run([sys.executable, "-m", "jaxlm.cli", "train", "configs/gpt2-tiny.yaml"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    one_line_error(result, "set all of JAXLM_COORDINATOR, JAXLM_NUM_PROCESSES, JAXLM_PROCESS_ID")


READER = """
import json, sys
from pathlib import Path
import jax
from jaxlm.parallel import distributed
distributed.initialize()
from jaxlm.config import load_config
from jaxlm.tasks.causal_lm import CausalLMTask

class Recording:
    def __init__(self, rows):
        self.rows, self.read = rows, []
    def __len__(self):
        return len(self.rows)
    def __getitem__(self, indices):
        self.read += [int(i) for i in indices]
        return self.rows[indices]

config = load_config("configs/gpt2-tiny.yaml", sys.argv[2:])
task = CausalLMTask(config, Path(config.run.out_dir))
task.train = Recording(task.train)
data = task.train_iterator(8, jax.process_index(), jax.process_count())
tokens = [next(data)["tokens"].tolist() for _ in range(3)]
Path(sys.argv[1], f"{jax.process_index()}-of-{jax.process_count()}.json").write_text(
    json.dumps({"read": task.train.read, "tokens": tokens}))
"""


def test_each_process_reads_only_its_rows_of_the_global_batch(reference, tmp_path):
    """Two real processes stream the prepared shards: their rows are disjoint, and together they
    are each global batch of a one-process reader, in order."""
    corpus, _ = reference
    (tmp_path / "reader.py").write_text(READER)
    overrides = [o for o in train_args(tmp_path / "run", corpus) if "=" in o]
    command = [sys.executable, str(tmp_path / "reader.py"), str(tmp_path), *map(str, overrides)]
    launcher = subprocess.run([sys.executable, "launch/local.py", "--processes", "2", "--", *command], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert launcher.returncode == 0, launcher.stderr[-2000:]
    alone = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert alone.returncode == 0, alone.stderr[-2000:]
    parts = [json.loads((tmp_path / f"{p}-of-2.json").read_text()) for p in range(2)]
    whole = json.loads((tmp_path / "0-of-1.json").read_text())
    assert not set(parts[0]["read"]) & set(parts[1]["read"])
    assert sorted(parts[0]["read"] + parts[1]["read"]) == sorted(whole["read"]) and len(whole["read"]) == 24
    for b in range(3):
        assert parts[0]["tokens"][b] + parts[1]["tokens"][b] == whole["tokens"][b]
