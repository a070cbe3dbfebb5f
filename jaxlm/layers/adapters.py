"""Hook points for parameter-efficient fine-tuning inside the Transformer layers.

Every Transformer family (GPT-2, BERT, DistilBERT, ViT, the seq2seq Transformer) threads one
:class:`Hooks` value from its top module down to its layers and calls
:func:`residual_adapter` on the output of each sublayer, before the residual sum. With the
default (no adapter) the call returns its input and creates no param, so models and their
checkpoints are unchanged. The other two hook points are call arguments, not settings:
``inputs_embeds`` (token embeddings given instead of ids: prompt tuning, P-tuning) and
``kv_prefix`` (per-layer key / value prefixes: prefix tuning), see
:class:`jaxlm.layers.attention.SelfAttention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.core import dense

Sublayer = Literal["attention", "cross_attention", "feed_forward"]

NON_LINEARITIES = {"relu": jax.nn.relu, "swish": jax.nn.swish, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
                   "tanh": jnp.tanh}


@dataclass(frozen=True)
class AdapterSpec:
    """Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): after each sublayer named in
    ``after``, ``h + up(f(down(h)))`` with ``down`` to ``width // reduction_factor`` features."""

    after: tuple[Sublayer, ...]
    reduction_factor: int = 16
    non_linearity: str = "relu"
    init_std: float = 1e-2
    """Both projections start this small (and biases at zero): the adapter starts near the identity."""


@dataclass(frozen=True)
class Hooks:
    """What a model inserts into its layers (nothing by default)."""

    adapter: AdapterSpec | None = None


NO_HOOKS = Hooks()


class BottleneckAdapter(nn.Module):
    spec: AdapterSpec
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        s = self.spec
        width = h.shape[-1]
        down = dense(max(1, width // s.reduction_factor), ("embed", None), std=s.init_std, name="down",
                     dtype=self.dtype)(h)
        up = dense(width, (None, "embed"), std=s.init_std, name="up", dtype=self.dtype)(NON_LINEARITIES[
            s.non_linearity](down))
        return h + up


def residual_adapter(hooks: Hooks, where: Sublayer, h: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``h`` (a sublayer's output, before the residual sum) through the adapter of ``where``, if any;
    called inside a layer's compact method, so the adapter's params are ``{where}_adapter/{down,up}``
    of that layer."""
    if hooks.adapter is None or where not in hooks.adapter.after:
        return h
    return BottleneckAdapter(hooks.adapter, dtype=dtype, name=f"{where}_adapter")(h)
