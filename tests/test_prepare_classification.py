"""Prepared classification rows: ``jaxlm data prepare`` on a classification config, training and
evaluation from the memory-mapped ``.npy`` rows (the same rows and losses as in memory, no table
read or encoding on a restart), exact resume, and one-line errors for damaged files, a changed
tokenizer and configs that stay in memory."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.pipeline import BatchIterator
from jaxlm.data.shards import read_manifest
from jaxlm.errors import ConfigError, DataError
from jaxlm.tasks import classification, classification_prepare
from jaxlm.tasks.classification import ClassificationTask
from jaxlm.train.logging import read_metrics
from test_tasks_bert import one_line_error, overrides, reviews, write_csv

BERT = "configs/bert-classify.yaml"


def settings(tmp_path, **extra):
    return {"task.dataset": None, "data.paths": tmp_path / "reviews.csv", "data.cache_dir": tmp_path / "cache",
            "trainer.early_stopping": None, "checkpoint.keep_best": 0, "checkpoint.keep": 3, **extra}


@pytest.fixture
def csv_file(tmp_path):
    return write_csv(tmp_path / "reviews.csv", reviews(80))


def in_memory(monkeypatch):
    """Force the in-memory path (what every classification run did before prepared rows)."""
    monkeypatch.setattr(classification_prepare, "in_memory_reason", lambda config: "the test compares")


def no_table_or_encoding(monkeypatch):
    """Make reading the table or encoding a text fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("the table was read or encoded again")

    monkeypatch.setattr(classification, "read_files", refuse)
    monkeypatch.setattr(classification, "read_dataset", refuse)
    monkeypatch.setattr(classification.TextEncoder, "__call__", refuse)


def losses(run):
    records = read_metrics(run)
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r]


def test_prepare_then_train_equals_in_memory_and_restarts_read_no_table(tmp_path, csv_file, monkeypatch, capsys):
    s = settings(tmp_path)
    assert main(["data", "prepare", BERT, *overrides(tmp_path / "run", **s)]) == 0
    out = capsys.readouterr().out
    assert "prepared " in out and "56 train, 12 validation, 12 test examples" in out and ".npy rows" in out
    directory = next((tmp_path / "cache").glob("reviews-*/manifest.json")).parent
    manifest = read_manifest(directory, "jaxlm-rows/1")
    assert sorted(manifest["splits"]["train"]["fields"]) == ["attention_mask", "input_ids", "label", "token_type_ids"]
    assert main(["train", BERT, *overrides(tmp_path / "run", **s)]) == 0

    # The in-memory path with the same tokenizer (training a WordPiece again may break ties otherwise).
    shutil.copytree(directory / "tokenizer", tmp_path / "memory" / "tokenizer")
    with monkeypatch.context() as m:
        in_memory(m)
        assert main(["train", BERT, *overrides(tmp_path / "memory", **s)]) == 0
    assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 1
    expected = losses(tmp_path / "memory")
    assert len(expected[0]) == 4 and len(expected[1]) == 2
    assert losses(tmp_path / "run") == expected  # bit-equal: the same rows in the same order
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (directory / "tokenizer" / "tokenizer.json").read_bytes()

    no_table_or_encoding(monkeypatch)
    config = load_config(BERT, overrides(tmp_path / "run", **s))
    task = ClassificationTask(config, tmp_path / "run")
    assert all(isinstance(v, np.memmap) for split in (task.train, task.valid) for v in split.values())
    batch = next(BatchIterator(task.train, 8, seed=0))
    assert type(batch["input_ids"]) is np.ndarray and batch["input_ids"].shape == (8, 32)  # only its rows read
    test = ClassificationTask(load_config(BERT, overrides(tmp_path / "run", **s, **{"task.eval_split": "test"})),
                              tmp_path / "run")
    assert Path(test.valid["label"].filename).resolve() == (directory / "test.label.npy").resolve()
    assert main(["eval", BERT, *overrides(tmp_path / "run", **s, **{"task.eval_split": "test"})]) == 0

    # A restart from step 2 (checkpoint.resume) reads the prepared rows and repeats steps 3-4 exactly.
    resume = {**s, "checkpoint.resume": tmp_path / "run" / "checkpoints" / "2"}
    assert main(["train", BERT, *overrides(tmp_path / "resumed", **resume)]) == 0
    assert losses(tmp_path / "resumed")[0] == expected[0][2:]


