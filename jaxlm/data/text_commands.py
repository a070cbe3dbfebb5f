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
