"""A model's layer stack: N named modules, or one module scanned N times (``model.scan_layers``).

Unscanned, layer i's params are ``{name}_{i}`` (GPT-2 ``h_3``, BERT ``layer_3``); scanned,
they are one ``{name}`` subtree whose arrays have a leading ``layers`` axis. The two give
the same outputs from the same weights; :func:`stack_layers` / :func:`unstack_layers`
convert params (or ``ShapeDtypeStruct`` trees) between the layouts, so PyTorch import /
export and ``model.init_from`` work with either.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.adapters import NO_HOOKS


def apply_layers(layer: type[nn.Module], config, n: int, x, per_layer, *args, dtype, keep_outputs: bool,
                 hooks=NO_HOOKS, layer_kwargs: Callable[[int], dict] | None = None) -> tuple[jax.Array, tuple, tuple]:
    """Run ``n`` layers ``layer(config, dtype=dtype, hooks=hooks, **layer_kwargs(i))`` named after
    ``config.layers_name`` over ``x`` (called inside a compact method); scanned layers are one module,
    so their ``layer_kwargs`` must not differ (the configs that would make them differ refuse
    ``scan_layers``).

    A layer maps ``(x, per_layer[i], *args)`` to ``(x, attention weights or None)``; ``per_layer`` is
    a pytree with a leading axis of ``n`` (each layer's key / value prefix) or ``None``. Returns the
    final ``x``, every layer's output (when ``keep_outputs``, else ``()``) and every layer's weights.
    With ``config.scan_layers`` the layers are one ``nn.scan`` over a stacked ``layers`` axis:
    params and the KV cache are stacked, dropout and init rngs are split per layer.
    """
    name = config.layers_name
    extra = layer_kwargs or (lambda i: {})
    if not config.scan_layers:
        outputs, weights = [], []
        for i in range(n):
            x, w = layer(config, dtype=dtype, hooks=hooks, name=f"{name}_{i}", **extra(i))(
                x, jax.tree.map(lambda a, i=i: a[i], per_layer), *args)
            outputs.append(x)
            weights.append(w)
        return x, tuple(outputs) if keep_outputs else (), tuple(weights)

    def body(module, carry, *rest):
        out, w = module(carry, *rest)
        return out, (out if keep_outputs else None, w)

    scanned = nn.scan(body, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(0, *(nn.broadcast,) * len(args)), length=n,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    x, (outputs, weights) = scanned(layer(config, dtype=dtype, hooks=hooks, name=name, **extra(0)), x, per_layer,
                                    *args)
    outputs = tuple(outputs[i] for i in range(n)) if keep_outputs else ()
    weights = tuple(None if weights is None else weights[i] for i in range(n))
    return x, outputs, weights


def is_stacked(params: Mapping, config) -> bool:
    """Whether ``params`` hold ``config``'s layers in the scanned layout (anywhere in the tree)."""
    name = config.layers_name
    return any(k == name or (isinstance(v, Mapping) and is_stacked(v, config)) for k, v in params.items())


def stack_layers(params: Mapping, config) -> dict:
    """``{name}_0 .. {name}_{n-1}`` subtrees -> one ``{name}`` subtree with a leading layer axis."""
    pattern = re.compile(rf"{re.escape(config.layers_name)}_(\d+)")
    out, layers = {}, {}
    for k, v in params.items():
        m = pattern.fullmatch(k)
        if m:
            layers[int(m.group(1))] = v
        else:
            out[k] = stack_layers(v, config) if isinstance(v, Mapping) else v
    if layers:
        out[config.layers_name] = jax.tree.map(_stack, *(layers[i] for i in range(len(layers))))
    return out


def unstack_layers(params: Mapping, config) -> dict:
    """One ``{name}`` subtree with a leading layer axis -> ``{name}_0 .. {name}_{n-1}`` subtrees."""
    out = {}
    for k, v in params.items():
        if k == config.layers_name:
            n = jax.tree.leaves(v)[0].shape[0]
            out.update({f"{k}_{i}": jax.tree.map(lambda a, i=i: _index(a, i), v) for i in range(n)})
        else:
            out[k] = unstack_layers(v, config) if isinstance(v, Mapping) else v
    return out


def _stack(*leaves) -> Any:
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype)
    return jnp.stack(leaves)


def _index(leaf, i: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[i]
