"""The Vision Transformer (ViT) exactly as Google / Hugging Face define it.

An image is cut into ``patch_size`` squares by a strided convolution; a learned ``[CLS]``
token is put in front and learned position embeddings are added; pre-LN encoder layers
with exact (erf) GELU follow, then a final LayerNorm. ``ViTModel`` adds transformers'
tanh pooler over ``[CLS]``; ``ViTForImageClassification`` a linear classifier over it.
Images are ``pixel_values`` ``[batch, height, width, channels]`` (JAX's NHWC; transformers
takes NCHW). Configs use ``ViTConfig``'s field names.

PyTorch names (``TORCH_KEY_MAP``) -> jaxlm params, ``vit.`` inside the classifier (with
``scan_layers``, the ``layer_i`` are one ``layer`` stacked on a leading axis):
  embeddings.{cls_token,position_embeddings}         -> the same names, [1, 1 | n + 1, E]
  embeddings.patch_embeddings.projection (Conv2d OIHW) -> embeddings/patch_embeddings/projection (HWIO)
  encoder.layer.i.attention.attention.{query,key,value} -> layer_i/attention/{query,key,value}
                                                          (kernel [E, heads, head_dim])
  encoder.layer.i.attention.output.dense             -> layer_i/attention/output ([heads, head_dim, E])
  encoder.layer.i.{intermediate,output}.dense        -> layer_i/{intermediate,output}
  encoder.layer.i.layernorm_{before,after}, layernorm, classifier: same names
  pooler.dense -> pooler
"""

from __future__ import annotations

from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import model_validator

from jaxlm.layers.attention import SelfAttention
from jaxlm.layers.core import ACTIVATIONS, Dropout, dense, layer_norm, normal, zeros
from jaxlm.models.base import ModelConfig, TorchKeyMap
from jaxlm.models.layout import apply_layers
from jaxlm.models.outputs import ModelOutput


class ViTConfig(ModelConfig):
    """Hugging Face ``ViTConfig`` field names and defaults (vit-base-patch16-224)."""

    type: Literal["vit"] = "vit"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: Literal["gelu", "gelu_new", "relu"] = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    pooler_output_size: int | None = None
    """Width of ``ViTModel``'s pooler (``None``: ``hidden_size``)."""
    num_labels: int = 2
    id2label: dict[int, str] | None = None

    layers_name: ClassVar[str] = "layer"

    @model_validator(mode="after")
    def _shapes(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                             "the patches must tile the image")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def dummy_inputs(self) -> dict[str, jax.Array]:
        return {"pixel_values": jnp.zeros((1, self.image_size, self.image_size, self.num_channels), jnp.float32)}


TORCH_KEY_MAP = TorchKeyMap(
    prefix="vit",
    renames=(
        (r"\blayer_(\d+)\.", r"encoder.layer.\1."),
        (r"\battention\.(query|key|value)\.", r"attention.attention.\1."),
        (r"\battention\.output\.", "attention.output.dense."),
        (r"(\blayer\.\d+)\.(intermediate|output)\.(weight|bias)$", r"\1.\2.dense.\3"),
        (r"^pooler\.(weight|bias)$", r"pooler.dense.\1"),
    ),
    conv2d=r"\.projection\.weight$",
    optional=r"^(pooler|classifier)\.",
    fixed={"qkv_bias": True, "pooler_act": "tanh"},
)


