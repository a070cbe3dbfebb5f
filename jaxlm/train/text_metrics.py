"""Metrics of generated text: BLEU as sacrebleu defines it and ROUGE-1/2/L as rouge-score does.

Host functions score strings (:func:`corpus_bleu`, :func:`sentence_bleu`, :func:`rouge`,
:func:`corpus_rouge`) after a tokenizer hook splits them into tokens: ``"whitespace"``
(the default), ``"char"`` (every non-space character: Chinese, Japanese), ``"cjk"`` (CJK
characters one by one, other text by whitespace), ``"jieba"`` (Chinese words, when jieba is
installed) or any ``str -> list[str]`` function. They are written here rather than imported
because sacrebleu and rouge-score are heavy for a runtime dependency and rouge-score's own
tokenizer drops every non-ASCII character; the tests check both against those libraries.

Traceable functions score token-id arrays inside a jitted eval step
(:func:`ngram_matches`, :func:`lcs_length`): BLEU's statistics are sums, so a corpus BLEU
comes out exactly from per-batch sums (:func:`bleu_from_stats`).

BLEU is on sacrebleu's 0-100 scale; ROUGE scores are 0-1, as rouge-score reports them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import ConfigError

Tokenizer = Literal["whitespace", "char", "cjk", "jieba"] | Callable[[str], list[str]]
Smoothing = Literal["none", "floor", "add-k", "exp"]
SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}
"""sacrebleu's smoothing methods: Chen & Cherry (2014) method 1 (floor), 2 (add-k), 3 (exp, NIST)."""

_CJK = re.compile(r"([\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f])")


def tokenize(text: str, how: Tokenizer = "whitespace") -> list[str]:
    if callable(how):
        return list(how(text))
    if how == "whitespace":
        return text.split()
    if how == "char":
        return [c for c in text if not c.isspace()]
    if how == "cjk":
        return _CJK.sub(r" \1 ", text).split()
    if how == "jieba":
        try:
            import jieba
        except ImportError:
            raise ConfigError("tokenize='jieba' needs jieba: pip install jieba (or use tokenize='char')") from None
        return [w for w in jieba.cut(text) if w.strip()]
    raise ConfigError(f"unknown tokenizer {how!r}; use whitespace, char, cjk, jieba or a function")


