"""Prepared token shards: every source through the real libraries, streaming windows, exact
resume, resumable prepare, damaged shards and changed tokenizers."""

import json
import os

import numpy as np
import pytest

from conftest import build_local_tfds, tiny_overrides
from jaxlm.config import load_config
from jaxlm.data import prepare as prep
from jaxlm.data.corpus import embedded_corpus
from jaxlm.data.pipeline import BatchIterator, CausalWindows, IndexShuffle, pack_blocks
from jaxlm.data.shards import ShardedTokens, read_manifest
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.errors import ConfigError, DataError

DOCS = [d for d in embedded_corpus()[:120] if d.strip()]
ROWS = [d[:1500] for d in DOCS]  # one ~2,000-character chunk each: a row is one held-out unit


def config(tmp_path, **data):
    overrides = {"data.cache_dir": tmp_path / "cache", "data.tokenizer.vocab_size": 300,
                 "data.prepare.workers": 1, "data.validation_fraction": 0.1, **data}
    return load_config("configs/gpt2-tiny.yaml", tiny_overrides(tmp_path / "run", **overrides))


def stream(directory, split="train"):
    m = read_manifest(directory)
    s = ShardedTokens(directory, m, split)
    return s.read(0, len(s))


def expected_stream(directory, rows, fraction=0.1):
    """The train split of rows encoded one by one, each followed by <|endoftext|>."""
    tok = load_tokenizer(directory / "tokenizer")
    train = [r for i, r in enumerate(rows) if not int((i + 1) * fraction) > int(i * fraction)]
    return np.asarray([t for ids in tok.encode_batch(train) for t in (*ids, tok.eos_id)])


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(DOCS[:20]))
    c = config(root, **{"data.paths": corpus, "data.prepare.shard_mb": 1})
    return c, prep.prepare(c, progress=False)


def test_manifest_and_windows_match_in_memory_packing(text_dir):
    c, directory = text_dir
    m = read_manifest(directory)
    assert m["tokenizer"]["vocab_size"] == 300 and m["dtype"] == "uint16"
    assert m["splits"]["train"]["tokens"] == sum(s["tokens"] for s in m["splits"]["train"]["shards"]) > 1000
    assert m["sources"]["files"][0][0] == str((c.data.paths[0] and os.path.realpath(c.data.paths[0])))
    assert prep.prepare(c, progress=False) == directory  # found, not prepared again
    train = ShardedTokens(directory, m, "train")
    tokens = train.read(0, len(train))
    rows = CausalWindows(train, 16, stride=8)
    expected = pack_blocks([tokens.tolist()], None, 16, keep_last=False, stride=8)
    got = rows[np.arange(len(rows))]
    assert len(rows) == len(expected["tokens"]) and (got["tokens"] == expected["tokens"]).all()
    valid = CausalWindows(ShardedTokens(directory, m, "valid"), 16, keep_last=True)
    last = valid[np.asarray([len(valid) - 1])]
    assert last["loss_mask"].sum() == (len(stream(directory, "valid")) - 1) % 16 or last["loss_mask"].all()


def test_every_local_format_and_hf_datasets_give_one_stream(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(ROWS)))
    import csv
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], *[[i, r] for i, r in enumerate(ROWS)]])
    pq.write_table(pa.table({"text": ROWS}), tmp_path / "rows.parquet")  # one row group: one unit
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(str(tmp_path / "saved"))
    tok = config(tmp_path, **{"data.paths": tmp_path / "rows.jsonl"})
    tok_dir = prep.prepare(tok, progress=False)
    expected = expected_stream(tok_dir, ROWS)
    assert (stream(tok_dir) == expected).all()
    fixed = {"data.tokenizer.path": tok_dir / "tokenizer"}
    for source in [{"data.paths": tmp_path / "rows.csv"}, {"data.paths": tmp_path / "rows.parquet"},
                   {"data.dataset": tmp_path / "saved"}, {"data.dataset": tmp_path / "saved", "data.streaming": True},
                   {"data.dataset": "json", "data.paths": tmp_path / "rows.jsonl", "data.streaming": True}]:
        directory = prep.prepare(config(tmp_path, **fixed, **source), progress=False)
        got = stream(directory)
        assert len(got) == len(expected) and (got == expected).all(), source
    with pytest.raises(DataError, match="has no 'body' column"):
        prep.prepare(config(tmp_path, **fixed, **{"data.paths": tmp_path / "rows.parquet", "data.text_column": "body"}),
                     progress=False)


