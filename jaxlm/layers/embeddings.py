"""Position information: learned tables, fixed sinusoids (Vaswani et al.) and rotary
embeddings (RoPE, Su et al.), selected by a model's ``position_embedding_type``.

Learned and sinusoidal positions are added to the token embeddings; rotary positions rotate
queries and keys inside attention (:class:`jaxlm.layers.attention.SelfAttention`), so the
attention scores depend only on how far apart two tokens are.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jaxlm.layers.core import embed

PositionType = Literal["learned", "sinusoidal", "rotary"]


def sinusoidal(positions: jax.Array, features: int, base: float = 10000.0) -> jax.Array:
    """``[*positions.shape, features]``: ``sin(p / base^(2i/d))`` at even features ``2i``,
    ``cos`` of the same angle at odd features ``2i+1`` (the Transformer paper's layout)."""
    angles = positions.astype(jnp.float32)[..., None] * _inverse_frequencies(features, base)
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, -1)
    return table[..., :features]


def _inverse_frequencies(features: int, base: float) -> jax.Array:
    return base ** (-jnp.arange(0, features, 2, dtype=jnp.float32) / features)


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotate ``x`` (``[batch, length, heads, head_dim]``) by its ``positions`` (``[length]``
    or ``[batch, length]``): feature pairs ``(i, i + head_dim/2)`` turn by angle
    ``position / theta^(2i/head_dim)`` (the rotate-half layout of GPT-NeoX and LLaMA)."""
    half = x.shape[-1] // 2
    angles = positions.astype(jnp.float32)[..., None] * _inverse_frequencies(2 * half, theta)
    if angles.ndim == 2:  # [length, half] -> broadcast over batch
        angles = angles[None]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def add_positions(x: jax.Array, position_ids: jax.Array, kind: PositionType, num_positions: int, *,
                  std: float, name: str, dtype=jnp.float32) -> jax.Array:
    """``x`` (``[batch, length, embed]`` token embeddings) plus absolute position information:
    a learned table called ``name`` (``[num_positions, embed]``) or the fixed sinusoids; rotary
    positions act inside attention instead, so ``x`` is returned unchanged."""
    if kind == "learned":
        return x + embed(num_positions, x.shape[-1], (None, "embed"), std=std, name=name, dtype=dtype)(position_ids)
    if kind == "sinusoidal":
        return x + sinusoidal(position_ids, x.shape[-1]).astype(x.dtype)
    return x
