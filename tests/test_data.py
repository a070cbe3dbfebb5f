import numpy as np
import pytest

from jaxlm.data.corpus import load_documents, split_documents
from jaxlm.data.pipeline import BatchIterator, eval_batches, pack_blocks
from jaxlm.data.tokenizer import EOS, get_tokenizer, load_tokenizer, train_bpe
from jaxlm.errors import DataError


def test_embedded_corpus_split_is_disjoint_and_complete():
    docs = load_documents(None)
    assert sum(map(len, docs)) > 400_000
    train, valid = split_documents(docs, 0.1)
    assert "".join(train) != "" and "".join(valid) != ""
    assert sum(map(len, train)) + sum(map(len, valid)) == sum(map(len, docs))
    frac = sum(map(len, valid)) / sum(map(len, docs))
    assert 0.08 < frac < 0.12


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        load_documents([str(tmp_path / "nope*.txt")])
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="corpus is empty"):
        load_documents([str(tmp_path / "empty.txt")])


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(load_documents(None)[:10], 500)


def test_bpe_roundtrip_and_cache(bpe, tmp_path):
    text = "The import statement, def f(x): return x ** 2  # naïve ünïcode"
    assert bpe.vocab_size == 500 and bpe.eos_token == EOS
    assert bpe.decode(bpe.encode(text)) == text
    tok = get_tokenizer(None, 500, load_documents(None)[:10], tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert get_tokenizer(None, 500, ["other text"], tmp_path).encode(text) == tok.encode(text)
    with pytest.raises(DataError, match="vocab_size=600"):
        get_tokenizer(None, 600, ["x"], tmp_path)


def test_load_gpt2_vocab_and_merges(bpe, tmp_path):
    bpe.tok.model.save(str(tmp_path))  # writes vocab.json + merges.txt, GPT-2's file format
    loaded = load_tokenizer(tmp_path)
    text = "Assert statements are a convenient way to insert debugging assertions"
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path / "..")


def test_load_wordpiece_vocab(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world",
                                                   "##s", ","]))
    tok = load_tokenizer(tmp_path)
    assert tok.encode("Hello worlds", add_special_tokens=True) == [2, 5, 6, 7, 3]
    assert tok.eos_token == "[SEP]"


def test_packing_predicts_every_token_once():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8]]
    full = pack_blocks(docs, eos_id=0, seq_len=3, keep_last=False)
    stream = [1, 2, 3, 0, 4, 5, 6, 7, 8, 0]
    assert full["tokens"].tolist() == [[1, 2, 3, 0], [0, 4, 5, 6], [6, 7, 8, 0]]
    padded = pack_blocks(docs, eos_id=0, seq_len=4, keep_last=True)
    targets = padded["tokens"][:, 1:][padded["loss_mask"] == 1].tolist()
    assert targets == stream[1:]
    assert padded["loss_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_packing_with_a_smaller_stride_overlaps_windows():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8]]  # stream 1 2 3 0 4 5 6 7 8 0
    strided = pack_blocks(docs, eos_id=0, seq_len=4, keep_last=False, stride=2)
    assert strided["tokens"].tolist() == [[1, 2, 3, 0, 4], [3, 0, 4, 5, 6], [4, 5, 6, 7, 8]]
    assert strided["loss_mask"].all()
    assert pack_blocks(docs, 0, 3, False, stride=3)["tokens"].tolist() == pack_blocks(docs, 0, 3, False)["tokens"].tolist()


def test_train_overlap_sets_the_stride_for_any_window_length():
    from jaxlm.config import load_config

    assert load_config(None, ["model.type=gpt2"]).data.train_stride == 128
    assert load_config(None, ["model.type=gpt2", "data.train_overlap=0.5", "data.seq_len=16"]).data.train_stride == 8
    assert load_config(None, ["model.type=gpt2", "data.train_overlap=0.99", "data.seq_len=16"]).data.train_stride == 1


def test_iterator_is_deterministic_and_resumable():
    arrays = {"x": np.arange(50)[:, None].repeat(3, 1)}
    a = BatchIterator(arrays, 8, seed=1)
    first = [next(a)["x"][:, 0].tolist() for _ in range(14)]  # crosses two epoch boundaries
    b = BatchIterator(arrays, 8, seed=1)
    assert [next(b)["x"][:, 0].tolist() for _ in range(14)] == first
    c = BatchIterator(arrays, 8, seed=1)
    for _ in range(9):
        next(c)
    d = BatchIterator(arrays, 8, seed=1)
    d.restore(c.state())
    assert [next(d)["x"][:, 0].tolist() for _ in range(5)] == first[9:]
    epoch0 = sum(first[:6], [])
    assert len(set(epoch0)) == 48  # no repeats inside an epoch
    assert first[:6] != first[6:12]  # a new order every epoch
    with pytest.raises(DataError, match="run.seed"):
        BatchIterator(arrays, 8, seed=2).restore(c.state())


def test_process_slices_tile_the_global_batch():
    arrays = {"x": np.arange(40)}
    whole = next(BatchIterator(arrays, 8, seed=0))["x"]
    parts = [next(BatchIterator(arrays, 8, seed=0, process_index=i, process_count=2))["x"] for i in range(2)]
    assert np.concatenate(parts).tolist() == whole.tolist()


def test_too_little_data_and_eval_padding():
    with pytest.raises(DataError, match="lower trainer.batch_size"):
        BatchIterator({"x": np.arange(3)}, 8, seed=0)
    batches = list(eval_batches({"x": np.arange(1, 11)}, 4))
    assert [b["x"].tolist() for b in batches] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