def test_tfds_dataset_built_locally(tmp_path):
    import tensorflow_datasets as tfds

    build_local_tfds("tiny_reviews", [(row, i % 2) for i, row in enumerate(ROWS)])
    directory = prep.prepare(config(tmp_path, **{"data.dataset": "tfds:tiny_reviews"}), progress=False)
    rows = [r["text"].decode() for r in tfds.data_source("tiny_reviews", split="train")]  # tfds's own order
    assert sorted(rows) == sorted(ROWS)
    assert (stream(directory) == expected_stream(directory, rows)).all()


def test_interrupted_prepare_resumes_without_redoing_shards(tmp_path, monkeypatch, caplog):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(DOCS) * 2)  # ~4 units of 256 KB
    c = config(tmp_path, **{"data.paths": corpus})
    cut = prep.sources.line_ranges
    monkeypatch.setattr(prep.sources, "line_ranges", lambda path, size: cut(path, 1 << 18))  # 256 KB units
    encoded, real = [], prep.encode_unit

    def interrupted(job):
        if len(encoded) == 2:
            raise KeyboardInterrupt
        encoded.append(job[1])
        return real(job)

    monkeypatch.setattr(prep, "encode_unit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(c, progress=False)
    directory = prep.prepared_dir(c)
    assert not (directory / "manifest.json").exists() and encoded == [0, 1]
    before = {p.name: p.stat().st_mtime_ns for p in directory.glob("train-0000[01].tokens")}
    encoded.clear()
    monkeypatch.setattr(prep, "encode_unit", lambda job: encoded.append(job[1]) or real(job))
    with caplog.at_level("INFO", logger="jaxlm"):
        prep.prepare(c, progress=False)
    units = len(read_manifest(directory)["splits"]["train"]["shards"])
    assert units >= 4 and encoded == list(range(2, units)) and "2 of" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in directory.glob("train-0000[01].tokens")} == before


def test_corrupted_shard_and_changed_tokenizer_name_the_file(text_dir, tmp_path):
    import shutil

    c, original = text_dir
    directory = tmp_path / original.name
    shutil.copytree(original, directory)
    m = read_manifest(directory)
    shard = directory / m["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    tokens = ShardedTokens(directory, m, "train")
    with pytest.raises(DataError, match=f"shard {shard} is corrupted"):
        tokens.read(0, 10)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match=f"shard {shard} is 2 bytes short|shard {shard} is"):
        ShardedTokens(directory, m, "train")
    from jaxlm.data.shards import check_tokenizer

    tok_file = directory / "tokenizer" / "tokenizer.json"
    check_tokenizer(directory, m, tok_file)
    tok_file.write_text(tok_file.read_text().replace('"<|endoftext|>"', '"<|end|>"', 1))
    with pytest.raises(DataError, match=f"{tok_file} is not the tokenizer the shards in {directory}"):
        check_tokenizer(directory, m, tok_file)


def test_streamed_order_is_a_resumable_permutation_split_between_processes(text_dir):
    _, directory = text_dir
    m = read_manifest(directory)
    for n in (1, 2, 7, 1000, 4097):
        assert sorted(IndexShuffle(n, 3, 1)[np.arange(n)].tolist()) == list(range(n))
    assert IndexShuffle(100, 0, 0)[np.arange(100)].tolist() != IndexShuffle(100, 0, 1)[np.arange(100)].tolist()

    class Recording(CausalWindows):
        def __getitem__(self, rows):
            self.read_rows = getattr(self, "read_rows", []) + list(rows)
            return super().__getitem__(rows)

    def windows():
        return Recording(ShardedTokens(directory, m, "train"), 16)

    whole = BatchIterator(windows(), 8, seed=1)
    batches = [next(whole)["tokens"] for _ in range(2 * whole.batches_per_epoch + 3)]  # crosses two epochs
    resumed = BatchIterator(windows(), 8, seed=1)
    resumed.restore({"epoch": 2, "index": 1, "seed": 1})
    assert (next(resumed)["tokens"] == batches[2 * whole.batches_per_epoch + 1]).all()
    parts = [BatchIterator(windows(), 8, seed=1, process_index=p, process_count=2) for p in range(2)]
    local = [next(p)["tokens"] for p in parts]
    assert (np.concatenate(local) == batches[0]).all()
    read = [set(p.rows.read_rows) for p in parts]
    assert not read[0] & read[1] and len(read[0] | read[1]) == 8  # each process read only its 4 rows


