"""TextCNN (Kim, 2014): convolutions of several widths over word embeddings, ReLU, max over
time, dropout and a linear classifier.

Padding-correct: a window is pooled only if it lies inside the text (texts shorter than the
widest filter keep their first window, which then covers zeroed padding), so a prediction
does not depend on how much padding follows the text.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax.numpy as jnp
from pydantic import Field

from jaxlm.layers.core import normal, zeros
from jaxlm.models.outputs import ModelOutput
from jaxlm.models.word_embeddings import WordEmbeddings, WordModelConfig, classifier_logits


class TextCNNConfig(WordModelConfig):
    type: Literal["text_cnn"] = "text_cnn"
    kernel_sizes: tuple[int, ...] = (3, 4, 5)
    num_filters: int = Field(100, gt=0)
    """Filters per kernel size."""


class TextCNNForSequenceClassification(nn.Module):
    """``logits``: ``[batch, num_labels]``; ``last_hidden_state``: the pooled ``[batch, filters]``."""

    config: TextCNNConfig
    embedding_init: object = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None) -> ModelOutput:
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        channels = WordEmbeddings(c, self.embedding_init, dtype=self.dtype, name="embed")(input_ids, attention_mask)
        lengths = attention_mask.sum(-1)
        pooled = []
        for k in c.kernel_sizes:
            conv = nn.Conv(c.num_filters, (k,), padding=[(0, max(0, k - input_ids.shape[1]))], dtype=self.dtype,
                           kernel_init=normal(c.initializer_range, (None, "embed", "mlp")),
                           bias_init=zeros(("mlp",)), name=f"conv_{k}")
            h = nn.relu(sum(conv(x) for x in channels))  # [batch, windows, filters]; channels share filters
            start = jnp.arange(h.shape[1])
            inside = start[None, :] + k <= jnp.maximum(lengths, k)[:, None]
            pooled.append(jnp.where(inside[..., None], h, -jnp.inf).max(1))
        features = jnp.concatenate(pooled, -1)
        logits = classifier_logits(c, features, not self.has_rng("dropout"), self.dtype)
        return ModelOutput(logits=logits, last_hidden_state=features)
