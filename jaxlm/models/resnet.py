"""ResNet with basic residual blocks (He et al., 2016) and BatchNorm, for image classification.

Stages of ``stage_sizes`` blocks with ``stage_widths`` channels; every stage after the first
halves the resolution in its first block (a strided 3x3 conv, and a 1x1 conv + BatchNorm on
the shortcut). The ``imagenet`` stem is a 7x7 stride-2 conv and a 3x3 stride-2 max pool
(ResNet-18: ``stage_sizes: [2, 2, 2, 2]``, ResNet-34: ``[3, 4, 6, 3]``); the ``cifar`` stem
is one 3x3 conv for small images. Global average pooling and a linear classifier finish.

BatchNorm normalises with the batch's statistics and updates its running averages when the
``batch_stats`` collection is mutable (the training step), and with the running averages
otherwise (evaluation, inference): see :mod:`jaxlm.models.state`.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from jaxlm.layers.core import dense, ones, zeros
from jaxlm.models.base import ModelConfig
from jaxlm.models.outputs import ModelOutput


class ResNetConfig(ModelConfig):
    type: Literal["resnet"] = "resnet"
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    """Basic blocks per stage (ResNet-18; ResNet-34 is ``[3, 4, 6, 3]``)."""
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: Literal["imagenet", "cifar"] = "imagenet"
    """``imagenet``: 7x7 stride-2 conv + 3x3 stride-2 max pool; ``cifar``: one 3x3 conv (small images)."""
    num_channels: int = Field(3, gt=0)
    """Channels of the input images (1 for grey digits)."""
    num_labels: int = 1000
    id2label: dict[int, str] | None = None
    batch_norm_momentum: float = Field(0.9, gt=0, lt=1)
    """Running average: ``new = momentum * old + (1 - momentum) * batch`` (PyTorch's 0.1 is 1 - this)."""
    batch_norm_epsilon: float = Field(1e-5, gt=0)

    @model_validator(mode="after")
    def _stages(self):
        if not self.stage_sizes or len(self.stage_sizes) != len(self.stage_widths) or min(self.stage_sizes) < 1:
            raise ValueError(f"model.stage_sizes={list(self.stage_sizes)} and model.stage_widths="
                             f"{list(self.stage_widths)} must be equally long, with at least one block per stage")
        return self

    def dummy_inputs(self) -> dict[str, jax.Array]:
        return {"pixel_values": jnp.zeros((1, 32, 32, self.num_channels), jnp.float32)}


def _conv(features, kernel, strides, name, dtype):
    return nn.Conv(features, kernel, strides, padding=[(k // 2, k // 2) for k in kernel], use_bias=False,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.kaiming_normal(),
                                                            (None, None, "embed", "mlp")),
                   dtype=dtype, name=name)


class BasicBlock(nn.Module):
    features: int
    strides: int
    norm: partial
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = _conv(self.features, (3, 3), (self.strides,) * 2, "conv1", self.dtype)(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = _conv(self.features, (3, 3), (1, 1), "conv2", self.dtype)(y)
        y = self.norm(name="bn2")(y)
        if x.shape != y.shape:
            x = _conv(self.features, (1, 1), (self.strides,) * 2, "shortcut_conv", self.dtype)(x)
            x = self.norm(name="shortcut_bn")(x)
        return nn.relu(x + y)


class ResNetModel(nn.Module):
    """The trunk: ``last_hidden_state`` is the pooled ``[batch, width]`` features (the embedding
    output that contrastive learning trains)."""

    config: ResNetConfig
    dtype: jnp.dtype = jnp.float32

    @nn.nowrap
    def features(self, pixel_values):
        """Built in the caller's compact scope, so the classifier's params sit beside these."""
        c = self.config
        norm = partial(nn.BatchNorm, use_running_average=not self.is_mutable_collection("batch_stats"),
                       momentum=c.batch_norm_momentum, epsilon=c.batch_norm_epsilon, dtype=self.dtype,
                       scale_init=ones(("mlp",)), bias_init=zeros(("mlp",)))
        x = self.perturb("pixels", pixel_values.astype(self.dtype))  # adversarial hook: the pixels are the input
        if c.stem == "imagenet":
            x = nn.relu(norm(name="stem_bn")(_conv(c.stage_widths[0], (7, 7), (2, 2), "stem_conv", self.dtype)(x)))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            x = nn.relu(norm(name="stem_bn")(_conv(c.stage_widths[0], (3, 3), (1, 1), "stem_conv", self.dtype)(x)))
        for stage, (blocks, width) in enumerate(zip(c.stage_sizes, c.stage_widths)):
            for block in range(blocks):
                strides = 2 if stage and not block else 1
                x = BasicBlock(width, strides, norm, self.dtype, name=f"stage{stage + 1}_block{block + 1}")(x)
        return x.mean((1, 2))

    @nn.compact
    def __call__(self, pixel_values) -> ModelOutput:
        return ModelOutput(last_hidden_state=self.features(pixel_values))


class ResNetForImageClassification(ResNetModel):
    """``logits``: ``[batch, num_labels]``; ``last_hidden_state``: the pooled ``[batch, width]`` features."""

    @nn.compact
    def __call__(self, pixel_values) -> ModelOutput:
        features = self.features(pixel_values)
        logits = dense(self.config.num_labels, ("mlp", None), std=0.01, name="classifier",
                       dtype=self.dtype)(features)
        return ModelOutput(logits=logits, last_hidden_state=features)
