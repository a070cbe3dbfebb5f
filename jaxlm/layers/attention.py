"""Multi-head attention: self or cross, causal / padding / sliding-window masks,
multi-query and grouped-query heads, rotary positions, and an optional KV cache.

Masks are boolean, ``True`` meaning "may attend", broadcastable to
``[batch, heads, q_len, kv_len]``; an ``attention_mask`` is a ``[batch, kv_len]`` padding mask or
a full ``[batch, 1, q_len, kv_len]`` one (packed examples: :func:`segment_mask`). The fast path
is ``jax.nn.dot_product_attention`` (cuDNN flash on GPU, XLA elsewhere; it takes grouped
key/value heads as they are);
attention dropout and ``output_attentions`` need the weights themselves, so they take the
explicit einsum path with the same numerics.
"""

from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.core import Dropout, dense
from jaxlm.layers.embeddings import apply_rotary

Implementation = Literal["xla", "cudnn"] | None


def padding_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """``[batch, kv_len]`` 1/0 mask -> boolean ``[batch, 1, 1, kv_len]``; a full
    ``[batch, 1, q_len, kv_len]`` mask (:func:`segment_mask`) is used as it is."""
    if attention_mask is None:
        return None
    if attention_mask.ndim == 4:
        return attention_mask.astype(bool)
    return attention_mask.astype(bool)[:, None, None, :]


def segment_mask(segment_ids: jax.Array, kv_segment_ids: jax.Array | None = None) -> jax.Array:
    """Packed rows (several examples in one row): ``segment_ids [batch, length]`` numbers each
    example's tokens 1, 2, ... and padding 0 -> boolean ``[batch, 1, length, kv_length]`` where a
    token sees only the tokens of its own example (in ``kv_segment_ids``, for cross-attention),
    so attention never crosses an example boundary. Padding queries see the real tokens, as
    under a padding mask. Pass it as the models' ``attention_mask``."""
    kv_segment_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    queries, keys = segment_ids[:, None, :, None], kv_segment_ids[:, None, None, :]
    return (keys != 0) & ((queries == keys) | (queries == 0))


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 where each segment of a packed row starts ``[batch, length]``."""
    index = jnp.arange(segment_ids.shape[1])
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def causal_mask(q_positions: jax.Array, kv_len: int) -> jax.Array:
    """Key j is visible from query i iff j <= position(i). ``q_positions``: ``[q_len]``."""
    return (jnp.arange(kv_len)[None, :] <= q_positions[:, None])[None, None]


def window_mask(q_positions: jax.Array, kv_len: int, window: int, causal: bool) -> jax.Array:
    """Sliding-window (local) attention: key j is visible from query i iff it lies fewer than
    ``window`` positions behind it (and, without ``causal``, fewer than ``window`` ahead)."""
    distance = q_positions[:, None] - jnp.arange(kv_len)[None, :]
    visible = distance < window
    if not causal:
        visible &= distance > -window
    return visible[None, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention probabilities ``[batch, heads, q_len, kv_len]`` (softmax in float32);
    ``k`` may have fewer heads than ``q`` (grouped-query attention)."""
    k = repeat_kv(k, q.shape[2])
    return masked_softmax(jnp.einsum("bqnh,bknh->bnqk", q, k) / math.sqrt(q.shape[-1]), mask, q.dtype)


def masked_softmax(scores: jax.Array, visible: jax.Array | None, dtype) -> jax.Array:
    """Softmax over the last axis, in float32, of ``scores`` where ``visible`` (``None``: everywhere; hidden
    scores get float32's minimum, so a row with nothing visible stays finite), cast to ``dtype``."""
    scores = scores.astype(jnp.float32)
    if visible is not None:
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1).astype(dtype)


