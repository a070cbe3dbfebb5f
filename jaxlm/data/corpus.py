"""Raw text: the embedded corpus and local files, split into train / validation text."""

from __future__ import annotations

import glob
from pathlib import Path

from jaxlm.errors import DataError

CHUNK_CHARS = 2000


def embedded_corpus() -> list[str]:
    """CPython's ``pydoc_data.topics``: ~460 KB of English prose shipped with every Python."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def read_text_files(patterns: list[str]) -> list[str]:
    docs = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataError(f"data.paths: no file matches {pattern!r}; check the path or glob")
        for path in matches:
            if Path(path).is_file():
                try:
                    docs.append(Path(path).read_text(encoding="utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"data.paths: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return docs


def load_documents(paths: list[str] | None) -> list[str]:
    docs = embedded_corpus() if paths is None else read_text_files(paths)
    docs = [d for d in docs if d.strip()]
    if not docs:
        where = "the embedded corpus" if paths is None else ", ".join(paths)
        raise DataError(f"data.paths: the corpus is empty ({where} holds no text); point it at non-empty files")
    return docs


def split_documents(docs: list[str], validation_fraction: float, chunk_chars: int = CHUNK_CHARS
                    ) -> tuple[list[str], list[str]]:
    """Hold out an evenly spread ``validation_fraction`` of ~``chunk_chars`` chunks.

    Documents are cut at line breaks into chunks; chunk i (counted over the whole corpus)
    is held out when ``floor((i + 1) * f) > floor(i * f)``, which spreads the validation text
    through every part of the corpus (a document's tail, often footnotes, is no more likely
    than its middle). Neighbouring training chunks of a document stay joined; each held-out
    chunk is its own document. Train and validation never overlap.
    """
    train, valid, index = [], [], 0
    for doc in docs:
        current = []
        for chunk in line_chunks(doc, chunk_chars):
            index += 1
            if is_held_out(index - 1, validation_fraction):
                valid.append(chunk)
                if current:
                    train.append("".join(current))
                current = []
            else:
                current.append(chunk)
        if current:
            train.append("".join(current))
    train, valid = [t for t in train if t.strip()], [v for v in valid if v.strip()]
    if not train or not valid:
        raise DataError("the corpus is too small to split into train and validation text; add text or "
                        "change data.validation_fraction")
    return train, valid


def is_held_out(index: int, fraction: float) -> bool:
    """Whether chunk ``index`` goes to validation: evenly spread, ``fraction`` of all chunks."""
    return int((index + 1) * fraction) > int(index * fraction)


def line_chunks(doc: str, size: int = CHUNK_CHARS):
    """``doc`` cut into pieces of about ``size`` characters, each ending at a line break."""
    start = 0
    while start < len(doc):
        end = doc.find("\n", start + size)
        end = len(doc) if end < 0 else end + 1
        yield doc[start:end]
        start = end