def test_train_streams_prepared_data_and_checks_the_runs_tokenizer(tmp_path):
    from test_cli import jaxlm, one_line_error

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS[:10]))
    args = tiny_overrides(tmp_path / "run", **{"data.paths": corpus, "data.cache_dir": tmp_path / "cache",
                                               "trainer.max_steps": 2, "trainer.eval_every": 2})
    prepared = jaxlm("data", "prepare", "configs/gpt2-tiny.yaml", *args, "--workers", "2")
    assert prepared.returncode == 0, prepared.stderr
    assert "prepared " in prepared.stdout and "streams them" in prepared.stdout
    manifest = next((tmp_path / "cache").glob("*/manifest.json"))
    stamp = manifest.stat().st_mtime_ns
    trained = jaxlm("train", "configs/gpt2-tiny.yaml", *args)
    assert trained.returncode == 0, trained.stderr
    assert manifest.stat().st_mtime_ns == stamp and "eval_loss" in trained.stdout
    run_tok = tmp_path / "run" / "tokenizer" / "tokenizer.json"
    run_tok.write_text(run_tok.read_text().replace('"<|endoftext|>"', '"<|end|>"', 1))
    one_line_error(jaxlm("train", "configs/gpt2-tiny.yaml", *args, "trainer.max_steps=4"),
                   f"{run_tok} is not the tokenizer the shards in")
    one_line_error(jaxlm("data", "prepare", "configs/gpt2-tiny.yaml"), "the embedded corpus trains without a prepare")


def test_mlm_streams_framed_blocks_with_fixed_validation_masks(tmp_path):
    from jaxlm.tasks.mlm import MaskedLMTask

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS[:20]))
    c = load_config("configs/bert-tiny-mlm.yaml", [
        f"run.out_dir={tmp_path / 'run'}", f"data.paths={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.tokenizer.vocab_size=400", "model.vocab_size=400", "data.seq_len=32", "data.prepare.workers=1",
        "trainer.progress_bar=false"])
    task = MaskedLMTask(c, tmp_path / "run")
    directory = prep.prepared_dir(c)
    tokens = stream(directory)
    first = task.train[np.asarray([0, 1])]
    assert first["input_ids"][0, 0] == 2 and first["input_ids"][0, 31] == 3  # [CLS] ... [SEP]
    assert first["input_ids"][1, 1:31].tolist() == tokens[30:60].tolist() and first["row"].tolist() == [0, 1]
    a, b = (next(task.eval_batches(4)) for _ in range(2))
    assert (a["labels"] == b["labels"]).all() and (a["labels"] >= 0).any()
    batch = next(task.train_iterator(4))
    assert batch["labels"].shape == (4, 32) and "row" not in batch
    with pytest.raises(ConfigError, match="task.sentence_pairs needs sentences"):
        MaskedLMTask(load_config("configs/bert-tiny-mlm.yaml", [f"data.dataset={tmp_path}", "task.sentence_pairs=nsp",
                                                                 f"data.cache_dir={tmp_path / 'cache'}"]), tmp_path)


def test_runs_saved_before_the_tokenizer_sample_keys_still_resume():
    from jaxlm.config import resume_conflicts

    now = load_config(None, ["model.type=gpt2"])
    saved = now.model_dump(mode="json")
    for key in ("sample_bytes", "sample_seed"):
        del saved["data"]["tokenizer"][key]
    assert resume_conflicts(saved, now) == []
    saved["data"]["tokenizer"]["vocab_size"] = 5
    assert resume_conflicts(saved, now) == ["data.tokenizer.vocab_size: 5 in the checkpoint, 4096 now"]
