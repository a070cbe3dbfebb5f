"""PEFT runs survive SIGKILL with the losses of an uninterrupted run, and an 8-device mesh trains a LoRA
run to the one-device losses."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import small_corpus
from test_checkpoint import losses, run, start, wait_for_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
METHODS = {"lora": ["peft.method=lora", "peft.r=4", "peft.target_modules=all-linear", "peft.dropout=0.1"],
           "qlora": ["peft.method=lora", "peft.r=4", "peft.quantize=nf4", "peft.quant_block_size=32"]}


def wait_for_checkpoint(run_dir, proc, timeout=120):
    deadline = time.time() + timeout
    while not any(d.name.isdigit() for d in (run_dir / "checkpoints").glob("*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)


def command(run_dir, base, corpus, method):
    return ["train", "configs/gpt2-tiny.yaml", f"run.out_dir={run_dir}", f"data.paths={corpus}", "data.seq_len=16",
            "data.tokenizer.vocab_size=300", "model.vocab_size=300", "model.n_positions=32", "model.n_embd=32",
            "model.n_layer=2", "model.n_head=4", f"model.init_from={base}", f"trainer.max_steps={STEPS}",
            "trainer.batch_size=4", "trainer.log_every=1", "trainer.eval_every=1000", "trainer.progress_bar=false",
            "checkpoint.every=3", "trainer.grad_accum_steps=2", *METHODS[method]]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-runs")
    corpus = small_corpus(root)
    args = command(root / "base", None, corpus, "lora")
    args = [a for a in args if not a.startswith(("peft.", "model.init_from", "trainer.max_steps"))]
    code, _, err = run([*args, "trainer.max_steps=3"])
    assert code == 0, err
    return root / "base", corpus


@pytest.mark.parametrize("method", ["lora", pytest.param("qlora", marks=pytest.mark.slow)])
def test_sigkill_then_rerun_gives_the_uninterrupted_losses(base, tmp_path, method):
    base_run, corpus = base
    code, _, err = run(command(tmp_path / "whole", base_run, corpus, method))
    assert code == 0, err
    expected = losses(tmp_path / "whole")
    kill_at = random.Random(os.getpid()).randint(4, STEPS - 2)
    p = start(command(tmp_path / "killed", base_run, corpus, method))
    wait_for_step(tmp_path / "killed", kill_at, p)
    # Saves are asynchronous: on a loaded host the first may not be committed yet at step kill_at.
    wait_for_checkpoint(tmp_path / "killed", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    code, _, err = run(command(tmp_path / "killed", base_run, corpus, method))
    assert code == 0 and "resumed from" in err, err
    got = losses(tmp_path / "killed")
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])


# Trains a LoRA gpt2 for 5 steps under each mesh given on the command line; prints the losses as JSON.
MESH_SCRIPT = """
import json, sys, tempfile
from jaxlm.config import load_config
from jaxlm.train.logging import read_metrics
from jaxlm.train.trainer import train
args, out = sys.argv[1:-1], {}
for mesh in sys.argv[-1].split(";"):
    data, fsdp, tensor = mesh.split(",")
    run = tempfile.mkdtemp()
    train(load_config("configs/gpt2-tiny.yaml", [a for a in args if not a.startswith("run.out_dir")] + [
        f"run.out_dir={run}", f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
        "trainer.batch_size=8", "trainer.max_steps=5", "trainer.grad_accum_steps=1"]))
    out[mesh] = [r["loss"] for r in read_metrics(run) if "loss" in r]
print(json.dumps(out))
"""


def test_lora_on_a_data_fsdp_tensor_mesh_logs_the_one_device_losses(base, tmp_path):
    base_run, corpus = base
    args = command(tmp_path / "x", base_run, corpus, "lora")[2:]
    results = {}
    for devices, meshes in ((1, "1,1,1"), (8, "2,2,2")):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
        done = subprocess.run([sys.executable, "-c", MESH_SCRIPT, *args, meshes], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        results.update(json.loads(done.stdout.strip().splitlines()[-1]))
    single, sharded = results["1,1,1"], results["2,2,2"]
    assert len(single) == 5
    for a, b in zip(single, sharded, strict=True):
        assert abs(a - b) <= 2e-5 * abs(a), (single, sharded)
