"""Recurrent text classifiers: Elman RNN, GRU and LSTM, uni- or bidirectional, stacked, with
inter-layer dropout and a choice of pooling over time.

Padding-correct through ``nn.RNN``'s ``seq_lengths``: the forward direction stops at each
text's last word and the backward direction (``reverse=True, keep_order=True``) starts
there, never at the padded end of the row; ``final`` pooling reads the forward state at the
last word and the backward state at the first, ``mean`` / ``max`` pool the words only.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax.numpy as jnp
from pydantic import Field

from jaxlm.layers.core import Dropout, zeros
from jaxlm.models.outputs import ModelOutput
from jaxlm.models.word_embeddings import WordEmbeddings, WordModelConfig, classifier_logits

CELLS = {"rnn": nn.SimpleCell, "gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}


class RNNConfig(WordModelConfig):
    type: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "gru", "lstm"] = "lstm"
    """Elman (tanh) RNN, GRU or LSTM."""
    bidirectional: bool = False
    hidden_size: int = Field(128, gt=0)
    """Per direction."""
    num_layers: int = Field(1, gt=0)
    pooling: Literal["final", "mean", "max"] = "final"
    """The text's vector: the last states (both directions' ends), or the mean / max of the top layer's outputs."""


class RNNForSequenceClassification(nn.Module):
    """``logits``: ``[batch, num_labels]``; ``last_hidden_state``: the top layer's
    ``[batch, length, hidden_size x directions]`` outputs (undefined on padding)."""

    config: RNNConfig
    embedding_init: object = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None) -> ModelOutput:
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        deterministic = not self.has_rng("dropout")
        channels = WordEmbeddings(c, self.embedding_init, dtype=self.dtype, name="embed")(input_ids, attention_mask)
        x = jnp.concatenate(channels, -1)
        lengths = attention_mask.sum(-1).astype(jnp.int32)
        directions = ("forward", "backward") if c.bidirectional else ("forward",)
        for layer in range(c.num_layers):
            if layer:
                x = Dropout(c.dropout)(x, deterministic=deterministic)
            x = jnp.concatenate([
                nn.RNN(self._cell(), name=f"{d}_{layer}")(x, seq_lengths=lengths, reverse=d == "backward",
                                                         keep_order=True)
                for d in directions], -1)
        valid = (jnp.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
        if c.pooling == "final":
            last = jnp.take_along_axis(x, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
            features = last[:, :c.hidden_size]
            if c.bidirectional:  # the backward direction ends at the first word
                features = jnp.concatenate([features, x[:, 0, c.hidden_size:]], -1)
        elif c.pooling == "mean":
            features = jnp.where(valid, x, 0).sum(1) / jnp.maximum(lengths, 1)[:, None].astype(x.dtype)
        else:  # an empty row (the padding of a last eval batch) pools to zeros, not -inf
            features = jnp.where(lengths[:, None] > 0, jnp.where(valid, x, -jnp.inf).max(1), 0)
        logits = classifier_logits(c, features, deterministic, self.dtype)
        return ModelOutput(logits=logits, last_hidden_state=x)

    def _cell(self):
        c = self.config
        init = nn.initializers
        return CELLS[c.cell](
            c.hidden_size, dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(init.lecun_normal(), ("embed", "mlp")),
            recurrent_kernel_init=nn.with_logical_partitioning(init.orthogonal(), ("mlp", None)),
            bias_init=zeros(("mlp",)), parent=None)  # owned by the nn.RNN it is passed to
