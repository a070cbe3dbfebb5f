"""LSTM or GRU encoder-decoder (Sutskever et al., 2014; Cho et al., 2014): stacked LSTMs or GRUs
(``cell``), the encoder's final state starts the decoder.

The encoder runs ``nn.RNN`` with ``seq_lengths``, so each row's final state is taken at its
last real token, never after the padding. The decoder is one time step (embed, stacked LSTM
cells, output projection) scanned over the target: teacher forcing feeds the reference
tokens; scheduled sampling (Bengio et al., 2015; ``teacher_forcing_ratio`` < 1, training
only) feeds, per row and step, the reference token with that probability and the model's own
previous argmax otherwise. Decoding runs the same step once per token, its state in the
``cache`` collection.

Params: ``embed`` (shared) or ``source_embed`` / ``target_embed``; ``encoder_{i}/cell`` and
``decoder/layer_{i}`` (OptimizedLSTMCell: ``ii .. io`` input, ``hi .. ho`` recurrent kernels;
GRUCell: ``ir iz in`` input, ``hr hz hn`` recurrent); ``decoder/output`` unless tied to the target
embedding. An LSTM layer's state is ``(c, h)``, a GRU layer's ``h``.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from jaxlm.layers.core import Dropout, dense, embed, zeros
from jaxlm.models.base import ModelConfig
from jaxlm.models.outputs import EncoderOutput, ModelOutput
from jaxlm.models.seq2seq import CachedState


class LSTMSeq2SeqConfig(ModelConfig):
    type: Literal["lstm_seq2seq"] = "lstm_seq2seq"
    cell: Literal["lstm", "gru"] = "lstm"
    """The recurrent cell of encoder and decoder: LSTM (``OptimizedLSTMCell``) or GRU (``GRUCell``)."""
    vocab_size: int = Field(32, gt=0)
    embedding_size: int = Field(128, gt=0)
    hidden_size: int = Field(256, gt=0)
    num_layers: int = Field(2, gt=0)
    """Stacked recurrent layers, in the encoder and in the decoder alike (layer i starts layer i)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Between stacked layers and before the output projection."""
    share_embeddings: bool = True
    """One embedding table for source and target tokens (they share one vocabulary)."""
    tie_word_embeddings: bool = False
    """The output projection is the target embedding, transposed (needs embedding_size == hidden_size)."""
    teacher_forcing_ratio: float = Field(1.0, ge=0, le=1)
    """Training: the probability of feeding the reference token rather than the model's own
    last prediction (scheduled sampling); 1.0 is pure teacher forcing. Evaluation always forces."""
    initializer_range: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _tied_sizes(self):
        if self.tie_word_embeddings and self.embedding_size != self.hidden_size:
            raise ValueError(f"model.tie_word_embeddings needs model.embedding_size ({self.embedding_size}) == "
                             f"model.hidden_size ({self.hidden_size})")
        return self

    @property
    def uses_dropout(self) -> bool:
        """Scheduled sampling draws its coins from the per-step training RNG, as dropout does."""
        return super().uses_dropout or self.teacher_forcing_ratio < 1


CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


def recurrent_cell(c: LSTMSeq2SeqConfig, dtype, name: str | None = None) -> nn.RNNCellBase:
    """The configured cell (``c.cell``) of ``c.hidden_size`` units."""
    axes = (None, "mlp")  # input rows are embeddings or hidden states: only the gate axis is named
    return CELLS[c.cell](
        c.hidden_size, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(), axes),
        bias_init=zeros(("mlp",)), dtype=dtype, name=name)


class DecoderStep(nn.Module):
    """One decoder time step, scanned over the target. ``state``: per-layer states (LSTM ``(c, h)``,
    GRU ``h``) and the previous step's prediction (the scheduled-sampling input)."""

    config: LSTMSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, state, reference, table):
        c = self.config
        carries, previous = state
        deterministic = not self.has_rng("dropout")
        token = reference
        if not deterministic:  # scheduled sampling (a ratio of 1.0 always keeps the reference)
            keep = jax.random.bernoulli(self.make_rng("dropout"), c.teacher_forcing_ratio, reference.shape)
            token = jnp.where(keep, reference, previous)
        x = jnp.take(table, token, axis=0).astype(self.dtype)
        new = []
        for i, carry in enumerate(carries):
            if i:
                x = Dropout(c.dropout)(x, deterministic=deterministic)
            carry, x = recurrent_cell(c, self.dtype, name=f"layer_{i}")(carry, x)
            new.append(carry)
        x = Dropout(c.dropout)(x, deterministic=deterministic)
        if c.tie_word_embeddings:
            logits = x @ table.T.astype(self.dtype)
        else:
            logits = dense(c.vocab_size, ("embed", "vocab"), std=c.initializer_range, name="output",
                           dtype=self.dtype)(x)
        return (tuple(new), logits.argmax(-1).astype(reference.dtype)), logits


class LSTMSeq2Seq(nn.Module):
    """``__call__(input_ids, attention_mask, decoder_input_ids)`` -> ``logits [batch, target, vocab]``;
    ``encode`` / ``decode`` split it for generation (:mod:`jaxlm.generation`)."""

    config: LSTMSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        make = lambda name: embed(c.vocab_size, c.embedding_size, ("vocab", "embed"),  # noqa: E731
                                  std=c.initializer_range, name=name, dtype=self.dtype)
        if c.share_embeddings:
            self.embed = make("embed")
        else:
            self.source_embed, self.target_embed = make("source_embed"), make("target_embed")
        self.encoder = [nn.RNN(recurrent_cell(c, self.dtype), return_carry=True, name=f"encoder_{i}")
                        for i in range(c.num_layers)]
        self.dropout = Dropout(c.dropout)
        self.state = CachedState()
        self.decoder = nn.scan(DecoderStep, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                               in_axes=(1, nn.broadcast), out_axes=1)(c, dtype=self.dtype, name="decoder")

    def _tables(self):
        if self.config.share_embeddings:
            return self.embed, self.embed
        return self.source_embed, self.target_embed

    def encode(self, input_ids, attention_mask=None) -> EncoderOutput:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        deterministic = not self.has_rng("dropout")
        lengths = attention_mask.sum(-1).astype(jnp.int32)
        x = self._tables()[0](input_ids)
        states = []
        for i, rnn in enumerate(self.encoder):
            if i:
                x = self.dropout(x, deterministic=deterministic)
            state, x = rnn(x, seq_lengths=lengths)
            states.append(state)
        return EncoderOutput(hidden=x, mask=attention_mask, state=tuple(states))

    def decode(self, decoder_input_ids, encoded: EncoderOutput, *, decode: bool = False) -> ModelOutput:
        """Logits of every decoder position. ``decode=True`` continues from the state in the
        ``cache`` collection; the first such call (no cache yet) only stores the encoder's state."""
        table = self._tables()[1].embedding
        start = (encoded.state, decoder_input_ids[:, 0])
        if decode:
            cached, initialized = self.state(encoded.state)
            if not initialized:
                return ModelOutput()
            start = (cached.value, decoder_input_ids[:, 0])
        (state, _), logits = self.decoder(start, decoder_input_ids, table)
        if decode:
            cached.value = state
        return ModelOutput(logits=nn.with_logical_constraint(logits, ("batch", "length", "vocab")))

    def __call__(self, input_ids, attention_mask, decoder_input_ids) -> ModelOutput:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask))
