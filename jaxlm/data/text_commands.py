"""``jaxlm data clean`` and ``jaxlm data augment``: text / CSV / JSONL files in, the same
format out, the columns not named passed through unchanged.

Kept in one module with its own argument definitions (:func:`add_commands`) so the ``data``
command group of :mod:`jaxlm.cli` only has to call it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxlm.data.clean import DEFAULT_STEPS, STEPS, Cleaner, Options, check_steps
from jaxlm.data.dedup import Deduplicator
from jaxlm.data.text_files import TEXT_COLUMN, check_columns, file_format, read_rows, row_writer
from jaxlm.errors import DataError


def report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


def clean_file(source: Path, out: Path, lang: str = "en", steps: list[str] | None = None,
               columns: list[str] | None = None, dedup: str = "exact", threshold: float = 0.8,
               shingle: int | None = None, **options) -> dict:
    """Clean the ``columns`` (default ``text``) of every row of ``source`` into ``out`` (same
    format), dropping the rows a step drops and the duplicates; write and return the report."""
    steps = check_steps(steps if steps is not None else DEFAULT_STEPS[lang])
    cleaner = Cleaner(steps, Options(lang=lang, **options))
    dedup_ = Deduplicator(dedup, threshold, shingle or (5 if lang == "en" else 2))
    names, rows = read_rows(source)
    columns = columns or [TEXT_COLUMN]
    check_columns(source, names, columns)
    totals = {"rows_in": 0, "rows_out": 0, "chars_in": 0, "chars_out": 0, "dropped_by_steps": 0}
    with row_writer(out, names, file_format(source)) as write:
        for row in rows:
            totals["rows_in"] += 1
            texts = [row.get(c) if isinstance(row.get(c), str) else "" for c in columns]
            totals["chars_in"] += sum(map(len, texts))
            cleaned = [cleaner(t) for t in texts]
            if any(t is None for t in cleaned):
                totals["dropped_by_steps"] += 1
                continue
            if dedup_.is_duplicate("\x1f".join(cleaned)):
                continue
            row.update(zip(columns, cleaned))
            write(row)
            totals["rows_out"] += 1
            totals["chars_out"] += sum(map(len, cleaned))
    report = {"input": str(source), "output": str(out), "lang": lang, "columns": columns, "empty_texts": cleaner.empty,
              "steps": cleaner.report(),
              "dedup": {"mode": dedup, **({"threshold": threshold} if dedup == "near" else {}),
                        "exact_duplicates": dedup_.counts["exact"], "near_duplicates": dedup_.counts["near"]},
              **totals}
    report_path(out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def describe_clean(report: dict) -> str:
    d = report["dedup"]
    lines = [f"{report['rows_in']} rows in, {report['rows_out']} out ({report['dropped_by_steps']} dropped: "
             f"{report['empty_texts']} empty texts, the rest by the steps; {d['exact_duplicates']} exact and {d['near_duplicates']} near duplicates); "
             f"{report['chars_in']} -> {report['chars_out']} characters"]
    lines += [f"  {name:<15} changed {c['rows_changed']:>7} texts, removed {c['chars_removed']:>9} characters, "
              f"dropped {c['rows_dropped']:>6} rows" for name, c in report["steps"].items()]
    lines.append(f"wrote {report['output']} and {report_path(Path(report['output']))}")
    return "\n".join(lines)


def cmd_clean(args) -> int:
    steps = args.steps.split(",") if args.steps else None
    columns = args.columns.split(",") if args.columns else None
    report = clean_file(Path(args.input), Path(args.out), args.lang, steps, columns, args.dedup, args.threshold,
                        args.shingle, mask=args.mask, max_repeat=args.max_repeat, min_chars=args.min_chars,
                        max_chars=args.max_chars, min_script=args.min_script)
    print(describe_clean(report))
    return 0


def augment_file(source: Path, out: Path, augment, columns: list[str] | None = None, seed: int = 0,
                 keep_original: bool = True) -> dict:
    """Write each row of ``source`` (if ``keep_original``) followed by ``augment.num_aug``
    augmented copies of it into ``out``; variant ``k`` of row ``r`` comes from a generator
    seeded by ``(seed, r, k)``. EDA writes the paper's per-operation variants."""
    import numpy as np

    from jaxlm.data.text_augment import EDA, build_augmenter

    augmenter = build_augmenter(augment)
    names, rows = read_rows(source)
    columns = columns or [TEXT_COLUMN]
    check_columns(source, names, columns)
    counts = {"rows_in": 0, "rows_out": 0}
    with row_writer(out, names, file_format(source)) as write:
        for r, row in enumerate(rows):
            counts["rows_in"] += 1
            if keep_original:
                write(row)
                counts["rows_out"] += 1
            variants = {}
            for i, c in enumerate(columns):
                text = row.get(c) if isinstance(row.get(c), str) else ""
                rng = np.random.default_rng([seed, r, i])
                if isinstance(augmenter, EDA):
                    variants[c] = augmenter.variants(text, rng) if text.strip() else [text] * augment.num_aug
                else:
                    variants[c] = [augmenter(text, np.random.default_rng([seed, r, i, k])) if text.strip() else text
                                   for k in range(augment.num_aug)]
            for k in range(augment.num_aug):
                write({**row, **{c: variants[c][k] for c in columns}})
                counts["rows_out"] += 1
    return counts


