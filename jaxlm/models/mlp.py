"""A multilayer perceptron on numeric features: ``hidden_sizes`` dense layers with an activation,
then a linear output. With no hidden layers it is linear regression (``y = x W + b``), the model of
the optimizer and schedule demonstrations (``configs/regression-linear.yaml``)."""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field

from jaxlm.layers.core import ACTIVATIONS, Dropout
from jaxlm.models.base import ModelConfig
from jaxlm.models.outputs import ModelOutput


class MLPConfig(ModelConfig):
    type: Literal["mlp"] = "mlp"
    num_features: int = Field(1, gt=0)
    """Numeric inputs per example (``task.feature_columns``)."""
    hidden_sizes: tuple[int, ...] = ()
    """Widths of the hidden layers; none: a linear model."""
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    num_outputs: int = Field(1, gt=0)

    def dummy_inputs(self) -> dict[str, jax.Array]:
        return {"features": jnp.zeros((1, self.num_features), jnp.float32)}


_ACTIVATIONS = {**ACTIVATIONS, "tanh": jnp.tanh}


def _dense(features: int, name: str, dtype) -> nn.Dense:
    # The kernel as PyTorch nn.Linear draws it (uniform within 1 / sqrt(fan_in)); the bias starts at 0.
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    return nn.Dense(features, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)), dtype=dtype,
                    name=name)


class MLPForRegression(nn.Module):
    """``logits``: ``[batch, num_outputs]`` predictions; ``last_hidden_state``: the last hidden layer
    (the features themselves for a linear model)."""

    config: MLPConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features) -> ModelOutput:
        c = self.config
        x = features.astype(self.dtype)
        for i, width in enumerate(c.hidden_sizes):
            x = _ACTIVATIONS[c.activation](_dense(width, f"hidden_{i}", self.dtype)(x))
            x = Dropout(c.dropout)(x, deterministic=not self.has_rng("dropout"))
        return ModelOutput(logits=_dense(c.num_outputs, "output", self.dtype)(x), last_hidden_state=x)
