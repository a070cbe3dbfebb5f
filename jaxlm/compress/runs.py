"""A run directory made from another one: what ``jaxlm quantize``, ``jaxlm prune`` and
``jaxlm distill init`` write.

The new run holds the source's config (``run.out_dir`` pointing at itself, plus any changes),
its tokenizer and training metrics (so reports see the source's training time), and one
weights-only checkpoint at the source's step with the source's eval metrics. It is written
under a temporary name and renamed when complete (:func:`jaxlm.rundir.fresh_output_dir`): an
interrupted command leaves no half run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn

from jaxlm.checkpoint import Checkpoints, load_model_state, open_run, resolve
from jaxlm.config import Config, save_config, validate_config
from jaxlm.errors import JaxlmError
from jaxlm.rundir import fresh_output_dir


@dataclass
class SourceRun:
    """A run (or one of its checkpoints) read for a transform."""

    path: Path
    step: int
    config: Config
    meta: dict
    model: nn.Module
    """The model module (unwrapped: not a ``StatefulModel``)."""
    params: Any
    model_state: dict


def read_run(path: str | os.PathLike, step: int | None = None, best: bool = False) -> SourceRun:
    from jaxlm.cli import load_model

    ckpt, step = open_run(path, step, best)
    try:
        meta = ckpt.read_meta(step)
    finally:
        ckpt.close()
    model, params, config = load_model(str(path), None, step)
    return SourceRun(resolve(path)[0], step, config, meta, getattr(model, "module", model), params,
                     load_model_state(path, step))


def with_out_dir(config: Config, out: Path, **changes: Any) -> Config:
    """``config`` for the run at ``out``, with dotted ``changes`` (``{"model": {...}}`` replaces sections)."""
    tree = config.model_dump(mode="json")
    tree["run"]["out_dir"] = str(out)
    tree.update(changes)
    return validate_config(tree)


def check_out(out: str | os.PathLike) -> Path:
    """``out``, refused before any work if it already holds something."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise JaxlmError(f"--out {out} already exists and is not empty; choose a new directory")
    return out


def write_run(source: SourceRun, out: str | os.PathLike, params, *, config: Config | None = None,
              model: nn.Module | None = None, model_state: dict | None = None, **meta) -> Path:
    """Write ``params`` (and ``model_state``) as a new run at ``out`` from ``source``; ``config`` /
    ``model`` default to the source's (the config's ``run.out_dir`` is set to ``out``); ``meta``
    goes into the checkpoint's metadata (``quantization``, ``pruning``, ...)."""
    out = check_out(out)
    config = config or source.config
    copy_tokenizer = (source.path / "tokenizer").is_dir()  # every run keeps a copy of its tokenizer
    # Runs started from this one's config (fine-tuning it) read the same tokenizer, not a retrained one.
    tokenizer = {"path": str(out.absolute() / "tokenizer")} if copy_tokenizer else {}
    config = with_out_dir(config, out, data={**config.data.model_dump(mode="json"),
                                             "tokenizer": {**config.data.tokenizer.model_dump(mode="json"), **tokenizer}})
    model = model or source.model
    with fresh_output_dir(out) as tmp:
        if copy_tokenizer:
            shutil.copytree(source.path / "tokenizer", tmp / "tokenizer")
        if (source.path / "metrics.jsonl").is_file():
            shutil.copy(source.path / "metrics.jsonl", tmp / "metrics.jsonl")
        save_config(config, tmp / "config.yaml")
        ckpt = Checkpoints(tmp, config.checkpoint)
        ckpt.save_weights(params, config.model_dump(mode="json"), type(model).__name__, step=source.step,
                          metrics=source.meta.get("metrics", {}),
                          model_state=source.model_state if model_state is None else model_state,
                          source={"run": str(source.path), "step": source.step}, **meta)
        ckpt.close()
    return out
