"""Byte-pair encoding learned from scratch: the algorithm of Sennrich, Haddow and Birch (2016),
"Neural Machine Translation of Rare Words with Subword Units", as textbooks teach it.

1. Count the words of the text (split at spaces) and write each as a sequence of characters,
   the last one marked as word-final (``"low"`` -> ``l o w</w>``).
2. Count every pair of adjacent symbols, weighted by the word counts.
3. Merge the most frequent pair into one symbol everywhere, record it, update the counts.
4. Repeat ``num_merges`` times (or until no pair occurs ``min_frequency`` times).

Encoding a new word replays the recorded merges, earliest first. The merges equal those of
the reference implementation, ``subword-nmt learn-bpe`` (its ``#version: 0.2`` codes file,
``</w>`` on the last character, minimum frequency 2, ties between equally frequent pairs going
to the pair that sorts last), so ``subword-nmt apply-bpe -c merges.txt`` reads what
:func:`save_merges` writes. Written here rather than taken from a library because it is the
algorithm being taught; HF ``tokenizers`` stays jaxlm's fast default (``docs/benchmarks.md``
gives the speed ratio).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Mapping

from jaxlm.errors import DataError

END = "</w>"
"""Appended to a word's last character: ``st</w>`` ends a word, ``st`` does not."""
HEADER = "#version: 0.2"
"""First line of subword-nmt's codes file (its handling of the word-final marker)."""
SEPARATOR = "@@"
"""Marks a piece that the next piece continues, as subword-nmt's ``apply-bpe`` writes it."""

Pair = tuple[str, str]


def word_counts(texts: Iterable[str]) -> Counter:
    """How often each word occurs: lines split at single spaces (a tab stays inside its word),
    exactly as subword-nmt reads its input, so both learn from the same counts."""
    counts: Counter = Counter()
    for text in texts:
        for line in text.splitlines(keepends=True):
            counts.update(w for w in line.strip("\r\n ").split(" ") if w)
    return counts


def symbols_of(word: str) -> tuple[str, ...]:
    """``"low"`` -> ``("l", "o", "w</w>")``."""
    return (*word[:-1], word[-1] + END)


def pairs_of(symbols: tuple[str, ...]) -> Counter:
    """Adjacent symbol pairs of one word, with how often each occurs in it."""
    return Counter(zip(symbols, symbols[1:]))


