"""word2vec (Mikolov et al., 2013): input vectors (the word embeddings kept afterwards) and
output ("context") vectors scored against each other, trained with negative sampling.

Skip-gram, as word2vec.c does it: each context word's input vector predicts the centre word
(``input_ids [batch, slots]``, one prediction per slot, ``target_ids [batch, slots, 1 + K]``).
CBOW: the mean of the context words' input vectors predicts the centre word
(``target_ids [batch, 1 + K]``). The first target is the true word, the K others negatives.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field

from jaxlm.layers.core import zeros
from jaxlm.models.base import ModelConfig
from jaxlm.models.outputs import ModelOutput


class Word2VecConfig(ModelConfig):
    type: Literal["word2vec"] = "word2vec"
    architecture: Literal["skipgram", "cbow"] = "skipgram"
    vocab_size: int = Field(50000, gt=1)
    """Rows of the tables: at least the vocabulary the task builds (words seen ``task.min_count`` times)."""
    embedding_dim: int = Field(100, gt=0)
    """gensim's ``vector_size``."""

    def dummy_inputs(self) -> dict[str, jax.Array]:
        targets = (1, 1, 2) if self.architecture == "skipgram" else (1, 2)
        return {"input_ids": jnp.zeros((1, 1), jnp.int32), "attention_mask": jnp.ones((1, 1), jnp.int32),
                "target_ids": jnp.zeros(targets, jnp.int32)}


def _uniform_init(dim: int):
    """gensim's / word2vec.c's start: uniform in [-0.5 / dim, 0.5 / dim)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -0.5 / dim, 0.5 / dim)

    return nn.with_logical_partitioning(init, ("vocab", "embed"))


class Word2Vec(nn.Module):
    """``logits``: the scores of the targets (``[batch, slots, 1 + K]`` skip-gram, ``[batch, 1 + K]``
    CBOW); ``last_hidden_state``: the input vectors (skip-gram) or their mean (CBOW)."""

    config: Word2VecConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, target_ids=None) -> ModelOutput:
        c = self.config
        vectors = self.param("embeddings", _uniform_init(c.embedding_dim), (c.vocab_size, c.embedding_dim))
        context = self.param("context", zeros(("vocab", "embed")), (c.vocab_size, c.embedding_dim))
        h = jnp.take(vectors, input_ids, axis=0).astype(self.dtype)  # [batch, slots, dim]
        if c.architecture == "cbow":
            mask = (jnp.ones_like(input_ids) if attention_mask is None else attention_mask)[..., None].astype(h.dtype)
            h = (h * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
        if target_ids is None:
            return ModelOutput(last_hidden_state=h)
        targets = jnp.take(context, target_ids, axis=0).astype(self.dtype)
        return ModelOutput(logits=jnp.einsum("...d,...kd->...k", h, targets), last_hidden_state=h)
