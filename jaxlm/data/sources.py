"""Where pretraining text comes from, cut into units that worker processes encode in parallel.

Sources (``data.paths`` / ``data.dataset``):
- local files: plain text (one document per file), JSON Lines, CSV / TSV (one document per
  row, its ``data.text_column``) and Parquet (read with pyarrow);
- Hugging Face ``datasets``: a hub name (with ``data.dataset_config``, ``data.dataset_split``,
  ``data.streaming``), a directory written by ``save_to_disk``, or a builder such as
  ``json`` / ``parquet`` with ``data.paths`` as its ``data_files``;
- ``tfds:NAME``: a TensorFlow Datasets dataset already built in its data directory
  (``TFDS_DATA_DIR``), read with ``tfds.data_source`` (no TensorFlow needed).

A :class:`Unit` is a piece of one source (a line-aligned byte range of a file, a Parquet row
group, a range of dataset rows, a shard of a streamed dataset); it depends only on the data,
so the shards it becomes are the same whatever the number of workers. :func:`read_unit`
yields ``(text, ends_document)`` pieces; a document may span several units of a big text file.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from jaxlm.errors import DataError, first_line

TEXT, JSONL, CSV, PARQUET, HF, HF_STREAM, TFDS = "text", "jsonl", "csv", "parquet", "hf", "hf_stream", "tfds"
HF_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


@dataclass(frozen=True)
class SourceSpec:
    """The data settings that say what the sources are (picklable, sent to workers)."""

    paths: tuple[str, ...] | None
    dataset: str | None
    dataset_config: str | None
    dataset_split: str
    streaming: bool
    text_column: str

    @classmethod
    def of(cls, data) -> SourceSpec:
        return cls(tuple(data.paths) if data.paths else None, data.dataset, data.dataset_config, data.dataset_split,
                   data.streaming, data.text_column)

    @property
    def is_embedded(self) -> bool:
        return not self.paths and not self.dataset


@dataclass(frozen=True)
class Unit:
    kind: str
    where: str
    start: int
    stop: int


def file_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return {".jsonl": JSONL, ".json": JSONL, ".csv": CSV, ".tsv": CSV, ".parquet": PARQUET}.get(suffix, TEXT)


def matched_files(patterns) -> list[str]:
    files = []
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"data.paths: no file matches {pattern!r}; check the path or glob")
        files += matches
    return files


def units(spec: SourceSpec, unit_bytes: int) -> list[Unit]:
    """The source's units, in order (each of about ``unit_bytes`` of text where that can be told)."""
    if spec.dataset and spec.dataset.startswith("tfds:"):
        source = tfds_source(spec)
        return row_ranges(TFDS, spec.dataset, len(source), _mean_row_bytes(source, spec), unit_bytes)
    if spec.dataset:
        ds = hf_dataset(spec)
        if spec.streaming:
            return [Unit(HF_STREAM, spec.dataset, i, i + 1) for i in range(ds.num_shards)]
        return row_ranges(HF, spec.dataset, len(ds), ds.data.nbytes / max(len(ds), 1), unit_bytes)
    out = []
    for path in matched_files(spec.paths):
        kind = file_kind(path)
        if kind in (TEXT, JSONL):
            out += [Unit(kind, path, a, b) for a, b in line_ranges(Path(path), unit_bytes)]
        elif kind == CSV:
            out.append(Unit(CSV, path, 0, Path(path).stat().st_size))
        else:
            groups = parquet_file(path).num_row_groups
            out += [Unit(PARQUET, path, g, g + 1) for g in range(groups)]
    return out


def row_ranges(kind: str, where: str, rows: int, row_bytes: float, unit_bytes: int) -> list[Unit]:
    per_unit = max(1, int(unit_bytes / max(row_bytes, 1.0)))
    return [Unit(kind, where, a, min(a + per_unit, rows)) for a in range(0, rows, per_unit)]


def line_ranges(path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges of about ``size`` that end at line breaks (UTF-8 safe) and cover the file."""
    total, out, start = path.stat().st_size, [], 0
    with open(path, "rb") as f:
        while start < total:
            f.seek(min(start + size, total))
            f.readline()
            stop = min(f.tell(), total) if start + size < total else total
            out.append((start, stop))
            start = stop
    return out or [(0, 0)]


def read_unit(unit: Unit, spec: SourceSpec) -> Iterator[tuple[str, bool]]:
    """The unit's text as ``(text, ends_document)`` pieces."""
    if unit.kind == TEXT:
        with open(unit.where, "rb") as f:
            f.seek(unit.start)
            raw = f.read(unit.stop - unit.start)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"data.paths: {unit.where} is not UTF-8 text ({e.reason} at byte "
                            f"{unit.start + e.start})") from None
        yield text, unit.stop >= Path(unit.where).stat().st_size
        return
    for row, text in _rows(unit, spec):
        if not isinstance(text, str):
            raise DataError(f"{_describe(unit)} row {row}: {spec.text_column!r} holds {type(text).__name__} "
                            f"{str(text)[:40]!r}, not text; set data.text_column to the text column")
        yield text, True