def _ngrams(tokens: Sequence, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# ---------------------------------------------------------------------------------------------
# BLEU


@dataclass(frozen=True)
class BleuStats:
    """BLEU's sufficient statistics; they add up over sentences (and batches)."""

    correct: tuple[float, ...]  # clipped n-gram matches, n = 1..max_order
    total: tuple[float, ...]  # hypothesis n-grams
    hyp_len: float
    ref_len: float

    def __add__(self, other: BleuStats) -> BleuStats:
        return BleuStats(tuple(a + b for a, b in zip(self.correct, other.correct)),
                         tuple(a + b for a, b in zip(self.total, other.total)),
                         self.hyp_len + other.hyp_len, self.ref_len + other.ref_len)


@dataclass(frozen=True)
class BleuScore:
    score: float  # 0-100
    precisions: tuple[float, ...]  # 0-100, after smoothing
    brevity_penalty: float
    hyp_len: float
    ref_len: float


def bleu_stats(hypothesis: Sequence, references: Sequence[Sequence], max_order: int = 4) -> BleuStats:
    """Statistics of one tokenized hypothesis against its tokenized references: n-gram counts are
    clipped by their largest count in any reference; the reference length is the closest one
    (the shorter on a tie)."""
    ref_counts: Counter = Counter()
    for ref in references:
        for n in range(1, max_order + 1):
            ref_counts |= _ngrams(ref, n)
    correct, total = [0] * max_order, [0] * max_order
    for n in range(1, max_order + 1):
        for gram, count in _ngrams(hypothesis, n).items():
            total[n - 1] += count
            correct[n - 1] += min(count, ref_counts[gram])
    ref_len = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    return BleuStats(tuple(correct), tuple(total), len(hypothesis), ref_len)


def bleu_from_stats(stats: BleuStats, smooth: Smoothing = "exp", smooth_value: float | None = None,
                    effective_order: bool = False) -> BleuScore:
    """sacrebleu's ``BLEU.compute_bleu``: geometric mean of the (smoothed) n-gram precisions
    times the brevity penalty. ``effective_order`` leaves out orders the hypothesis has no
    n-grams of (for sentence-level BLEU of short sentences)."""
    if smooth not in SMOOTH_DEFAULTS:
        raise ConfigError(f"unknown BLEU smoothing {smooth!r}; use one of: {', '.join(SMOOTH_DEFAULTS)}")
    value = SMOOTH_DEFAULTS[smooth] if smooth_value is None else smooth_value
    correct, total = list(stats.correct), list(stats.total)
    order = len(correct)
    sys_len, ref_len = stats.hyp_len, stats.ref_len
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    precisions = [0.0] * order
    if not any(correct):
        return BleuScore(0.0, tuple(precisions), bp, sys_len, ref_len)
    mteval, used = 1.0, order
    for n in range(order):
        if smooth == "add-k" and n > 0:
            correct[n] += value
            total[n] += value
        if total[n] == 0:
            break
        if effective_order:
            used = n + 1
        if correct[n] == 0:
            if smooth == "exp":
                mteval *= 2
                precisions[n] = 100.0 / (mteval * total[n])
            elif smooth == "floor":
                precisions[n] = 100.0 * value / total[n]
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    if min(precisions[:used]) <= 0:
        return BleuScore(0.0, tuple(precisions), bp, sys_len, ref_len)
    score = bp * math.exp(sum(math.log(p) for p in precisions[:used]) / used)
    return BleuScore(score, tuple(precisions), bp, sys_len, ref_len)


def _references(references, n: int) -> list[list[str]]:
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(refs) != n or any(not r for r in refs):
        raise ConfigError(f"need one reference (or a non-empty list of them) per hypothesis: got {len(refs)} "
                          f"for {n} hypotheses")
    return refs


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, max_order: int = 4,
                smooth: Smoothing = "exp", smooth_value: float | None = None,
                tokenize: Tokenizer = "whitespace") -> BleuScore:
    """Corpus BLEU: ``references[i]`` is the reference of ``hypotheses[i]`` or a list of them.
    Equals ``sacrebleu.corpus_bleu(hypotheses, reference_streams, tokenize='none')`` for
    whitespace-tokenized text."""
    refs = _references(references, len(hypotheses))
    stats = BleuStats((0,) * max_order, (0,) * max_order, 0, 0)
    for hyp, rs in zip(hypotheses, refs):
        stats = stats + bleu_stats(_tok(hyp, tokenize), [_tok(r, tokenize) for r in rs], max_order)
    return bleu_from_stats(stats, smooth, smooth_value)


def sentence_bleu(hypothesis: str, references: str | Sequence[str], *, max_order: int = 4,
                  smooth: Smoothing = "exp", smooth_value: float | None = None, effective_order: bool = True,
                  tokenize: Tokenizer = "whitespace") -> BleuScore:
    """One sentence's BLEU, with sacrebleu's ``sentence_bleu`` defaults (exp smoothing, effective order)."""
    refs = _references([references], 1)[0]
    stats = bleu_stats(_tok(hypothesis, tokenize), [_tok(r, tokenize) for r in refs], max_order)
    return bleu_from_stats(stats, smooth, smooth_value, effective_order)


_tok = tokenize


