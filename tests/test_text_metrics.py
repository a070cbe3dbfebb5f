"""BLEU and ROUGE equal sacrebleu's and rouge-score's; the traceable id statistics equal the host metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.errors import ConfigError
from jaxlm.train import text_metrics as tm

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi",
        "it is a guide to action that ensures that the military always obeys the commands of the party",
        "the the the the the the the", "short"]
REFS = [["the cat is on the mat", "there is a cat on the mat"], ["the quick brown fox jumped over the dog"],
        ["hello there general kenobi"],
        ["it is a guide to action which ensures that the military always obey the commands of the party",
         "it is the guiding principle which guarantees the military forces always being under the command of the party"],
        ["the cat is on the mat"], ["a much longer reference sentence"]]


def streams(refs):
    """sacrebleu's layout: one stream per reference slot (None where a sentence has fewer)."""
    width = max(map(len, refs))
    return [[r[i] if i < len(r) else None for r in refs] for i in range(width)]


@pytest.mark.parametrize("smooth,value", [("exp", None), ("floor", 0.1), ("floor", 0.5), ("add-k", 1), ("none", None)])
def test_corpus_bleu_equals_sacrebleu(smooth, value):
    ours = tm.corpus_bleu(HYPS, REFS, smooth=smooth, smooth_value=value)
    theirs = sacrebleu.corpus_bleu(HYPS, streams(REFS), smooth_method=smooth, smooth_value=value, tokenize="none")
    assert ours.score == pytest.approx(theirs.score, abs=1e-9)
    assert ours.brevity_penalty == pytest.approx(theirs.bp)
    assert (ours.hyp_len, ours.ref_len) == (theirs.sys_len, theirs.ref_len)


@pytest.mark.parametrize("i", range(len(HYPS)))
@pytest.mark.parametrize("smooth", ["exp", "floor", "add-k", "none"])
def test_sentence_bleu_equals_sacrebleu(i, smooth):
    ours = tm.sentence_bleu(HYPS[i], REFS[i], smooth=smooth)
    theirs = sacrebleu.sentence_bleu(HYPS[i], REFS[i], smooth_method=smooth, tokenize="none")
    assert ours.score == pytest.approx(theirs.score, abs=1e-9)


def test_chinese_is_scored_by_characters_like_sacrebleu_zh():
    hyps, refs = ["猫坐在垫子上", "今天天气很好"], [["猫在垫子上"], ["今天的天气很好"]]
    ours = tm.corpus_bleu(hyps, refs, tokenize="char")
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(hyps, streams(refs), tokenize="zh").score)
    assert tm.corpus_bleu(hyps, refs, tokenize="cjk").score == pytest.approx(ours.score)
    words = tm.corpus_bleu(["猫 坐 在 垫子 上"], ["猫 在 垫子 上"], tokenize=str.split)
    assert words.score == pytest.approx(sacrebleu.corpus_bleu(["猫 坐 在 垫子 上"], [["猫 在 垫子 上"]],
                                                              tokenize="none").score)


class Chars:  # rouge-score's tokenizer protocol
    def tokenize(self, text):
        return [c for c in text if not c.isspace()]


class Words:
    def tokenize(self, text):
        return text.split()


@pytest.mark.parametrize("i", range(len(HYPS)))
def test_rouge_equals_rouge_score(i):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Words())
    theirs = scorer.score_multi(REFS[i], HYPS[i])
    ours = tm.rouge(HYPS[i], REFS[i])
    for kind, score in theirs.items():
        assert (ours[kind].precision, ours[kind].recall, ours[kind].fmeasure) == pytest.approx(tuple(score))


def test_rouge_default_tokenizer_agrees_on_plain_lowercase_text_and_chinese_by_characters():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])  # its own tokenizer
    theirs = scorer.score("the cat is on the mat", "the cat sat on the mat")
    ours = tm.rouge("the cat sat on the mat", "the cat is on the mat")
    assert all(ours[k].fmeasure == pytest.approx(theirs[k].fmeasure) for k in theirs)
    chars = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Chars())
    theirs = chars.score("今天的天气很好", "今天天气很好")
    ours = tm.rouge("今天天气很好", "今天的天气很好", tokenize="char")
    assert all(ours[k].fmeasure == pytest.approx(theirs[k].fmeasure) for k in theirs)
    assert ours["rougeL"].recall == pytest.approx(6 / 7)


def test_corpus_rouge_is_the_mean_and_bad_arguments_are_one_line_errors():
    scores = tm.corpus_rouge(HYPS[:2], REFS[:2], ["rougeL"])
    assert scores["rougeL"].fmeasure == pytest.approx(
        np.mean([tm.rouge(h, r)["rougeL"].fmeasure for h, r in zip(HYPS[:2], REFS[:2])]))
    with pytest.raises(ConfigError, match="one reference"):
        tm.corpus_bleu(HYPS, REFS[:2])
    with pytest.raises(ConfigError, match="smoothing"):
        tm.corpus_bleu(HYPS, REFS, smooth="method7")
    with pytest.raises(ConfigError, match="ROUGE type"):
        tm.rouge("a", "a", ["rougeX"])


def test_id_statistics_equal_the_host_metrics():
    rng = np.random.default_rng(0)
    width = 12
    pairs = [(rng.integers(0, 4, rng.integers(0, width + 1)), rng.integers(0, 4, rng.integers(1, width + 1)))
             for _ in range(40)]
    pairs.append((np.array([1, 1, 1, 1]), np.array([1, 1, 2])))  # clipping of repeated n-grams

    def padded(x):
        return np.pad(x, (0, width - len(x)), constant_values=7)  # pad ids must not matter

    hyp = jnp.asarray(np.stack([padded(h) for h, _ in pairs]))
    ref = jnp.asarray(np.stack([padded(r) for _, r in pairs]))
    hyp_len, ref_len = (jnp.asarray([len(p[i]) for p in pairs]) for i in (0, 1))
    correct, total = jax.jit(jax.vmap(tm.ngram_matches))(hyp, hyp_len, ref, ref_len)
    lcs = jax.jit(jax.vmap(tm.lcs_length))(hyp, hyp_len, ref, ref_len)
    for i, (h, r) in enumerate(pairs):
        stats = tm.bleu_stats(list(h), [list(r)])
        np.testing.assert_array_equal(correct[i], stats.correct)
        np.testing.assert_array_equal(total[i], stats.total)
        assert int(lcs[i]) == tm._lcs(list(h), list(r))
    summed = tm.BleuStats(tuple(np.asarray(correct.sum(0))), tuple(np.asarray(total.sum(0))),
                          float(hyp_len.sum()), float(ref_len.sum()))
    text = [" ".join(map(str, h)) for h, _ in pairs]
    refs = [" ".join(map(str, r)) for _, r in pairs]
    assert tm.bleu_from_stats(summed).score == pytest.approx(tm.corpus_bleu(text, refs).score)
