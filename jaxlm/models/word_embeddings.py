"""What the classic text classifiers (TextCNN, RNN / GRU / LSTM) share: a config base, word
embeddings in Kim's four modes, pretrained vectors from word2vec / GloVe text files, and the
classifier on top.

They read word ids from the word-level vocabulary (``<PAD>`` = 0, ``<UNK>`` = 1; see
:func:`jaxlm.data.tokenizer.train_wordlevel`) with an ``attention_mask`` that is 0 on padding.
Embedding modes (Kim, 2014): ``rand`` (learned from scratch), ``static`` (pretrained and
frozen), ``non_static`` (pretrained and fine-tuned), ``multichannel`` (one frozen and one
fine-tuned copy, both read by the same filters).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import model_validator

from jaxlm.errors import DataError
from jaxlm.layers.core import Dropout, dense, normal
from jaxlm.models.base import ModelConfig

log = logging.getLogger("jaxlm")


class WordModelConfig(ModelConfig):
    vocab_size: int = 8192
    """Rows of the embedding table: at least the word vocabulary's size (data.tokenizer.vocab_size)."""
    embedding_dim: int = 128
    embedding_mode: Literal["rand", "static", "non_static", "multichannel"] = "rand"
    pretrained_embeddings: str | None = None
    """A word2vec / GloVe text file (``word v1 v2 ...`` per line) to initialise the embeddings from."""
    dropout: float = 0.5
    """Before the classifier (and between stacked recurrent layers)."""
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    pad_token_id: int = 0
    initializer_range: float = 0.1

    tokenizer_kind: ClassVar[str] = "word"
    """The classification task builds a word-level vocabulary for these models."""

    @model_validator(mode="after")
    def _pretrained_for_frozen(self):
        if self.embedding_mode in ("static", "multichannel") and not self.pretrained_embeddings:
            raise ValueError(f"model.embedding_mode={self.embedding_mode} keeps pretrained embeddings frozen: set "
                             "model.pretrained_embeddings to a word2vec / GloVe text file (or use rand / non_static)")
        return self


class WordEmbeddings(nn.Module):
    """``[batch, length]`` ids -> one ``[batch, length, embedding_dim]`` array per channel,
    zero on padding (so padding never reaches a filter or a pooled value)."""

    config: WordModelConfig
    embedding_init: Callable | None = None
    """Initialiser of the table (pretrained vectors); ``None``: normal(initializer_range)."""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        c = self.config
        init = normal(c.initializer_range, ("vocab", "embed")) if self.embedding_init is None else \
            nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed"))

        def table(name):
            return nn.Embed(c.vocab_size, c.embedding_dim, embedding_init=init, dtype=self.dtype, name=name)

        mask = attention_mask[..., None].astype(self.dtype)
        if c.embedding_mode == "multichannel":
            tuned, frozen = table("embeddings")(input_ids), table("static_embeddings")(input_ids)
            return [self.perturb("embeddings_output", tuned) * mask,
                    self.perturb("static_embeddings_output", jax.lax.stop_gradient(frozen)) * mask]
        x = table("embeddings")(input_ids)
        if c.embedding_mode == "static":
            x = jax.lax.stop_gradient(x)
        return [self.perturb("embeddings_output", x) * mask]  # the adversarial hook (jaxlm/train/adversarial.py)


def classifier_logits(config: WordModelConfig, features, deterministic: bool, dtype):
    """Dropout and a ``num_labels`` dense on pooled ``[batch, features]``."""
    x = Dropout(config.dropout)(features, deterministic=deterministic)
    return dense(config.num_labels, ("mlp", None), std=config.initializer_range, name="classifier", dtype=dtype)(x)


def pretrained_embedding_init(path: str, vocab: dict[str, int], rows: int, dim: int) -> Callable:
    """An initialiser that puts the vectors of ``path`` at the ids of ``vocab``; words the file
    lacks start uniform in [-0.25, 0.25] (Kim's choice), ``<PAD>`` at zero."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"model.pretrained_embeddings={path!r} does not exist; give a word2vec / GloVe text file")
    table = np.random.default_rng(0).uniform(-0.25, 0.25, (rows, dim)).astype(np.float32)
    table[0] = 0.0
    found = 0
    with file.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec's "count dim" header
            if len(parts) != dim + 1:
                raise DataError(f"{path} line {n} has {len(parts) - 1} numbers but model.embedding_dim={dim}; set "
                                f"model.embedding_dim to the vectors' size")
            word = parts[0]
            i = vocab.get(word, vocab.get(word.lower()))
            if i is not None and i < rows:
                table[i] = np.asarray(parts[1:], np.float32)
                found += 1
    log.info("pretrained embeddings: %d of the %d vocabulary words found in %s", found, len(vocab), path)

    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(table, dtype)

    return init
