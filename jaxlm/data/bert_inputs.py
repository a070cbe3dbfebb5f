"""BERT input rows from documents: ``[CLS] A [SEP]`` blocks, or ``[CLS] A [SEP] B [SEP]``
sentence pairs for next-sentence or sentence-order prediction.

Rows are ``input_ids``, ``token_type_ids`` (0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``) and
``attention_mask`` (0 on padding), padded to one length; pairs add
``next_sentence_label``. Pairs follow Google's ``create_pretraining_data``: sentences of
one document accumulate into a chunk of about the target length (10 % of chunks shorter),
the chunk is cut at a random sentence boundary into A and B, and then
  nsp  half the time B is replaced by text from a random other document (label 1),
  sop  half the time A and B swap places (label 1; ALBERT's sentence-order prediction).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

from jaxlm.data.pipeline import ArrayStream, TokenWindows
from jaxlm.errors import DataError

PairKind = Literal["nsp", "sop"]
SHORT_CHUNK_PROBABILITY = 0.1
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: paragraphs (blank-line separated) cut after ``. ! ?`` (and ``。！？``)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        out += [s for s in _SENTENCE_END.split(paragraph) if s.strip()]
    return out


class Framer:
    """Lays token lists out as padded ``[CLS] A [SEP] (B [SEP])`` rows of ``length`` tokens."""

    def __init__(self, cls_id: int, sep_id: int, pad_id: int, length: int):
        self.cls, self.sep, self.pad, self.length = cls_id, sep_id, pad_id, length

    def rows(self, segments: list[tuple[list[int], ...]]) -> dict[str, np.ndarray]:
        """One row per ``(A,)`` or ``(A, B)`` tuple of token lists that fit."""
        n = len(segments)
        ids = np.full((n, self.length), self.pad, np.int32)
        types = np.zeros((n, self.length), np.int32)
        attention = np.zeros((n, self.length), np.int32)
        for i, (a, *b) in enumerate(segments):
            first = [self.cls, *a, self.sep]
            row = first + ([*b[0], self.sep] if b else [])
            ids[i, :len(row)] = row
            types[i, len(first):len(row)] = 1
            attention[i, :len(row)] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": attention}


class FramedBlocks:
    """``[CLS] block [SEP]`` rows cut from a token stream (documents joined by ``[SEP]``) as
    they are read, with each row's index as ``row``; ``keep_last`` keeps the final short
    block (padded) so no text is skipped. The stream may be memory-mapped shards."""

    def __init__(self, stream, framer: Framer, keep_last: bool):
        size = framer.length - 2
        self.framer, self.windows = framer, TokenWindows(stream, size, size, keep_last)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, rows) -> dict[str, np.ndarray]:
        tokens, lengths = self.windows.read(rows)
        out = self.framer.rows([(t[:n].tolist(),) for t, n in zip(tokens, lengths)])
        out["row"] = np.asarray(rows, np.int64)
        return out


def pack_blocks(docs: list[list[int]], framer: Framer, keep_last: bool) -> dict[str, np.ndarray]:
    """Documents joined by ``[SEP]`` and cut into ``[CLS] block [SEP]`` rows (RoBERTa's full
    sentences), all at once."""
    stream = np.asarray([t for d in docs for t in (*d, framer.sep)][:-1], np.int32)
    blocks = FramedBlocks(ArrayStream(stream), framer, keep_last)
    rows = blocks[np.arange(len(blocks))]
    del rows["row"]
    return rows


def sentence_pairs(docs: list[list[list[int]]], framer: Framer, kind: PairKind,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """NSP or SOP rows from documents given as lists of tokenized sentences."""
    max_tokens = framer.length - 3
    # Sentences longer than a row (code listings, tables) are cut into row-sized pieces.
    docs = [[s[k:k + max_tokens] for s in d for k in range(0, len(s), max_tokens)] for d in docs]
    docs = [d for d in docs if d]
    if kind == "nsp" and len(docs) < 2:
        raise DataError("next-sentence prediction needs at least two documents (B is drawn from another one); "
                        "add text or use task.sentence_pairs=sop")
    pairs, labels = [], []
    for d, doc in enumerate(docs):
        target = max_tokens
        if rng.random() < SHORT_CHUNK_PROBABILITY:
            target = int(rng.integers(2, max_tokens + 1))
        chunk, size, i = [], 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            size += len(doc[i])
            if i == len(doc) - 1 or size >= target:
                sentences = len(chunk) > 1
                if not sentences:  # one long sentence: cut it at a random token
                    cut = int(rng.integers(1, len(chunk[0]))) if len(chunk[0]) > 1 else 1
                    chunk = [chunk[0][:cut], chunk[0][cut:]]
                a_end = int(rng.integers(1, len(chunk)))
                a = [t for s in chunk[:a_end] for t in s]
                b = [t for s in chunk[a_end:] for t in s]
                label = 0
                if kind == "nsp" and rng.random() < 0.5:
                    label, b = 1, _random_segment(docs, d, max(target - len(a), 1), rng)
                    if sentences:  # the unused sentences start the next chunk
                        i -= len(chunk) - a_end
                elif kind == "sop" and rng.random() < 0.5:
                    label, a, b = 1, b, a
                a, b = truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    pairs.append((a, b))
                    labels.append(label)
                chunk, size = [], 0
            i += 1
    rows = framer.rows(pairs)
    rows["next_sentence_label"] = np.asarray(labels, np.int32)
    return rows


def _random_segment(docs, exclude: int, target: int, rng) -> list[int]:
    other = int(rng.integers(len(docs) - 1))
    doc = docs[other + (other >= exclude)]
    out = []
    for sentence in doc[int(rng.integers(len(doc))):]:
        out += sentence
        if len(out) >= target:
            break
    return out


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator | None = None
                  ) -> tuple[list[int], list[int]]:
    """Trim the longer segment first until both fit in ``max_tokens`` (Hugging Face's
    ``longest_first``). Tokens go from the back, or with ``rng`` each from the front or the
    back at random (Google's pretraining data, so no end of a text is favoured)."""
    keep_a = min(len(a), max(max_tokens - len(b), (max_tokens + 1) // 2))
    keep_b = min(len(b), max_tokens - keep_a)

    def cut(segment, keep):
        front = int(rng.binomial(len(segment) - keep, 0.5)) if rng is not None else 0
        return segment[front:front + keep]

    return cut(a, keep_a), cut(b, keep_b)


def frame_texts(firsts: list[list[int]], seconds: list[list[int]] | None, framer: Framer
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows for single texts or text pairs (tokenized, no special tokens), each cut to fit;
    and which rows had to be cut (bool)."""
    if seconds is None:
        room = framer.length - 2
        return framer.rows([(a[:room],) for a in firsts]), np.array([len(a) > room for a in firsts], bool)
    room = framer.length - 3
    cut = np.array([len(a) + len(b) > room for a, b in zip(firsts, seconds)], bool)
    return framer.rows([truncate_pair(a, b, room) for a, b in zip(firsts, seconds)]), cut
