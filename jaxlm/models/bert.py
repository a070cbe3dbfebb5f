"""BERT exactly as Google / Hugging Face define it, with every transformers head.

Word + position + token-type embeddings, LayerNorm and dropout; post-LN encoder layers
with exact (erf) GELU; a tanh pooler over the first token. Heads: masked LM (dense + GELU
+ LayerNorm, decoder tied to the word embeddings plus its own bias), next-sentence
prediction, both (pre-training), sequence / token classification, question answering.
Class names are transformers' architecture names; configs use its field names.

As with torch's ``padding_idx``, the word-embedding row of ``pad_token_id`` gets no
gradient from the embedding lookup (it still does through the tied MLM decoder).

PyTorch names (``TORCH_KEY_MAP``) -> jaxlm params, ``bert.`` inside head models (with
``scan_layers``, the ``layer_i`` are one ``layer`` stacked on a leading axis):
  embeddings.{word,position,token_type}_embeddings.weight -> embeddings/.../embedding
  encoder.layer.i.attention.self.{query,key,value}  -> layer_i/attention/{query,key,value}
                                                        (kernel [E, heads, head_dim])
  encoder.layer.i.attention.output.dense            -> layer_i/attention/output ([heads, head_dim, E])
  encoder.layer.i.attention.output.LayerNorm        -> layer_i/attention_LayerNorm
  encoder.layer.i.{intermediate,output}.dense       -> layer_i/{intermediate,output}
  encoder.layer.i.output.LayerNorm                  -> layer_i/output_LayerNorm
  pooler.dense -> pooler          cls.predictions.transform.{dense,LayerNorm} -> cls/predictions/transform{,_LayerNorm}
  cls.predictions.bias, cls.seq_relationship, classifier, qa_outputs: same names
"""

from __future__ import annotations

from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.attention import SelfAttention
from jaxlm.layers.core import ACTIVATIONS, Dropout, dense, embed, layer_norm, norm, zeros
from jaxlm.layers.embeddings import add_positions
from jaxlm.models.base import ModelConfig, TorchKeyMap, TransformerVariants
from jaxlm.models.layout import apply_layers
from jaxlm.models.outputs import ModelOutput, at_positions, check_masked_positions, first_tokens


class BertConfig(ModelConfig, TransformerVariants):
    """Hugging Face ``BertConfig`` field names and defaults (bert-base), plus the layer
    variants of :class:`TransformerVariants` (reference settings by default: post-LN)."""

    type: Literal["bert"] = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: Literal["gelu", "gelu_new", "relu"] = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | None = None
    num_labels: int = 2
    id2label: dict[int, str] | None = None

    norm_position: Literal["pre", "post"] = "post"

    layers_name: ClassVar[str] = "layer"
    head_fields: ClassVar[tuple[str, tuple[str, ...]]] = ("hidden_size", ("num_attention_heads",))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


TORCH_KEY_MAP = TorchKeyMap(
    prefix="bert",
    renames=(
        (r"\blayer_(\d+)\.", r"encoder.layer.\1."),
        (r"\battention\.(query|key|value)\.", r"attention.self.\1."),
        (r"\battention\.output\.", "attention.output.dense."),
        (r"\battention_LayerNorm\.", "attention.output.LayerNorm."),
        (r"(\blayer\.\d+)\.output\.(weight|bias)$", r"\1.output.dense.\2"),
        (r"\b(intermediate|pooler|transform)\.(weight|bias)$", r"\1.dense.\2"),
        (r"\b(output|transform)_LayerNorm\.", r"\1.LayerNorm."),
    ),
    dropped=(r"^embeddings\.(position_ids|token_type_ids)$", r"^cls\.predictions\.decoder\.(weight|bias)$"),
    optional=r"^(pooler|cls|classifier|qa_outputs)\.",
    fixed={"is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": True,
           "position_embedding_type": "absolute"},
)


