"""Raw text: the embedded corpus and local files, split into train / validation text."""

from __future__ import annotations

import glob
from pathlib import Path

from jaxlm.errors import DataError


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


def split_documents(docs: list[str], validation_fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last ``validation_fraction`` of every document, cut at a line break.

    Every document contributes to both splits, so the validation text is spread evenly
    over the corpus rather than being one unlucky topic; train and validation never overlap.
    """
    train, valid = [], []
    for doc in docs:
        cut = int(len(doc) * (1 - validation_fraction))
        newline = doc.rfind("\n", 0, cut)
        if newline > 0:
            cut = newline + 1
        head, tail = doc[:cut], doc[cut:]
        if head.strip():
            train.append(head)
        if tail.strip():
            valid.append(tail)
    if not train or not valid:
        raise DataError("the corpus is too small to split into train and validation text; add text or "
                        "change data.validation_fraction")
    return train, valid
