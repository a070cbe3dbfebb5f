"""Llama-style decoders exactly as Hugging Face defines them: Llama, Qwen2 and Mistral in one module.

Pre-norm RMSNorm blocks, SwiGLU feed-forward (``down(act(gate(x)) * up(x))``), rotary positions
(``rope_theta`` and the ``rope_scaling`` kinds ``linear``, ``dynamic``, ``llama3``), grouped-query
attention, untied or tied input / output embeddings. The families differ only in their config:
Qwen2 puts a bias on the query / key / value projections and may use sliding-window attention in
its upper layers (``use_sliding_window``, ``max_window_layers``, ``layer_types``); Mistral uses a
sliding window in every layer; Llama may bias every projection (``attention_bias``, ``mlp_bias``)
and set ``head_dim``. Submodules carry transformers' names (``q_proj``, ``k_proj``, ``v_proj``,
``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``), so PEFT target names work as peft spells them.

As with torch's ``padding_idx``, the embedding row of ``pad_token_id`` gets no gradient from the
lookup. ``*ForSequenceClassification`` scores every position with ``score`` and keeps, per row, the
rightmost token that is not ``pad_token_id`` (transformers' rule; without a pad id, the last
position the attention mask keeps).

PyTorch names (``TORCH_KEY_MAP``) -> jaxlm params, ``model.`` inside head models (with
``scan_layers``, the ``layers_i`` are one ``layers`` stacked on a leading axis):
  embed_tokens.weight -> embed_tokens/embedding           norm.weight -> norm/scale
  layers.i.self_attn.{q,k,v}_proj -> layers_i/self_attn/{q,k,v}_proj (kernel [E, heads, head_dim])
  layers.i.self_attn.o_proj       -> layers_i/self_attn/o_proj ([heads, head_dim, E])
  layers.i.mlp.{gate,up,down}_proj, layers.i.{input,post_attention}_layernorm: same names
  lm_head.weight -> lm_head/kernel (absent when tied)      score.weight -> score/kernel
"""

from __future__ import annotations

from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from jaxlm.layers.adapters import NO_HOOKS, Hooks, residual_adapter
from jaxlm.layers.attention import SelfAttention
from jaxlm.layers.core import ACTIVATIONS, dense, embed, rms_norm
from jaxlm.layers.embeddings import Rope
from jaxlm.models.base import ModelConfig, TorchKeyMap
from jaxlm.models.bert import embed_ids
from jaxlm.models.layout import apply_layers
from jaxlm.models.outputs import ModelOutput


