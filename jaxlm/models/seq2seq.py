"""The Transformer encoder-decoder (Vaswani et al., 2017) on the shared attention layer.

Encoder layers: self-attention and a feed-forward block; decoder layers: causal
self-attention, cross-attention over the encoder output, a feed-forward block. Each sublayer
is wrapped post-LN (``norm(x + f(x))``, the paper's) or pre-LN (``x + f(norm(x))``, with a final
norm per stack) by ``norm_position``. Positions are sinusoidal (the paper's), learned or
rotary; source and target share one embedding table or have one each, and the output
projection may be the target table (``tie_word_embeddings``). Field names follow Hugging
Face's BART / Marian configs; :class:`TransformerVariants` adds grouped-query heads, RMSNorm
and sliding windows.

Decoding (``decode=True``) keeps the decoder's self-attention keys / values in the ``cache``
collection and computes the cross-attention keys / values once, on the call that creates the
cache (:func:`jaxlm.generate._prefill_seq2seq`).

Params: ``shared`` (or ``encoder_embed`` / ``decoder_embed``); ``encoder`` / ``decoder`` with
``layers_{i}/{self_attn, encoder_attn}/{q,k,v,out}_proj``, ``fc1``, ``fc2``, the
``*_layer_norm`` s, ``embed_positions`` (learned) and ``layer_norm`` (pre-LN); ``decoder/lm_head``
unless tied.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import flax.linen as nn
import jax.numpy as jnp
from pydantic import Field

from jaxlm.layers.attention import SelfAttention, segment_mask, segment_positions
from jaxlm.layers.core import ACTIVATIONS, Dropout, dense, embed, norm
from jaxlm.layers.embeddings import PositionType, add_positions
from jaxlm.models.base import ModelConfig, TransformerVariants
from jaxlm.models.outputs import EncoderOutput, ModelOutput


class TransformerSeq2SeqConfig(ModelConfig, TransformerVariants):
    type: Literal["transformer_seq2seq"] = "transformer_seq2seq"
    vocab_size: int = Field(32, gt=0)
    d_model: int = Field(512, gt=0)
    encoder_layers: int = Field(6, gt=0)
    decoder_layers: int = Field(6, gt=0)
    encoder_attention_heads: int = Field(8, gt=0)
    decoder_attention_heads: int = Field(8, gt=0)
    encoder_ffn_dim: int = Field(2048, gt=0)
    decoder_ffn_dim: int = Field(2048, gt=0)
    activation_function: Literal["relu", "gelu", "gelu_new"] = "relu"
    dropout: float = Field(0.1, ge=0, lt=1)
    """On embeddings and every sublayer's output."""
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    activation_dropout: float = Field(0.0, ge=0, lt=1)
    """Inside the feed-forward blocks, after the activation."""
    max_position_embeddings: int = Field(512, gt=0)
    share_embeddings: bool = True
    """One embedding table for source and target tokens (they share one vocabulary)."""
    tie_word_embeddings: bool = True
    """The output projection is the target embedding table, transposed."""
    scale_embedding: bool = True
    """Multiply token embeddings by sqrt(d_model), as the paper does."""
    layer_norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    positions: PositionType = "sinusoidal"
    norm_position: Literal["pre", "post"] = "post"

    head_fields: ClassVar[tuple[str, tuple[str, ...]]] = ("d_model", ("encoder_attention_heads",
                                                                      "decoder_attention_heads"))


class CachedState(nn.Module):
    """Holds a value between decoding calls (``cache`` collection), starting from ``initial``."""

    @nn.compact
    def __call__(self, initial) -> tuple[nn.Variable, bool]:
        """The variable, and whether it existed before this call."""
        existed = self.has_variable("cache", "state")
        return self.variable("cache", "state", lambda: initial), existed


class FeedForward(nn.Module):
    config: TransformerSeq2SeqConfig
    ffn_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        c = self.config
        h = dense(self.ffn_dim, ("embed", "mlp"), std=c.init_std, name="fc1", dtype=self.dtype)(x)
        h = Dropout(c.activation_dropout)(ACTIVATIONS[c.activation_function](h), deterministic=deterministic)
        return dense(c.d_model, ("mlp", "embed"), std=c.init_std, name="fc2", dtype=self.dtype)(h)