def merge_pair(symbols: tuple[str, ...], pair: Pair) -> tuple[str, ...]:
    """Every occurrence of ``pair`` joined into one symbol, scanning left to right
    (``a a a`` merged on ``(a, a)`` gives ``aa a``)."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(counts: Mapping[str, int], num_merges: int, min_frequency: int = 2) -> list[Pair]:
    """The first ``num_merges`` merges learned from word ``counts`` (fewer if no pair is left
    that occurs ``min_frequency`` times). The most frequent pair wins; among equally frequent
    pairs, the one that sorts last (subword-nmt's ``max`` over ``(count, pair)``)."""
    if num_merges < 1:
        raise DataError(f"--merges {num_merges}: learn at least one merge")
    words = [[symbols_of(w), n] for w, n in counts.items()]
    pair_counts: Counter = Counter()
    holders: dict[Pair, set[int]] = defaultdict(set)  # pair -> the words it occurs in
    for i, (symbols, n) in enumerate(words):
        for pair, k in pairs_of(symbols).items():
            pair_counts[pair] += k * n
            holders[pair].add(i)

    merges: list[Pair] = []
    while len(merges) < num_merges and pair_counts:
        best = max(pair_counts, key=lambda p: (pair_counts[p], p))
        if pair_counts[best] < min_frequency:
            break
        merges.append(best)
        for i in holders.pop(best):  # only the words holding the pair change
            old, n = words[i]
            new = merge_pair(old, best)
            for pair, k in pairs_of(old).items():
                pair_counts[pair] -= k * n
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            for pair, k in pairs_of(new).items():
                pair_counts[pair] += k * n
                holders[pair].add(i)
            words[i][0] = new
    return merges


def learn_bpe(texts: Iterable[str], num_merges: int, min_frequency: int = 2) -> list[Pair]:
    """Merges learned from the words of ``texts`` (see :func:`word_counts`)."""
    counts = word_counts(texts)
    if not counts:
        raise DataError("the text holds no words to learn BPE merges from; give non-empty files")
    return learn_merges(counts, num_merges, min_frequency)


def save_merges(merges: list[Pair], path: str | Path) -> None:
    """subword-nmt's codes file: the version header, then one ``left right`` merge per line."""
    Path(path).write_text("\n".join([HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n", encoding="utf-8")


def load_merges(path: str | Path) -> list[Pair]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#version"):
        if lines[0].strip() != HEADER:
            raise DataError(f"{path} is a {lines[0].strip()!r} codes file; only {HEADER!r} is read")
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines, 2):
        parts = line.rstrip("\r\n").split(" ")
        if len(parts) != 2:
            raise DataError(f"{path} line {n} is not a merge 'LEFT RIGHT': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class BPE:
    """Applies learned merges: ``encode_word`` splits one word, ``encode`` a line of words
    (pieces that continue into the next end in ``@@``, as with ``subword-nmt apply-bpe``),
    ``decode`` joins them back."""

    def __init__(self, merges: list[Pair]):
        self.ranks = {}
        for rank, pair in enumerate(merges):
            self.ranks.setdefault(pair, rank)  # a repeated merge keeps its first rank
        self.by_rank = {rank: pair for pair, rank in self.ranks.items()}
        self._cache: dict[str, tuple[str, ...]] = {}

    def encode_word(self, word: str) -> tuple[str, ...]:
        """Apply the earliest-learned merge that occurs in the word, repeatedly."""
        if len(word) <= 1:
            return (word,)
        if word in self._cache:
            return self._cache[word]
        symbols = symbols_of(word)
        while len(symbols) > 1:
            ranked = [self.ranks[p] for p in zip(symbols, symbols[1:]) if p in self.ranks]
            if not ranked:
                break
            symbols = merge_pair(symbols, self.by_rank[min(ranked)])
        last = symbols[-1].removesuffix(END)
        pieces = (*symbols[:-1], last) if last else symbols[:-1]
        self._cache[word] = pieces
        return pieces

    def encode(self, line: str) -> str:
        out = []
        for word in line.strip("\r\n ").split(" "):
            if word:
                pieces = self.encode_word(word)
                out += [p + SEPARATOR for p in pieces[:-1]] + [pieces[-1]]
        return " ".join(out)

    @staticmethod
    def decode(encoded: str) -> str:
        return encoded.replace(SEPARATOR + " ", "").removesuffix(SEPARATOR)


def write_codes(files: list[str], num_merges: int | None, min_frequency: int, out: Path) -> str:
    """``jaxlm tokenizer train --kind bpe-scratch``: learn merges from ``files`` (none: the
    embedded corpus), write ``out/merges.txt``; returns the line to print."""
    from jaxlm.data.corpus import load_documents

    if num_merges is None:
        raise DataError("--kind bpe-scratch needs --merges N, the number of merges to learn")
    if min_frequency < 1:
        raise DataError(f"--min-frequency {min_frequency}: give 1 or more")
    merges = learn_bpe(load_documents(files or None), num_merges, min_frequency)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "merges.txt.tmp"
    save_merges(merges, tmp)
    tmp.replace(out / "merges.txt")
    short = f" (no pair left occurring {min_frequency} times)" if len(merges) < num_merges else ""
    return (f"wrote {len(merges)} merges{short} to {out / 'merges.txt'}; apply them with jaxlm.data.bpe.BPE or "
            f"subword-nmt apply-bpe -c {out / 'merges.txt'}")
