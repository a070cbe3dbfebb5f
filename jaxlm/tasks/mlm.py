"""Masked language modelling (BERT pretraining), optionally with next-sentence or
sentence-order prediction on sentence pairs (``task.sentence_pairs``).

Training rows are masked afresh every epoch by :class:`~jaxlm.data.masking.MaskedBatches`
(reproducible and resumable from the iterator position the checkpoint saves); validation
rows are masked once, so every evaluation scores the same predictions.

``data.paths`` / ``data.dataset`` are prepared into token shards (:mod:`jaxlm.data.prepare`)
and streamed as ``[CLS] block [SEP]`` rows, validation rows masked as they are read. Sentence
pairs need sentences, which shards do not keep: NSP / SOP read ``data.paths`` in memory.

With sentence pairs the loss is ``BertForPreTraining``'s: masked-token cross-entropy plus
the pair classification cross-entropy. To keep the step's ``sum / weight`` exact under
gradient accumulation, each pair's loss is weighted by its number of masked tokens: the
summed loss over the masked-token count is then the MLM mean plus the (masked-token
weighted) pair mean.
"""

from __future__ import annotations

import math
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data.bert_inputs import FramedBlocks, pack_blocks, sentence_pairs, split_sentences
from jaxlm.data.corpus import load_documents, split_documents
from jaxlm.data.masking import EVAL_EPOCH, Masker, MaskedBatches, MaskedRows, row_rng
from jaxlm.data.pipeline import BatchIterator
from jaxlm.data.shards import ShardedTokens
from jaxlm.data.sources import SourceSpec
from jaxlm.errors import ConfigError
from jaxlm.tasks.encoder import EncoderTask, encoder_tokenizer, framer
from jaxlm.train.losses import cross_entropy_sum

PAIRS_STREAM = 1  # generator streams for building the sentence pairs of each split
VALID_PAIRS_STREAM = 2


