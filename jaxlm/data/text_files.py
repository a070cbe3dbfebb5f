"""Rows of text, CSV / TSV and JSON Lines files, read and written one at a time.

A plain text file is one row per line in a ``text`` column. Reading decodes line by line, so
a file that is not UTF-8 fails naming the file and the byte; writing goes to a temporary
name that replaces ``path`` only once every row is written (never a half-written file).
"""

from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from jaxlm.errors import DataError

TEXT_COLUMN = "text"


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    return "text"


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines (with their ends), naming the file and byte of the first invalid UTF-8."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a text, CSV or JSONL file")
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {offset + e.start}); convert it, "
                                "e.g. iconv -f LATIN1 -t UTF-8") from None
            yield line.removeprefix("\ufeff") if offset == 0 else line
            offset += len(raw)


def read_rows(path: Path) -> tuple[list[str], Iterator[dict]]:
    """``(columns, rows)`` of ``path``; for JSON Lines the columns of its first row."""
    fmt = file_format(path)
    lines = _lines(path)
    if fmt in ("csv", "tsv"):
        reader = csv.DictReader(lines, delimiter="\t" if fmt == "tsv" else ",")
        return list(reader.fieldnames or []), iter(reader)
    if fmt == "jsonl":
        rows = _json_rows(path, lines)
        first = next(rows, None)
        if first is None:
            return [], iter(())
        return list(first), _chain(first, rows)
    return [TEXT_COLUMN], ({TEXT_COLUMN: line.rstrip("\r\n")} for line in lines)


def _chain(first, rest):
    yield first
    yield from rest


def _json_rows(path: Path, lines: Iterator[str]) -> Iterator[dict]:
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n} is not a JSON object ({e.msg}); write one object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {n} is a JSON {type(row).__name__}, not an object")
            yield row


def check_columns(path: Path, columns: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(f"{path} has no {missing[0]!r} column (it has: {', '.join(columns) or 'none'}); "
                        "name the text columns with --columns")


@contextmanager
def row_writer(path: Path, columns: list[str], fmt: str):
    """Yields ``write(row)``; the file appears at ``path`` only when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            if fmt in ("csv", "tsv"):
                writer = csv.DictWriter(f, columns, delimiter="\t" if fmt == "tsv" else ",", extrasaction="ignore")
                writer.writeheader()
                yield writer.writerow
            elif fmt == "jsonl":
                yield lambda row: f.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                yield lambda row: f.write(row[TEXT_COLUMN].replace("\n", " ") + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
