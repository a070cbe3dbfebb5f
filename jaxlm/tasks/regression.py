"""Regression: a numeric target from numeric features, scored by MSE, MAE or Huber loss.

Rows come from CSV / JSONL ``data.paths`` (``task.feature_columns``, ``task.target_column``) or
the synthetic ``dataset: line`` (y = 2x + 3 + noise by default: the optimizer and schedule
demonstrations). They are shuffled into train / validation / test by ``task.split_seed``.
Evaluation reports the configured loss as ``eval_loss`` and ``eval_mse``, ``eval_rmse``,
``eval_mae`` and ``eval_r2`` (the coefficient of determination) over the whole split.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.config import Config, LineConfig
from jaxlm.data.labeled import Table, read_files
from jaxlm.errors import ConfigError, DataError
from jaxlm.tasks.base import ArrayTask


def line(c: LineConfig) -> Table:
    rng = np.random.default_rng(c.seed)
    x = rng.uniform(c.low, c.high, c.examples)
    y = c.slope * x + c.intercept + rng.normal(0.0, c.noise, c.examples)
    return Table({"x": x.tolist(), "y": y.tolist()}, "dataset 'line'")


def numbers(table: Table, column: str, key: str) -> np.ndarray:
    out = np.empty(len(table.column(column, key)), np.float32)
    for row, v in enumerate(table.column(column, key)):
        try:
            out[row] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{table.where} row {row + 1}: {column!r} holds {v!r}, not a number; fix or drop "
                            "the row") from None
        if not math.isfinite(out[row]):
            raise DataError(f"{table.where} row {row + 1}: {column!r} holds {v!r}; regression needs finite numbers")
    return out


def regression_errors(predictions, targets, loss: str, delta: float):
    """Per-example ``(loss, squared error, absolute error)``; Huber as PyTorch ``HuberLoss``."""
    error = predictions - targets
    squared, absolute = error * error, jnp.abs(error)
    if loss == "huber":
        return optax.losses.huber_loss(predictions, targets, delta=delta), squared, absolute
    return squared if loss == "mse" else absolute, squared, absolute


class RegressionTask(ArrayTask):
    def __init__(self, config: Config, run_dir: Path):
        t, model = config.task, config.model
        self.head, self.seed, self.loss_name, self.delta = t.head, config.run.seed, t.loss, t.huber_delta
        if (t.dataset is None) == (not config.data.paths):
            raise ConfigError("task: regression reads either data.paths (CSV / JSONL files) or task.dataset=line; "
                              "set one")
        table = line(t.line) if t.dataset else read_files(config.data.paths)
        features = np.stack([numbers(table, c, "task.feature_columns") for c in t.feature_columns], 1)
        if getattr(model, "num_features", None) != features.shape[1]:
            raise ConfigError(f"task.feature_columns names {features.shape[1]} column(s) but the model takes "
                              f"{getattr(model, 'num_features', 'no numeric')} features; use model.type=mlp with "
                              f"model.num_features={features.shape[1]}")
        rows = {"features": features, "target": numbers(table, t.target_column, "task.target_column"),
                "weight": np.ones(len(features), np.float32)}
        order = np.random.default_rng(t.split_seed).permutation(len(features))
        bounds = np.round(np.cumsum(t.split)[:-1] * len(order)).astype(int)
        train, valid, test = (np.sort(p) for p in np.split(order, bounds))
        self.train = {k: v[train] for k, v in rows.items()}
        self.valid = {k: v[valid if t.eval_split == "validation" else test] for k, v in rows.items()}
        if not len(self.valid["target"]) or not len(self.train["target"]):
            raise ConfigError(f"task.split={t.split} leaves {table.where}'s {len(order)} rows no "
                              f"{'training' if not len(self.train['target']) else t.eval_split} rows")

    def model_inputs(self, batch):
        return {"features": batch["features"]}

    def _errors(self, model, params, batch, dropout_rng):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        predictions = model.apply({"params": params}, batch["features"], rngs=rngs).logits[:, 0]
        return regression_errors(predictions.astype(jnp.float32), batch["target"], self.loss_name, self.delta)

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        per, _, _ = self._errors(model, params, batch, dropout_rng)
        return jnp.sum(per * batch["weight"]), jnp.sum(batch["weight"])

    def eval_sums(self, model, params, batch):
        per, squared, absolute = self._errors(model, params, batch, None)
        w, y = batch["weight"], batch["target"]
        return {"loss": jnp.sum(per * w), "squared": jnp.sum(squared * w), "absolute": jnp.sum(absolute * w),
                "examples": jnp.sum(w), "target": jnp.sum(y * w), "target_squared": jnp.sum(y * y * w)}

    def summarize(self, sums, complete):
        n = max(sums["examples"], 1.0)
        mse = sums["squared"] / n
        variance = sums["target_squared"] / n - (sums["target"] / n) ** 2
        return {"eval_loss": float(sums["loss"] / n), "eval_mse": float(mse), "eval_rmse": math.sqrt(mse),
                "eval_mae": float(sums["absolute"] / n),
                "eval_r2": float(1 - mse / variance) if variance > 0 else float("nan")}


def predict_value(model, params, features: str) -> float:
    """The prediction of a regression model for comma-separated ``features``."""
    try:
        x = [float(v) for v in features.split(",")]
    except ValueError:
        raise DataError(f"{features!r} is not comma-separated numbers (e.g. 1.5 or 0.2,3)") from None
    if len(x) != model.config.num_features:
        raise DataError(f"the model takes {model.config.num_features} feature(s); {features!r} gives {len(x)}")
    return float(model.apply({"params": params}, jnp.asarray([x], jnp.float32)).logits[0, 0])
