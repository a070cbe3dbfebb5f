"""The one generic walker between jaxlm params and PyTorch ``state_dict``s.

It walks a model's param tree (a ``jax.eval_shape`` template on import, the params on
export), names each leaf the PyTorch way through the family's
:class:`~jaxlm.models.base.TorchKeyMap` and converts its layout. Keys are compared with
the trunk prefix (``bert.``, ``transformer.``, ``distilbert.``) removed, so base and head
checkpoints load into base and head models alike. Every difference is accounted for:
shape mismatches, missing trunk weights and unexpected trunk weights are one error that
names them with their shapes; a missing head or pooler is freshly initialised and an
unused one skipped, each with a logged warning that names the weights.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxlm.interop.errors import InteropError
from jaxlm.models.base import TorchKeyMap
from jaxlm.models.layout import stack_layers, unstack_layers

logger = logging.getLogger(__name__)

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
# LayerNorm names of TensorFlow-era checkpoints, renamed as transformers does.
LEGACY_RENAMES = ((r"LayerNorm\.gamma$", "LayerNorm.weight"), (r"LayerNorm\.beta$", "LayerNorm.bias"))
SHOWN = 4  # names listed per kind of problem before "and N more"


@dataclass(frozen=True)
class Slot:
    """One param: its jaxlm path and shape, its PyTorch key and shape, and how to convert."""

    path: tuple[str, ...]
    key: str
    shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    transpose: bool  # nn.Linear kernels are stored [out, in]
    conv: bool = False  # nn.Conv2d kernels are stored [out, in, height, width]; Flax's are HWIO

    def to_jax(self, w):
        if self.conv:
            return w.transpose(2, 3, 1, 0)
        return (w.T if self.transpose else w).reshape(self.shape)

    def to_torch(self, x):
        if self.conv:
            return x.transpose(3, 2, 0, 1)
        return x.reshape(self.torch_shape[::-1]).T if self.transpose else x.reshape(self.torch_shape)


def torch_key(path: tuple[str, ...], key_map: TorchKeyMap) -> str:
    name = ".".join((*path[:-1], LEAF_NAMES.get(path[-1], path[-1])))
    for pattern, replacement in key_map.renames:
        name = re.sub(pattern, replacement, name)
    return name


def slots(tree: Mapping, key_map: TorchKeyMap) -> list[Slot]:
    """A slot per leaf of a param tree (arrays or ``ShapeDtypeStruct``s).

    Kernels are 2-D in PyTorch; the sibling bias's rank says how many trailing kernel
    axes are outputs (one when there is no bias, unless ``key_map.input_axes`` says). Biases are flat. Convolution kernels
    (``key_map.conv2d``) keep their four axes, reordered.
    """
    flat = traverse_util.flatten_dict(tree)
    out = []
    for path, leaf in flat.items():
        shape = tuple(leaf.shape)
        torch_shape, transpose = shape, False
        key = torch_key(path, key_map)
        if path[-1] == "kernel" and re.search(key_map.conv2d, key):
            height, width, n_in, n_out = shape
            out.append(Slot(path, key, shape, (n_out, n_in, height, width), False, conv=True))
            continue
        if path[-1] == "kernel":
            bias = flat.get((*path[:-1], "bias"))
            n_in = len(shape) - (len(bias.shape) if bias is not None else 1)
            n_in = next((n for pattern, n in key_map.input_axes if re.search(pattern, key)), n_in)
            matrix = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
            torch_shape, transpose = (matrix, False) if key_map.conv1d else (matrix[::-1], True)
        elif path[-1] == "bias":
            torch_shape = (math.prod(shape),)
        out.append(Slot(path, key, shape, torch_shape, transpose))
    return out


def param_shapes(model: nn.Module) -> dict:
    """The model's param tree as ``ShapeDtypeStruct``s: nothing is allocated."""
    return jax.eval_shape(lambda: _init(model, seed=0))


