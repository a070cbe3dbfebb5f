"""Sequence packing for fine-tuning: training examples per second with and without
``task.packing`` on a config's classification data (default: ``configs/bert-classify.yaml``,
the shipped ``sentiment_en`` reviews), side by side in one process.

Both variants build the task and the jitted train step the trainer builds (``setup``), warm up
(compile), then alternate ``--rounds`` rounds of ``--steps`` steps each and keep each one's
fastest round, so load from elsewhere on the machine hits both alike. A packed row holds
several reviews, so at the same ``trainer.batch_size`` (rows) a packed step trains more
examples; the examples a step trains are counted from the batches themselves.

Usage: python benchmarks/packing_throughput.py [--config configs/bert-classify.yaml]
       [--steps 20] [--rounds 3] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np

from jaxlm.config import load_config
from jaxlm.host_memory import keep_freed_memory
from jaxlm.train.setup import setup
from jaxlm.train.step import make_train_step


def variant(config_path: str, overrides: list[str], packing: bool, run_dir: str):
    config = load_config(config_path, [*overrides, f"run.out_dir={run_dir}", f"task.packing={str(packing).lower()}"])
    s = setup(config)
    t = config.trainer
    step = jax.jit(make_train_step(s.model, s.task, s.tx, s.schedule, t.grad_accum_steps, t.label_smoothing,
                                   config.model.uses_dropout, s.assemble), donate_argnums=0)
    data = s.task.train_iterator(t.batch_size)
    params, model_state = s.initial_params()
    state, constants = s.init_state(params, model_state), s.constants(params)
    return {"s": s, "step": step, "data": data, "state": state, "constants": constants,
            "rows": len(s.task.train["input_ids"]), "examples": int(np.sum(s.task.train["label_weight"]))
            if packing else len(s.task.train["input_ids"])}


def run_round(v: dict, steps: int) -> tuple[float, int]:
    batches = [next(v["data"]) for _ in range(steps)]
    examples = sum(int(b["label_weight"].sum()) if "label_weight" in b else len(b["label"]) for b in batches)
    with v["s"].sharding_context():
        start = time.perf_counter()
        for b in batches:
            v["state"], metrics = v["step"](v["state"], v["s"].put_batch(b), v["constants"])
        jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - start, examples


def main() -> None:
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bert-classify.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {os.cpu_count()} cores, {args.config} "
          f"{' '.join(args.overrides)}")
    with tempfile.TemporaryDirectory() as tmp:
        variants = {name: variant(args.config, args.overrides, name == "packed", f"{tmp}/{name}")
                    for name in ("unpacked", "packed")}
        for name, v in variants.items():
            print(f"{name}: {v['examples']} training examples in {v['rows']} rows of "
                  f"{v['s'].config.data.seq_len} tokens")
            run_round(v, 2)  # compile
        best = {name: (0.0, 0.0) for name in variants}  # examples/s, with that round's seconds per step
        for _ in range(args.rounds):
            for name, v in variants.items():
                seconds, examples = run_round(v, args.steps)
                best[name] = max(best[name], (examples / seconds, seconds / args.steps))
    for name in variants:
        print(f"{name}: {best[name][0]:.1f} examples/s, {best[name][1] * 1e3:.1f} ms a step (fastest of "
              f"{args.rounds} rounds of {args.steps} steps)")
    best = {name: b[0] for name, b in best.items()}
    print(f"packing: {best['packed'] / best['unpacked']:.2f}x the examples per second")


if __name__ == "__main__":
    main()