def embed_ids(table: nn.Embed, ids: jax.Array, padding_idx: int | None) -> jax.Array:
    """``table(ids)`` where, as with torch's ``padding_idx``, padding lookups pass no gradient."""
    x = table(ids)
    if padding_idx is None:
        return x
    return jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(x), x)


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        c = self.config
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        words = embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), name="word_embeddings", **kw)
        x = self.perturb("word_embeddings_output", embed_ids(words, input_ids, c.pad_token_id))  # adversarial hook
        x = x + embed(c.type_vocab_size, c.hidden_size, (None, "embed"), name="token_type_embeddings",
                      **kw)(token_type_ids)
        x = add_positions(x, position_ids, c.positions, c.max_position_embeddings, name="position_embeddings", **kw)
        x = norm(c.norm_type, c.layer_norm_eps, name="LayerNorm", dtype=self.dtype)(x)
        return Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class BertLayer(nn.Module):
    """Post-LN: ``LN(x + attention(x))`` then ``LN(x + MLP(x))`` (pre-LN variant:
    ``x + attention(LN(x))`` then ``x + MLP(LN(x))``, same parameter names)."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, deterministic: bool, output_attentions: bool):
        c = self.config
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        ln_1, ln_2 = (norm(c.norm_type, c.layer_norm_eps, name=n, dtype=self.dtype)
                      for n in ("attention_LayerNorm", "output_LayerNorm"))
        pre = c.norm_position == "pre"
        h, weights = SelfAttention(
            num_heads=c.num_attention_heads, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads,
            dropout_rate=c.attention_probs_dropout_prob, init_std=c.initializer_range,
            out_init_std=c.initializer_range, qkv_names=("query", "key", "value"), out_name="output",
            rope_theta=c.rope_theta if c.positions == "rotary" else None, sliding_window=c.sliding_window,
            implementation=c.attention_implementation, dtype=self.dtype, name="attention",
        )(ln_1(x) if pre else x, attention_mask, deterministic=deterministic, output_attentions=output_attentions)
        x = x + Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        x = x if pre else ln_1(x)
        h = dense(c.intermediate_size, ("embed", "mlp"), name="intermediate", **kw)(ln_2(x) if pre else x)
        h = dense(c.hidden_size, ("mlp", "embed"), name="output", **kw)(ACTIVATIONS[c.hidden_act](h))
        x = x + Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        x = x if pre else ln_2(x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), weights


class BertModel(nn.Module):
    """The BERT trunk: ``last_hidden_state`` and, with the pooler, ``pooler_output``."""

    config: BertConfig
    add_pooling_layer: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, output_attentions: bool = False, pooled_positions=None):
        c = self.config
        deterministic = not self.has_rng("dropout")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = BertEmbeddings(c, dtype=self.dtype, name="embeddings")(input_ids, token_type_ids, position_ids,
                                                                   deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        layer = c.remat_layer(BertLayer, static_argnums=(3, 4))
        first = x
        x, outputs, attentions = apply_layers(layer, c, c.num_hidden_layers, x, attention_mask,
                                              deterministic, output_attentions, dtype=self.dtype,
                                              keep_outputs=output_hidden_states)
        if c.norm_position == "pre":  # pre-LN layers leave the residual stream unnormalised
            x = norm(c.norm_type, c.layer_norm_eps, name="final_LayerNorm", dtype=self.dtype)(x)
        extra = {}
        if self.add_pooling_layer:
            pooled = dense(c.hidden_size, ("embed", None), std=c.initializer_range, name="pooler",
                           dtype=self.dtype)(first_tokens(x, pooled_positions))
            extra["pooler_output"] = jnp.tanh(pooled)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=(first, *outputs) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
            extra=extra,
        )


class BertLMPredictionHead(nn.Module):
    """Dense + activation + LayerNorm, then the decoder tied to the word embeddings plus a bias."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, word_embeddings):
        c = self.config
        x = dense(c.hidden_size, ("embed", None), std=c.initializer_range, name="transform", dtype=self.dtype)(x)
        x = layer_norm(c.layer_norm_eps, name="transform_LayerNorm", dtype=self.dtype)(ACTIVATIONS[c.hidden_act](x))
        bias = self.param("bias", zeros(("vocab",)), (c.vocab_size,))
        logits = jnp.einsum("ble,ve->blv", x, word_embeddings.astype(self.dtype)) + bias.astype(self.dtype)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class BertPreTrainingHeads(nn.Module):
    """transformers' ``cls`` module: masked-LM ``predictions`` and/or ``seq_relationship``."""

    config: BertConfig
    masked_lm: bool
    next_sentence: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, sequence_output, pooled_output, word_embeddings):
        mlm = nsp = None
        if self.masked_lm:
            mlm = BertLMPredictionHead(self.config, dtype=self.dtype, name="predictions")(sequence_output,
                                                                                         word_embeddings)
        if self.next_sentence:
            nsp = dense(2, ("embed", None), std=self.config.initializer_range, name="seq_relationship",
                        dtype=self.dtype)(pooled_output)
        return mlm, nsp


