"""Loading a jaxlm run (or one of its checkpoints) as a model: what ``jaxlm.from_pretrained(RUN)``,
``eval``, ``generate``, ``predict`` and ``convert`` read."""

from __future__ import annotations

import os

import jax.numpy as jnp

from jaxlm.checkpoint import load_model_state, load_run, resolve


def load_run_model(path: str | os.PathLike, step: int | None = None, best: bool = False):
    """``(model, params, config)`` of a run's checkpoint (the latest, ``step`` or the best).

    The model is the one the run trained (with its PEFT method, if any) and ``params`` are all of its
    params (the frozen ones of a run that trained some only are rebuilt and checked); a model with
    BatchNorm statistics comes bound to them (:class:`~jaxlm.models.state.StatefulModel`).
    """
    from jaxlm.config import validate_config
    from jaxlm.models import MODEL_FAMILIES
    from jaxlm.models.state import StatefulModel
    from jaxlm.train.setup import build_run_model

    config_dict, params, meta = load_run(path, step, best)
    config = validate_config(config_dict)
    heads = MODEL_FAMILIES[config.model.type].heads
    head = next((h for h, cls in heads.items() if cls.__name__ == meta.get("architecture")), None)
    kwargs = {}
    if (head or config.task.head) == "contrastive":
        from jaxlm.tasks.contrastive import projection_settings

        kwargs = projection_settings(config.task)
    model, _, _ = build_run_model(config, head or config.task.head, dtype=jnp.float32, **kwargs)
    model = for_params(model, params)
    model_state = load_model_state(resolve(path)[0], meta["step"])  # the checkpoint load_run read
    if model_state:  # BatchNorm running averages: apply() reads them
        model = StatefulModel(model, model_state)
    return model, params, config


def for_params(model, params):
    """``model``, made to take quantized params if ``params`` are (a ``jaxlm quantize`` run)."""
    from jaxlm.compress.quantize import is_quantized, quantized_model

    return quantized_model(model) if is_quantized(params) else model
