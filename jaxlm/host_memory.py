"""Keep freed host memory for reuse, so that XLA:CPU steps stop page-faulting their buffers in.

XLA:CPU allocates a step's temporaries as one block, 1.9 GB for the gpt2-small train step at
8 x 128. glibc's malloc serves a block that large with a fresh ``mmap`` and returns it with
``munmap`` when the step ends, so every step touches 1.9 GB of new pages. On the 2-core
development machine that was 508,586 page faults and 1.07 s of kernel time in a 5.8 s step;
with this, 0 and 0.02 s (``benchmarks/train_throughput.py --malloc default|jaxlm`` prints them).

:func:`keep_freed_memory` makes glibc serve every thread from its main heap (one arena) and
never give freed memory back to the system, so a step's block is reused by the next. It must
run before jax starts its CPU backend, whose worker threads pick their malloc arena on their first
allocation. The ``jaxlm`` command calls it at start-up; a Python program calls it first thing.
It is written here because no library sets it: glibc's own knobs are these ``mallopt`` calls or
``MALLOC_*`` environment variables read at process start.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
OPT_OUT = "JAXLM_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Keep freed host memory for reuse (see the module docstring); returns whether it applied.

    It applies on Linux with glibc when jax will run on the CPU. ``JAX_PLATFORMS`` says so, or,
    when that is unset, no GPU / TPU plugin is installed. Setting ``JAXLM_KEEP_FREED_MEMORY=0``
    turns it off. The cost is that the process's memory stays at its peak until the process ends.
    """
    if os.environ.get(OPT_OUT, "1") == "0" or not _on_glibc() or not _cpu_only():
        return False
    libc = ctypes.CDLL(None)
    # Arena first: threads outside the main arena would still mmap blocks larger than their 64 MB heaps.
    applied = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0), libc.mallopt(M_TRIM_THRESHOLD, -1)]
    return all(applied)  # mallopt returns 1 on success


def _on_glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return set(platforms.lower().split(",")) <= {"cpu"}
    return (not importlib.metadata.entry_points(group="jax_plugins")
            and importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None)
