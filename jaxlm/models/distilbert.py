"""DistilBERT exactly as Hugging Face defines it: the student model for distillation.

BERT without token types or pooler: word + position embeddings, LayerNorm, dropout;
post-LN layers (LayerNorm eps fixed at 1e-12 as in transformers); heads for masked LM
(``vocab_transform`` + activation + ``vocab_layer_norm``, projector tied to the word
embeddings plus its own bias) and sequence classification (first token ->
``pre_classifier`` + ReLU + dropout -> ``classifier``). ``sinusoidal_pos_embds`` only
changes transformers' initialisation, so jaxlm leaves it out: loaded weights are used as is.

PyTorch names (``TORCH_KEY_MAP``) -> jaxlm params, ``distilbert.`` inside head models:
  transformer.layer.i.<name>  -> layer_i/<name>  (attention/{q,k,v,out}_lin, sa_layer_norm,
                                                 output_layer_norm)
  transformer.layer.i.ffn.lin1 / lin2 -> layer_i/ffn_lin1 / ffn_lin2
  vocab_projector.bias -> vocab_projector_bias; every other name is the same.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.layers.attention import SelfAttention
from jaxlm.layers.core import ACTIVATIONS, Dropout, dense, embed, layer_norm, zeros
from jaxlm.models.base import ModelConfig, TorchKeyMap
from jaxlm.models.bert import embed_ids
from jaxlm.models.outputs import ModelOutput, at_positions, check_masked_positions, first_tokens

LAYER_NORM_EPS = 1e-12


class DistilBertConfig(ModelConfig):
    """Hugging Face ``DistilBertConfig`` field names and defaults (distilbert-base)."""

    type: Literal["distilbert"] = "distilbert"
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: Literal["gelu", "gelu_new", "relu"] = "gelu"
    initializer_range: float = 0.02
    seq_classif_dropout: float = 0.2
    pad_token_id: int | None = 0
    num_labels: int = 2
    id2label: dict[int, str] | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


TORCH_KEY_MAP = TorchKeyMap(
    prefix="distilbert",
    renames=(
        (r"\blayer_(\d+)\.", r"transformer.layer.\1."),
        (r"\bffn_lin(\d)\.", r"ffn.lin\1."),
        (r"\bvocab_projector_bias$", "vocab_projector.bias"),
    ),
    dropped=(r"^embeddings\.position_ids$", r"^vocab_projector\.weight$"),
    optional=r"^(vocab_transform|vocab_layer_norm|vocab_projector|pre_classifier|classifier)\.",
    fixed={"tie_word_embeddings": True},
)


class DistilBertEmbeddings(nn.Module):
    config: DistilBertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, position_ids, deterministic: bool):
        c = self.config
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        words = embed(c.vocab_size, c.dim, ("vocab", "embed"), name="word_embeddings", **kw)
        positions = embed(c.max_position_embeddings, c.dim, (None, "embed"), name="position_embeddings", **kw)
        x = self.perturb("word_embeddings_output", embed_ids(words, input_ids, c.pad_token_id))  # adversarial hook
        x = x + positions(position_ids)
        x = layer_norm(LAYER_NORM_EPS, name="LayerNorm", dtype=self.dtype)(x)
        return Dropout(c.dropout)(x, deterministic=deterministic)


class DistilBertLayer(nn.Module):
    """Post-LN: ``sa_layer_norm(x + attention(x))`` then ``output_layer_norm(x + FFN(x))``."""

    config: DistilBertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool, output_attentions: bool):
        c = self.config
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        h, weights = SelfAttention(
            num_heads=c.n_heads, head_dim=c.head_dim, dropout_rate=c.attention_dropout,
            init_std=c.initializer_range, out_init_std=c.initializer_range, qkv_names=("q_lin", "k_lin", "v_lin"),
            out_name="out_lin", implementation=c.attention_implementation, dtype=self.dtype, name="attention",
        )(x, attention_mask, deterministic=deterministic, output_attentions=output_attentions)
        x = layer_norm(LAYER_NORM_EPS, name="sa_layer_norm", dtype=self.dtype)(x + h)
        h = dense(c.hidden_dim, ("embed", "mlp"), name="ffn_lin1", **kw)(x)
        h = dense(c.dim, ("mlp", "embed"), name="ffn_lin2", **kw)(ACTIVATIONS[c.activation](h))
        h = Dropout(c.dropout)(h, deterministic=deterministic)
        x = layer_norm(LAYER_NORM_EPS, name="output_layer_norm", dtype=self.dtype)(x + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), weights


class DistilBertModel(nn.Module):
    """The DistilBERT trunk: ``last_hidden_state``. It has no token types: pass none."""

    config: DistilBertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, output_attentions: bool = False):
        if token_type_ids is not None:
            raise ValueError("DistilBERT has no token-type embeddings: call it without token_type_ids")
        c = self.config
        deterministic = not self.has_rng("dropout")
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = DistilBertEmbeddings(c, dtype=self.dtype, name="embeddings")(input_ids, position_ids, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        hidden_states, attentions = [x], []
        layer = c.remat_layer(DistilBertLayer, static_argnums=(3, 4))
        for i in range(c.n_layers):
            x, w = layer(c, dtype=self.dtype, name=f"layer_{i}")(x, attention_mask, deterministic,
                                                                           output_attentions)
            hidden_states.append(x)
            attentions.append(w)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class _DistilBertWithHead(nn.Module):
    """A ``DistilBertModel`` named ``distilbert`` plus the head that ``head`` builds on its output."""

    config: DistilBertConfig
    dtype: jnp.dtype = jnp.float32

    scores_tokens: ClassVar[bool] = False
    """The head predicts tokens, so it takes ``masked_positions``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 masked_positions=None, pooled_positions=None) -> ModelOutput:
        """``pooled_positions [batch, P]``: rows packed with P examples each (see :func:`first_tokens`)."""
        check_masked_positions(self, masked_positions)
        trunk = DistilBertModel(self.config, dtype=self.dtype, name="distilbert")
        out = trunk(input_ids, attention_mask, token_type_ids, position_ids,
                    output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return self.head(out, trunk, deterministic=not self.has_rng("dropout"), masked_positions=masked_positions,
                         pooled_positions=pooled_positions)

    def head(self, out: ModelOutput, trunk: DistilBertModel, deterministic: bool,
             masked_positions=None, pooled_positions=None) -> ModelOutput:
        raise NotImplementedError


class DistilBertForMaskedLM(_DistilBertWithHead):
    """``logits``: ``[batch, length, vocab]``, or ``[batch, P, vocab]`` at ``masked_positions [batch, P]``."""

    scores_tokens: ClassVar[bool] = True

    def head(self, out, trunk, deterministic, masked_positions=None, pooled_positions=None):
        c = self.config
        x = dense(c.dim, ("embed", None), std=c.initializer_range, name="vocab_transform",
                  dtype=self.dtype)(at_positions(out.last_hidden_state, masked_positions))
        x = layer_norm(LAYER_NORM_EPS, name="vocab_layer_norm", dtype=self.dtype)(ACTIVATIONS[c.activation](x))
        words = nn.meta.unbox(trunk.variables["params"]["embeddings"]["word_embeddings"]["embedding"])
        bias = self.param("vocab_projector_bias", zeros(("vocab",)), (c.vocab_size,))
        logits = jnp.einsum("ble,ve->blv", x, words.astype(self.dtype)) + bias.astype(self.dtype)
        return out.replace(logits=nn.with_logical_constraint(logits, ("batch", "length", "vocab")))


class DistilBertForSequenceClassification(_DistilBertWithHead):
    """``logits``: ``[batch, num_labels]`` from the first token's final hidden state."""

    def head(self, out, trunk, deterministic, masked_positions=None, pooled_positions=None):
        c = self.config
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        x = dense(c.dim, ("embed", None), name="pre_classifier", **kw)(first_tokens(out.last_hidden_state,
                                                                                     pooled_positions))
        x = Dropout(c.seq_classif_dropout)(nn.relu(x), deterministic=deterministic)
        return out.replace(logits=dense(c.num_labels, ("embed", None), name="classifier", **kw)(x))