@pytest.mark.parametrize("config,extra", [
    (BERT, {"task.packing": True}),
    (BERT, {"task.long_text": "windows", "task.max_windows": 3, "data.seq_len": 16}),
    ("configs/textcnn-sentiment.yaml", {}),
], ids=["packing", "windows", "textcnn"])
def test_prepared_rows_equal_in_memory_rows(tmp_path, csv_file, monkeypatch, config, extra):
    if config == BERT:
        c = load_config(config, overrides(tmp_path / "run", **settings(tmp_path, **extra)))
    else:  # a word vocabulary built from the training split
        c = load_config(config, [f"{k}={'null' if v is None else v}" for k, v in {
            "run.out_dir": tmp_path / "run", "trainer.progress_bar": False, **settings(tmp_path)}.items()])
    prepared = ClassificationTask(c, tmp_path / "run")
    with monkeypatch.context() as m:  # the run's tokenizer, as a resumed run reads it
        in_memory(m)
        memory = ClassificationTask(c, tmp_path / "run")
    for a, b in ((prepared.train, memory.train), (prepared.valid, memory.valid)):
        assert a.keys() == b.keys() and all(isinstance(v, np.memmap) for v in a.values())
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    assert getattr(prepared, "model_kwargs", None) == getattr(memory, "model_kwargs", None)


def test_changed_source_new_key_and_damage_named(tmp_path, csv_file, monkeypatch, capsys):
    s = settings(tmp_path)
    config = load_config(BERT, overrides(tmp_path / "run", **s))
    first = classification_prepare.prepare_rows(config)
    assert classification_prepare.prepare_rows(config) == first
    write_csv(csv_file, reviews(81))
    second = classification_prepare.prepare_rows(config)
    assert second != first and (first / "manifest.json").is_file()
    assert read_manifest(second, "jaxlm-rows/1")["texts"] == 81

    ClassificationTask(config, tmp_path / "run")  # keeps the prepared tokenizer with the run
    ids = second / "train.input_ids.npy"
    original = ids.read_bytes()
    damaged = bytearray(original)
    damaged[-3] ^= 0xFF
    ids.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=f"{ids} is corrupted .*delete {second} and rerun jaxlm data prepare"):
        ClassificationTask(config, tmp_path / "run")
    ids.write_bytes(original[:-40])
    assert main(["train", BERT, *overrides(tmp_path / "run", **s)]) == 2
    one_line_error(capsys, f"{ids} is {len(original) - 40} bytes, the manifest says {len(original)}",
                   f"delete {second} and rerun jaxlm data prepare")
    ids.write_bytes(original)

    prepared_tok = second / "tokenizer" / "tokenizer.json"
    original = prepared_tok.read_text()
    prepared_tok.write_text(original.replace('"lowercase": true', '"lowercase": false', 1))
    assert main(["train", BERT, *overrides(tmp_path / "run", **s)]) == 2
    one_line_error(capsys, f"{prepared_tok} is not the tokenizer the shards in {second}")
    prepared_tok.write_text(original)
    # The run's own tokenizer, changed, is the one the run reads (as in memory): rows encoded with it.
    run_tok = tmp_path / "run" / "tokenizer" / "tokenizer.json"
    run_tok.write_text(run_tok.read_text().replace('"lowercase": true', '"lowercase": false', 1))
    third = classification_prepare.prepare_rows(config)
    assert third not in (first, second) and (third / "tokenizer" / "tokenizer.json").read_text() == run_tok.read_text()


def test_shipped_sets_and_augment_stay_in_memory(tmp_path, csv_file, capsys, caplog):
    assert main(["data", "prepare", BERT, f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    one_line_error(capsys, "task.dataset=sentiment_en ships with jaxlm", "nothing to prepare")
    eda = overrides(tmp_path / "run", **settings(tmp_path, **{"task.augment.method": "eda"}))
    assert main(["data", "prepare", BERT, *eda]) == 2
    one_line_error(capsys, "task.augment augments and re-encodes the training texts every epoch")
    with caplog.at_level("INFO", logger="jaxlm"):
        task = ClassificationTask(load_config(BERT, eda), tmp_path / "run")
    assert "classification rows encoded in memory: task.augment" in caplog.text
    assert not isinstance(task.train["input_ids"], np.memmap) and not (tmp_path / "cache").exists()
    with pytest.raises(ConfigError, match="either data.paths"):
        classification_prepare.prepare_rows(load_config(BERT, overrides(tmp_path / "run", **{
            **settings(tmp_path), "task.dataset": "imdb"})))


def test_hugging_face_dataset_is_prepared_like_files(tmp_path, monkeypatch):
    import datasets

    texts, labels = zip(*reviews(60))
    datasets.Dataset.from_dict({"text": list(texts), "label": [int(x == "positive") for x in labels]}).save_to_disk(
        str(tmp_path / "hf"))
    c = load_config(BERT, overrides(tmp_path / "run", **settings(tmp_path, **{"data.paths": None,
                                                                              "task.dataset": tmp_path / "hf"})))
    prepared = ClassificationTask(c, tmp_path / "run")
    assert isinstance(prepared.train["input_ids"], np.memmap)
    assert next((tmp_path / "cache").glob("*/manifest.json")).parent.name.startswith("hf-")
    with monkeypatch.context() as m:
        in_memory(m)
        memory = ClassificationTask(c, tmp_path / "run")
    assert all(np.array_equal(prepared.train[k], memory.train[k]) for k in memory.train)
    assert all(np.array_equal(prepared.valid[k], memory.valid[k]) for k in memory.valid)
