"""RoBERTa exactly as fairseq / Hugging Face define it: BERT's encoder with RoBERTa's positions and heads.

The encoder, embeddings and pooler are BERT's (:mod:`jaxlm.models.bert`). What differs: positions
count from ``pad_token_id + 1`` over the non-padding tokens, and padding tokens sit at position
``pad_token_id`` (whose position row, like the word row, gets no gradient); there is no next-sentence
head; the masked-LM head is ``lm_head`` (dense, exact GELU, LayerNorm, the decoder tied to the word
embeddings plus a bias) and the sequence classifier ``classifier`` reads the first token (``<s>``)
through its own dense + tanh (``dense``, ``out_proj``), not the pooler. The tokenizer is a byte-level
BPE with ``<s> A </s></s> B </s>`` framing (:func:`jaxlm.data.tokenizer.load_tokenizer`).

PyTorch names (``TORCH_KEY_MAP``): BERT's, with ``roberta.`` inside head models, plus
  lm_head.{dense,layer_norm,bias} -> lm_head/{dense,layer_norm,bias} (``lm_head.decoder``: the tied copy)
  classifier.{dense,out_proj}     -> classifier/{dense,out_proj}
"""

from __future__ import annotations

from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.core import ACTIVATIONS, Dropout, dense, layer_norm, zeros
from jaxlm.models import bert
from jaxlm.models.base import TorchKeyMap
from jaxlm.models.outputs import at_positions


class RobertaConfig(bert.BertConfig):
    """Hugging Face ``RobertaConfig`` field names and defaults (``BertConfig``'s, RoBERTa's vocabulary and ids)."""

    type: Literal["roberta"] = "roberta"
    vocab_size: int = 50265
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    @property
    def position_padding_idx(self) -> int | None:
        return self.pad_token_id

    @property
    def max_positions(self) -> int | None:
        """Tokens a row may hold: the position table less the rows below ``pad_token_id + 1``."""
        return self.max_position_embeddings - (self.pad_token_id or 0) - 1


TORCH_KEY_MAP = TorchKeyMap(
    prefix="roberta",
    renames=bert.TORCH_KEY_MAP.renames,
    dropped=(r"^embeddings\.(position_ids|token_type_ids)$", r"^lm_head\.decoder\.(weight|bias)$"),
    optional=r"^(pooler|lm_head|classifier|qa_outputs)\.",
    fixed={"is_decoder": False, "add_cross_attention": False, "tie_word_embeddings": True,
           "position_embedding_type": "absolute"},
)


def roberta_position_ids(input_ids: jax.Array, padding_idx: int) -> jax.Array:
    """fairseq's ``make_positions``: ``padding_idx + 1, + 2, ...`` over each row's non-padding tokens,
    ``padding_idx`` at its padding."""
    real = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + padding_idx


class RobertaModel(bert.BertModel):
    """The RoBERTa trunk: ``last_hidden_state`` and, with the pooler, ``pooler_output``."""

    def default_position_ids(self, input_ids, shape):
        if input_ids is None:  # inputs_embeds: every position is a token, numbered after the padding index
            return jnp.broadcast_to(self.config.pad_token_id + 1 + jnp.arange(shape[1]), shape)
        return roberta_position_ids(input_ids, self.config.pad_token_id)


class _RobertaWithHead(bert._BertWithHead):
    trunk: ClassVar[type[bert.BertModel]] = RobertaModel
    trunk_name: ClassVar[str] = "roberta"
    add_pooling_layer: ClassVar[bool] = False


class RobertaLMHead(nn.Module):
    """Dense + exact GELU + LayerNorm, then the decoder tied to the word embeddings plus ``bias``."""

    config: RobertaConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, word_embeddings):
        c = self.config
        x = dense(c.hidden_size, ("embed", None), std=c.initializer_range, name="dense", dtype=self.dtype)(x)
        x = layer_norm(c.layer_norm_eps, name="layer_norm", dtype=self.dtype)(ACTIVATIONS["gelu"](x))
        bias = self.param("bias", zeros(("vocab",)), (c.vocab_size,))
        logits = jnp.einsum("ble,ve->blv", x, word_embeddings.astype(self.dtype)) + bias.astype(self.dtype)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class RobertaClassificationHead(nn.Module):
    """The first token (``<s>``): dropout, dense, tanh, dropout, ``out_proj`` to ``num_labels``."""

    config: RobertaConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        c = self.config
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        kw = dict(std=c.initializer_range, dtype=self.dtype)
        x = Dropout(rate)(hidden[:, 0], deterministic=deterministic)
        x = jnp.tanh(dense(c.hidden_size, ("embed", None), name="dense", **kw)(x))
        x = Dropout(rate)(x, deterministic=deterministic)
        return dense(c.num_labels, (None, None), name="out_proj", **kw)(x)


class RobertaForMaskedLM(_RobertaWithHead):
    """``logits``: ``[batch, length, vocab]``, or ``[batch, P, vocab]`` at ``masked_positions [batch, P]``."""

    scores_tokens: ClassVar[bool] = True

    def head(self, out, trunk, deterministic, masked_positions=None):
        words = nn.meta.unbox(trunk.variables["params"]["embeddings"]["word_embeddings"]["embedding"])
        logits = RobertaLMHead(self.config, dtype=self.dtype, name="lm_head")(
            at_positions(out.last_hidden_state, masked_positions), words)
        return out.replace(logits=logits)


class RobertaForSequenceClassification(_RobertaWithHead):
    """``logits``: ``[batch, num_labels]`` from the first token."""

    def head(self, out, trunk, deterministic, masked_positions=None):
        logits = RobertaClassificationHead(self.config, dtype=self.dtype, name="classifier")(
            out.last_hidden_state, deterministic)
        return out.replace(logits=logits)


class RobertaForTokenClassification(_RobertaWithHead, bert.BertForTokenClassification):
    """``logits``: ``[batch, length, num_labels]`` (BERT's head)."""


class RobertaForQuestionAnswering(_RobertaWithHead, bert.BertForQuestionAnswering):
    """``start_logits`` / ``end_logits`` ``[batch, length]`` (BERT's head)."""


HEADS = {
    "base": RobertaModel,
    "masked_lm": RobertaForMaskedLM,
    "classification": RobertaForSequenceClassification,
    "token_classification": RobertaForTokenClassification,
    "question_answering": RobertaForQuestionAnswering,
}
