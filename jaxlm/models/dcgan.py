"""DCGAN (Radford et al., 2016): a generator of transposed convolutions and a discriminator of
strided convolutions, with BatchNorm, as one module whose params are two groups,
``generator`` and ``discriminator``, trained by their own optimizers (task: gan).

The generator maps ``latents`` ``[batch, latent_dim]`` through a dense layer to a
``start_size`` square of ``generator_features`` channels, then doubles the resolution and
halves the channels per layer (4x4 kernels, stride 2; BatchNorm + ReLU) up to
``image_size``, the last layer to ``num_channels`` with tanh: images in [-1, 1]. The
discriminator mirrors it (LeakyReLU 0.2; no BatchNorm on its first layer) and ends in one
logit. Weights start from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in the paper.
"""

from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from jaxlm.models.base import ModelConfig
from jaxlm.models.outputs import ModelOutput


class DCGANConfig(ModelConfig):
    type: Literal["dcgan"] = "dcgan"
    image_size: int = Field(32, gt=0)
    num_channels: int = Field(3, gt=0)
    latent_dim: int = Field(100, gt=0)
    generator_features: int = Field(128, gt=0)
    """Channels of the generator's first (smallest) feature map; halved per layer."""
    discriminator_features: int = Field(32, gt=0)
    """Channels of the discriminator's first layer; doubled per layer."""
    start_size: int = Field(4, gt=0)
    """The side of the smallest feature map (the image side divided by a power of 2)."""

    @model_validator(mode="after")
    def _sizes(self):
        ratio = self.image_size / self.start_size
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"model.image_size={self.image_size} must be model.start_size={self.start_size} times "
                             "a power of 2 (at least 2); e.g. image_size 8 with start_size 2, or 32 with 4")
        return self

    @property
    def layers(self) -> int:
        return round(math.log2(self.image_size / self.start_size))

    def dummy_inputs(self) -> dict[str, jax.Array]:
        return {"latents": jnp.zeros((1, self.latent_dim), jnp.float32),
                "pixel_values": jnp.zeros((1, self.image_size, self.image_size, self.num_channels), jnp.float32)}


def _init(axes):
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)


def _norm(module: nn.Module, name: str):
    return nn.BatchNorm(use_running_average=not module.is_mutable_collection("batch_stats"), momentum=0.9,
                        epsilon=1e-5, scale_init=lambda k, s, d=jnp.float32: 1 + 0.02 * jax.random.normal(k, s, d),
                        name=name, dtype=module.dtype)


class Generator(nn.Module):
    config: DCGANConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, latents):
        c = self.config
        width = c.generator_features
        x = nn.Dense(c.start_size * c.start_size * width, use_bias=False, kernel_init=_init((None, "mlp")),
                     dtype=self.dtype, name="project")(latents.astype(self.dtype))
        x = nn.relu(_norm(self, "project_bn")(x.reshape(-1, c.start_size, c.start_size, width)))
        for i in range(c.layers):
            last = i == c.layers - 1
            width = c.num_channels if last else max(width // 2, 8)
            x = nn.ConvTranspose(width, (4, 4), (2, 2), padding="SAME", use_bias=last,
                                 kernel_init=_init((None, None, "mlp", None)), dtype=self.dtype, name=f"up_{i}")(x)
            x = jnp.tanh(x) if last else nn.relu(_norm(self, f"up_{i}_bn")(x))
        return x.astype(jnp.float32)


class Discriminator(nn.Module):
    config: DCGANConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        x, width = pixel_values.astype(self.dtype), c.discriminator_features
        for i in range(c.layers):
            x = nn.Conv(width, (4, 4), (2, 2), padding="SAME", use_bias=not i,
                        kernel_init=_init((None, None, None, "mlp")), dtype=self.dtype, name=f"down_{i}")(x)
            x = nn.leaky_relu(x if not i else _norm(self, f"down_{i}_bn")(x), 0.2)
            width *= 2
        return nn.Dense(1, kernel_init=_init(("mlp", None)), dtype=self.dtype,
                        name="logit")(x.reshape(len(x), -1))[:, 0].astype(jnp.float32)


class DCGAN(nn.Module):
    """``__call__`` (used to initialise both players) returns the generated images as ``logits``
    and the discriminator's logits of ``pixel_values`` as ``last_hidden_state``; the task calls
    ``method="generate"`` / ``method="discriminate"``."""

    config: DCGANConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.generator = Generator(self.config, self.dtype)
        self.discriminator = Discriminator(self.config, self.dtype)

    def generate(self, latents):
        return self.generator(latents)

    def discriminate(self, pixel_values):
        return self.discriminator(pixel_values)

    def __call__(self, latents, pixel_values) -> ModelOutput:
        return ModelOutput(logits=self.generate(latents), last_hidden_state=self.discriminate(pixel_values))
