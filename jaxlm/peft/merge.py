"""Merging a LoRA run into its base: a parameter-tree transform run once, from one run to a plain one.

:func:`merged_params` folds every ``scale * A B`` into its kernel (jitted; each kernel keeps its
sharding) and drops the method's params; :func:`write_merged_run` writes the result as a
weights-only run with the base's plain config, which ``eval``, ``generate``, ``predict``,
``convert`` and ``model.init_from`` read like any other run.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import jax

from jaxlm.errors import JaxlmError
from jaxlm.interop import walker
from jaxlm.peft import lora
from jaxlm.peft.model import PeftModel
from jaxlm.train.precision import DTYPES, cast_floats
from jaxlm.train.trainable import flat, unflat


def merged_params(model: PeftModel, params, config=None, dtype: str | None = None) -> dict:
    """The base model's params with the LoRA updates folded in (``model.base`` applies them), in
    ``dtype`` if given. A QLoRA run (``config``'s base in NF4; ``params`` hold its dequantized
    weights) merges only with a ``dtype`` saying what the merged weights become."""
    spec = model.spec
    if spec.lora is None:
        raise JaxlmError(f"peft.method={spec.method} cannot be merged into the base weights: only LoRA's update is a "
                         "weight of its own; export or use the run as it is")
    if config is not None and getattr(config.peft, "quantize", None) and dtype is None:
        raise JaxlmError("this QLoRA run keeps its base in NF4: merging adds the updates to the dequantized weights; "
                         "say what they become with --dtype float32 or --dtype bfloat16")
    merged = jax.jit(functools.partial(lora.merge, scale=spec.lora.scale))(params)
    keep = set(flat(walker.param_shapes(model.base)))
    merged = unflat({p: x for p, x in flat(merged).items() if p in keep})
    return merged if dtype is None else cast_floats(merged, DTYPES[dtype])


def write_merged_run(run: str | os.PathLike, out: str | os.PathLike, step: int | None = None,
                     best: bool = False, dtype: str | None = None) -> str:
    """Write ``run`` (a LoRA or QLoRA run) merged as a plain weights-only run in ``out`` (in ``dtype``,
    which a QLoRA run needs); returns a line saying so."""
    from jaxlm.checkpoint import Checkpoints, checkpoint_dir, resolve
    from jaxlm.config import save_config, validate_config
    from jaxlm.interop.runs import load_run_model
    from jaxlm.rundir import fresh_output_dir

    out = Path(out)
    if checkpoint_dir(out).exists():
        raise JaxlmError(f"{out} already holds checkpoints; choose an empty --out directory")
    model, params, config = load_run_model(run, step, best)
    if not isinstance(model, PeftModel):
        raise JaxlmError(f"{run} has no peft section: there is nothing to merge")
    params = merged_params(model, params, config, dtype)
    plain = config.model_dump(mode="json")
    plain.update(peft=None, run={**plain["run"], "out_dir": str(out)},
                 trainer={**plain["trainer"], "trainable": [], "freeze": [], "unfreeze_every": None})
    if dtype is not None:
        plain["precision"] = {**plain["precision"], "params": dtype}
    tokenizer = resolve(run)[0] / "tokenizer"
    if config.data.tokenizer.path is None and tokenizer.is_dir():
        plain["data"]["tokenizer"] = {**plain["data"]["tokenizer"], "path": str(out / "tokenizer")}
    merged_config = validate_config(plain)
    with fresh_output_dir(out) as tmp:
        if tokenizer.is_dir() and config.data.tokenizer.path is None:
            shutil.copytree(tokenizer, tmp / "tokenizer")
        ckpt = Checkpoints(tmp, merged_config.checkpoint)
        ckpt.save_weights(params, merged_config.model_dump(mode="json"), type(model.base).__name__)
        ckpt.close()
        save_config(merged_config, tmp / "config.yaml")
    return f"wrote {run} with its LoRA updates merged to {out}: a plain {type(model.base).__name__} run"
