"""Model outputs shaped like transformers' ``ModelOutput``s."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ModelOutput:
    """``logits`` for head models, ``last_hidden_state`` for base models.

    ``hidden_states`` (embeddings + every layer) and ``attentions`` (every layer,
    ``[batch, heads, q, k]``) are tuples when requested, else ``None``; ``extra`` holds
    head-specific outputs (e.g. ``pooler_output``, ``seq_relationship_logits``).
    """

    logits: jax.Array | None = None
    last_hidden_state: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attentions: tuple[jax.Array, ...] | None = None
    extra: dict[str, Any] = flax.struct.field(default_factory=dict)

    def __getattr__(self, name):  # out.pooler_output etc., as in transformers
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(name)


@flax.struct.dataclass
class EncoderOutput:
    """What an encoder-decoder's ``encode`` hands its ``decode``: the encoder's ``hidden``
    states ``[batch, source, features]``, the source ``mask`` and, for recurrent encoders, the
    final ``state`` that starts the decoder."""

    hidden: jax.Array
    mask: jax.Array
    state: Any = None


def check_masked_positions(model, masked_positions) -> None:
    """Only heads that predict tokens (``scores_tokens``) take ``masked_positions``."""
    if masked_positions is not None and not model.scores_tokens:
        raise ValueError(f"{type(model).__name__} predicts no tokens: call it without masked_positions")


def first_tokens(hidden: jax.Array, pooled_positions: jax.Array | None) -> jax.Array:
    """The first-token (``[CLS]``) states a sequence head reads: position 0, ``[batch, features]``;
    or, for rows packed with several examples, each example's first token at ``pooled_positions
    [batch, P]`` -> ``[batch, P, features]`` (its logits then have that shape too)."""
    return hidden[:, 0] if pooled_positions is None else at_positions(hidden, pooled_positions)


def at_positions(hidden: jax.Array, positions: jax.Array | None) -> jax.Array:
    """``hidden [batch, length, features]`` at ``positions [batch, P]`` (all of it for ``None``):
    a masked-LM head then predicts only the scored positions, as BERT's pretraining did."""
    if positions is None:
        return hidden
    return jnp.take_along_axis(hidden, positions[..., None], axis=1)
