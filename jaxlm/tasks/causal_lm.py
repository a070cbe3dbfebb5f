"""Causal language modelling: next-token prediction on packed blocks of text.

The embedded corpus is small and is encoded in memory at start-up; ``data.paths`` /
``data.dataset`` are prepared once into token shards (:mod:`jaxlm.data.prepare`) and streamed:
windows are cut from the memory-mapped shards as batches are drawn."""

from __future__ import annotations

import logging
import math
from pathlib import Path


from jaxlm.config import Config
from jaxlm.data.corpus import load_documents, split_documents
from jaxlm.data.pipeline import CausalWindows, pack_blocks
from jaxlm.data.shards import ShardedTokens
from jaxlm.data.sources import SourceSpec
from jaxlm.data.tokenizer import get_tokenizer
from jaxlm.errors import DataError
from jaxlm.tasks.base import ArrayTask
from jaxlm.train.losses import cross_entropy_sum

log = logging.getLogger("jaxlm")


class CausalLMTask(ArrayTask):
    head = "causal_lm"

    def __init__(self, config: Config, run_dir: Path):
        data = config.data
        self.seed = config.run.seed
        if not SourceSpec.of(data).is_embedded:
            from jaxlm.data.prepare import load_prepared

            directory, manifest, self.tokenizer = load_prepared(config, run_dir, config.trainer.progress_bar)
            self._check_vocab(config)
            train, valid = (ShardedTokens(directory, manifest, split) for split in ("train", "valid"))
            self.train = CausalWindows(train, data.seq_len, data.train_stride)
            self.valid = CausalWindows(valid, data.seq_len, keep_last=True)
            self.valid_bytes = valid.text_bytes
            return
        train_text, valid_text = split_documents(load_documents(data.paths), data.validation_fraction)
        self.tokenizer = get_tokenizer(data.tokenizer.path, data.tokenizer.vocab_size, train_text,
                                       run_dir / "tokenizer")
        self._check_vocab(config)
        encode = self.tokenizer.encode_batch
        self.train = pack_blocks(encode(train_text), self.tokenizer.eos_id, data.seq_len, keep_last=False,
                                 stride=data.train_stride)
        self.valid = pack_blocks(encode(valid_text), self.tokenizer.eos_id, data.seq_len, keep_last=True)
        self.valid_bytes = sum(len(t.encode("utf-8")) for t in valid_text)

    def _check_vocab(self, config: Config) -> None:
        if self.tokenizer.vocab_size > config.model.vocab_size:
            raise DataError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but model.vocab_size="
                            f"{config.model.vocab_size}; set model.vocab_size={self.tokenizer.vocab_size}")
        if self.tokenizer.vocab_size < config.model.vocab_size:
            log.info("the tokenizer has %d tokens and model.vocab_size=%d: the last %d embedding rows are padding",
                     self.tokenizer.vocab_size, config.model.vocab_size,
                     config.model.vocab_size - self.tokenizer.vocab_size)

    def model_inputs(self, batch):
        return {"input_ids": batch["tokens"][:, :-1]}

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        logits = model.apply({"params": params}, **self.model_inputs(batch), rngs=rngs).logits
        return cross_entropy_sum(logits, batch["tokens"][:, 1:], batch["loss_mask"], label_smoothing)

    def eval_sums(self, model, params, batch):
        nll, tokens = self.loss(model, params, batch, None)
        return {"nll": nll, "tokens": tokens}

    def summarize(self, sums, complete):
        loss = sums["nll"] / max(sums["tokens"], 1.0)
        out = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))}
        if complete:  # bits per byte needs every validation token scored
            out["eval_bits_per_byte"] = sums["nll"] / math.log(2) / self.valid_bytes
        return out


