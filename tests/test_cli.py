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
