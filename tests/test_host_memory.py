import os
import subprocess
import sys

import pytest

from jaxlm import host_memory

glibc = pytest.mark.skipif(not host_memory._on_glibc(), reason="glibc's mallopt")

# Allocates, fills and frees a 256 MB block 5 times; prints the page faults of the last 4 rounds.
FAULTS = """
import resource
from jaxlm.host_memory import keep_freed_memory
applied = keep_freed_memory()
import numpy as np
def fill():
    np.ones(64 << 20, np.float32)
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fill()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", **env}).stdout.split()
    return out[0], int(out[1])


@glibc
def test_kept_memory_is_reused_without_page_faults():
    """A freed block is reused by the next allocation: no page faults, where glibc's defaults map
    its pages afresh every round (65,536 of them with 4 KB pages; 128 with transparent huge pages)."""
    applied, kept = faults()
    off, default = faults(JAXLM_KEEP_FREED_MEMORY="0")
    assert (applied, off) == ("True", "False")
    assert kept < 100 and default > 4 * 100


@glibc
@pytest.mark.parametrize("env, applies", [
    ({"JAX_PLATFORMS": "cpu"}, True),
    ({"JAX_PLATFORMS": "cuda"}, False),
    ({"JAX_PLATFORMS": "cpu,tpu"}, False),
    ({"JAX_PLATFORMS": "cpu", "JAXLM_KEEP_FREED_MEMORY": "0"}, False),
])
def test_it_applies_only_when_jax_runs_on_the_cpu(monkeypatch, env, applies):
    monkeypatch.delenv("JAXLM_KEEP_FREED_MEMORY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert host_memory.keep_freed_memory() is applies


def test_nothing_applies_off_glibc(monkeypatch):
    monkeypatch.setattr(host_memory, "_on_glibc", lambda: False)
    assert host_memory.keep_freed_memory() is False
