"""Early stopping on a validation metric (``trainer.early_stopping``).

Progress means beating the value of the last progress by more than ``min_delta``; every
new best value is checkpointed, so the best checkpoint survives retention. The record
travels in each checkpoint's JSON item next to the data position, so a resumed run stops
exactly where an uninterrupted one would.
"""

from __future__ import annotations

from jaxlm.config import EarlyStoppingConfig
from jaxlm.errors import ConfigError


class EarlyStopping:
    def __init__(self, config: EarlyStoppingConfig | None):
        self.config = config
        self.best: float | None = None
        """The best value so far."""
        self.reference: float | None = None
        """The value the next evaluation must beat by ``min_delta`` to count as progress."""
        self.stale = 0
        """Evaluations since the last progress."""

    @property
    def stop(self) -> bool:
        return self.config is not None and self.stale >= self.config.patience

    def update(self, metrics: dict[str, float]) -> bool:
        """Record an evaluation; ``True`` when it is the best so far (to be checkpointed, so the
        best checkpoint is always kept)."""
        c = self.config
        if c is None:
            return False
        if c.metric not in metrics:
            raise ConfigError(f"trainer.early_stopping.metric={c.metric!r} is not reported by this task; it reports "
                              f"{', '.join(sorted(metrics))}")
        sign = 1.0 if c.mode == "max" else -1.0
        value = metrics[c.metric]
        if self.reference is None or sign * (value - self.reference) > c.min_delta:
            self.reference, self.stale = value, 0
        else:
            self.stale += 1
        best = self.best is None or sign * (value - self.best) > 0
        if best:
            self.best = value
        return best

    def describe(self, step: int) -> str:
        c = self.config
        by = f" by more than {c.min_delta:g}" if c.min_delta else ""
        return (f"early stopping at step {step}: {c.metric} has not improved{by} for {self.stale} evaluations; the "
                f"best checkpoint ({c.metric}={self.best:.6g}) is kept: use --best with jaxlm eval / predict / fill-mask")

    def state(self) -> dict:
        watched = [self.config.metric, self.config.mode] if self.config else None
        return {"watched": watched, "best": self.best, "reference": self.reference, "stale": self.stale}

    def restore(self, state: dict | None) -> None:
        """Continue a saved record (one kept for another metric or mode is dropped)."""
        if state and self.config and state.get("watched") == [self.config.metric, self.config.mode]:
            self.best, self.reference, self.stale = state["best"], state["reference"], state["stale"]


class LoopPosition:
    """What the checkpoint's JSON item holds: the data iterator's position and the
    early-stopping record, saved and restored together."""

    def __init__(self, data, stopping: EarlyStopping):
        self.data, self.stopping = data, stopping

    def state(self) -> dict:
        return {**self.data.state(), "early_stopping": self.stopping.state()}

    def restore(self, state: dict) -> None:
        self.data.restore(state)
        self.stopping.restore(state.get("early_stopping"))