def repeat_kv(x: jax.Array, num_heads: int) -> jax.Array:
    """``[batch, length, kv_heads, head_dim]`` -> ``num_heads`` heads: query head n reads
    key/value head ``n // (num_heads / kv_heads)``, as ``jax.nn.dot_product_attention`` groups them."""
    return jnp.repeat(x, num_heads // x.shape[2], axis=2)


class SelfAttention(nn.Module):
    """Attention over ``[batch, length, embed]`` with HF-style parameter layout.

    ``fused_qkv`` keeps one ``[embed, 3, heads, head_dim]`` projection (GPT-2's ``c_attn``);
    otherwise ``query`` / ``key`` / ``value`` are separate (BERT). ``num_kv_heads`` below
    ``num_heads`` shares each key/value head among a group of query heads (1: multi-query).
    ``rope_theta`` rotates queries and keys by their positions (RoPE); ``sliding_window``
    lets each query see only that many nearest keys. ``cross=True`` takes keys and values
    from ``kv`` (an encoder's output; ``attention_mask`` then masks ``kv``'s padding).

    ``decode=True`` reads and writes a KV cache in the ``cache`` collection: initialise it
    with an input of the maximum total length, then feed the prompt and any number of tokens at a time.
    Cross-attention caches the projected ``kv`` on the first decoding call; later calls may
    pass ``kv=None``, and may bring n rows of queries per cached source row (a source's beams).
    Beam search adds an ``ancestry`` to the self-attention cache (:func:`attend_beams`): each beam then
    reads its ancestors' keys / values in the rows that wrote them, and nothing is reordered.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    """Key/value heads (``None``: ``num_heads``, plain multi-head attention)."""
    dropout_rate: float = 0.0
    init_std: float = 0.02
    out_init_std: float = 0.02
    fused_qkv: bool = False
    use_bias: bool = True
    causal: bool = False
    cross: bool = False
    rope_theta: float | None = None
    sliding_window: int | None = None
    qkv_names: tuple[str, str, str] | str = ("query", "key", "value")
    out_name: str = "out"
    implementation: Implementation = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, *, kv=None, decode: bool = False, deterministic: bool = True,
                 output_attentions: bool = False):
        q, k, v = self._project(x, kv, decode)
        rows, length = q.shape[:2]
        if self.cross and rows != k.shape[0]:  # n query rows per cached source (beam search)
            q = _share_sources(q, k.shape[0])
        q_positions = jnp.arange(x.shape[1])
        caching = decode and not self.cross
        if caching:  # the new tokens come after those already in the cache
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            q_positions = index.value + q_positions
        if self.rope_theta is not None and not self.cross:
            q, k = apply_rotary(q, q_positions, self.rope_theta), apply_rotary(k, q_positions, self.rope_theta)
        past = None  # the cache before a few new tokens, which attend to it apart from their own k / v
        ancestry = None  # beam search: which of a prompt's rows holds each beam's keys / values
        if caching:
            past = self._cache(k, v)
            if self.has_variable("cache", "ancestry"):
                ancestry = self.get_variable("cache", "ancestry")
                if output_attentions:
                    raise ValueError("output_attentions is not available while decoding beams over a shared "
                                     "cache (ancestry); decode without beams to get attention weights")
            elif past is not None and (x.shape[1] > PAST_AND_NEW_MAX_TOKENS or output_attentions):
                # a prompt (faster over the updated cache), or weights over the whole updated cache
                k, v = self._write_cache(k, v, index, past)
                past = None
        kv_len = k.shape[1] if past is None else past[0].shape[-1]

        explicit = (output_attentions or (not deterministic and self.dropout_rate > 0)
                    # XLA:CPU cannot lower the float16 backward pass of dot_product_attention
                    or (q.dtype == jnp.float16 and jax.default_backend() == "cpu"))
        # Query i sits at key position i unless decoding: then masks are built from positions;
        # otherwise the kernel's own is_causal / local_window_size do it (cuDNN flash can run).
        aligned = not (decode or explicit or self.cross)
        is_causal = self.causal and aligned and attention_mask is None
        window = self.sliding_window if not self.cross else None
        mask = combine_masks(
            padding_mask(attention_mask),
            causal_mask(q_positions, kv_len) if self.causal and not is_causal else None,
            window_mask(q_positions, kv_len, window, self.causal) if window and not aligned else None,
        )
        weights = None
        if past is not None:
            if ancestry is None:
                out, (k, v) = attend_past_and_new(q, *past, k, v, mask, index.value)
            else:
                out, (k, v) = attend_beams(q, *past, k, v, mask, index.value, ancestry)
            self._write_cache(k, v, index, past)
        elif self.cross and decode and not explicit:  # over its cache as stored (XLA drops the transposes)
            out = attend_cache(q, _to_cache(k), _to_cache(v), mask)
        elif explicit:
            weights = attention_weights(q, k, mask)
            probs = Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            out = jnp.einsum("bnqk,bknh->bqnh", probs, repeat_kv(v, self.num_heads))
        else:
            local = None if not (window and aligned) else (window - 1, 0 if self.causal else window - 1)
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, local_window_size=local,
                                               implementation=self.implementation)
        if out.shape[0] != rows:  # back to one row per query row
            out = out.reshape(rows, length, *out.shape[2:])
            if weights is not None:
                weights = _unshare_weights(weights, rows)
        out = dense(x.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1), name=self.out_name,
                    std=self.out_init_std, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype)(out)
        return out, (weights if output_attentions else None)

    def _project(self, x, kv, decode: bool):
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}")
        kw = dict(std=self.init_std, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.fused_qkv and kv_heads == self.num_heads and not self.cross:
            qkv = dense((3, self.num_heads, self.head_dim), ("embed", None, "heads", "kv"), name=self.qkv_names,
                        **kw)(x)
            return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        names = self.qkv_names
        if isinstance(names, str):  # a fused layout's name, split when the heads differ
            names = tuple(f"{names}_{part}" for part in "qkv")
        q = dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"), name=names[0], **kw)(x)
        k_proj, v_proj = (dense((kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), name=n, **kw)
                          for n in names[1:])
        if not self.cross:
            return q, k_proj(x), v_proj(x)
        if kv is None and not (decode and self.has_variable("cache", "cross_key")):
            raise ValueError("cross-attention needs kv (the encoder output) except when decoding from its cache")
        if kv is not None:
            k, v = k_proj(kv), v_proj(kv)
            if not decode:
                return q, k, v
        cached_k = self.variable("cache", "cross_key", lambda: _to_cache(k))  # stored as decoding reads them
        cached_v = self.variable("cache", "cross_value", lambda: _to_cache(v))
        if kv is not None:
            cached_k.value, cached_v.value = _to_cache(k), _to_cache(v)
        return q, _from_cache(cached_k.value), _from_cache(cached_v.value)

    def _cache(self, k, v) -> tuple[jax.Array, jax.Array] | None:
        """The cached keys and values ``[batch, kv_heads, head_dim, length]``; ``None`` on the first,
        shape-only call, which creates them (zeros as long as ``k``: the maximum total length).

        This layout is the one XLA's attention matmuls read when decoding: ``[batch, length, heads,
        head_dim]`` would be transposed whole at every token.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, _to_cache(k).shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, _to_cache(v).shape, v.dtype)
        return (cached_k.value, cached_v.value) if initialized else None

    def _write_cache(self, k, v, index, past):
        """Write this call's ``k`` / ``v`` into the ``past`` cache at ``index`` and advance it; returns
        the updated cache as ``[batch, length, kv_heads, head_dim]`` keys and values."""
        i = index.value
        updated = [jax.lax.dynamic_update_slice(old, _to_cache(new).astype(old.dtype), (0, 0, 0, i))
                   for old, new in zip(past, (k, v))]
        self.put_variable("cache", "cached_key", updated[0])
        self.put_variable("cache", "cached_value", updated[1])
        index.value = i + k.shape[1]
        return _from_cache(updated[0]), _from_cache(updated[1])