def residual(c: TransformerSeq2SeqConfig, x, f, layer_norm: nn.Module, deterministic: bool):
    """``f`` with dropout and a residual, normalised before (pre-LN) or after (post-LN)."""
    if c.norm_position == "pre":
        return x + Dropout(c.dropout)(f(layer_norm(x)), deterministic=deterministic)
    return layer_norm(x + Dropout(c.dropout)(f(x), deterministic=deterministic))


def attention(c: TransformerSeq2SeqConfig, heads: int, dtype, name: str, **kw) -> SelfAttention:
    return SelfAttention(
        num_heads=heads, head_dim=c.d_model // heads, num_kv_heads=c.num_kv_heads, dropout_rate=c.attention_dropout,
        init_std=c.init_std, out_init_std=c.init_std, qkv_names=("q_proj", "k_proj", "v_proj"), out_name="out_proj",
        implementation=c.attention_implementation, dtype=dtype, name=name, **kw)


class EncoderLayer(nn.Module):
    config: TransformerSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        attn = attention(c, c.encoder_attention_heads, self.dtype, "self_attn",
                         rope_theta=c.rope_theta if c.positions == "rotary" else None, sliding_window=c.sliding_window)
        ln = lambda name: norm(c.norm_type, c.layer_norm_eps, name=name, dtype=self.dtype)  # noqa: E731
        x = residual(c, x, lambda h: attn(h, mask, deterministic=deterministic)[0], ln("self_attn_layer_norm"),
                     deterministic)
        ffn = FeedForward(c, c.encoder_ffn_dim, self.dtype, name="ffn")
        return residual(c, x, lambda h: ffn(h, deterministic), ln("final_layer_norm"), deterministic)


class DecoderLayer(nn.Module):
    config: TransformerSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, memory, memory_mask, deterministic: bool, decode: bool, self_mask=None):
        """``memory``: the encoder output, or ``None`` once decoding has cached its keys / values;
        ``self_mask``: packed rows' segments (the causal mask is added)."""
        c = self.config
        heads = c.decoder_attention_heads
        self_attn = attention(c, heads, self.dtype, "self_attn", causal=True, sliding_window=c.sliding_window,
                              rope_theta=c.rope_theta if c.positions == "rotary" else None)
        ln = lambda name: norm(c.norm_type, c.layer_norm_eps, name=name, dtype=self.dtype)  # noqa: E731
        x = residual(c, x, lambda h: self_attn(h, self_mask, decode=decode, deterministic=deterministic)[0],
                     ln("self_attn_layer_norm"), deterministic)
        cross = attention(c, heads, self.dtype, "encoder_attn", cross=True)
        x = residual(c, x, lambda h: cross(h, memory_mask, kv=memory, decode=decode, deterministic=deterministic)[0],
                     ln("encoder_attn_layer_norm"), deterministic)
        ffn = FeedForward(c, c.decoder_ffn_dim, self.dtype, name="ffn")
        return residual(c, x, lambda h: ffn(h, deterministic), ln("final_layer_norm"), deterministic)


def _embed_tokens(c: TransformerSeq2SeqConfig, table, ids, positions, dtype, deterministic: bool):
    x = jnp.take(table, ids, axis=0).astype(dtype)
    if c.scale_embedding:
        x = x * math.sqrt(c.d_model)
    x = add_positions(x, positions, c.positions, c.max_position_embeddings, std=c.init_std, name="embed_positions",
                      dtype=dtype)
    return Dropout(c.dropout)(x, deterministic=deterministic)


class Encoder(nn.Module):
    config: TransformerSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, table, positions=None):
        c = self.config
        deterministic = not self.has_rng("dropout")
        positions = jnp.arange(input_ids.shape[1]) if positions is None else positions
        x = _embed_tokens(c, table, input_ids, positions, self.dtype, deterministic)
        for i in range(c.encoder_layers):
            x = nn.with_logical_constraint(
                EncoderLayer(c, self.dtype, name=f"layers_{i}")(x, attention_mask, deterministic),
                ("batch", "length", "embed"))
        if c.norm_position == "pre":
            x = norm(c.norm_type, c.layer_norm_eps, name="layer_norm", dtype=self.dtype)(x)
        return x


