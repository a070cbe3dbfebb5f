"""Per-layer optimizer behaviour: gradual unfreezing (ULMFiT) and layer-wise learning-rate decay.

Both need each param's depth in the network. :func:`depths` assigns one: the embeddings
are depth 0, layer ``i`` of the stack is ``i + 1``, everything above the stack (final norm,
pooler, heads) is ``num_layers + 1``. Params of scanned layers (``model.scan_layers``) hold
all the layers on their leading axis, so their depth is an array over that axis.

- :func:`layer_decay`: updates of a param at depth ``d`` are scaled by
  ``decay ** (num_layers + 1 - d)`` (the head trains at the full rate; BEiT / ELECTRA's recipe).
- :func:`gradual_unfreeze`: at step 0 only the top group (depth ``num_layers + 1``) trains,
  one more group downwards every ``every`` steps. Every param that will ever train is in the
  trainable tree from the start, with its optimizer state: groups not yet thawed get zero
  gradients before the optimizer (their moments stay zero) and zero updates after it (no
  weight decay either), as a function of a step counter in the optimizer state. So nothing
  recompiles when a group thaws, and a resumed run thaws exactly when an uninterrupted one did.

optax has per-parameter masks (``optax.masked``, ``optax.transforms.partition``) but nothing
that scales or thaws by depth on a schedule: these two small transforms are written here.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.errors import ConfigError
from jaxlm.train.trainable import flat, unflat

_EMBEDDING = re.compile(r"(^|/)(embeddings?|wte|wpe|shared|encoder_embed|decoder_embed|embed_positions|"
                        r"cls_token|position_embeddings)(/|$)")


def depths(params, config) -> dict:
    """A tree like ``params`` whose leaves are each param's depth: an int, or an int array
    ``[layers, 1, ...]`` for scanned layers (their leading axis is the layer)."""
    name = getattr(config, "layers_name", None) or "layer"
    n = num_layers(config)
    if n is None:
        raise ConfigError(f"model.type={config.type} has no single stack of layers; layer-wise learning rates and "
                          "gradual unfreezing need one (gpt2, bert, distilbert, vit)")
    unscanned = re.compile(rf"^{re.escape(name)}_(\d+)$")

    def depth(path, leaf):
        for part in path:
            m = unscanned.match(part)
            if m:
                return int(m.group(1)) + 1
            if part == name:  # scanned: one slice per layer
                return np.arange(1, n + 1).reshape(n, *([1] * (len(leaf.shape) - 1)))
        return 0 if _EMBEDDING.search("/".join(path)) else n + 1

    return unflat({p: depth(p, x) for p, x in flat(params).items()})


def num_layers(config) -> int | None:
    for field in ("n_layer", "num_hidden_layers", "n_layers"):
        if hasattr(config, field):
            return getattr(config, field)
    return None


def layer_decay(decay: float, params, config) -> optax.GradientTransformation:
    """Scale each update by ``decay ** (num_layers + 1 - depth)``."""
    top = num_layers(config) + 1
    scales = jax.tree.map(lambda d: jnp.asarray(decay ** (top - np.asarray(d)), jnp.float32), depths(params, config))

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class UnfreezeState(NamedTuple):
    count: jax.Array
    inner: Any


def thawed(step, depth, top: int, every: int):
    """1.0 where a param of ``depth`` trains at ``step`` (groups thaw from the top down), else 0.0."""
    return (depth >= top - step // every).astype(jnp.float32)


def gradual_unfreeze(tx: optax.GradientTransformationExtraArgs, every: int, params,
                     config) -> optax.GradientTransformationExtraArgs:
    """``tx`` seeing zero gradients, and giving zero updates, for groups not yet thawed."""
    top = num_layers(config) + 1
    depth = depths(params, config)

    def init(params):
        return UnfreezeState(jnp.zeros((), jnp.int32), tx.init(params))

    def update(grads, state, params=None, **extra):
        mask = jax.tree.map(lambda d: thawed(state.count, jnp.asarray(d), top, every), depth)
        zeroed = jax.tree.map(lambda g, m: (g * m).astype(g.dtype), grads, mask)
        updates, inner = tx.update(zeroed, state.inner, params, **extra)
        updates = jax.tree.map(lambda u, m: (u * m).astype(u.dtype), updates, mask)
        return updates, UnfreezeState(state.count + 1, inner)

    return optax.GradientTransformationExtraArgs(init, update)
