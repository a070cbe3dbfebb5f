"""What jaxlm writes to disk is whole or absent: one writer per run directory, nothing left
behind by a run that never started, and ``--out`` directories that appear only when complete."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

import jax

from jaxlm.errors import JaxlmError

LOCK_FILE = ".jaxlm-lock"


class RunDirectoryInUse(JaxlmError):
    pass


class RunClaim:
    """The claim of one ``jaxlm train`` on its run directory (see :func:`claim_run_dir`)."""

    def __init__(self, run_dir: Path, created: bool):
        self.run_dir, self.created, self.started = run_dir, created, False

    def mark_started(self) -> None:
        """The run has trained a step: from now on its directory stays, whatever happens."""
        self.started = True


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path) -> Iterator[RunClaim]:
    """Hold ``run_dir`` for this job while the block runs.

    The lock is an advisory ``flock`` on ``run_dir/.jaxlm-lock``: the kernel drops it when its
    process ends, however it ends, so a SIGKILL never leaves a stale lock (on NFS, ``flock``
    works across hosts only where the server supports it). Process 0 takes it for the whole
    multi-process job. A second job on the same directory fails at once, naming the holder.
    If the block fails before :meth:`RunClaim.mark_started` and the directory did not exist
    before, it is removed again: a run that never trained leaves nothing behind.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = RunClaim(run_dir, created)
    handle = _lock(run_dir) if jax.process_index() == 0 else None
    try:
        yield claim
    except BaseException:
        if created and not claim.started and jax.process_index() == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _lock(run_dir: Path):
    path = run_dir / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirectoryInUse(f"{run_dir} is in use by {holder}; wait for that run to finish (or stop it), or "
                                "choose another run.out_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"jaxlm train pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def fresh_output_dir(out: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` to write into; renamed to ``out`` when the block
    succeeds, removed when it fails. ``out`` must not exist yet (or be an empty directory)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JaxlmError(f"--out {out} already exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