class Decoder(nn.Module):
    config: TransformerSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, decoder_input_ids, encoded: EncoderOutput, table, decode: bool, segment_ids=None):
        c = self.config
        deterministic = not self.has_rng("dropout")
        length = decoder_input_ids.shape[1]
        positions, memory = jnp.arange(length), encoded.hidden
        self_mask, memory_mask = None, encoded.mask
        if segment_ids is not None:  # packed rows: encoded.mask holds the source's segment ids
            positions, self_mask = segment_positions(segment_ids), segment_mask(segment_ids)
            memory_mask = segment_mask(segment_ids, encoded.mask)
        if decode:  # continue after the tokens already decoded; the first call only builds the cache
            offset, started = CachedState(name="position")(jnp.zeros((), jnp.int32))
            positions = offset.value + positions
            if started:
                offset.value = offset.value + length
                memory = None  # cross-attention reads its cached keys / values
        x = _embed_tokens(c, table, decoder_input_ids, positions, self.dtype, deterministic)
        for i in range(c.decoder_layers):
            x = nn.with_logical_constraint(
                DecoderLayer(c, self.dtype, name=f"layers_{i}")(x, memory, memory_mask, deterministic, decode,
                                                                self_mask),
                ("batch", "length", "embed"))
        if c.norm_position == "pre":
            x = norm(c.norm_type, c.layer_norm_eps, name="layer_norm", dtype=self.dtype)(x)
        if c.tie_word_embeddings:
            return x @ table.T.astype(self.dtype)
        return dense(c.vocab_size, ("embed", "vocab"), std=c.init_std, name="lm_head", dtype=self.dtype)(x)


class TransformerSeq2Seq(nn.Module):
    """``__call__(input_ids, attention_mask, decoder_input_ids)`` -> ``logits [batch, target, vocab]``;
    ``encode`` / ``decode`` split it for generation (:mod:`jaxlm.generate`)."""

    config: TransformerSeq2SeqConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        make = lambda name: embed(c.vocab_size, c.d_model, ("vocab", "embed"), std=c.init_std,  # noqa: E731
                                  name=name, dtype=self.dtype)
        if c.share_embeddings:
            self.shared = make("shared")
        else:
            self.encoder_embed, self.decoder_embed = make("encoder_embed"), make("decoder_embed")
        self.encoder = Encoder(c, self.dtype)
        self.decoder = Decoder(c, self.dtype)

    def _tables(self):
        if self.config.share_embeddings:
            return self.shared.embedding, self.shared.embedding
        return self.encoder_embed.embedding, self.decoder_embed.embedding

    def encode(self, input_ids, attention_mask=None, segment_ids=None) -> EncoderOutput:
        """``segment_ids``: rows packed with several sources (:func:`segment_mask`; they replace
        ``attention_mask`` and are the output's ``mask``)."""
        if segment_ids is not None:
            hidden = self.encoder(input_ids, segment_mask(segment_ids), self._tables()[0],
                                  segment_positions(segment_ids))
            return EncoderOutput(hidden=hidden, mask=segment_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return EncoderOutput(hidden=self.encoder(input_ids, attention_mask, self._tables()[0]), mask=attention_mask)

    def decode(self, decoder_input_ids, encoded: EncoderOutput, *, decode: bool = False,
               decoder_segment_ids=None) -> ModelOutput:
        """Logits of every decoder position; ``decode=True`` continues from the ``cache`` collection."""
        logits = self.decoder(decoder_input_ids, encoded, self._tables()[1], decode, decoder_segment_ids)
        return ModelOutput(logits=nn.with_logical_constraint(logits, ("batch", "length", "vocab")))

    def __call__(self, input_ids, attention_mask, decoder_input_ids, *, segment_ids=None,
                 decoder_segment_ids=None) -> ModelOutput:
        """``segment_ids`` / ``decoder_segment_ids``: rows packed with several pairs, each target in
        the segment of its source (:mod:`jaxlm.data.packing`)."""
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask, segment_ids),
                           decoder_segment_ids=decoder_segment_ids)
