"""LoRA: a trained low-rank update ``scale * B A`` beside every targeted dense layer's frozen kernel
(and, as peft does, beside an embedding table named in ``target_modules``: ``A[ids] · B``).

The low-rank path is added to a dense layer's output by a flax method interceptor
(``nn.intercept_methods``, as Google's qwix does): when a ``DenseGeneral`` / ``Dense`` whose
module path is a target is called, it also computes ``scale * (dropout(x) · A) · B`` and creates
``lora_A`` ``[*in, r]`` and ``lora_B`` ``[r, *out]`` next to its ``kernel`` (``lora_B`` starts at zero,
so training starts at the base model; ``lora_A`` as ``torch.nn.Linear``'s kaiming-uniform). So no
model mentions LoRA and every family takes it, GPT-2's fused ``c_attn`` ``[embed, 3, heads, head_dim]``
included. Computing the update on the activations rather than as ``kernel + scale * A B`` keeps
the dropout exact and, with the kernel frozen, no kernel-sized gradient is ever formed.

:func:`merge` / :func:`unmerge` fold the update into the kernel and back: pure functions of the
param tree, run under ``jax.jit`` (elementwise work on each kernel, so its sharding is kept).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.core import Dropout


@dataclass(frozen=True)
class LoraSpec:
    r: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False
    names: tuple[str, ...] = ()
    """Target modules by name: a module whose dotted path equals one or ends with ``.name``."""
    pattern: str | None = None
    """Or: a regex matched against the whole dotted module path (peft's string form)."""
    exclude: tuple[str, ...] = ()
    """Dotted module paths never targeted (``modules_to_save``, the output head of ``all-linear``)."""
    all_linear: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def targets(self, module_path: str, embedding: bool = False) -> bool:
        if module_path in self.exclude:
            return False
        if self.all_linear:
            return not embedding
        if self.pattern is not None:
            return re.fullmatch(self.pattern, module_path) is not None
        return matches_name(module_path, self.names)


def matches_name(module_path: str, names) -> bool:
    """peft's rule for a list of module names: the path is a name or ends with ``.name``."""
    return any(module_path == n or module_path.endswith("." + n) for n in names)


def is_dense(module) -> bool:
    return isinstance(module, (nn.DenseGeneral, nn.Dense))


def takes_lora(module) -> bool:
    """Dense layers, and embedding tables (peft's LoRA ``Embedding``: ``A[ids] · B`` added to the lookup)."""
    return is_dense(module) or isinstance(module, nn.Embed)


def _axes_and_features(module, x) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(module, nn.Dense):
        return (x.ndim - 1,), (module.features,)
    axis = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    features = module.features if isinstance(module.features, tuple) else (module.features,)
    return tuple(a % x.ndim for a in axis), features


def interceptor(spec: LoraSpec):
    """The method interceptor that adds LoRA to the target dense layers while it is active."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (context.method_name != "__call__" or not takes_lora(module)
                or not spec.targets(".".join(module.path), isinstance(module, nn.Embed))):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        update = low_rank_lookup if isinstance(module, nn.Embed) else low_rank
        return y + update(module, args[0], spec).astype(y.dtype)

    return intercept


def low_rank(module, x, spec: LoraSpec):
    """``scale * (dropout(x) · A) · B`` for one dense ``module`` (called while it runs)."""
    axes, features = _axes_and_features(module, x)
    in_shape = tuple(x.shape[a] for a in axes)
    kernel = module.get_variable("params", "kernel")
    names = getattr(kernel, "names", None) or (None,) * (len(in_shape) + len(features))
    fan_in = math.prod(in_shape)
    bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's kaiming_uniform(a=sqrt(5)) over the fan-in
    a = module.param("lora_A", nn.with_logical_partitioning(
        lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound), (*names[:len(in_shape)], None)),
        (*in_shape, spec.r), module.param_dtype)
    b = module.param("lora_B", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                            (None, *names[len(in_shape):])),
                     (spec.r, *features), module.param_dtype)
    dtype = module.dtype or x.dtype
    deterministic = not module.has_rng("dropout")
    x = Dropout(spec.dropout, name="lora_dropout")(x, deterministic=deterministic) if spec.dropout else x
    h = jax.lax.dot_general(x.astype(dtype), a.astype(dtype), ((axes, tuple(range(len(axes)))), ((), ())))
    return jnp.tensordot(h, b.astype(dtype), axes=1) * jnp.asarray(spec.scale, dtype)


def low_rank_lookup(module: nn.Embed, ids, spec: LoraSpec):
    """``scale * A[ids] · B`` for an embedding table: A ``[vocab, r]`` starts at zero and B ``[r, features]``
    at N(0, 1), as peft initialises a LoRA embedding (no dropout on ids)."""
    table = module.get_variable("params", "embedding")
    names = getattr(table, "names", None) or (None, None)
    # nn.Embed makes its table in setup, so its __call__ cannot declare params: its scope can.
    a = module.scope.param("lora_A", nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[0], None)),
                           (module.num_embeddings, spec.r), module.param_dtype)
    b = module.scope.param("lora_B", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, names[1])),
                           (spec.r, module.features), module.param_dtype)
    dtype = module.dtype or a.dtype
    return jnp.take(a, ids, axis=0).astype(dtype) @ b.astype(dtype) * jnp.asarray(spec.scale, dtype)


def delta(a, b, scale: float, kernel_ndim: int):
    """``scale * A B`` for a kernel of ``kernel_ndim`` axes: A ``[*in, r]``, B ``[r, *out]``, or both with
    a leading scanned-layers axis (then the kernel has one axis fewer than A and B together, less 2)."""
    if a.ndim + b.ndim - 2 == kernel_ndim:
        return jnp.tensordot(a, b, axes=1) * scale
    return jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(a, b) * scale


def _weight(layer) -> str:
    """The name of a LoRA layer's frozen weight: a dense ``kernel`` or an embedding table."""
    return "kernel" if "kernel" in layer else "embedding"


def _walk(tree, fn):
    if not isinstance(tree, dict):
        return tree
    out = {k: _walk(v, fn) for k, v in tree.items()}
    return fn(out) if {"lora_A", "lora_B"} <= out.keys() and ({"kernel", "embedding"} & out.keys()) else out


def merge(params, scale: float):
    """Every LoRA layer's kernel (or embedding table) with ``scale * A B`` added, and its ``lora_A`` /
    ``lora_B`` removed."""

    def fold(layer):
        name = _weight(layer)
        weight = layer[name]
        added = delta(layer["lora_A"].astype(jnp.float32), layer["lora_B"].astype(jnp.float32), scale, weight.ndim)
        rest = {k: v for k, v in layer.items() if k not in ("lora_A", "lora_B")}
        return {**rest, name: (weight.astype(jnp.float32) + added).astype(weight.dtype)}

    return _walk(params, fold)


def unmerge(merged, lora, scale: float):
    """The inverse of :func:`merge`: ``lora`` holds (at least) the ``lora_A`` / ``lora_B`` leaves."""
    def put_back(tree, extra):
        if not isinstance(tree, dict):
            return tree
        out = {k: put_back(v, extra.get(k, {}) if isinstance(extra, dict) else {}) for k, v in tree.items()}
        if isinstance(extra, dict) and {"lora_A", "lora_B"} <= extra.keys() and {"kernel", "embedding"} & out.keys():
            name = _weight(out)
            weight = out[name]
            removed = delta(extra["lora_A"].astype(jnp.float32), extra["lora_B"].astype(jnp.float32), scale,
                            weight.ndim)
            out = {**out, "lora_A": extra["lora_A"], "lora_B": extra["lora_B"],
                   name: (weight.astype(jnp.float32) - removed).astype(weight.dtype)}
        return out

    return put_back(merged, lora)