def _share_sources(q: jax.Array, sources: int) -> jax.Array:
    """Cross-attention queries ``[rows, t, heads, head_dim]`` of ``rows = sources * n`` rows over keys and
    values of ``sources`` rows, row r reading source ``r // n`` (beam search: a prompt's beams share its
    cached encoder keys / values, which are read once for all of them): each source's n rows of queries
    side by side, ``[sources, n * t, heads, head_dim]``. Cross-attention has no causal mask, so every
    query sees the same keys as it would with the source repeated n times."""
    if q.shape[0] % sources:
        raise ValueError(f"cross-attention over {sources} sources cannot serve {q.shape[0]} query rows: "
                         "the rows must be a whole number of rows per source")
    return q.reshape(sources, -1, *q.shape[2:])


def _unshare_weights(weights: jax.Array, rows: int) -> jax.Array:
    """The attention weights ``[sources, heads, n * t, kv]`` of :func:`_share_sources`' queries, per row:
    ``[rows, heads, t, kv]``."""
    sources, heads, _, kv = weights.shape
    return weights.reshape(sources, heads, rows // sources, -1, kv).swapaxes(1, 2).reshape(rows, heads, -1, kv)


PAST_AND_NEW_MAX_TOKENS = 32
"""Decoding calls of up to this many tokens (a step; prompt lookup's proposals) use :func:`attend_past_and_new`,
which updates the cache in place; longer ones (a prompt) write the cache first and attend over it, which
is faster for them (a 512-token prefill of gpt2-small: 0.29-0.34 s against 0.50-0.52 s, measured by
``benchmarks/generate_throughput.py --prefill 512``) but copies the cache."""


def attend_cache(q, cached_k, cached_v, mask):
    """Attention of ``q`` ``[batch, t, heads, head_dim]`` over keys and values as the cache stores them,
    ``[batch, kv_heads, head_dim, length]`` (cross-attention's, cached once), read as stored: attention over
    ``[batch, length, kv_heads, head_dim]`` keys would transpose them whole at every decoded token.
    ``mask`` (head axis 1) spans ``length``; softmax in float32, like :func:`attention_weights`."""
    batch, t, heads, dim = q.shape
    q = _group_heads(q, cached_k.shape[1])
    scores = _cache_scores(q, cached_k).astype(jnp.float32) / math.sqrt(dim)
    probs = masked_softmax(scores, None if mask is None else mask[:, :, :, None], q.dtype)
    return _cache_values(cached_v, probs).transpose(0, 3, 1, 4, 2).reshape(batch, t, heads, dim)


def _group_heads(q: jax.Array, kv_heads: int) -> jax.Array:
    """``[batch, t, heads, head_dim]`` -> ``[batch, t, kv_heads, groups, head_dim]``: query head n reads
    key / value head ``n // groups``."""
    batch, t, heads, dim = q.shape
    return q.reshape(batch, t, kv_heads, heads // kv_heads, dim)


def _cache_scores(q: jax.Array, cached_k: jax.Array) -> jax.Array:
    """Grouped queries ``[b, t, kv, g, h]`` dotted with cached keys ``[b, kv, h, length]``: ``[b, kv, t, g,
    length]`` (a dot_general with the operands in this order reads the cache as stored; einsum may transpose it)."""
    return jax.lax.dot_general(q, cached_k, (((4,), (2,)), ((0, 2), (0, 1))))


def _cache_values(cached_v: jax.Array, probs: jax.Array) -> jax.Array:
    """Cached values ``[b, kv, h, length]`` weighted by ``probs`` ``[b, kv, t, g, >= length]`` (the first
    ``length`` keys are the cache's): ``[b, kv, h, t, g]``."""
    return jax.lax.dot_general(cached_v, probs[..., :cached_v.shape[-1]], (((3,), (4,)), ((0, 1), (0, 1))))


def attend_past_and_new(q, past_k, past_v, k, v, mask, start):
    """Attention of ``q`` ``[batch, t, heads, head_dim]`` over a KV cache as it was before this call
    (``past_k`` / ``past_v`` ``[batch, kv_heads, head_dim, length]``, written below ``start``) and
    over this call's own ``k`` / ``v`` ``[batch, t, kv_heads, head_dim]`` (positions ``start ...``);
    ``mask`` (head axis 1) spans the cache's length. Returns ``(out, (k, v))``: ``k`` / ``v`` to write
    into the cache, made to depend on the reads of ``past_k`` / ``past_v``.

    The same attention as over the updated cache, but written so that XLA updates the cache in place:
    when the updated cache fed the attention, XLA duplicated the update for each reader, and when
    nothing ordered the reads before the update, it copied the cache first; either way every
    layer's cache was copied a few times per decoded token. Softmax in float32, like
    :func:`attention_weights`.
    """
    batch, t, heads, dim = q.shape
    length = past_k.shape[-1]
    q = _group_heads(q, past_k.shape[1])
    past_scores = _cache_scores(q, past_k)
    new_scores = jnp.einsum("btkgh,bskh->bktgs", q, k)
    scores = jnp.concatenate([past_scores, new_scores], axis=-1) / math.sqrt(dim)
    keys = jnp.arange(length + t)
    visible = jnp.where(keys < length, keys < start, True)  # the cache's unwritten tail holds no keys
    if mask is not None:
        mask = jnp.concatenate([mask, jax.lax.dynamic_slice_in_dim(mask, start, t, axis=-1)], axis=-1)
        visible = (mask & visible)[:, :, :, None]  # [batch, 1, t, 1, length + t]
    probs = masked_softmax(scores, visible, q.dtype)
    past_out = _cache_values(past_v, probs)
    out = past_out.transpose(0, 3, 1, 4, 2) + jnp.einsum("bktgs,bskh->btkgh", probs[..., length:], v)
    return out.reshape(batch, t, heads, dim), (_after(k, past_scores), _after(v, past_out))


def attend_beams(q, past_k, past_v, k, v, mask, start, ancestry):
    """:func:`attend_past_and_new` for beam search without reordering the cache: the beams of a prompt are
    ``n`` consecutive rows, and ``ancestry`` ``[prompts, n, length]`` says which of them holds each beam's
    key / value at each cached position (beam b of prompt p reads position s from row ``p * n +
    ancestry[p, b, s]``). Each row's cache is read once, with all of its prompt's queries, and a beam sees
    only the positions its ancestors wrote there; a new beam then inherits its parent's ancestry, where
    reordering would copy every layer's cache at every step."""
    rows, t, heads, dim = q.shape
    prompts, n, length = ancestry.shape
    kv_heads = past_k.shape[1]
    groups = heads // kv_heads
    q = _group_heads(q, kv_heads)
    # each row of a prompt, holding keys some of its beams read, gets all of them: [rows, n * t, kv, g, h]
    readers = jnp.broadcast_to(q.reshape(prompts, 1, n * t, kv_heads, groups, dim),
                               (prompts, n, n * t, kv_heads, groups, dim)).reshape(rows, n * t, kv_heads, groups, dim)
    held_scores = _cache_scores(readers, past_k)  # [rows (prompt, holder), kv, (reader, t), g, length]
    past_scores = (held_scores.reshape(prompts, n, kv_heads, n, t, groups, length).transpose(0, 3, 2, 4, 5, 1, 6)
                   .reshape(rows, kv_heads, t, groups, n * length))  # per reader, keys by (holder, position)
    new_scores = jnp.einsum("btkgh,bskh->bktgs", q, k)
    scores = jnp.concatenate([past_scores, new_scores], axis=-1) / math.sqrt(dim)
    held = ancestry.reshape(rows, 1, 1, 1, length) == jnp.arange(n)[:, None]  # [rows, 1, 1, holder, length]
    visible = held & (jnp.arange(length) < start)  # the cache's unwritten tail holds no keys
    if mask is None:
        new_visible = jnp.ones((1, 1, t, t), bool)
    else:
        visible = visible & mask[:, :, :, None, :]
        new_visible = jax.lax.dynamic_slice_in_dim(mask, start, t, axis=-1)
    visible = jnp.concatenate([jnp.broadcast_to(visible, (rows, 1, t, n, length)).reshape(rows, 1, t, n * length),
                               jnp.broadcast_to(new_visible, (rows, 1, t, t))], axis=-1)[:, :, :, None]
    probs = masked_softmax(scores, visible, q.dtype)
    held_probs = (probs[..., :n * length].reshape(prompts, n, kv_heads, t, groups, n, length)
                  .transpose(0, 5, 2, 1, 3, 4, 6).reshape(rows, kv_heads, n * t, groups, length))
    held_out = _cache_values(past_v, held_probs)  # [rows (prompt, holder), kv, h, (reader, t), g]
    past_out = (held_out.reshape(prompts, n, kv_heads, dim, n, t, groups).sum(axis=1)
                .transpose(0, 3, 4, 1, 5, 2).reshape(rows, t, kv_heads, groups, dim))
    out = past_out + jnp.einsum("bktgs,bskh->btkgh", probs[..., n * length:], v)
    return out.reshape(rows, t, heads, dim), (_after(k, held_scores), _after(v, held_out))


def _after(x: jax.Array, read: jax.Array) -> jax.Array:
    """``x``, or NaN throughout if ``read``'s first element is NaN (the attention output is NaN then
    anyway): a value XLA can compute only after ``read``. It orders a cache read before the cache's
    in-place update; ``jax.lax.optimization_barrier`` does not survive to XLA:CPU's copy insertion."""
    return jnp.where(jnp.isnan(read.reshape(-1)[0]), jnp.asarray(jnp.nan, x.dtype), x)


def _to_cache(x: jax.Array) -> jax.Array:
    """``[batch, length, heads, head_dim]`` -> the cache layout ``[batch, heads, head_dim, length]``."""
    return x.transpose(0, 2, 3, 1)


def _from_cache(x: jax.Array) -> jax.Array:
    return x.transpose(0, 3, 1, 2)