class RopeScaling(BaseModel):
    """transformers' ``rope_scaling`` (v5: ``rope_parameters`` less ``rope_theta``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rope_type: Literal["linear", "dynamic", "llama3"] = Field(validation_alias=AliasChoices("rope_type", "type"))
    factor: float = Field(gt=0)
    low_freq_factor: float | None = Field(None, gt=0)
    high_freq_factor: float | None = Field(None, gt=0)
    """llama3: wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are
    scaled by ``factor``, those shorter than ``... / high_freq_factor`` kept, those between blended."""
    original_max_position_embeddings: int | None = Field(None, gt=0)
    """llama3: the pretraining context (default: ``max_position_embeddings``)."""

    @model_validator(mode="after")
    def _llama3_fields(self):
        if self.rope_type == "llama3":
            if self.low_freq_factor is None or self.high_freq_factor is None:
                raise ValueError("model.rope_scaling of rope_type llama3 needs low_freq_factor and high_freq_factor")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError("model.rope_scaling: high_freq_factor must exceed low_freq_factor")
        return self


class DecoderConfig(ModelConfig):
    """What Llama, Qwen2 and Mistral share: transformers' field names (``LlamaConfig``'s)."""

    vocab_size: int = Field(32000, gt=0)
    hidden_size: int = Field(4096, gt=0)
    intermediate_size: int = Field(11008, gt=0)
    num_hidden_layers: int = Field(32, gt=0)
    num_attention_heads: int = Field(32, gt=0)
    num_key_value_heads: int | None = Field(None, gt=0)
    """Key/value heads (grouped-query attention); ``None``: one per query head."""
    hidden_act: Literal["silu", "gelu", "gelu_new", "relu"] = "silu"
    max_position_embeddings: int = Field(2048, gt=0)
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    tie_word_embeddings: bool = False
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    num_labels: int = 2
    id2label: dict[int, str] | None = None

    layers_name: ClassVar[str] = "layers"
    tokenizer_kind: ClassVar[str] = "bpe"
    """Classification reads plain subword rows (jaxlm.tasks.classification)."""

    # The per-family differences, as properties each family sets (Llama from its fields).
    @property
    def attention_head_dim(self) -> int:
        return getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def biases(self) -> tuple[bool, bool, bool]:
        """Whether the query / key / value projections, the attention output and the MLP have biases."""
        return False, False, False

    def layer_window(self, i: int) -> int | None:
        """Layer ``i``'s sliding window (``None``: full causal attention)."""
        return None

    @property
    def max_positions(self) -> int | None:
        """``max_position_embeddings``; unbounded with ``dynamic`` rope scaling, which exists to run past it."""
        scaling = self.rope_scaling
        return None if scaling is not None and scaling.rope_type == "dynamic" else self.max_position_embeddings

    @property
    def rope(self) -> Rope:
        s = self.rope_scaling
        if s is None:
            return Rope(theta=self.rope_theta)
        return Rope(theta=self.rope_theta, kind=s.rope_type, factor=s.factor, max_positions=self.max_position_embeddings,
                    low_freq_factor=s.low_freq_factor or 1.0, high_freq_factor=s.high_freq_factor or 4.0,
                    original_max_positions=s.original_max_position_embeddings or self.max_position_embeddings)

    @model_validator(mode="after")
    def _shapes(self):
        heads, kv = self.num_attention_heads, self.kv_heads
        if heads % kv:
            raise ValueError(f"model.num_attention_heads={heads} is not divisible by model.num_key_value_heads={kv}")
        if getattr(self, "head_dim", None) is None and self.hidden_size % heads:
            raise ValueError(f"model.hidden_size={self.hidden_size} is not divisible by "
                             f"model.num_attention_heads={heads}; set model.head_dim")
        if self.attention_head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.attention_head_dim}")
        windows = {self.layer_window(i) for i in range(self.num_hidden_layers)}
        if self.scan_layers and len(windows) > 1:
            raise ValueError("model.scan_layers needs every layer to attend alike, but some layers use a sliding "
                             "window and some do not; set model.scan_layers=false")
        return self

    @classmethod
    def fields_from_hf(cls, hf: dict) -> dict:
        """transformers 5 nests ``rope_theta`` and the scaling in ``rope_parameters``; 4 has ``rope_theta``
        and ``rope_scaling`` side by side. Both become ``rope_theta`` + ``rope_scaling``."""
        fields = super().fields_from_hf(hf)
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        if "rope_theta" in rope:
            fields["rope_theta"] = rope.pop("rope_theta")
        kind = rope.get("rope_type", rope.get("type", "default"))
        fields["rope_scaling"] = None if kind == "default" else rope
        return fields

    def hf_dict(self) -> dict:
        hf = super().hf_dict()
        hf["rope_scaling"] = None if self.rope_scaling is None else self.rope_scaling.model_dump(exclude_none=True)
        return hf


class LlamaConfig(DecoderConfig):
    """Hugging Face ``LlamaConfig`` field names and defaults (Llama-2-7B)."""

    type: Literal["llama"] = "llama"
    head_dim: int | None = Field(None, gt=0)
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def biases(self) -> tuple[bool, bool, bool]:
        return self.attention_bias, self.attention_bias, self.mlp_bias


