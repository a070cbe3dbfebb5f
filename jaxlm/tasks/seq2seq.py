"""Sequence-to-sequence learning: an encoder reads the source, a decoder writes the target.

Data: a synthetic task (``copy``, ``reverse`` or ``sort`` strings of symbols, a pure function
of ``task.data_seed``) or parallel text (``task.source_file`` / ``task.target_file`` aligned
line by line, or CSV / TSV / JSONL rows in ``data.paths`` with ``task.source_column`` /
``task.target_column``) with a word vocabulary, a character vocabulary or a byte-level BPE
built from the training pairs and kept in the run directory.

Rows: ``input_ids`` / ``attention_mask`` (the source, right-padded to ``data.seq_len``),
``decoder_input_ids`` (``<s>`` + target), ``labels`` (target + ``</s>``) and
``decoder_attention_mask`` (1 on the labels that count), all ``data.seq_len + 1`` wide.
Training minimises the token cross-entropy (with ``trainer.label_smoothing``). Evaluation
reports ``eval_loss`` and ``eval_token_accuracy`` under teacher forcing, and from greedy
decoding inside the jitted eval step ``eval_exact_match``, ``eval_bleu`` (corpus BLEU on
target tokens, 0-100) and ``eval_rouge_l`` (mean ROUGE-L F1): for a word vocabulary these are
the whitespace-tokenized scores of the texts, for a character vocabulary character scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxlm.config import Config
from jaxlm.data.labeled import read_files
from jaxlm.data.packing import pack_pairs
from jaxlm.data.tokenizer import FILE, Tokenizer, get_tokenizer, load_tokenizer
from jaxlm.errors import ConfigError, DataError
from jaxlm.generate import GenerationOptions, decode_seq2seq
from jaxlm.tasks.base import ArrayTask
from jaxlm.train.losses import cross_entropy_sum
from jaxlm.train.text_metrics import BleuStats, bleu_from_stats, lcs_length, ngram_matches

log = logging.getLogger("jaxlm")

PAD, UNK, BOS, EOS = "<PAD>", "<UNK>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]


# ---------------------------------------------------------------------------------------------
# Data


def synthetic_pairs(kind: str, n: int, min_length: int, max_length: int, alphabet: int, seed: int
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` (source, target) pairs of symbols ``0 .. alphabet-1``: uniform lengths in
    ``[min_length, max_length]``, uniform symbols; the target copies, reverses or sorts the source."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, max_length + 1, n)
    sources = [rng.integers(0, alphabet, k).tolist() for k in lengths]
    make = {"copy": list, "reverse": lambda s: s[::-1], "sort": sorted}[kind]
    return sources, [make(s) for s in sources]


def symbol_tokenizer(alphabet: int) -> Tokenizer:
    """The synthetic tasks' vocabulary: the specials, then symbols ``"0" .. str(alphabet - 1)``,
    written as space-separated words (``jaxlm generate --prompt "3 1 4"``)."""
    vocab = {t: i for i, t in enumerate([*SPECIALS, *map(str, range(alphabet))])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins the symbols with spaces
    tok.add_special_tokens(SPECIALS)
    return Tokenizer(tok)


def char_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Every character of ``texts`` (spaces included) is a token: the specials, then the
    characters by frequency, at most ``vocab_size`` in all (the rarest become ``<UNK>``)."""
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                             show_progress=False))
    return Tokenizer(tok)


def text_tokenizer(config: Config, texts: list[str], cache: Path) -> Tokenizer:
    """``data.tokenizer.path``, or a ``task.vocabulary`` tokenizer trained on ``texts`` and cached in ``cache``."""
    t, kind = config.data.tokenizer, config.task.vocabulary
    if t.path is not None or kind == "bpe":
        return get_tokenizer(t.path, t.vocab_size, texts, cache)  # BPE: <|endoftext|> starts, ends and pads
    if (cache / FILE).is_file():
        return load_tokenizer(cache)
    if kind == "char":
        tok = char_tokenizer(texts, t.vocab_size)
    else:  # room for <s> and </s>, which the classic models' word vocabulary lacks
        tok = get_tokenizer(None, t.vocab_size - 2, texts, cache, kind="word", min_frequency=t.min_frequency,
                            lowercase=t.lowercase)
        tok.tok.add_special_tokens([BOS, EOS])
        tok = Tokenizer(tok.tok)  # finds </s> as its end-of-text token
    tok.save(cache)
    return tok


def special_ids(tok: Tokenizer) -> tuple[int, int, int]:
    """``(pad, start, end)`` ids: ``<PAD>`` / ``<s>`` / ``</s>``, or the end-of-text token for
    each one a tokenizer lacks (a GPT-2 BPE has only ``<|endoftext|>``)."""
    if tok.eos_id is None:
        raise DataError("the tokenizer has no end-of-text token (</s>, <|endoftext|> or [SEP]); a seq2seq "
                        "decoder needs one to stop")
    find = lambda *names: next((tok.token_id(n) for n in names if tok.token_id(n) is not None), tok.eos_id)  # noqa: E731
    return find(PAD, "<pad>", "[PAD]"), find(BOS, "[CLS]"), tok.eos_id


