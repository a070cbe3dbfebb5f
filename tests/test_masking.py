"""MLM masking statistics on real text, whole-word and span masking, sentence pairs."""

import numpy as np
import pytest

from jaxlm.data.bert_inputs import Framer, frame_texts, pack_blocks, sentence_pairs, split_sentences, truncate_pair
from jaxlm.data.corpus import embedded_corpus
from jaxlm.data.masking import IGNORE, Masker, MaskedBatches, row_rng
from jaxlm.data.pipeline import BatchIterator
from jaxlm.data.tokenizer import train_wordpiece
from jaxlm.errors import ConfigError


@pytest.fixture(scope="module")
def corpus():
    """WordPiece rows of the embedded corpus (~120k tokens), a quarter of them half padding."""
    docs = embedded_corpus()
    tok = train_wordpiece(docs, 4096)
    framer = Framer(tok.token_id("[CLS]"), tok.token_id("[SEP]"), tok.token_id("[PAD]"), 128)
    rows = pack_blocks(tok.encode_batch(docs), framer, keep_last=True)
    ids = rows["input_ids"]
    ids[::4, 64:] = framer.pad  # padding must never be selected
    return tok, ids


def masker(tok, **settings):
    return Masker.for_vocab(tok.tok.get_vocab(), tok.special_ids, continuation_prefix=tok.continuation_prefix,
                            **settings)


def mask(m, ids, epoch=0):
    return m(ids, [row_rng(0, epoch, r) for r in range(len(ids))])


def words(ids, m):
    """Positions of each word (a start plus its ## pieces) among the non-special tokens."""
    out, current = [], []
    for i, t in enumerate(ids):
        if m.special[t]:
            current = []
            continue
        if not (m.continuation[t] and current):
            current = []
            out.append(current)
        current.append(i)
    return out


@pytest.mark.parametrize("unit", ["token", "whole_word", "span"])
def test_selection_and_corruption_rates(corpus, unit):
    tok, ids = corpus
    m = masker(tok, unit=unit)
    corrupted, labels = mask(m, ids)
    candidates = ~m.special[ids]
    selected = labels != IGNORE
    assert candidates.sum() >= 100_000
    assert not (selected & ~candidates).any(), "special or padding tokens selected"
    assert (corrupted[~selected] == ids[~selected]).all() and (labels[selected] == ids[selected]).all()
    assert abs(selected.sum() / candidates.sum() - 0.15) <= 0.005
    n = selected.sum()
    to_mask = (corrupted[selected] == m.mask_id).sum() / n
    changed = ((corrupted[selected] != m.mask_id) & (corrupted[selected] != ids[selected])).sum() / n
    assert abs(to_mask - 0.8) <= 0.01 and abs(changed - 0.1) <= 0.01 and abs(1 - to_mask - changed - 0.1) <= 0.01
    assert not m.special[corrupted[selected & (corrupted != m.mask_id)]].any(), "a special token drawn as random"


@pytest.mark.parametrize("unit", ["token", "whole_word", "span"])
@pytest.mark.parametrize("probability", [0.15, 0.5])
def test_no_row_has_more_selected_positions_than_most_selected(corpus, unit, probability):
    tok, ids = corpus
    m = masker(tok, unit=unit, probability=probability)
    most = m.most_selected(ids.shape[1])
    assert most == {0.15: 20, 0.5: 64}[probability]
    per_row = [(mask(m, ids, epoch)[1] != IGNORE).sum(1).max() for epoch in range(3)]
    assert max(per_row) <= most
    if unit == "token":  # the fullest row's budget is reached: 126 candidates besides [CLS] and [SEP]
        assert max(per_row) == np.ceil(probability * (~m.special[ids]).sum(1).max())


def test_rates_are_configurable(corpus):
    tok, ids = corpus
    m = masker(tok, probability=0.3, mask_fraction=0.5, random_fraction=0.25)
    corrupted, labels = mask(m, ids)
    selected = labels != IGNORE
    assert abs(selected.sum() / (~m.special[ids]).sum() - 0.3) <= 0.005
    assert abs((corrupted[selected] == m.mask_id).mean() - 0.5) <= 0.01


@pytest.mark.parametrize("unit", ["whole_word", "span"])
def test_whole_words_are_never_split(corpus, unit):
    tok, ids = corpus
    m = masker(tok, unit=unit)
    _, labels = mask(m, ids)
    multi_piece = 0
    for row in range(len(ids)):
        for word in words(ids[row], m):
            chosen = labels[row, word] != IGNORE
            assert chosen.all() or not chosen.any(), tok.decode(ids[row, word])
            multi_piece += len(word) > 1 and chosen.all()
    assert multi_piece > 50  # multi-piece words were selected, whole