class ViTEmbeddings(nn.Module):
    """Patch embeddings (a ``patch_size``-strided convolution), ``[CLS]`` in front, learned positions."""

    config: ViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values, deterministic: bool):
        c = self.config
        want = (c.image_size, c.image_size, c.num_channels)
        if tuple(pixel_values.shape[1:]) != want:
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[1:])} images but this ViT takes "
                             f"{want} (height, width, channels): resize the images or change the config")
        x = ViTPatchEmbeddings(c, dtype=self.dtype, name="patch_embeddings")(pixel_values.astype(self.dtype))
        x = self.perturb("patch_embeddings_output", x)  # adversarial hook (jaxlm/train/adversarial.py)
        axes = (None, None, "embed")
        cls = self.param("cls_token", normal(c.initializer_range, axes), (1, 1, c.hidden_size))
        positions = self.param("position_embeddings", normal(c.initializer_range, axes),
                               (1, c.num_patches + 1, c.hidden_size))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, c.hidden_size))
        x = jnp.concatenate([cls, x], axis=1) + positions.astype(self.dtype)
        return Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class ViTPatchEmbeddings(nn.Module):
    """transformers' ``patch_embeddings``: a ``patch_size``-strided convolution named
    ``projection``, its output grid flattened row by row into ``[batch, patches, embed]``."""

    config: ViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        x = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size, padding="VALID",
                    kernel_init=normal(c.initializer_range, (None, None, None, "embed")),
                    bias_init=zeros(("embed",)), dtype=self.dtype, name="projection")(pixel_values)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class ViTLayer(nn.Module):
    """Pre-LN: ``x + attention(LN(x))`` then ``x + MLP(LN(x))``."""

    config: ViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool, output_attentions: bool):
        c = self.config
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        h = layer_norm(c.layer_norm_eps, name="layernorm_before", dtype=self.dtype)(x)
        h, weights = SelfAttention(
            num_heads=c.num_attention_heads, head_dim=c.head_dim, dropout_rate=c.attention_probs_dropout_prob,
            init_std=c.initializer_range, out_init_std=c.initializer_range, qkv_names=("query", "key", "value"),
            out_name="output", implementation=c.attention_implementation, dtype=self.dtype, name="attention",
        )(h, None, deterministic=deterministic, output_attentions=output_attentions)
        x = x + Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        h = layer_norm(c.layer_norm_eps, name="layernorm_after", dtype=self.dtype)(x)
        h = dense(c.intermediate_size, ("embed", "mlp"), name="intermediate", **kw)(h)
        h = dense(c.hidden_size, ("mlp", "embed"), name="output", **kw)(ACTIVATIONS[c.hidden_act](h))
        x = x + Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), weights


class ViTModel(nn.Module):
    """The ViT trunk: ``last_hidden_state`` (after the final LayerNorm) and, with the
    pooler, ``pooler_output``. ``hidden_states`` are the embeddings and every layer's
    output (before the final LayerNorm), as in transformers."""

    config: ViTConfig
    add_pooling_layer: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values, *, output_hidden_states: bool = False, output_attentions: bool = False):
        c = self.config
        deterministic = not self.has_rng("dropout")
        x = ViTEmbeddings(c, dtype=self.dtype, name="embeddings")(pixel_values, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        layer = c.remat_layer(ViTLayer, static_argnums=(2, 3))
        first = x
        x, outputs, attentions = apply_layers(layer, c, c.num_hidden_layers, x, deterministic, output_attentions,
                                              dtype=self.dtype, keep_outputs=output_hidden_states)
        last = layer_norm(c.layer_norm_eps, name="layernorm", dtype=self.dtype)(x)
        extra = {}
        if self.add_pooling_layer:
            pooled = dense(c.pooler_output_size or c.hidden_size, ("embed", None), std=c.initializer_range,
                           name="pooler", dtype=self.dtype)(last[:, 0])
            extra["pooler_output"] = jnp.tanh(pooled)
        return ModelOutput(
            last_hidden_state=last,
            hidden_states=(first, *outputs) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
            extra=extra,
        )


class ViTForImageClassification(nn.Module):
    """``logits`` ``[batch, num_labels]``: a linear classifier over the final ``[CLS]`` state."""

    config: ViTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values, *, output_hidden_states: bool = False, output_attentions: bool = False):
        c = self.config
        out = ViTModel(c, add_pooling_layer=False, dtype=self.dtype, name="vit")(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = dense(c.num_labels, ("embed", None), std=c.initializer_range, name="classifier",
                       dtype=self.dtype)(out.last_hidden_state[:, 0])
        return out.replace(logits=logits)