def params_from_torch(model: nn.Module, state: Mapping[str, Any], key_map: TorchKeyMap, *, dtype,
                      seed: int, source: str) -> dict:
    """jaxlm params for ``model`` from a PyTorch ``state`` dict read from ``source``
    (filled in the unscanned layout, then stacked if ``model.config.scan_layers``)."""
    if model.config.scan_layers:
        return stack_layers(params_from_torch(_unscanned(model), state, key_map, dtype=dtype, seed=seed,
                                              source=source), model.config)
    optional = re.compile(key_map.optional)
    checkpoint = {}
    for key, value in state.items():
        key = _strip(key, key_map.prefix)
        for pattern, replacement in LEGACY_RENAMES:
            key = re.sub(pattern, replacement, key)
        if not any(re.search(p, key) for p in key_map.dropped):
            checkpoint[key] = value

    loaded, missing, mismatched = {}, {}, []
    for slot in slots(param_shapes(model), key_map):
        key = _strip(slot.key, key_map.prefix)
        if key not in checkpoint:
            missing[key] = slot
            continue
        w = checkpoint.pop(key)
        if tuple(w.shape) != slot.torch_shape:
            mismatched.append(f"{key} is {tuple(w.shape)} in the file but {slot.torch_shape} from config.json")
            continue
        loaded[slot.path] = slot.to_jax(jnp.asarray(w, dtype))

    name = type(model).__name__
    problems = [
        _listing("shape mismatch", mismatched),
        _listing("missing", [f"{k} {s.torch_shape}" for k, s in missing.items() if not optional.search(k)]),
        _listing("unexpected", [f"{k} {tuple(v.shape)}" for k, v in checkpoint.items() if not optional.search(k)]),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise InteropError(f"the weights in {source} do not fit the {name} of its config.json: "
                           f"{'; '.join(problems)}; use the config.json the weights were saved with")
    if missing:
        fresh = traverse_util.flatten_dict(_init(model, seed))
        for slot in missing.values():
            loaded[slot.path] = fresh[slot.path].astype(dtype)
        logger.warning("%s: %d weights are not in %s and were newly initialised (train them before use): %s",
                       name, len(missing), source, ", ".join(missing))
    if checkpoint:
        logger.warning("%s: %d weights in %s are not used by this model and were skipped: %s",
                       name, len(checkpoint), source, ", ".join(checkpoint))
    return traverse_util.unflatten_dict(loaded)


def params_to_torch(model: nn.Module, params: Mapping, key_map: TorchKeyMap) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` (numpy arrays, full key names) for ``model``'s ``params``."""
    params = nn.meta.unbox(params)
    if model.config.scan_layers:
        model, params = _unscanned(model), unstack_layers(params, model.config)
    want = {p: tuple(s.shape) for p, s in traverse_util.flatten_dict(param_shapes(model)).items()}
    have = {p: tuple(np.shape(x)) for p, x in traverse_util.flatten_dict(params).items()}
    if want != have:
        wrong = [f"{'/'.join(p)} {have.get(p, 'absent')} (expected {want.get(p, 'absent')})"
                 for p in sorted(want.keys() | have.keys()) if want.get(p) != have.get(p)]
        raise InteropError(f"these params do not fit the {type(model).__name__} of their config: "
                           f"{_listing('wrong', wrong)}; pass the params that model was trained with")
    flat = traverse_util.flatten_dict(params)
    return {s.key: np.ascontiguousarray(s.to_torch(np.asarray(flat[s.path]))) for s in slots(params, key_map)}


def _unscanned(model: nn.Module) -> nn.Module:
    """``model`` with ``scan_layers`` off: the layout PyTorch names map to one by one."""
    return model.clone(config=model.config.model_copy(update={"scan_layers": False}))


def _init(model: nn.Module, seed: int) -> dict:
    return nn.meta.unbox(model.init(jax.random.key(seed), **model.config.dummy_inputs())["params"])


def _strip(key: str, prefix: str) -> str:
    return key.removeprefix(prefix + ".")


def _listing(kind: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{kind}: {', '.join(items[:SHOWN])}{more}"