# ---------------------------------------------------------------------------------------------
# ROUGE


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def _fmeasure(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _lcs(a: Sequence, b: Sequence) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _rouge_pair(prediction: list, target: list, kind: str) -> RougeScore:
    if kind == "rougeL":
        if not prediction or not target:
            return RougeScore(0.0, 0.0, 0.0)
        lcs = _lcs(target, prediction)
        p, r = lcs / len(prediction), lcs / len(target)
        return RougeScore(p, r, _fmeasure(p, r))
    n = int(kind[len("rouge"):])
    pred, ref = _ngrams(prediction, n), _ngrams(target, n)
    overlap = sum((pred & ref).values())
    p, r = overlap / max(sum(pred.values()), 1), overlap / max(sum(ref.values()), 1)
    return RougeScore(p, r, _fmeasure(p, r))


def rouge(prediction: str, references: str | Sequence[str], types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
          *, tokenize: Tokenizer = "whitespace") -> dict[str, RougeScore]:
    """ROUGE-N (``rouge1``, ``rouge2``, ...) and ROUGE-L (longest common subsequence) precision,
    recall and F1; with several references, per type the one of highest F1 (rouge-score's
    ``score_multi``)."""
    for kind in types:
        if not (kind == "rougeL" or re.fullmatch(r"rouge[1-9]", kind)):
            raise ConfigError(f"unknown ROUGE type {kind!r}; use rouge1 .. rouge9 or rougeL")
    refs = _references([references], 1)[0]
    pred = _tok(prediction, tokenize)
    targets = [_tok(r, tokenize) for r in refs]
    return {kind: max((_rouge_pair(pred, t, kind) for t in targets), key=lambda s: s.fmeasure) for kind in types}


def corpus_rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                 types: Sequence[str] = ("rouge1", "rouge2", "rougeL"), *,
                 tokenize: Tokenizer = "whitespace") -> dict[str, RougeScore]:
    """The mean over sentence pairs of each score (rouge-score's aggregator without the bootstrap)."""
    refs = _references(references, len(predictions))
    scores = [rouge(p, r, types, tokenize=tokenize) for p, r in zip(predictions, refs)]
    return {kind: RougeScore(*(float(np.mean([getattr(s[kind], f) for s in scores]))
                               for f in ("precision", "recall", "fmeasure"))) for kind in types}


# ---------------------------------------------------------------------------------------------
# Traceable statistics of token-id sequences (one pair; ``jax.vmap`` them over a batch)


def ngram_matches(hyp: jax.Array, hyp_len: jax.Array, ref: jax.Array, ref_len: jax.Array,
                  max_order: int = 4) -> tuple[jax.Array, jax.Array]:
    """BLEU's clipped matches and hypothesis n-gram counts ``([max_order], [max_order])`` of
    ``hyp[:hyp_len]`` against ``ref[:ref_len]`` (1-D id arrays): the k-th occurrence of an
    n-gram in the hypothesis matches iff the reference holds it more than k times."""
    correct, total = [], []
    for n in range(1, max_order + 1):
        h, r = _windows(hyp, n), _windows(ref, n)
        valid_h = jnp.arange(h.shape[0]) + n <= hyp_len
        valid_r = jnp.arange(r.shape[0]) + n <= ref_len
        same_h = jnp.all(h[:, None] == h[None, :], -1) & valid_h[:, None] & valid_h[None, :]
        earlier = jnp.sum(jnp.tril(same_h, -1), axis=1)
        in_ref = jnp.sum(jnp.all(h[:, None] == r[None, :], -1) & valid_r[None, :], axis=1)
        correct.append(jnp.sum(valid_h & (earlier < in_ref)))
        total.append(jnp.sum(valid_h))
    return jnp.stack(correct).astype(jnp.float32), jnp.stack(total).astype(jnp.float32)


def _windows(x: jax.Array, n: int) -> jax.Array:
    """``[len(x) - n + 1, n]`` n-grams (at least one row, so short arrays still trace)."""
    x = jnp.pad(x, (0, max(n - x.shape[0], 0)))
    return jnp.stack([x[i:x.shape[0] - n + 1 + i] for i in range(n)], axis=-1)


def lcs_length(a: jax.Array, a_len: jax.Array, b: jax.Array, b_len: jax.Array) -> jax.Array:
    """Length of the longest common subsequence of ``a[:a_len]`` and ``b[:b_len]``.

    Row by row, ``L[i][j] = max_{k <= j} max(L[i-1][k], L[i-1][k-1] + [a_i = b_k])``: a
    cumulative max, so each row is one vector operation."""
    hits_b = jnp.arange(b.shape[0]) < b_len

    def row(prev, xs):
        token, live = xs
        step = jnp.maximum(prev[1:], prev[:-1] + ((b == token) & hits_b))
        new = jnp.concatenate([prev[:1], jax.lax.cummax(step)])
        return jnp.where(live, new, prev), None

    last, _ = jax.lax.scan(row, jnp.zeros(b.shape[0] + 1, jnp.int32), (a, jnp.arange(a.shape[0]) < a_len))
    return last[jnp.clip(b_len, 0, b.shape[0])]
