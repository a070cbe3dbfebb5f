"""Metrics to ``metrics.jsonl`` (one JSON object per log step) and TensorBoard event files."""

from __future__ import annotations

import contextlib
import errno
import json
import math
from pathlib import Path

from tensorboardX import SummaryWriter

from jaxlm.errors import JaxlmError, first_line
from jaxlm.train.metrics import CONFUSION


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled, self.run_dir = enabled, run_dir
        if enabled:
            self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self._writing():
            self.jsonl.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            with self._writing():
                try:
                    self.jsonl.close()
                finally:
                    self.tb.close()

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as e:
            reason = "the disk is full" if e.errno == errno.ENOSPC else first_line(e)
            raise JaxlmError(f"could not write the metrics in {self.run_dir} ({reason}); the checkpoints are kept: "
                             "fix that, then rerun the same command to resume") from None


def console_summary(metrics: dict[str, float]) -> str:
    """``key=value`` pairs for the progress log; a confusion matrix's entries (one per pair of
    labels, ``*_confusion_i_j``) stay in ``metrics.jsonl`` and the final JSON line."""
    shown = [f"{k}={v:.4f}" for k, v in metrics.items() if CONFUSION not in k]
    if len(shown) < len(metrics):
        shown.append("(confusion matrix: metrics.jsonl)")
    return "  ".join(shown)


def _plain(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (a line cut short by a crash is skipped)."""
    return [r for r in map(_parse, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if r]


def _parse(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def rewind_metrics(run_dir: Path, step: int) -> None:
    """Drop records after ``step`` (written before a crash, about to be recomputed)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (r := _parse(line)) and r["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
