"""Figures of runs, drawn with matplotlib (``pip install 'jaxlm[plot]'``): training and
evaluation curves of one or several runs on shared axes, the learning rate a config would use,
and confusion matrices of classification runs.

Every figure is a matplotlib ``Figure`` (no pyplot state) written by :func:`save` under a
temporary name and renamed when complete. Run ``k`` is drawn in colour ``k`` of matplotlib's
default cycle (tab10) in every panel, so one run keeps one colour across metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxlm.errors import JaxlmError

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]
"""matplotlib's tab10, the colours of runs 0..9 (tests find each run's line by its colour)."""


def figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise JaxlmError("jaxlm plot draws with matplotlib, which is not installed: pip install 'jaxlm[plot]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(fig, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` (format from its suffix, PNG by default) whole or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=out.suffix.lstrip(".").lower() or "png")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def run_names(runs: list[Path]) -> list[str]:
    """Short legend names: the directory names, or the whole paths where two names collide."""
    names = [r.name or str(r) for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names)]


def default_metrics(records: list[list[dict]]) -> list[str]:
    """``loss``, then ``eval_accuracy`` (classification) or ``eval_loss``, as the runs have them."""
    present = {k for recs in records for r in recs for k in r}
    chosen = ["loss"] if "loss" in present else []
    evaluated = next((m for m in ("eval_accuracy", "eval_loss") if m in present), None)
    return chosen + ([evaluated] if evaluated else [])


def curves(runs: list[str | Path], metrics: list[str] | None, out: str | Path) -> Path:
    """One panel per metric, one line per run (x: optimizer steps), from each run's ``metrics.jsonl``."""
    from jaxlm.train.logging import read_metrics

    runs = [Path(r) for r in runs]
    if len(runs) > len(COLORS):
        raise JaxlmError(f"jaxlm plot draws at most {len(COLORS)} runs on one figure; {len(runs)} were given")
    records = []
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise JaxlmError(f"{run} has no metrics.jsonl; give run directories that `jaxlm train` wrote")
        records.append(read_metrics(run))
    metrics = metrics or default_metrics(records)
    present = sorted({k for recs in records for r in recs for k, v in r.items()
                      if k != "step" and isinstance(v, (int, float)) and "confusion_" not in k})
    missing = [m for m in metrics if not any(m in r for recs in records for r in recs)]
    if missing or not metrics:
        raise JaxlmError(f"no run logged {missing[0] if missing else 'any metric'!r}; the runs logged: "
                         f"{', '.join(present)} (choose with --metrics)")
    fig = figure(6.4, 2.6 * len(metrics))
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        for k, (name, recs) in enumerate(zip(run_names(runs), records)):
            points = [(r["step"], r[metric]) for r in recs if isinstance(r.get(metric), (int, float))]
            if points:
                steps, values = zip(*points)
                sparse = len(points) < 30  # evaluations: mark the points
                ax.plot(steps, values, color=COLORS[k], linewidth=2, marker="o" if sparse else None, markersize=3,
                        label=name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    axes[-1].set_xlabel("step")
    return save(fig, out)


def learning_rates(config) -> np.ndarray:
    """The learning rate of each of ``config``'s steps 1 .. max_steps (the update that makes step
    ``s`` uses the schedule's value at ``s - 1``, as ``metrics.jsonl`` logs it); reduce-on-plateau's
    reductions depend on the losses and are not included."""
    from jaxlm.train.optim import build_schedule

    schedule = build_schedule(config.optimizer.learning_rate, config.schedule, config.trainer.max_steps)
    return np.asarray([float(schedule(s)) for s in range(config.trainer.max_steps)])


def schedules(named_configs: list[tuple[str, object]], out: str | Path) -> Path:
    """One line per ``(name, config)``: its learning rate over its steps."""
    if len(named_configs) > len(COLORS):
        raise JaxlmError(f"jaxlm plot --schedule draws at most {len(COLORS)} schedules on one figure")
    fig = figure(6.4, 3.6)
    ax = fig.subplots()
    plateau = False
    for k, (name, config) in enumerate(named_configs):
        ax.plot(np.arange(1, config.trainer.max_steps + 1), learning_rates(config), color=COLORS[k], linewidth=2,
                label=name)
        plateau |= config.schedule.plateau is not None
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if plateau:
        ax.set_title("before reduce-on-plateau, which depends on the losses", fontsize="small")
    return save(fig, out)


def confusion_matrix(metrics: dict, labels: list[str] | None = None) -> np.ndarray:
    """The ``[true, predicted]`` matrix of a metrics record's ``*confusion_i_j`` entries."""
    entries = {tuple(map(int, k.rsplit("confusion_", 1)[1].split("_"))): v for k, v in metrics.items()
               if "confusion_" in k}
    if not entries:
        raise JaxlmError("these metrics hold no confusion matrix (eval_confusion_i_j): give a classification run's")
    n = max(max(i, j) for i, j in entries) + 1
    matrix = np.zeros((n, n))
    for (i, j), v in entries.items():
        matrix[i, j] = v
    return matrix


def confusion(matrix: np.ndarray, labels: list[str] | None, out: str | Path, title: str = "") -> Path:
    """A heatmap of ``matrix`` (rows: true class, columns: predicted) with counts and row shares."""
    n = len(matrix)
    labels = labels or [str(i) for i in range(n)]
    side = 1.6 + 0.9 * n
    fig = figure(side + 1.2, side)
    ax = fig.subplots()
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.0f}\n{shares[i, j]:.1%}", ha="center", va="center", fontsize="small",
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize="small")
    return save(fig, out)