@flax.struct.dataclass
class ScoredPositions:
    """The positions a masked-LM loss scores, with their ``targets`` and ``weights`` (``[batch, P]``).

    The prediction head then runs over ``P`` positions a row instead of all of them. At BERT's 15 %
    that skips 85 % of the vocabulary projection, its logits and their gradients (18 % of
    bert-base's training FLOPs at 128 tokens, 16 % of its step time: docs/benchmarks.md). ``P`` is a
    bound on the scored positions of any row (:meth:`Masker.most_selected`); rows with fewer are
    padded with weightless positions. With ``positions=None`` (``P`` would be the whole row) every
    position is scored.
    """

    positions: jax.Array | None
    targets: jax.Array
    weights: jax.Array
    total: jax.Array
    """The weight of all scored positions before gathering, to check that none was left out."""

    @classmethod
    def of(cls, labels: jax.Array, attention_mask: jax.Array, most: int) -> ScoredPositions:
        weights = (labels >= 0) * attention_mask
        targets = jnp.maximum(labels, 0)
        if most >= labels.shape[1]:
            return cls(None, targets, weights, weights.sum())
        positions = jnp.argsort(weights == 0, axis=1, stable=True)[:, :most]  # scored positions first
        return cls(positions, jnp.take_along_axis(targets, positions, 1), jnp.take_along_axis(weights, positions, 1),
                   weights.sum())

    def checked(self, sums: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """``(loss sum, weight sum)``, the loss NaN if a row had more scored positions than ``P``
        (labels not made by the task's masker): a loud failure instead of a silently partial loss."""
        loss, count = sums
        return jnp.where(count == self.total, loss, jnp.nan), count


class MaskedLMTask(EncoderTask):
    def __init__(self, config: Config, run_dir: Path):
        super().__init__(config)
        t, data = config.task, config.data
        self.head, self.pairs = t.head, t.sentence_pairs
        needs = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
        spec = SourceSpec.of(data)
        if self.pairs and spec.dataset:
            raise ConfigError("task.sentence_pairs needs sentences, which prepared shards do not keep: NSP / SOP "
                              "read data.paths text files in memory; set task.sentence_pairs=null to stream "
                              "data.dataset")
        if not spec.is_embedded and not self.pairs:  # prepared shards, streamed; validation masked as read
            from jaxlm.data.prepare import load_prepared

            directory, manifest, tok = load_prepared(config, run_dir, config.trainer.progress_bar)
            tok = encoder_tokenizer(config, tok, run_dir, needs)
            frame = framer(tok, data.seq_len)
            self.masker = self._masker(config, tok)
            self.train = FramedBlocks(ShardedTokens(directory, manifest, "train"), frame, keep_last=False)
            self.valid = MaskedRows(FramedBlocks(ShardedTokens(directory, manifest, "valid"), frame, keep_last=True),
                                    self.masker, self.seed)
            return
        train_text, valid_text = split_documents(load_documents(data.paths), data.validation_fraction)
        tok = encoder_tokenizer(config, train_text, run_dir, needs)
        frame = framer(tok, data.seq_len)
        if self.pairs:
            def rows(texts, stream):
                sentences = [split_sentences(text) for text in texts]
                ids = iter(tok.encode_batch([s for doc in sentences for s in doc]))
                docs = [[next(ids) for _ in doc] for doc in sentences]
                return sentence_pairs(docs, frame, self.pairs, np.random.default_rng([self.seed, stream]))

            train, valid = rows(train_text, PAIRS_STREAM), rows(valid_text, VALID_PAIRS_STREAM)
        else:
            train = pack_blocks(tok.encode_batch(train_text), frame, keep_last=False)
            valid = pack_blocks(tok.encode_batch(valid_text), frame, keep_last=True)
        self.masker = self._masker(config, tok)
        self.train = {**train, "row": np.arange(len(train["input_ids"]))}
        rngs = [row_rng(self.seed, EVAL_EPOCH, r) for r in range(len(valid["input_ids"]))]
        valid["input_ids"], valid["labels"] = self.masker(valid["input_ids"], rngs)
        self.valid = valid

    @staticmethod
    def _masker(config: Config, tok) -> Masker:
        t = config.task
        return Masker.for_vocab(
            tok.tok.get_vocab(), tok.special_ids, continuation_prefix=tok.continuation_prefix,
            probability=t.mask_probability, mask_fraction=t.mask_token_fraction,
            random_fraction=t.random_token_fraction, unit=t.masking, span_p=t.span_p, max_span=t.max_span)

    def train_iterator(self, batch_size, process_index=0, process_count=1):
        batches = BatchIterator(self.train, batch_size, self.seed, process_index=process_index,
                                process_count=process_count)
        return MaskedBatches(batches, self.masker)

    def _sums(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        scored = ScoredPositions.of(batch["labels"], batch["attention_mask"],
                                    self.masker.most_selected(batch["labels"].shape[1]))
        out = self.apply(model, params, {**self.model_inputs(batch), "masked_positions": scored.positions},
                         dropout_rng)
        weights, targets = scored.weights, scored.targets
        nll, count = scored.checked(cross_entropy_sum(out.logits, targets, weights, label_smoothing))
        sums = {"mlm_nll": nll, "mlm_tokens": count,
                "mlm_correct": jnp.sum((out.logits.argmax(-1) == targets) * weights)}
        if self.pairs:
            logits, labels = out.seq_relationship_logits, batch["next_sentence_label"]
            real = batch["attention_mask"][:, 0]
            per_pair = weights.sum(1)
            sums["pair_weighted_nll"] = cross_entropy_sum(logits, labels, per_pair, label_smoothing)[0]
            sums["pair_nll"], sums["pairs"] = cross_entropy_sum(logits, labels, real)
            sums["pair_correct"] = jnp.sum((logits.argmax(-1) == labels) * real)
        return sums

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        sums = self._sums(model, params, batch, dropout_rng, label_smoothing)
        return sums["mlm_nll"] + sums.get("pair_weighted_nll", 0.0), sums["mlm_tokens"]

    def eval_sums(self, model, params, batch):
        return self._sums(model, params, batch, None)

    def summarize(self, sums, complete):
        mlm = float(sums["mlm_nll"] / max(sums["mlm_tokens"], 1.0))
        out = {"eval_loss": mlm, "eval_mlm_loss": mlm, "eval_perplexity": math.exp(min(mlm, 700.0)),
               "eval_mlm_accuracy": float(sums["mlm_correct"] / max(sums["mlm_tokens"], 1.0))}
        if self.pairs:
            pair = float(sums["pair_nll"] / max(sums["pairs"], 1.0))
            out["eval_loss"] = mlm + pair
            out[f"eval_{self.pairs}_loss"] = pair
            out[f"eval_{self.pairs}_accuracy"] = float(sums["pair_correct"] / max(sums["pairs"], 1.0))
        return out