def _rows(unit: Unit, spec: SourceSpec) -> Iterator[tuple[int, object]]:
    column = spec.text_column
    if unit.kind == JSONL:
        with open(unit.where, "rb") as f:
            f.seek(unit.start)
            lines = f.read(unit.stop - unit.start).splitlines()
        first = _line_number(unit)
        for n, line in enumerate(lines, first):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{unit.where} line {n} is not a JSON object ({e}); write one object per line") \
                        from None
                yield n, _field(record, column, unit, n)
    elif unit.kind == CSV:
        with open(unit.where, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if unit.where.endswith(".tsv") else ",")
            for n, record in enumerate(reader, 2):
                yield n, _field(record, column, unit, n)
    elif unit.kind == PARQUET:
        table = parquet_file(unit.where).read_row_group(unit.start)
        if column not in table.column_names:
            raise DataError(f"{unit.where} has no {column!r} column (it has: {', '.join(table.column_names)}); "
                            "set data.text_column")
        yield from enumerate(table.column(column).to_pylist(), 1)
    elif unit.kind in (HF, HF_STREAM):
        ds = hf_dataset(spec)
        if column not in (ds.column_names or []):
            raise DataError(f"dataset {spec.dataset!r} has no {column!r} column (it has: "
                            f"{', '.join(ds.column_names or [])}); set data.text_column")
        if unit.kind == HF:
            for offset in range(unit.start, unit.stop, 1000):
                batch = ds[offset:min(offset + 1000, unit.stop)][column]
                yield from enumerate(batch, offset + 1)
        else:
            for n, record in enumerate(ds.shard(num_shards=ds.num_shards, index=unit.start), 1):
                yield n, record[column]
    elif unit.kind == TFDS:
        source = tfds_source(spec)
        for i in range(unit.start, unit.stop):
            record = source[i]
            if column not in record:
                raise DataError(f"dataset {spec.dataset!r} has no {column!r} feature (it has: "
                                f"{', '.join(record)}); set data.text_column")
            value = record[column]
            yield i + 1, value.decode("utf-8") if isinstance(value, bytes) else value


def _field(record, column: str, unit: Unit, n: int):
    if not isinstance(record, dict) or column not in record:
        has = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{unit.where} line {n} has no {column!r} field (it has: {has}); set data.text_column")
    return record[column]


def _line_number(unit: Unit) -> int:
    if unit.start == 0:
        return 1
    with open(unit.where, "rb") as f:
        return f.read(unit.start).count(b"\n") + 1


def _describe(unit: Unit) -> str:
    return f"dataset {unit.where!r}" if unit.kind in (HF, HF_STREAM, TFDS) else unit.where


def parquet_file(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path} is Parquet, read with pyarrow, which is not installed: pip install 'jaxlm[data]'") \
            from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise DataError(f"{path} is not a readable Parquet file ({first_line(e)})") from None


def hf_dataset(spec: SourceSpec, key: str = "data.dataset"):
    """A ``datasets`` Dataset / IterableDataset: a ``save_to_disk`` directory, a builder over
    ``data.paths``, or a hub name (offline: it must be in the datasets cache)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{key}={spec.dataset!r} is read with Hugging Face datasets, which is not installed: "
                        "pip install 'jaxlm[data]' (or export the data as CSV / JSONL for data.paths)") from None
    name = spec.dataset
    try:
        if any((Path(name) / f).is_file() for f in ("dataset_info.json", "dataset_dict.json")):  # save_to_disk
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[spec.dataset_split]
            return ds.to_iterable_dataset(num_shards=len(ds.cache_files)) if spec.streaming else ds  # a shard per file
        files = list(spec.paths) if spec.paths and name in HF_BUILDERS else None
        return datasets.load_dataset(name, spec.dataset_config, data_files=files, split=spec.dataset_split,
                                     streaming=spec.streaming)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to fetch or read is the user's to fix
        reason = first_line(e)
        raise DataError(f"{key}={name!r}: Hugging Face datasets could not load split {spec.dataset_split!r} "
                        f"({reason}); offline it must be a save_to_disk directory or already in the datasets cache") \
            from None


def tfds_source(spec: SourceSpec, key: str = "data.dataset"):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"{key}={spec.dataset!r} is read with tensorflow-datasets, which is not installed: "
                        "pip install 'jaxlm[data]'") from None
    name = spec.dataset.removeprefix("tfds:")
    try:
        return tfds.data_source(name, split=spec.dataset_split, download=False)  # offline: built data only
    except Exception as e:  # noqa: BLE001
        reason = first_line(e)
        raise DataError(f"{key}={spec.dataset!r}: tfds could not open split {spec.dataset_split!r} ({reason}); "
                        "build it first (tfds build, or the builder's download_and_prepare) in TFDS_DATA_DIR") \
            from None


def _mean_row_bytes(source, spec: SourceSpec) -> float:
    n = min(len(source), 100)
    if not n:
        return 1.0
    sizes = [len(v) if isinstance(v := source[i].get(spec.text_column), (bytes, str)) else 1 for i in range(n)]
    return max(1.0, sum(sizes) / n)


def fingerprint(spec: SourceSpec) -> dict:
    """What identifies the source's content: files with their sizes and modification times;
    a ``save_to_disk`` directory's fingerprint; otherwise the dataset's name and settings."""
    out = {"dataset": spec.dataset, "dataset_config": spec.dataset_config, "split": spec.dataset_split,
           "streaming": spec.streaming, "text_column": spec.text_column}
    if spec.paths:
        out["files"] = [[p, (s := Path(p).stat()).st_size, s.st_mtime_ns] for p in
                        (str(Path(f).resolve()) for f in matched_files(spec.paths))]
    if spec.dataset and Path(spec.dataset).is_dir():
        out["dataset"] = str(Path(spec.dataset).resolve())
        out["state"] = sorted([str(p.relative_to(spec.dataset)), p.stat().st_size, p.stat().st_mtime_ns]
                              for p in Path(spec.dataset).rglob("*.json"))
    return out