def frame_pairs(sources: list[list[int]], targets: list[list[int]], seq_len: int, ids: tuple[int, int, int]
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fixed-width rows (see the module docstring); sources and targets longer than ``seq_len``
    are cut. Returns the rows and which pairs were cut."""
    pad, start, end = ids
    n = len(sources)
    rows = {"input_ids": np.full((n, seq_len), pad, np.int32), "attention_mask": np.zeros((n, seq_len), np.int32),
            "decoder_input_ids": np.full((n, seq_len + 1), pad, np.int32),
            "labels": np.full((n, seq_len + 1), pad, np.int32),
            "decoder_attention_mask": np.zeros((n, seq_len + 1), np.int32)}
    cut = np.zeros(n, bool)
    for i, (s, t) in enumerate(zip(sources, targets)):
        cut[i] = len(s) > seq_len or len(t) > seq_len
        s, t = s[:seq_len], t[:seq_len]
        rows["input_ids"][i, :len(s)] = s
        rows["attention_mask"][i, :len(s)] = 1
        rows["decoder_input_ids"][i, :len(t) + 1] = [start, *t]
        rows["labels"][i, :len(t) + 1] = [*t, end]
        rows["decoder_attention_mask"][i, :len(t) + 1] = 1
    return rows, cut


def read_pairs(config: Config) -> tuple[list[str], list[str], str]:
    """Source and target texts of ``task.source_file`` / ``task.target_file`` or ``data.paths``."""
    t = config.task
    if t.source_file:
        files = [Path(t.source_file), Path(t.target_file)]
        for f in files:
            if not f.is_file():
                raise DataError(f"{f} does not exist; check task.source_file / task.target_file")
        sources, targets = (f.read_text(encoding="utf-8-sig").splitlines() for f in files)
        if len(sources) != len(targets):
            raise DataError(f"{files[0]} has {len(sources)} lines but {files[1]} has {len(targets)}; parallel "
                            "files must be aligned line by line")
        where = f"{files[0]} / {files[1]}"
    else:
        table = read_files(config.data.paths)
        sources = table.column(t.source_column, "task.source_column")
        targets = table.column(t.target_column, "task.target_column")
        where = table.where
    for row, (s, g) in enumerate(zip(sources, targets), 1):
        if not (isinstance(s, str) and s.strip() and isinstance(g, str) and g.strip()):
            raise DataError(f"{where} pair {row} is not two non-empty texts ({s!r}, {g!r}); fix or drop it")
    if len(sources) < 2:
        raise DataError(f"{where} holds {len(sources)} pair(s); seq2seq needs at least 2 (train and validation)")
    return sources, targets, where


# ---------------------------------------------------------------------------------------------
# The task


class Seq2SeqTask(ArrayTask):
    head = "seq2seq"

    def __init__(self, config: Config, run_dir: Path):
        t, seq_len = config.task, config.data.seq_len
        self.seed = config.run.seed
        limit = config.model.max_positions
        if limit is not None and seq_len + 1 > limit:
            raise ConfigError(f"data.seq_len={seq_len} needs {seq_len + 1} decoder positions but the model has "
                              f"{limit}; lower data.seq_len or raise model.max_position_embeddings")
        if t.source == "files":
            sources, targets, _ = read_pairs(config)
            self.tokenizer = self._text_rows(config, sources, targets, run_dir)
        else:
            if t.max_length > seq_len:
                raise ConfigError(f"task.max_length={t.max_length} exceeds data.seq_len={seq_len}; set "
                                  f"data.seq_len={t.max_length}")
            self.tokenizer = symbol_tokenizer(t.alphabet_size)
            self.tokenizer.save(run_dir / "tokenizer")
            offset = len(SPECIALS)
            pairs = synthetic_pairs(t.source, t.num_train_examples + t.num_eval_examples, t.min_length,
                                    t.max_length, t.alphabet_size, t.data_seed)
            pairs = [[[offset + x for x in s] for s in side] for side in pairs]
            rows, _ = frame_pairs(*pairs, seq_len, special_ids(self.tokenizer))
            split = t.num_train_examples
            self.train = {k: v[:split] for k, v in rows.items()}
            self.valid = {k: v[split:] for k, v in rows.items()}
        if self.tokenizer.vocab_size > config.model.vocab_size:
            raise DataError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but model.vocab_size="
                            f"{config.model.vocab_size}; set model.vocab_size={self.tokenizer.vocab_size}")
        self.pad_id, self.start_id, self.end_id = special_ids(self.tokenizer)
        if t.packing:
            if config.model.type != "transformer_seq2seq":
                raise ConfigError(f"task.packing needs model.type=transformer_seq2seq (attention masks keep packed "
                                  f"pairs apart), not {config.model.type}; set task.packing=false")
            self.train = pack_pairs(self.train, self.pad_id)

    def _text_rows(self, config, sources, targets, run_dir) -> Tokenizer:
        """Split the pairs (``data.validation_fraction`` to validation, seeded by ``task.data_seed``),
        build the tokenizer on the training pairs, fill ``self.train`` / ``self.valid``."""
        t, seq_len = config.task, config.data.seq_len
        order = np.random.default_rng(t.data_seed).permutation(len(sources))
        n_valid = max(1, round(len(sources) * config.data.validation_fraction))
        train_rows = order[n_valid:]
        tok = text_tokenizer(config, [sources[i] for i in train_rows] + [targets[i] for i in train_rows],
                             run_dir / "tokenizer")
        rows, cut = frame_pairs(tok.encode_batch(sources), tok.encode_batch(targets), seq_len, special_ids(tok))
        if cut.any():
            if t.truncation == "error":
                raise DataError(f"pair {cut.argmax() + 1} and {cut.sum() - 1} more are longer than data.seq_len="
                                f"{seq_len} tokens; raise data.seq_len or set task.truncation=truncate")
            log.info("cut %d of %d pairs to data.seq_len=%d tokens; task.truncation=error refuses them instead",
                     cut.sum(), len(cut), seq_len)
        self.train = {k: v[np.sort(train_rows)] for k, v in rows.items()}
        self.valid = {k: v[np.sort(order[:n_valid])] for k, v in rows.items()}
        return tok

    def generation_options(self, max_new_tokens: int, **options) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=max_new_tokens, eos_token_id=self.end_id, pad_token_id=self.pad_id,
                                 decoder_start_token_id=self.start_id, **options)

    def model_inputs(self, batch):
        """Packed training rows (``task.packing``) also bring their ``segment_ids``."""
        keys = ("input_ids", "attention_mask", "decoder_input_ids", "segment_ids", "decoder_segment_ids")
        return {k: batch[k] for k in keys if k in batch}

    def _logits(self, model, params, batch, rng):
        return model.apply({"params": params}, **self.model_inputs(batch),
                           rngs={"dropout": rng} if rng is not None else None).logits

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        logits = self._logits(model, params, batch, dropout_rng)
        return cross_entropy_sum(logits, batch["labels"], batch["decoder_attention_mask"], label_smoothing)

    def eval_sums(self, model, params, batch):
        labels, mask = batch["labels"], batch["decoder_attention_mask"]
        logits = self._logits(model, params, batch, None)
        nll, tokens = cross_entropy_sum(logits, labels, mask)
        correct = jnp.sum((logits.argmax(-1) == labels) * mask)

        width = labels.shape[1]
        options = self.generation_options(width)
        predicted = decode_seq2seq(model, params, batch["input_ids"], batch["attention_mask"], options)[:, 1:]
        positions = jnp.arange(width)
        pred_len = jnp.min(jnp.where(predicted == self.end_id, positions, width), axis=1)
        ref_len = mask.sum(1) - 1  # without </s>
        real = (mask.sum(1) > 0).astype(jnp.float32)  # the all-zero rows that pad the last batch count for nothing
        exact = (pred_len == ref_len) & jnp.all((predicted == labels) | (positions >= ref_len[:, None]), axis=1)
        matches, ngrams = jax.vmap(ngram_matches)(predicted, pred_len, labels, ref_len)
        lcs = jax.vmap(lcs_length)(predicted, pred_len, labels, ref_len)
        precision, recall = lcs / jnp.maximum(pred_len, 1), lcs / jnp.maximum(ref_len, 1)
        f1 = jnp.where(lcs > 0, 2 * precision * recall / jnp.maximum(precision + recall, 1e-9), 0.0)
        return {"nll": nll, "tokens": tokens, "correct": correct, "examples": real.sum(),
                "exact": jnp.sum(exact * real), "rouge_l": jnp.sum(f1 * real),
                "bleu_correct": (matches * real[:, None]).sum(0), "bleu_total": (ngrams * real[:, None]).sum(0),
                "hyp_len": jnp.sum(pred_len * real), "ref_len": jnp.sum(ref_len * real)}

    def summarize(self, sums, complete):
        examples, tokens = max(sums["examples"], 1.0), max(sums["tokens"], 1.0)
        stats = BleuStats(tuple(sums["bleu_correct"].tolist()), tuple(sums["bleu_total"].tolist()),
                          sums["hyp_len"], sums["ref_len"])
        return {"eval_loss": sums["nll"] / tokens, "eval_token_accuracy": sums["correct"] / tokens,
                "eval_exact_match": sums["exact"] / examples, "eval_bleu": bleu_from_stats(stats).score,
                "eval_rouge_l": sums["rouge_l"] / examples}