class Qwen2Config(DecoderConfig):
    """Hugging Face ``Qwen2Config`` field names and defaults: biased query / key / value projections;
    sliding windows (when ``use_sliding_window``) in the layers from ``max_window_layers`` up, or
    where ``layer_types`` says ``sliding_attention``."""

    type: Literal["qwen2"] = "qwen2"
    vocab_size: int = Field(151936, gt=0)
    intermediate_size: int = Field(22016, gt=0)
    num_key_value_heads: int | None = Field(32, gt=0)
    max_position_embeddings: int = Field(32768, gt=0)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = Field(4096, gt=0)
    max_window_layers: int = Field(28, ge=0)
    layer_types: tuple[Literal["full_attention", "sliding_attention"], ...] | None = None

    @property
    def biases(self) -> tuple[bool, bool, bool]:
        return True, False, False

    def layer_window(self, i: int) -> int | None:
        if not self.use_sliding_window or self.sliding_window is None:
            return None
        sliding = self.layer_types[i] == "sliding_attention" if self.layer_types else i >= self.max_window_layers
        return self.sliding_window if sliding else None

    @model_validator(mode="after")
    def _layer_types(self):
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"model.layer_types names {len(self.layer_types)} layers but model.num_hidden_layers="
                             f"{self.num_hidden_layers}")
        return self


class MistralConfig(DecoderConfig):
    """Hugging Face ``MistralConfig`` field names and defaults (Mistral-7B): a sliding window in every layer."""

    type: Literal["mistral"] = "mistral"
    intermediate_size: int = Field(14336, gt=0)
    num_key_value_heads: int | None = Field(8, gt=0)
    head_dim: int | None = Field(None, gt=0)
    max_position_embeddings: int = Field(4096 * 32, gt=0)
    sliding_window: int | None = Field(4096, gt=0)

    def layer_window(self, i: int) -> int | None:
        return self.sliding_window


TORCH_KEY_MAP = TorchKeyMap(
    prefix="model",
    renames=((r"\blayers_(\d+)\.", r"layers.\1."),),
    input_axes=((r"self_attn\.[qkv]_proj\.weight$", 1),),
    optional=r"^(lm_head|score)\.",
)


class LlamaMLP(nn.Module):
    """SwiGLU: ``down_proj(act(gate_proj(x)) * up_proj(x))``."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        kw = dict(std=c.initializer_range, use_bias=c.biases[2], dtype=self.dtype)
        gate = dense(c.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x)
        up = dense(c.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x)
        return dense(c.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(ACTIVATIONS[c.hidden_act](gate) * up)


class LlamaDecoderLayer(nn.Module):
    """``x + attention(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))``."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    hooks: Hooks = NO_HOOKS
    sliding_window: int | None = None

    @nn.compact
    def __call__(self, x, kv_prefix, attention_mask, position_ids, deterministic: bool, decode: bool,
                 output_attentions: bool):
        c = self.config
        h, weights = SelfAttention(
            num_heads=c.num_attention_heads, head_dim=c.attention_head_dim, num_kv_heads=c.kv_heads,
            dropout_rate=c.attention_dropout, init_std=c.initializer_range, out_init_std=c.initializer_range,
            use_bias=c.biases[0], out_bias=c.biases[1], causal=True, rope=c.rope, sliding_window=self.sliding_window,
            qkv_names=("q_proj", "k_proj", "v_proj"), out_name="o_proj", implementation=c.attention_implementation,
            dtype=self.dtype, name="self_attn",
        )(rms_norm(c.rms_norm_eps, name="input_layernorm", dtype=self.dtype)(x), attention_mask, kv_prefix=kv_prefix,
          decode=decode, deterministic=deterministic, output_attentions=output_attentions, positions=position_ids)
        x = x + residual_adapter(self.hooks, "attention", h, self.dtype)
        h = LlamaMLP(c, dtype=self.dtype, name="mlp")(
            rms_norm(c.rms_norm_eps, name="post_attention_layernorm", dtype=self.dtype)(x))
        x = x + residual_adapter(self.hooks, "feed_forward", h, self.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), weights


