"""Position information: learned tables, fixed sinusoids (Vaswani et al.) and rotary
embeddings (RoPE, Su et al.), selected by a model's ``position_embedding_type``.

Learned and sinusoidal positions are added to the token embeddings; rotary positions rotate
queries and keys inside attention (:class:`jaxlm.layers.attention.SelfAttention`), so the
attention scores depend only on how far apart two tokens are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


RopeType = Literal["default", "linear", "dynamic", "llama3"]


@dataclass(frozen=True)
class Rope:
    """Rotary positions as transformers' Llama computes them (``modeling_rope_utils``): the base
    ``theta`` and a ``rope_scaling`` kind that stretches them to longer contexts.

    ``linear`` divides every frequency by ``factor`` (positions interpolated); ``dynamic`` (NTK)
    raises the base once a call's longest sequence passes ``max_positions``, as transformers does from
    ``max(position_ids) + 1`` of each forward call (its module also remembers the longest length seen
    across calls; a jaxlm call depends on its own positions only); ``llama3`` divides the low
    frequencies by ``factor``, keeps the high ones and blends those in between
    (``low_freq_factor``, ``high_freq_factor``, ``original_max_positions``). Frozen and hashable, so
    it is a module attribute.
    """

    theta: float = 10000.0
    kind: RopeType = "default"
    factor: float = 1.0
    max_positions: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int | None = None

    def inverse_frequencies(self, dim: int, positions: jax.Array) -> jax.Array:
        """``[dim / 2]`` float32 frequencies, with transformers' float32 arithmetic (``1 / theta^(2i/dim)``)."""
        exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
        if self.kind == "dynamic":
            seq_len = jnp.maximum(jnp.max(positions) + 1, self.max_positions).astype(jnp.float32)
            scale = (self.factor * seq_len / self.max_positions - (self.factor - 1)) ** (dim / (dim - 2))
            return 1.0 / ((self.theta * scale) ** exponents)
        inv = 1.0 / (jnp.float32(self.theta) ** exponents)
        if self.kind == "linear":
            return inv / self.factor
        if self.kind == "llama3":
            low_wavelen = self.original_max_positions / self.low_freq_factor
            high_wavelen = self.original_max_positions / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = jnp.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (self.original_max_positions / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return jnp.where(medium, smoothed, scaled)
        return inv


def apply_rotary(x: jax.Array, positions: jax.Array, theta: float | Rope = 10000.0) -> jax.Array:
    """Rotate ``x`` (``[batch, length, heads, head_dim]``) by its ``positions`` (``[length]``
    or ``[batch, length]``): feature pairs ``(i, i + head_dim/2)`` turn by angle
    ``position * frequency_i`` (the rotate-half layout of GPT-NeoX and LLaMA); ``theta`` is the base
    of the frequencies ``theta^(-2i/head_dim)``, or a :class:`Rope` with its scaling."""
    half = x.shape[-1] // 2
    if isinstance(theta, Rope):
        frequencies = theta.inverse_frequencies(2 * half, positions)
    else:
        frequencies = _inverse_frequencies(2 * half, theta)
    angles = positions.astype(jnp.float32)[..., None] * frequencies
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