def cmd_augment(args) -> int:
    from pydantic import ValidationError

    from jaxlm.config import AugmentConfig

    fields = {k: getattr(args, k) for k in ("method", "lang", "alpha_sr", "alpha_ri", "alpha_rs", "p_rd", "num_aug",
                                             "model_run", "backward_run", "top_k") if getattr(args, k) is not None}
    try:
        augment = AugmentConfig(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        message = str(err.get("ctx", {}).get("error", "")) or f"--{'-'.join(map(str, err['loc']))}: {err['msg']}"
        raise DataError(message.replace("task.augment.", "--").replace("_", "-")) from None
    counts = augment_file(Path(args.input), Path(args.out), augment, args.columns.split(",") if args.columns else None,
                          args.seed, not args.no_original)
    print(f"{counts['rows_in']} rows in, {counts['rows_out']} out ({augment.method}, {augment.num_aug} variants per "
          f"row{'' if args.no_original else ' after the original'}); wrote {args.out}")
    return 0


def add_commands(data_sub) -> None:
    """Register ``clean`` and ``augment`` under the ``data`` command group's subparsers."""
    p = data_sub.add_parser(
        "clean", help="clean and deduplicate a text / CSV / JSONL file (report written beside the output)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Steps (in the order given): " + ", ".join(STEPS)
        + "\n\nDefaults: en: " + ",".join(DEFAULT_STEPS["en"]) + "\n          zh: " + ",".join(DEFAULT_STEPS["zh"])
        + "\n\nDeduplicate before splitting into train / validation / test, so no near duplicate straddles "
          "the split.")
    p.add_argument("input", metavar="IN", help="a text file (one row per line), CSV / TSV (header) or JSONL")
    p.add_argument("--out", required=True, help="the cleaned file (same format)")
    p.add_argument("--lang", choices=["en", "zh"], default="en")
    p.add_argument("--steps", help="comma-separated steps (default: the language's list)")
    p.add_argument("--columns", help="comma-separated columns to clean (default: text); the others pass through")
    p.add_argument("--dedup", choices=["exact", "near", "none"], default="exact")
    p.add_argument("--threshold", type=float, default=0.8, help="near: Jaccard similarity of duplicates")
    p.add_argument("--shingle", type=int, help="near: characters per shingle (default 5 for en, 2 for zh)")
    p.add_argument("--mask", action="store_true", help="urls / emails / phones / digits: mask instead of remove")
    p.add_argument("--max-repeat", type=int, default=2, help="repeated_chars: longest run kept")
    p.add_argument("--min-chars", type=int, default=1, help="length: shortest text kept")
    p.add_argument("--max-chars", type=int, help="length: longest text kept")
    p.add_argument("--min-script", type=float, default=0.5, help="script: share of letters in the language's script")
    p.set_defaults(func=cmd_clean)

    p = data_sub.add_parser("augment", help="write a text / CSV / JSONL file with augmented copies of each row "
                            "(EDA, contextual substitution, back-translation)")
    p.add_argument("input", metavar="IN", help="a text file (one row per line), CSV / TSV (header) or JSONL")
    p.add_argument("--out", required=True, help="the augmented file (same format)")
    p.add_argument("--method", choices=["eda", "contextual", "back_translation"], default="eda")
    p.add_argument("--lang", choices=["en", "zh"])
    p.add_argument("--num-aug", type=int, help="augmented copies per row (default 4)")
    p.add_argument("--alpha-sr", type=float, help="EDA synonym replacement / contextual substitution share (0.1)")
    p.add_argument("--alpha-ri", type=float, help="EDA random insertion share (0.1)")
    p.add_argument("--alpha-rs", type=float, help="EDA random swap share (0.1)")
    p.add_argument("--p-rd", type=float, help="EDA random deletion probability (0.1)")
    p.add_argument("--model-run", help="contextual: a masked LM run; back_translation: the forward seq2seq run")
    p.add_argument("--backward-run", help="back_translation: the seq2seq run translating back")
    p.add_argument("--top-k", type=int, help="contextual: draw from the masked LM's top k words (5)")
    p.add_argument("--columns", help="comma-separated columns to augment (default: text); the others are copied")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-original", action="store_true", help="write only the augmented copies")
    p.set_defaults(func=cmd_augment)
