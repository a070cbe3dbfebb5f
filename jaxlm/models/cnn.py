"""A plain convolutional network (LeNet-5 style, LeCun et al. 1998) for image classification.

Convolution blocks (conv, activation, 2x2 pooling) with ``conv_channels`` filters of
``kernel_size``, then fully connected ``hidden_sizes`` layers and the classifier. The defaults are
LeNet-5's shape for 28x28 images with "same" padding (6 and 16 5x5 filters, 120 and 84 units);
``configs/cnn-digits.yaml`` runs it on the 8x8 digits. The small model of the book's
prune -> fine-tune case: ``jaxlm prune --method structured --targets 'conv_\\d+/kernel'`` removes
whole filters.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from jaxlm.layers.core import Dropout, dense, zeros
from jaxlm.models.base import ModelConfig
from jaxlm.models.outputs import ModelOutput

CNN_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


class CNNConfig(ModelConfig):
    type: Literal["cnn"] = "cnn"
    image_size: int = Field(28, gt=0)
    num_channels: int = Field(1, gt=0)
    conv_channels: tuple[int, ...] = (6, 16)
    kernel_size: int = Field(5, gt=0)
    padding: Literal["same", "valid"] = "same"
    pooling: Literal["max", "avg"] = "max"
    """2x2 pooling after each convolution (LeNet-5 subsampled by averaging)."""
    hidden_sizes: tuple[int, ...] = (120, 84)
    activation: Literal["relu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    """Before each fully connected layer."""
    initializer_range: float = 0.05
    num_labels: int = 10
    id2label: dict[int, str] | None = None

    @model_validator(mode="after")
    def _fits(self):
        size = self.image_size
        for _ in self.conv_channels:
            size = (size if self.padding == "same" else size - self.kernel_size + 1) // 2
            if size < 1:
                raise ValueError(f"model.image_size={self.image_size} is too small for {len(self.conv_channels)} "
                                 f"conv + pool blocks of kernel_size={self.kernel_size} ({self.padding} padding); "
                                 "use fewer model.conv_channels or padding: same")
        return self

    def dummy_inputs(self) -> dict[str, jax.Array]:
        return {"pixel_values": jnp.zeros((1, self.image_size, self.image_size, self.num_channels), jnp.float32)}


class CNNForImageClassification(nn.Module):
    """``logits``: ``[batch, num_labels]``; ``last_hidden_state``: the last hidden layer's ``[batch, units]``."""

    config: CNNConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values) -> ModelOutput:
        c = self.config
        act = CNN_ACTIVATIONS[c.activation]
        deterministic = not self.has_rng("dropout")
        pool = nn.max_pool if c.pooling == "max" else nn.avg_pool
        x = self.perturb("pixels", pixel_values.astype(self.dtype))  # adversarial hook: the pixels are the input
        for i, channels in enumerate(c.conv_channels):
            x = nn.Conv(channels, (c.kernel_size, c.kernel_size), padding=c.padding.upper(), dtype=self.dtype,
                        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                 (None, None, "embed", "mlp")),
                        bias_init=zeros(("mlp",)), name=f"conv_{i}")(x)
            x = pool(act(x), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        for j, units in enumerate(c.hidden_sizes):
            x = Dropout(c.dropout)(x, deterministic=deterministic)
            x = act(dense(units, (None, "mlp"), std=c.initializer_range, name=f"fc_{j}", dtype=self.dtype)(x))
        features = x
        x = Dropout(c.dropout)(x, deterministic=deterministic)
        logits = dense(c.num_labels, ("mlp", None), std=c.initializer_range, name="classifier", dtype=self.dtype)(x)
        return ModelOutput(logits=logits, last_hidden_state=features)
