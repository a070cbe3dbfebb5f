"""Token-level losses that return sums and counts, so accumulation and sharding stay exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                      label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Sum of weighted token cross-entropies (float32) and the sum of weights.

    Label smoothing uses the closed form ``lse - (1 - a) z_y - a mean(z)``, equal to the
    cross-entropy against ``optax.smooth_labels(one_hot, a)`` without materialising a
    ``[batch, length, vocab]`` one-hot (written here for that reason).
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = lse - target_logit
    if label_smoothing:
        loss = lse - (1 - label_smoothing) * target_logit - label_smoothing * logits.mean(-1)
    weights = weights.astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(weights)
