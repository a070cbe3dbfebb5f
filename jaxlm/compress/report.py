"""``jaxlm compare RUN1 RUN2 ...``: the efficiency table of compressed models, one row per run.

Each row: parameters (the model's, whatever their storage), non-zero parameters (after
dequantizing: what pruning removed), the bytes of the params and of the whole checkpoint on
disk, the eval metric on a chosen split, inference latency per example at batch 1 and 32
(one jitted forward pass; the median of ``repeats`` rounds that run every model once in turn, so all
meet the same interference on a shared machine),
and the training wall time from the run's ``metrics.jsonl``. The first run is the baseline the
speed-ups are relative to. Written as markdown and JSON.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.checkpoint import checkpoint_dir, dir_size, open_run
from jaxlm.errors import JaxlmError

BATCH_SIZES = (1, 32)


@dataclass
class Row:
    run: str
    step: int
    params: int
    nonzero: int
    params_bytes: int
    checkpoint_bytes: int
    metric: str
    value: float | None
    latency_ms: dict[int, float]
    """Milliseconds per example at each batch size."""
    train_seconds: float | None
    note: str


def chosen_step(path: str) -> int:
    """The best checkpoint if the run records one, else the latest."""
    ckpt, step = open_run(path)
    try:
        return ckpt.best_step() or step
    finally:
        ckpt.close()


def train_seconds(run_dir: Path) -> float | None:
    """Wall time of training from the logged ``examples_per_second`` (each record covers the steps
    since the previous one, evaluations and checkpoint saves between them included)."""
    from jaxlm.config import load_config
    from jaxlm.train.logging import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return None
    batch = load_config(run_dir / "config.yaml").trainer.batch_size
    total, last = 0.0, 0
    for record in read_metrics(run_dir):
        if "examples_per_second" in record:
            total += batch * (record["step"] - last) / record["examples_per_second"]
            last = record["step"]
    return total or None


def count_params(params) -> tuple[int, int]:
    """``(parameters, non-zero parameters)`` of a param tree, quantized leaves at their logical size."""
    from jaxlm.compress.quantize import dequantize, is_quantized_leaf

    total = nonzero = 0
    for leaf in jax.tree.leaves(params, is_leaf=is_quantized_leaf):
        x = dequantize(leaf) if is_quantized_leaf(leaf) else leaf
        total += int(np.size(x))
        nonzero += int(jnp.count_nonzero(x))
    return total, nonzero


def forward_pass(model, params, inputs: dict):
    """A no-argument function running one jitted forward pass of ``model`` over ``inputs`` (compiled here)."""
    forward = jax.jit(lambda p, x: model.apply({"params": p}, **x).logits)
    jax.block_until_ready(forward(params, inputs))
    return lambda: jax.block_until_ready(forward(params, inputs))


def interleaved_medians(passes: list, repeats: int) -> list[float]:
    """Median seconds of each of ``passes`` over ``repeats`` rounds that run every pass once in turn:
    on a shared machine each pass meets the same interference, so their ratios hold."""
    times = [[] for _ in passes]
    for _ in range(repeats):
        for run, out in zip(passes, times):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def report_run(path: str, split: str, metric: str | None) -> tuple[Row, dict]:
    """A run's row without its latencies, and its forward passes at each batch size to time."""
    from jaxlm.cli import load_model
    from jaxlm.config import load_config
    from jaxlm.train.trainer import evaluate, setup

    run_dir = Path(path)
    step = chosen_step(path)
    model, params, config = load_model(path, None, step)
    overrides = [f"run.out_dir={run_dir}"]
    if hasattr(config.task, "eval_split"):
        overrides.append(f"task.eval_split={split}")
    elif split != "validation":
        raise JaxlmError(f"{path} is a {config.task.type} run, which has only a validation split; use --split "
                         "validation")
    s = setup(load_config(run_dir / "config.yaml", overrides).model_copy(update={"distill": None}))
    s.model = getattr(model, "module", model)
    state = getattr(model, "state", None)
    metrics = evaluate(s, params, model_state=state)
    name = metric or ("eval_accuracy" if "eval_accuracy" in metrics else "eval_loss")
    if name not in metrics:
        raise JaxlmError(f"{path} reports no {name}; it has {', '.join(sorted(metrics))}")
    passes = {size: forward_pass(model, params, s.task.model_inputs(next(iter(s.task.eval_batches(size, 1)))))
              for size in BATCH_SIZES}
    ckpt_dir = checkpoint_dir(run_dir) / str(step)
    total, nonzero = count_params(params)
    ckpt, _ = open_run(path, step)
    try:
        meta = ckpt.read_meta(step)
    finally:
        ckpt.close()
    notes = [f"{k}: {v['method']}" for k, v in meta.items() if isinstance(v, dict) and "method" in v]
    row = Row(str(path), step, total, nonzero, dir_size(ckpt_dir / "params"), dir_size(ckpt_dir), name,
              metrics[name], {}, train_seconds(run_dir), ", ".join(notes))
    return row, passes


def markdown(rows: list[Row], split: str) -> str:
    base = rows[0]
    head = ("| run | params | non-zero | params on disk | checkpoint on disk | "
            f"{base.metric} ({split}) | ms / example, batch 1 | ms / example, batch 32 | speed-up b1 / b32 | "
            "training time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        speed = " / ".join(f"{base.latency_ms[b] / r.latency_ms[b]:.2f}x" for b in BATCH_SIZES)
        train = "-" if r.train_seconds is None else f"{r.train_seconds:.0f} s"
        name = f"{r.run} ({r.note})" if r.note else r.run
        lines.append(f"| {name} | {r.params:,} | {r.nonzero:,} ({r.nonzero / max(r.params, 1):.0%}) | "
                     f"{r.params_bytes / 2**20:.2f} MB | {r.checkpoint_bytes / 2**20:.2f} MB | "
                     f"{'-' if r.value is None else f'{r.value:.4f}'} | {r.latency_ms[1]:.3f} | "
                     f"{r.latency_ms[32]:.3f} | {speed} | {train} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}"


def compare(paths: list[str], split: str = "test", metric: str | None = None, repeats: int = 20,
            out: str | None = None, json_out: str | None = None) -> str:
    """The markdown table for ``paths`` (also written to ``out`` / ``json_out`` when given)."""
    if not paths:
        raise JaxlmError("give at least one run directory to compare")
    reports = [report_run(p, split, metric) for p in paths]
    rows = [row for row, _ in reports]
    for size in BATCH_SIZES:
        medians = interleaved_medians([passes[size] for _, passes in reports], repeats)
        for row, seconds in zip(rows, medians):
            row.latency_ms[size] = 1000 * seconds / size
    if len({r.metric for r in rows}) > 1:
        raise JaxlmError(f"the runs report different metrics ({', '.join(sorted({r.metric for r in rows}))}); "
                         "choose one with --metric")
    when = datetime.date.today().isoformat()
    text = (f"{markdown(rows, split)}\n\nMeasured {when} on {machine()}; latency: median of {repeats} rounds, each "
            "running every model's jitted forward pass once in turn.")
    if out:
        Path(out).write_text(text + "\n")
    if json_out:
        Path(json_out).write_text(json.dumps({"date": when, "machine": machine(), "split": split,
                                              "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return text
