"""GPT-2 exactly as OpenAI / Hugging Face define it.

Pre-LN blocks, tanh-approximate GELU ("gelu_new"), learned absolute positions, input and
output embeddings tied, dropout on embeddings, attention probabilities and residuals.
Parameter names follow transformers' ``GPT2LMHeadModel`` so the PyTorch key map is short
(``TORCH_KEY_MAP`` below, read by :mod:`jaxlm.interop`).

PyTorch names -> jaxlm params (``h.{i}`` is ``h_{i}``; with ``scan_layers``, ``h`` stacked on a leading axis):
  wte.weight -> wte/embedding            wpe.weight -> wpe/embedding
  h.i.ln_1/ln_2/ln_f .weight/.bias -> scale/bias
  h.i.attn.c_attn.weight [E, 3E]   -> attn/c_attn/kernel [E, 3, heads, head_dim] (Conv1D: no transpose)
  h.i.attn.c_proj.weight [E, E]    -> attn/c_proj/kernel [heads, head_dim, E]
  h.i.mlp.c_fc / c_proj .weight    -> mlp/c_fc / c_proj /kernel (already [in, out])
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.layers.attention import SelfAttention
from jaxlm.layers.core import ACTIVATIONS, Dropout, dense, embed, norm
from jaxlm.layers.embeddings import add_positions
from jaxlm.models.base import ModelConfig, TorchKeyMap, TransformerVariants
from jaxlm.models.layout import apply_layers
from jaxlm.models.outputs import ModelOutput


class GPT2Config(ModelConfig, TransformerVariants):
    """Hugging Face ``GPT2Config`` field names and defaults (the 124M model), plus the layer
    variants of :class:`TransformerVariants` (reference settings by default)."""

    type: Literal["gpt2"] = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: Literal["gelu_new", "gelu", "relu"] = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    layers_name: ClassVar[str] = "h"
    head_fields: ClassVar[tuple[str, tuple[str, ...]]] = ("n_embd", ("n_head",))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


TORCH_KEY_MAP = TorchKeyMap(
    prefix="transformer",
    renames=((r"\bh_(\d+)\.", r"h.\1."),),
    conv1d=True,
    # Causal-mask buffers of old checkpoints; lm_head is tied to wte.
    dropped=(r"\.attn\.(bias|masked_bias)$", r"^lm_head\.weight$"),
    fixed={"add_cross_attention": False, "scale_attn_weights": True,
           "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": True},
)


class GPT2MLP(nn.Module):
    config: GPT2Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        c = self.config
        inner = c.n_inner or 4 * c.n_embd
        h = dense(inner, ("embed", "mlp"), std=c.initializer_range, name="c_fc", dtype=self.dtype)(x)
        h = ACTIVATIONS[c.activation_function](h)
        h = dense(c.n_embd, ("mlp", "embed"), std=c.initializer_range / math.sqrt(2 * c.n_layer),
                  name="c_proj", dtype=self.dtype)(h)
        return Dropout(c.resid_pdrop)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
    config: GPT2Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool, decode: bool, output_attentions: bool):
        c = self.config
        ln_1, ln_2 = (norm(c.norm_type, c.layer_norm_epsilon, name=n, dtype=self.dtype) for n in ("ln_1", "ln_2"))
        pre = c.norm_position == "pre"
        h, weights = SelfAttention(
            num_heads=c.n_head, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads, dropout_rate=c.attn_pdrop,
            causal=True, fused_qkv=True, qkv_names="c_attn", out_name="c_proj", init_std=c.initializer_range,
            out_init_std=c.initializer_range / math.sqrt(2 * c.n_layer),
            rope_theta=c.rope_theta if c.positions == "rotary" else None, sliding_window=c.sliding_window,
            implementation=c.attention_implementation, dtype=self.dtype, name="attn",
        )(ln_1(x) if pre else x, attention_mask, decode=decode, deterministic=deterministic,
          output_attentions=output_attentions)
        x = x + Dropout(c.resid_pdrop)(h, deterministic=deterministic)
        x = x if pre else ln_1(x)
        x = x + GPT2MLP(c, dtype=self.dtype, name="mlp")(ln_2(x) if pre else x, deterministic)
        x = x if pre else ln_2(x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), weights


class GPT2Model(nn.Module):
    """The GPT-2 trunk: returns ``last_hidden_state`` (after ``ln_f``; post-LN variants have none)."""

    config: GPT2Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 decode: bool = False, output_hidden_states: bool = False, output_attentions: bool = False):
        c = self.config
        deterministic = not self.has_rng("dropout")
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        wte = embed(c.vocab_size, c.n_embd, ("vocab", "embed"), std=c.initializer_range, name="wte",
                    dtype=self.dtype)
        tokens = self.perturb("wte_output", wte(input_ids))  # the adversarial hook (jaxlm/train/adversarial.py)
        x = add_positions(tokens, position_ids, c.positions, c.n_positions, std=c.initializer_range, name="wpe",
                          dtype=self.dtype)
        if token_type_ids is not None:  # GPT-2 reuses wte for token types, as transformers does
            x = x + wte(token_type_ids)
        x = Dropout(c.embd_pdrop)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        block = c.remat_layer(GPT2Block, static_argnums=(3, 4, 5))
        first = x
        x, outputs, attentions = apply_layers(block, c, c.n_layer, x, attention_mask,
                                              deterministic, decode, output_attentions, dtype=self.dtype,
                                              keep_outputs=output_hidden_states)
        if c.norm_position == "pre":  # post-LN layers already end normalised
            x = norm(c.norm_type, c.layer_norm_epsilon, name="ln_f", dtype=self.dtype)(x)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=(first, *outputs[:-1], x) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with the language-model head tied to ``wte``: returns ``logits``."""

    config: GPT2Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 decode: bool = False, output_hidden_states: bool = False, output_attentions: bool = False):
        trunk = GPT2Model(self.config, dtype=self.dtype, name="transformer")
        out = trunk(input_ids, attention_mask, token_type_ids, position_ids, decode=decode,
                    output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        wte = trunk.variables["params"]["wte"]["embedding"]
        wte = wte.value if isinstance(wte, nn.Partitioned) else wte
        logits = jnp.einsum("ble,ve->blv", out.last_hidden_state, wte.astype(self.dtype))
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return out.replace(logits=logits)
