"""Multi-host start-up: ``jax.distributed.initialize`` from the environment.

- explicit: ``JAXLM_COORDINATOR=host:port``, ``JAXLM_NUM_PROCESSES``, ``JAXLM_PROCESS_ID``
  (what ``launch/local.py`` and custom launchers set);
- ``JAXLM_DISTRIBUTED=auto`` (set by ``launch/tpu_pod.sh`` and ``launch/slurm.sbatch``), or
  SLURM with ``SLURM_NTASKS`` > 1: JAX's own cluster detection (TPU pods, SLURM, ...).
On CPU, collectives between processes use gloo. A single process needs nothing.
"""

from __future__ import annotations

import os
import socket
import time

import jax

from jaxlm.errors import JaxlmError, first_line

ENV = ("JAXLM_COORDINATOR", "JAXLM_NUM_PROCESSES", "JAXLM_PROCESS_ID")


def _is_multiprocess_cluster() -> bool:
    return os.environ.get("JAXLM_DISTRIBUTED") == "auto" or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(timeout_s: int | None = None) -> None:
    """Join the job's other processes, if this process belongs to a multi-process job."""
    timeout_s = timeout_s or int(os.environ.get("JAXLM_INIT_TIMEOUT", "300"))
    given = [k for k in ENV if k in os.environ]
    if given and len(given) != len(ENV):
        raise JaxlmError(f"set all of {', '.join(ENV)} (only {', '.join(given)} given)")
    if not given and not _is_multiprocess_cluster():
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or os.environ.get("JAXLM_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if given:
        kwargs = dict(coordinator_address=os.environ["JAXLM_COORDINATOR"],
                      num_processes=int(os.environ["JAXLM_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAXLM_PROCESS_ID"]))
        if kwargs["process_id"] != 0:
            wait_for_coordinator(kwargs["coordinator_address"], timeout_s)
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except Exception as e:  # noqa: BLE001 - the runtime raises several kinds; the user needs one line
        where = kwargs.get("coordinator_address", "the cluster's coordinator")
        first = first_line(e)
        raise JaxlmError(f"could not join the multi-process job at {where} within {timeout_s}s ({first}); check "
                         "that every process started and the coordinator address is reachable") from None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Fail with one line if the coordinator never accepts a connection. (JAX's own client
    aborts the whole process from C++ when its deadline passes, so it cannot be caught.)"""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise JaxlmError(f"the coordinator {address} did not answer within {timeout_s:g}s ({e.strerror or e}); "
                                 "start process 0 first and check JAXLM_COORDINATOR") from None
            time.sleep(0.2)


def main_process_first(fn):
    """Run ``fn`` on process 0, then on the others (e.g. build a cache once, then read it)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"jaxlm:{getattr(fn, '__name__', 'main_first')}")
    return result if jax.process_index() == 0 else fn()
