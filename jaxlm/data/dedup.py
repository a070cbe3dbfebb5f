"""Duplicate removal over a whole corpus, one row at a time (streaming: nothing but the
fingerprints of the rows kept so far is held).

``exact``: rows whose normalised text (NFKC, case-folded, whitespace collapsed) hashes alike.
``near``: MinHash signatures of character shingles in datasketch's LSH index; a row whose
estimated Jaccard similarity to a kept row reaches ``threshold`` is a near duplicate.
Exact duplicates are caught first either way.

Deduplicate before the train / validation / test split, so that no pair of near-identical
texts lands on both sides of it and inflates the held-out scores.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from jaxlm.errors import DataError

Mode = Literal["exact", "near", "none"]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, k: int) -> set[str]:
    """Overlapping ``k``-character pieces of the normalised text (the whole text if shorter)."""
    t = normalise(text)
    return {t[i:i + k] for i in range(max(1, len(t) - k + 1))}


@dataclass
class Deduplicator:
    """``is_duplicate(text)`` says whether an earlier text was the same (or, ``near``, similar);
    a text that is not is remembered. ``counts`` has the exact and near duplicates seen."""

    mode: Mode = "exact"
    threshold: float = 0.8
    """near: the Jaccard similarity of shingle sets from which two texts are duplicates."""
    shingle: int = 5
    """near: characters per shingle (5 suits English; 2-3 suit Chinese)."""
    num_perm: int = 128
    seed: int = 1
    counts: dict[str, int] = field(default_factory=lambda: {"exact": 0, "near": 0})

    def __post_init__(self):
        if self.mode not in ("exact", "near", "none"):
            raise DataError(f"dedup mode {self.mode!r} is unknown; choose exact, near or none")
        if not 0 < self.threshold <= 1:
            raise DataError(f"dedup threshold {self.threshold} must be in (0, 1]")
        self._hashes: set[bytes] = set()
        if self.mode == "near":
            try:
                from datasketch import MinHashLSH
            except ImportError:
                raise DataError("near-duplicate removal needs datasketch: pip install 'jaxlm[text]'") from None
            self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
            self._signatures: dict[int, object] = {}

    def is_duplicate(self, text: str) -> bool:
        if self.mode == "none":
            return False
        digest = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()
        if digest in self._hashes:
            self.counts["exact"] += 1
            return True
        if self.mode == "near":
            signature = self._minhash(text)
            # LSH candidates may fall short of the threshold: confirm with the signatures' estimate.
            if any(self._signatures[key].jaccard(signature) >= self.threshold for key in self._lsh.query(signature)):
                self.counts["near"] += 1
                return True
            key = len(self._signatures)
            self._signatures[key] = signature
            self._lsh.insert(key, signature)
        self._hashes.add(digest)
        return False

    def _minhash(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([s.encode("utf-8") for s in shingles(text, self.shingle)])
        return m


def dedup_labelled(texts: list[str], labels: list) -> tuple[list[int], dict[str, int]]:
    """Indices of the rows of a labelled set to keep, in order, and the counts: the first of each
    group of exact duplicates (texts equal after :func:`normalise`), and no row of a text found
    under more than one label (they contradict each other, and a copy under each label would
    land on both sides of a split)."""
    keys = [normalise(t) for t in texts]
    first: dict[str, int] = {}
    seen: dict[str, set] = {}
    for i, (key, label) in enumerate(zip(keys, labels)):
        first.setdefault(key, i)
        seen.setdefault(key, set()).add(label)
    conflicting = {key for key, found in seen.items() if len(found) > 1}
    keep = sorted(i for key, i in first.items() if key not in conflicting)
    conflict_rows = sum(key in conflicting for key in keys)
    counts = {"rows": len(texts), "exact_duplicates": len(texts) - len(keep) - conflict_rows,
              "conflicting_texts": len(conflicting), "conflicting_rows": conflict_rows, "kept": len(keep)}
    return keep, counts