class LlamaModel(nn.Module):
    """The decoder trunk: ``last_hidden_state`` after the final ``norm``. ``inputs_embeds``,
    ``kv_prefix`` and ``hooks`` as in :class:`~jaxlm.models.gpt2.GPT2Model` (the PEFT hook points)."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    hooks: Hooks = NO_HOOKS

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, *, inputs_embeds=None,
                 kv_prefix=None, decode: bool = False, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        c = self.config
        deterministic = not self.has_rng("dropout")
        table = embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), std=c.initializer_range, name="embed_tokens",
                      dtype=self.dtype)
        x = embed_ids(table, input_ids, c.pad_token_id) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        x = self.perturb("embed_tokens_output", x)  # adversarial hook
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        layer = c.remat_layer(LlamaDecoderLayer, static_argnums=(5, 6, 7))
        first = x
        x, outputs, attentions = apply_layers(layer, c, c.num_hidden_layers, x, kv_prefix, attention_mask,
                                              position_ids, deterministic, decode, output_attentions,
                                              dtype=self.dtype, keep_outputs=output_hidden_states, hooks=self.hooks,
                                              layer_kwargs=lambda i: {"sliding_window": c.layer_window(i)})
        x = rms_norm(c.rms_norm_eps, name="norm", dtype=self.dtype)(x)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=(first, *outputs[:-1], x) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class _WithTrunk(nn.Module):
    """A :class:`LlamaModel` named ``model`` plus the head that ``head`` builds on its output."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    hooks: Hooks = NO_HOOKS

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, *, inputs_embeds=None,
                 kv_prefix=None, decode: bool = False, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        trunk = LlamaModel(self.config, dtype=self.dtype, hooks=self.hooks, name="model")
        out = trunk(input_ids, attention_mask, position_ids, inputs_embeds=inputs_embeds, kv_prefix=kv_prefix,
                    decode=decode, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return self.head(out, trunk, input_ids, attention_mask)


class LlamaForCausalLM(_WithTrunk):
    """``logits`` ``[batch, length, vocab]``: ``lm_head``, or the input embeddings when tied."""

    def head(self, out, trunk, input_ids, attention_mask):
        c = self.config
        x = out.last_hidden_state
        if c.tie_word_embeddings:
            table = nn.meta.unbox(trunk.variables["params"]["embed_tokens"]["embedding"])
            logits = jnp.einsum("ble,ve->blv", x, table.astype(self.dtype))
        else:
            logits = dense(c.vocab_size, ("embed", "vocab"), std=c.initializer_range, use_bias=False,
                           name="lm_head", dtype=self.dtype)(x)
        return out.replace(logits=nn.with_logical_constraint(logits, ("batch", "length", "vocab")))


class LlamaForSequenceClassification(_WithTrunk):
    """``logits`` ``[batch, num_labels]``: ``score`` at each row's last token (see the module docstring)."""

    def head(self, out, trunk, input_ids, attention_mask):
        c = self.config
        scores = dense(c.num_labels, ("embed", None), std=c.initializer_range, use_bias=False, name="score",
                       dtype=self.dtype)(out.last_hidden_state)
        return out.replace(logits=scores[jnp.arange(scores.shape[0]), last_token(input_ids, attention_mask,
                                                                                  c.pad_token_id)])


def last_token(input_ids: jax.Array, attention_mask: jax.Array | None, pad_token_id: int | None) -> jax.Array:
    """``[batch]``: each row's rightmost token that is not ``pad_token_id`` (transformers' rule, left or right
    padding); without a pad id, the rightmost position ``attention_mask`` keeps (else the last)."""
    positions = jnp.arange(input_ids.shape[1])
    if pad_token_id is not None:
        return jnp.argmax(positions * (input_ids != pad_token_id), axis=-1)
    if attention_mask is not None:
        return jnp.argmax(positions * attention_mask.astype(bool), axis=-1)
    return jnp.full(input_ids.shape[:1], input_ids.shape[1] - 1)


# transformers' class names, one set per family (the registry and the importer key on names).
class Qwen2Model(LlamaModel):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    pass


class MistralModel(LlamaModel):
    pass


class MistralForCausalLM(LlamaForCausalLM):
    pass


class MistralForSequenceClassification(LlamaForSequenceClassification):
    pass


def heads(prefix: str) -> dict[str, type[nn.Module]]:
    """The registry's heads of one family (``Llama``, ``Qwen2``, ``Mistral``)."""
    named = {cls.__name__: cls for cls in (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification,
                                           Qwen2Model, Qwen2ForCausalLM, Qwen2ForSequenceClassification,
                                           MistralModel, MistralForCausalLM, MistralForSequenceClassification)}
    return {"base": named[f"{prefix}Model"], "causal_lm": named[f"{prefix}ForCausalLM"],
            "classification": named[f"{prefix}ForSequenceClassification"]}
