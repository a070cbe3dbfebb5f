"""``jaxlm plot``: curves of runs, the learning rate of a config, a classification run's
confusion matrix (figures from :mod:`jaxlm.analysis.plots`).

    jaxlm plot RUN [RUN ...] [--metrics loss,eval_accuracy] --out fig.png
    jaxlm plot --schedule CONFIG [KEY=VALUE ...] [--vary KEY=V1,V2,...] --out lr.png
    jaxlm plot --confusion RUN [--step N | --eval FILE] --out confusion.png
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxlm.errors import JaxlmError


def cmd_plot(args) -> int:
    from jaxlm.analysis import plots

    modes = sum(bool(x) for x in (args.schedule, args.confusion))
    if modes > 1 or (modes and args.metrics):
        raise JaxlmError("jaxlm plot draws one kind of figure: runs' curves (RUN ... [--metrics]), --schedule CONFIG "
                         "or --confusion RUN; give one")
    if args.schedule:
        named = schedule_variants(args.schedule, args.items, args.vary)
        out = plots.schedules(named, args.out)
        print(f"wrote {out}: the learning rate of {len(named)} schedule(s) over "
              f"{max(c.trainer.max_steps for _, c in named)} steps")
        return 0
    if args.vary:
        raise JaxlmError("--vary varies a config key of --schedule CONFIG; add --schedule")
    if args.confusion:
        if args.items:
            raise JaxlmError(f"--confusion draws one run; {' '.join(args.items)} is extra")
        matrix, labels, title = confusion_source(Path(args.confusion), args.step, args.eval)
        out = plots.confusion(matrix, labels, args.out, title)
        print(f"wrote {out}: {title}, accuracy {matrix.trace() / max(matrix.sum(), 1):.4f} of {matrix.sum():.0f}")
        return 0
    if not args.items:
        raise JaxlmError("give the run directories to draw (jaxlm plot RUN [RUN ...]), --schedule CONFIG or "
                         "--confusion RUN")
    if args.step is not None or args.eval:
        raise JaxlmError("--step and --eval choose the evaluation of --confusion RUN; add --confusion")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    out = plots.curves(args.items, metrics, args.out)
    print(f"wrote {out}: {len(args.items)} run(s)")
    return 0


def schedule_variants(config_path: str, overrides: list[str], vary: str | None) -> list[tuple[str, object]]:
    """``(legend name, config)`` for the config with ``overrides``, once per value of ``vary``."""
    from jaxlm.config import load_config

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise JaxlmError(f"--schedule CONFIG takes KEY=VALUE overrides after it; {bad[0]!r} is not one")
    if not vary:
        return [(Path(config_path).stem + "".join(f" {o}" for o in overrides), load_config(config_path, overrides))]
    key, _, values = vary.partition("=")
    if not key or not values:
        raise JaxlmError(f"--vary {vary!r}: write KEY=V1,V2,... (e.g. schedule.name=linear,cosine,one_cycle)")
    return [(f"{key}={v}", load_config(config_path, [*overrides, f"{key}={v}"])) for v in values.split(",")]


def confusion_source(run: Path, step: int | None, eval_file: str | None):
    """``(matrix, labels, title)``: from ``eval_file`` (the JSON line ``jaxlm eval`` prints), or
    the run's ``metrics.jsonl`` at ``step`` (default: its last evaluation)."""
    from jaxlm.analysis.plots import confusion_matrix
    from jaxlm.config import load_config
    from jaxlm.tasks.classification import label_names
    from jaxlm.train.logging import read_metrics

    if not (run / "config.yaml").is_file():
        raise JaxlmError(f"{run} is not a jaxlm run directory (no config.yaml); give the run of a classifier")
    model = load_config(run / "config.yaml").model
    labels = label_names(model) if getattr(model, "id2label", None) else None
    if eval_file:
        if step is not None:
            raise JaxlmError("--step picks an evaluation of metrics.jsonl and --eval FILE gives one: choose one")
        lines = [line for line in Path(eval_file).read_text().splitlines() if line.startswith("{")] \
            if Path(eval_file).is_file() else []
        if not lines:
            raise JaxlmError(f"--eval {eval_file}: no JSON metrics line in it; save what `jaxlm eval` prints there")
        record = json.loads(lines[-1])
        return confusion_matrix(record, labels), labels, f"{run.name}, step {record.get('step', '?')}, --eval {eval_file}"
    if not (run / "metrics.jsonl").is_file():
        raise JaxlmError(f"{run} has no metrics.jsonl; train it first")
    records = [r for r in read_metrics(run) if any("confusion_" in k for k in r)]
    if step is not None:
        records = [r for r in records if r["step"] == step]
    if not records:
        at = f" at step {step}" if step is not None else ""
        raise JaxlmError(f"{run}/metrics.jsonl has no confusion matrix{at}: it needs a classification run's "
                         "evaluations (trainer.eval_every)")
    record = records[-1]
    return confusion_matrix(record, labels), labels, f"{run.name}, step {record['step']}, evaluation split"


def add_command(sub) -> None:
    """Register ``plot`` under the top-level subparsers."""
    p = sub.add_parser("plot", help="draw runs' training / evaluation curves, a config's learning rate or a "
                       "classifier's confusion matrix (PNG; matplotlib)")
    p.add_argument("items", nargs="*", metavar="RUN | KEY=VALUE",
                   help="run directories to draw; with --schedule, overrides of CONFIG")
    p.add_argument("--metrics", help="comma-separated metrics of metrics.jsonl (default: loss and eval_accuracy, "
                   "else eval_loss)")
    p.add_argument("--schedule", metavar="CONFIG", help="draw the learning rate CONFIG would use, without training")
    p.add_argument("--vary", metavar="KEY=V1,V2,...", help="--schedule: one curve per value of a config key")
    p.add_argument("--confusion", metavar="RUN", help="draw a classification run's confusion matrix")
    p.add_argument("--step", type=int, help="--confusion: the evaluation at this step (default: the last)")
    p.add_argument("--eval", metavar="FILE", help="--confusion: the JSON line `jaxlm eval` printed (e.g. of the "
                   "test split) instead of metrics.jsonl")
    p.add_argument("--out", default="plot.png", help="the image to write (default: plot.png; .svg / .pdf too)")
    p.set_defaults(func=cmd_plot)
