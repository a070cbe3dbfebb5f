"""Multi-head self-attention with causal / padding masks and an optional KV cache.

Masks are boolean, ``True`` meaning "may attend", broadcastable to
``[batch, heads, q_len, kv_len]``. The fast path is ``jax.nn.dot_product_attention``
(cuDNN flash on GPU, XLA elsewhere); attention dropout and ``output_attentions`` need the
weights themselves, so they take the explicit einsum path with the same numerics.
"""

from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.core import dense

Implementation = Literal["xla", "cudnn"] | None


def padding_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """``[batch, kv_len]`` 1/0 mask -> boolean ``[batch, 1, 1, kv_len]``."""
    if attention_mask is None:
        return None
    return attention_mask.astype(bool)[:, None, None, :]


def causal_mask(q_positions: jax.Array, kv_len: int) -> jax.Array:
    """Key j is visible from query i iff j <= position(i). ``q_positions``: ``[q_len]``."""
    return (jnp.arange(kv_len)[None, :] <= q_positions[:, None])[None, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention probabilities ``[batch, heads, q_len, kv_len]`` (softmax in float32)."""
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1).astype(q.dtype)


class SelfAttention(nn.Module):
    """Self-attention over ``[batch, length, embed]`` with HF-style parameter layout.

    ``fused_qkv`` keeps one ``[embed, 3, heads, head_dim]`` projection (GPT-2's ``c_attn``);
    otherwise ``query`` / ``key`` / ``value`` are separate (BERT). ``decode=True`` reads and
    writes a KV cache in the ``cache`` collection: initialise it with an input of the
    maximum total length, then feed the prompt and one token at a time.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    out_init_std: float = 0.02
    fused_qkv: bool = False
    causal: bool = False
    qkv_names: tuple[str, str, str] | str = ("query", "key", "value")
    out_name: str = "out"
    implementation: Implementation = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, *, decode: bool = False, deterministic: bool = True,
                 output_attentions: bool = False):
        kw = dict(std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        heads = (self.num_heads, self.head_dim)
        if self.fused_qkv:
            qkv = dense((3, *heads), ("embed", None, "heads", "kv"), name=self.qkv_names, **kw)(x)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = (dense(heads, ("embed", "heads", "kv"), name=n, **kw)(x) for n in self.qkv_names)

        q_positions = jnp.arange(x.shape[1])
        if decode:
            k, v, q_positions = self._update_cache(k, v)
        explicit = (output_attentions or (not deterministic and self.dropout_rate > 0)
                    # XLA:CPU cannot lower the float16 backward pass of dot_product_attention
                    or (q.dtype == jnp.float16 and jax.default_backend() == "cpu"))
        # A plain causal call with no other mask uses is_causal (lets cuDNN flash run);
        # everything else gets one explicit boolean mask.
        is_causal = self.causal and not (decode or explicit or attention_mask is not None)
        mask = combine_masks(
            padding_mask(attention_mask),
            causal_mask(q_positions, k.shape[1]) if self.causal and not is_causal else None,
        )
        weights = None
        if explicit:
            weights = attention_weights(q, k, mask)
            probs = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            out = jnp.einsum("bnqk,bknh->bqnh", probs, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                               implementation=self.implementation)
        out = dense(x.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1), name=self.out_name,
                    std=self.out_init_std, dtype=self.dtype, param_dtype=self.param_dtype)(out)
        return out, (weights if output_attentions else None)

    def _update_cache(self, k, v):
        # Stored [batch, heads, head_dim, length], the layout XLA's attention matmuls read when
        # decoding: [batch, length, heads, head_dim] would be transposed whole at every token.
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, _to_cache(k).shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, _to_cache(v).shape, v.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        t = k.shape[1]
        if not initialized:  # shapes only; the first real call writes from position 0
            return k, v, jnp.arange(t)
        i = index.value
        for cached, new in ((cached_k, k), (cached_v, v)):
            cached.value = jax.lax.dynamic_update_slice(cached.value, _to_cache(new).astype(cached.value.dtype),
                                                        (0, 0, 0, i))
        index.value = i + t
        return _from_cache(cached_k.value), _from_cache(cached_v.value), i + jnp.arange(t)


def _to_cache(x: jax.Array) -> jax.Array:
    """``[batch, length, heads, head_dim]`` -> the cache layout ``[batch, heads, head_dim, length]``."""
    return x.transpose(0, 2, 3, 1)


def _from_cache(x: jax.Array) -> jax.Array:
    return x.transpose(0, 3, 1, 2)
