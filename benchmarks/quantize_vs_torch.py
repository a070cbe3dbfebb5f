"""int8 post-training quantization of a trained classifier, jaxlm beside torch.ao.

A ``jaxlm train configs/bert-classify.yaml`` run (its best checkpoint) is quantized with ``jaxlm
quantize`` (int8 weights per channel; int8-dynamic: also int8 activations per token; nf4), and the
same float model, exported with ``jaxlm convert --to-torch``, is quantized with
``torch.ao.quantization.quantize_dynamic`` (int8 weights per tensor, activations per tensor at run
time). Every model scores the same test rows (jaxlm's tokenization) and is timed in this one
process: milliseconds per example at batch 1 and 32, the median of ``--repeats`` rounds that run
every model's forward pass once in turn (on a shared machine all meet the same interference).
Prints a markdown table.

Usage: python benchmarks/quantize_vs_torch.py --run runs/bert-classify [--repeats 30] [--work DIR] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def torch_accuracy(model, rows) -> float:
    import torch

    with torch.inference_mode():
        inputs = {k: torch.from_numpy(rows[k]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}
        predicted = model(**inputs).logits.argmax(-1).numpy()
    return float((predicted == rows["label"]).mean())


def torch_pass(model, rows, size: int):
    """A no-argument function running ``model``'s forward pass over the first ``size`` rows."""
    import torch

    inputs = {k: torch.from_numpy(rows[k][:size]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}

    def run():
        with torch.inference_mode():
            model(**inputs)

    run()
    return run


def state_bytes(model) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/bert-classify")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--work", help="where the quantized runs and the export go (default: a temporary directory)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch's intra-op threads (default 1: on a shared host, OpenMP's spinning barrier made 2 "
                   "threads 100x slower at batch 1)")
    args = p.parse_args()

    import torch
    from transformers import BertForSequenceClassification

    from jaxlm.cli import load_model
    from jaxlm.compress.quantize import quantize_run
    from jaxlm.compress.report import BATCH_SIZES, chosen_step, interleaved_medians, report_run
    from jaxlm.config import load_config
    from jaxlm.interop.commands import export_torch
    from jaxlm.train.trainer import setup

    work = Path(args.work or tempfile.mkdtemp(prefix="quantize-vs-torch-"))
    step = chosen_step(args.run)
    runs = {"float32": args.run}
    for method in ("int8", "int8-dynamic", "nf4"):
        out = work / method
        if not out.exists():
            print(quantize_run(args.run, str(out), method, step=step))
        runs[method] = str(out)
    rows, passes = [], []
    for name, path in runs.items():
        r, timed = report_run(path, "test", "eval_accuracy")
        rows.append([f"jaxlm {name}", r.value, r.params_bytes])
        passes.append(timed)

    if not (work / "hf").exists():
        model, params, _ = load_model(args.run, None, step)
        export_torch(model, params, work / "hf")
    task = setup(load_config(Path(args.run) / "config.yaml", [f"run.out_dir={args.run}", "task.eval_split=test"])).task
    test = task.valid
    torch.set_num_threads(args.torch_threads)
    fp32 = BertForSequenceClassification.from_pretrained(work / "hf").eval()
    int8 = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
    for name, m in (("torch float32", fp32), ("torch quantize_dynamic int8", int8)):
        rows.append([name, torch_accuracy(m, test), state_bytes(m)])
        passes.append({size: torch_pass(m, test, size) for size in BATCH_SIZES})
    for size in BATCH_SIZES:  # every model once per round: the same interference for all
        for row, seconds in zip(rows, interleaved_medians([p[size] for p in passes], args.repeats)):
            row.append(1000 * seconds / size)

    print(f"\n{len(test['label'])} test rows of {args.run} (step {step}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | test accuracy | weights | ms / example, batch 1 | ms / example, batch 32 |")
    print("|---|---|---|---|---|")
    for name, accuracy, size, b1, b32 in rows:
        print(f"| {name} | {accuracy:.4f} | {size / 2**20:.2f} MB | {b1:.3f} | {b32:.3f} |")


if __name__ == "__main__":
    main()
