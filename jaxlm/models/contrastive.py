"""An encoder with a projection head, for contrastive learning (SimCLR, SimCSE).

The encoder is a family's base model, its params laid out as in that family's classification
model (under its trunk name, ``bert/`` ..., or flat for a ResNet), so ``model.init_from`` of a
contrastive run loads the encoder into a classifier (a linear probe) and skips the
projection head, which is a head param like the classifier. ``last_hidden_state`` is the pooled
representation (the embedding ``jaxlm embed`` reports); ``logits`` is its projection, which the
contrastive loss compares (SimCLR: the representation before the head transfers better).
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.layers.core import ACTIVATIONS, dense
from jaxlm.models.outputs import ModelOutput

Pooling = Literal["cls", "mean"]
PROJECTION_ACTIVATIONS = {**ACTIVATIONS, "tanh": jnp.tanh}


def pool(hidden, attention_mask, pooling: Pooling):
    """``[batch, features]``: a ``[batch, length, features]`` sequence's first token (``cls``) or the
    mean over its unmasked positions (``mean``); pooled outputs pass unchanged."""
    if hidden.ndim == 2:
        return hidden
    if pooling == "cls":
        return hidden[:, 0]
    mask = jnp.ones(hidden.shape[:2], hidden.dtype) if attention_mask is None else attention_mask.astype(hidden.dtype)
    return jnp.einsum("bl,blf->bf", mask, hidden) / jnp.maximum(mask.sum(1), 1.0)[:, None]


class ContrastiveModel(nn.Module):
    config: Any
    base: type[nn.Module]
    """The family's base (trunk) module class."""
    trunk_name: str | None
    """The trunk's param name inside the family's head models; ``None``: flat (its params at the top)."""
    projection_dims: tuple[int, ...] = (128,)
    """Dense layers of the projection head (``projection/layer_i``); empty: no head."""
    projection_activation: str = "relu"
    pooling: Pooling = "cls"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, *args, **inputs) -> ModelOutput:
        kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in self.base.__dataclass_fields__ else {}
        encoder = self.base(self.config, dtype=self.dtype, name=self.trunk_name, **kwargs)
        if self.trunk_name is None:
            nn.share_scope(self, encoder)
        out = encoder(*args, **inputs)
        features = pool(out.last_hidden_state, inputs.get("attention_mask"), self.pooling)
        z = features
        std = getattr(self.config, "initializer_range", 0.02)
        for i, width in enumerate(self.projection_dims):
            if i:
                z = PROJECTION_ACTIVATIONS[self.projection_activation](z)
            z = dense(width, ("embed", None), std=std, name=f"projection_{i}", dtype=self.dtype)(z)
        return ModelOutput(logits=z, last_hidden_state=features)