class _BertWithHead(nn.Module):
    """A ``BertModel`` named ``bert`` plus the head that ``head`` builds on its output."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    add_pooling_layer: ClassVar[bool] = True

    scores_tokens: ClassVar[bool] = False
    """The head predicts tokens, so it takes ``masked_positions``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 masked_positions=None, pooled_positions=None) -> ModelOutput:
        """``pooled_positions [batch, P]``: rows packed with P examples each (see :func:`first_tokens`)."""
        check_masked_positions(self, masked_positions)
        trunk = BertModel(self.config, add_pooling_layer=self.add_pooling_layer, dtype=self.dtype, name="bert")
        out = trunk(input_ids, attention_mask, token_type_ids, position_ids,
                    output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                    pooled_positions=pooled_positions)
        return self.head(out, trunk, deterministic=not self.has_rng("dropout"), masked_positions=masked_positions)

    def head(self, out: ModelOutput, trunk: BertModel, deterministic: bool, masked_positions=None) -> ModelOutput:
        raise NotImplementedError

    def pretraining_heads(self, out: ModelOutput, trunk: BertModel, masked_lm: bool, next_sentence: bool,
                          masked_positions=None):
        words = nn.meta.unbox(trunk.variables["params"]["embeddings"]["word_embeddings"]["embedding"])
        return BertPreTrainingHeads(self.config, masked_lm, next_sentence, dtype=self.dtype, name="cls")(
            at_positions(out.last_hidden_state, masked_positions), out.extra.get("pooler_output"), words)

    def classify(self, x, deterministic: bool):
        """Dropout (``classifier_dropout``, else ``hidden_dropout_prob``) and a ``num_labels`` dense."""
        c = self.config
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        x = Dropout(rate)(x, deterministic=deterministic)
        return dense(c.num_labels, ("embed", None), std=c.initializer_range, name="classifier", dtype=self.dtype)(x)


class BertForMaskedLM(_BertWithHead):
    """``logits``: ``[batch, length, vocab]``, or ``[batch, P, vocab]`` at ``masked_positions [batch, P]``."""

    add_pooling_layer: ClassVar[bool] = False
    scores_tokens: ClassVar[bool] = True

    def head(self, out, trunk, deterministic, masked_positions=None):
        logits, _ = self.pretraining_heads(out, trunk, masked_lm=True, next_sentence=False,
                                           masked_positions=masked_positions)
        return out.replace(logits=logits)


class BertForPreTraining(_BertWithHead):
    """``logits`` = ``prediction_logits`` ``[batch, length, vocab]`` (``[batch, P, vocab]`` at
    ``masked_positions [batch, P]``); ``seq_relationship_logits`` ``[batch, 2]``."""

    scores_tokens: ClassVar[bool] = True

    def head(self, out, trunk, deterministic, masked_positions=None):
        mlm, nsp = self.pretraining_heads(out, trunk, masked_lm=True, next_sentence=True,
                                          masked_positions=masked_positions)
        return out.replace(logits=mlm, extra={**out.extra, "prediction_logits": mlm, "seq_relationship_logits": nsp})


class BertForNextSentencePrediction(_BertWithHead):
    """``logits``: ``[batch, 2]`` (0: B continues A, 1: B is random)."""

    def head(self, out, trunk, deterministic, masked_positions=None):
        _, nsp = self.pretraining_heads(out, trunk, masked_lm=False, next_sentence=True)
        return out.replace(logits=nsp)


class BertForSequenceClassification(_BertWithHead):
    """``logits``: ``[batch, num_labels]`` from the dropped-out pooler output."""

    def head(self, out, trunk, deterministic, masked_positions=None):
        return out.replace(logits=self.classify(out.pooler_output, deterministic))


class BertForTokenClassification(_BertWithHead):
    """``logits``: ``[batch, length, num_labels]``."""

    add_pooling_layer: ClassVar[bool] = False

    def head(self, out, trunk, deterministic, masked_positions=None):
        return out.replace(logits=self.classify(out.last_hidden_state, deterministic))


class BertForQuestionAnswering(_BertWithHead):
    """``logits`` ``[batch, length, 2]``, split into ``start_logits`` / ``end_logits`` ``[batch, length]``."""

    add_pooling_layer: ClassVar[bool] = False

    def head(self, out, trunk, deterministic, masked_positions=None):
        c = self.config
        if c.num_labels != 2:
            raise ValueError(f"BertForQuestionAnswering needs num_labels=2 (start and end), not {c.num_labels}")
        logits = dense(c.num_labels, ("embed", None), std=c.initializer_range, name="qa_outputs",
                       dtype=self.dtype)(out.last_hidden_state)
        return out.replace(logits=logits, extra={**out.extra, "start_logits": logits[..., 0],
                                                 "end_logits": logits[..., 1]})