def test_span_lengths_are_geometric_runs_of_words(corpus):
    tok, ids = corpus
    m = masker(tok, unit="span")
    _, labels = mask(m, ids[1::4])  # rows without padding
    runs = []
    for row in labels != IGNORE:
        edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
        runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    # Geo(0.2) words of ~1.3 pieces, cut by the budget and merged when adjacent: clearly longer than one token.
    assert 2.5 < np.mean(runs) < 8 and max(runs) > 8


def test_word_masking_needs_a_wordpiece_vocabulary():
    with pytest.raises(ConfigError, match="task.masking=whole_word needs word boundaries"):
        Masker(mask_id=1, special=np.zeros(5, bool), unit="whole_word")


def test_masks_change_per_epoch_and_resume_exactly(corpus):
    tok, ids = corpus
    m = masker(tok)
    arrays = {"input_ids": ids[:40], "row": np.arange(40)}
    it = MaskedBatches(BatchIterator(arrays, 8, seed=3), m)
    first = [next(it) for _ in range(7)]  # 5 batches per epoch
    state = it.state()
    assert state == {"epoch": 1, "index": 2, "seed": 3}
    resumed = MaskedBatches(BatchIterator(arrays, 8, seed=3), m)
    resumed.restore(state)
    for _ in range(3):
        want, got = next(it), next(resumed)
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(got["labels"], want["labels"])
    assert "row" not in first[0] and first[0]["labels"].shape == (8, 128)
    # The same row is masked differently in another epoch (dynamic masking).
    assert not np.array_equal(mask(m, ids[:8], epoch=0)[1], mask(m, ids[:8], epoch=1)[1])


def test_sentence_pairs_on_text(corpus):
    tok, _ = corpus
    framer = Framer(tok.token_id("[CLS]"), tok.token_id("[SEP]"), tok.token_id("[PAD]"), 64)
    docs = [[tok.encode(s) for s in split_sentences(d)] for d in embedded_corpus()[:60]]
    for kind in ("nsp", "sop"):
        rows = sentence_pairs(docs, framer, kind, np.random.default_rng(0))
        assert len(rows["next_sentence_label"]) > 200 and 0.4 < rows["next_sentence_label"].mean() < 0.6
        for ids, types, attention in zip(rows["input_ids"], rows["token_type_ids"], rows["attention_mask"]):
            length = attention.sum()
            seps = np.flatnonzero(ids == framer.sep)
            assert ids[0] == framer.cls and len(seps) == 2 and seps[1] == length - 1
            assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:length] == 1).all()
            assert (ids[length:] == framer.pad).all() and seps[0] > 1 and seps[1] > seps[0] + 1


def test_next_sentence_and_sentence_order_labels():
    """Two documents of increasing, disjoint token ids: where B comes from is readable from its ids."""
    framer = Framer(cls_id=1, sep_id=2, pad_id=0, length=24)
    docs = [[list(range(start + 5 * i, start + 5 * i + 5)) for i in range(40)] for start in (10, 1000)]

    def segments(row):
        seps = np.flatnonzero(row == 2)
        return row[1:seps[0]], row[seps[0] + 1:seps[1]]

    nsp = sentence_pairs(docs, framer, "nsp", np.random.default_rng(0))
    sop = sentence_pairs(docs, framer, "sop", np.random.default_rng(0))
    for ids, label in zip(nsp["input_ids"], nsp["next_sentence_label"]):
        a, b = segments(ids)
        same_doc = (a[0] < 1000) == (b[0] < 1000)
        assert (label == 0) == (same_doc and a.max() < b.min())
    for ids, label in zip(sop["input_ids"], sop["next_sentence_label"]):
        a, b = segments(ids)
        assert (a[0] < 1000) == (b[0] < 1000)
        assert (label == 0) == (a.max() < b.min()) and (label == 1) == (b.max() < a.min())
    assert set(nsp["next_sentence_label"]) == set(sop["next_sentence_label"]) == {0, 1}


def test_truncation_and_framing():
    assert truncate_pair(list(range(10)), [1, 2], 8) == (list(range(6)), [1, 2])
    assert truncate_pair(list(range(10)), list(range(10)), 8) == (list(range(4)), list(range(4)))
    a, b = truncate_pair(list(range(100)), [], 10, np.random.default_rng(0))
    assert len(a) == 10 and a == list(range(a[0], a[0] + 10)) and b == []
    framer = Framer(cls_id=2, sep_id=3, pad_id=0, length=8)
    rows, cut = frame_texts([[5, 6], [7] * 9], [[8], [9]], framer)
    assert rows["input_ids"].tolist() == [[2, 5, 6, 3, 8, 3, 0, 0], [2, 7, 7, 7, 7, 3, 9, 3]]
    assert rows["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]]
    assert cut.tolist() == [False, True]
    rows, cut = frame_texts([[5] * 6], None, framer)
    assert rows["input_ids"].tolist() == [[2, 5, 5, 5, 5, 5, 5, 3]] and not cut.any()
