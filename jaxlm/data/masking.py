"""Masked-LM inputs: choose the tokens to predict and corrupt them as BERT does.

Of the tokens that are neither special nor padding, a ``probability`` share (15 %) is
selected; of those, ``mask_fraction`` (80 %) become ``[MASK]``, ``random_fraction`` (10 %) a
random non-special token and the rest stay as they are. Labels hold the original id at
selected positions and ``-100`` elsewhere (the Hugging Face convention).

Selection units:
  ``token``       each token on its own (BERT);
  ``whole_word``  a word and its WordPiece ``##`` continuation pieces together (BERT's
                  whole-word masking); a word is never split;
  ``span``        runs of whole words with geometric lengths (SpanBERT: ``Geo(span_p)``
                  words, clipped at ``max_span``), until the budget is spent.

Each row gets a budget of ``probability x candidates`` tokens, stochastically rounded, so
selection rates are exact in expectation whatever the row length; the 80/10/10 split is
rounded the same way. Every row is masked from its own generator, a pure function of
``(seed, epoch, row)`` (:class:`MaskedBatches`): masks change every epoch (dynamic masking,
as RoBERTa), are independent of batch composition and process count, and resume exactly
with the batch iterator's saved position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from jaxlm.data.pipeline import BatchIterator
from jaxlm.errors import ConfigError

IGNORE = -100
EVAL_EPOCH = 2**32 - 1
"""The generator stream of the fixed validation masks (an epoch no run reaches)."""
Unit = Literal["token", "whole_word", "span"]


def row_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, row])


def _round(x: float, rng: np.random.Generator) -> int:
    """``x`` rounded up with probability ``frac(x)``: unbiased integer counts."""
    whole = int(x)
    return whole + int(rng.random() < x - whole)


@dataclass(frozen=True)
class Masker:
    mask_id: int
    special: np.ndarray
    """bool ``[vocab]``: ids never selected nor drawn as random replacements."""
    probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    unit: Unit = "token"
    continuation: np.ndarray | None = None
    """bool ``[vocab]``: the id continues the word before it (WordPiece ``##`` pieces);
    needed by ``whole_word`` and ``span``."""
    span_p: float = 0.2
    max_span: int = 10

    @classmethod
    def for_vocab(cls, vocab: dict[str, int], special_ids: Sequence[int], mask_token: str = "[MASK]",
                  continuation_prefix: str | None = "##", **settings) -> Masker:
        special = np.zeros(max(vocab.values()) + 1, bool)
        special[list(special_ids)] = True
        continuation = None
        if continuation_prefix is not None:
            continuation = np.zeros_like(special)
            continuation[[i for t, i in vocab.items() if t.startswith(continuation_prefix)]] = True
        return cls(mask_id=vocab[mask_token], special=special, continuation=continuation, **settings)

    def __post_init__(self):
        if self.unit != "token" and self.continuation is None:
            raise ConfigError(f"task.masking={self.unit} needs word boundaries (WordPiece's ## pieces): use a "
                              "WordPiece tokenizer, or task.masking=token")

    def __call__(self, ids: np.ndarray, rngs: Sequence[np.random.Generator]) -> tuple[np.ndarray, np.ndarray]:
        """``(corrupted ids, labels)`` for ``ids [batch, length]``, row ``i`` drawn from ``rngs[i]``."""
        corrupted = ids.copy()
        labels = np.full_like(ids, IGNORE)
        normal = np.flatnonzero(~self.special)
        for row, rng in zip(range(len(ids)), rngs):
            chosen = self.select(ids[row], rng)
            labels[row, chosen] = ids[row, chosen]
            chosen = rng.permutation(chosen)
            n_mask = _round(self.mask_fraction * len(chosen), rng)
            n_random = min(_round(self.random_fraction * len(chosen), rng), len(chosen) - n_mask)
            corrupted[row, chosen[:n_mask]] = self.mask_id
            corrupted[row, chosen[n_mask:n_mask + n_random]] = rng.choice(normal, n_random)
        return corrupted, labels

    def most_selected(self, length: int) -> int:
        """The most positions :meth:`select` picks in a row of ``length`` tokens: the largest budget,
        ``probability x length`` rounded up (no unit overshoots its budget)."""
        return min(length, math.ceil(self.probability * length))

    def select(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sorted positions to predict in one row."""
        candidate = ~self.special[ids]
        budget = _round(self.probability * candidate.sum(), rng)
        if self.unit == "token":
            return np.sort(rng.choice(np.flatnonzero(candidate), budget, replace=False))
        # A word starts at a candidate that does not continue one (or follows a non-candidate,
        # e.g. a block cut mid-word).
        previous = np.concatenate([[False], candidate[:-1]])
        starts = candidate & ~(self.continuation[ids] & previous)
        word = np.cumsum(starts) - 1  # every candidate belongs to the word started last
        lengths = np.bincount(word[candidate], minlength=starts.sum())
        return np.flatnonzero(candidate & np.isin(word, self._words(lengths, budget, rng)))

    def _words(self, lengths: np.ndarray, budget: int, rng: np.random.Generator) -> list[int]:
        """Word indices whose total length stays within ``budget``."""
        taken, total = set(), 0
        if self.unit == "whole_word":
            for w in rng.permutation(len(lengths)):
                if total + lengths[w] <= budget:
                    taken.add(int(w))
                    total += lengths[w]
            return sorted(taken)
        attempts = 0
        while total < budget and attempts < 10 * max(budget, 1) and len(lengths):
            attempts += 1
            span = min(int(rng.geometric(self.span_p)), self.max_span)
            start = int(rng.integers(len(lengths)))
            for w in range(start, min(start + span, len(lengths))):
                if w in taken:
                    continue
                if total + lengths[w] > budget:
                    break
                taken.add(w)
                total += lengths[w]
        return sorted(taken)


class MaskedBatches:
    """A :class:`BatchIterator` over arrays with ``input_ids`` and ``row`` (each row's index),
    yielding ``input_ids`` corrupted and ``labels``; ``state()`` / ``restore()`` are the
    iterator's own, since the masks are a function of its position."""

    def __init__(self, batches: BatchIterator, masker: Masker):
        self.batches, self.masker = batches, masker

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.batches)
        rows = batch.pop("row")
        rngs = [row_rng(self.batches.seed, self.batches.epoch, int(r)) for r in rows]
        batch["input_ids"], batch["labels"] = self.masker(batch["input_ids"], rngs)
        return batch

    def state(self) -> dict[str, int]:
        return self.batches.state()

    def restore(self, state: dict[str, int]) -> None:
        self.batches.restore(state)


class MaskedRows:
    """A row source with ``input_ids`` and ``row`` served masked, each row from
    ``row_rng(seed, epoch, row)``: validation rows streamed from shards get the same masks
    at every evaluation without being held in memory."""

    def __init__(self, rows, masker: Masker, seed: int, epoch: int = EVAL_EPOCH):
        self.rows, self.masker, self.seed, self.epoch = rows, masker, seed, epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices) -> dict[str, np.ndarray]:
        batch = self.rows[indices]
        rows = batch.pop("row")
        batch["input_ids"], batch["labels"] = self.masker(
            batch["input_ids"], [row_rng(self.seed, self.epoch, int(r)) for r in rows])
        return batch
