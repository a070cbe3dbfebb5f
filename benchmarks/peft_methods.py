"""Every way to adapt the pretrained tiny BERT to the shipped English reviews, from the same base:
trainable params and their share, test accuracy, wall time and peak host memory (the table of
docs/results.md).

Each method trains with its shipped config (``configs/bert-classify*.yaml``; full fine-tuning,
the linear probe and gradual unfreezing are ``configs/bert-classify.yaml`` with the base's weights
and the ``trainer.trainable`` / ``trainer.unfreeze_every`` settings; Pfeiffer, P-tuning and prefix
tuning swap the ``peft`` section of the adapter / prompt / prompt config) in a fresh process, which
reports its wall time and peak resident memory; its best checkpoint (by validation accuracy) is
then scored on the test split.

Usage: python benchmarks/peft_methods.py [--base runs/bert-tiny-mlm] [--root runs/peft-methods]
       [--methods full lora ...] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, resource, sys, time
from jaxlm.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def methods(base: str) -> dict[str, tuple[str, dict, list[str]]]:
    """name -> (shipped config, peft section to use instead (None: keep), overrides)."""
    start = [f"model.init_from={base}", f"data.tokenizer.path={base}/tokenizer", "model.vocab_size=4096"]
    full = "configs/bert-classify.yaml"
    return {
        "full fine-tuning": (full, None, start),
        "full fine-tuning, word embeddings frozen": (full, None, [*start, "trainer.freeze=[word_embeddings]"]),
        "linear probe": (full, None, [*start, "trainer.trainable=[classifier]", "optimizer.learning_rate=1e-2"]),
        "gradual unfreezing": (full, None, [*start, "trainer.unfreeze_every=25"]),
        "LoRA r=8": ("configs/bert-classify-lora.yaml", None, []),
        "QLoRA r=8 (NF4 base)": ("configs/bert-classify-qlora.yaml", None, []),
        "Houlsby adapters": ("configs/bert-classify-adapter.yaml", None, []),
        "Pfeiffer adapters": ("configs/bert-classify-adapter.yaml", {
            "method": "adapter", "kind": "pfeiffer", "reduction_factor": 16,
            "modules_to_save": ["classifier", "pooler"]}, []),
        "prompt tuning": ("configs/bert-classify-prompt.yaml", None, []),
        "P-tuning (MLP)": ("configs/bert-classify-prompt.yaml", {
            "method": "p_tuning", "num_virtual_tokens": 10, "encoder": "mlp", "encoder_hidden_size": 128,
            "modules_to_save": ["classifier", "pooler"]}, []),
        "prefix tuning": ("configs/bert-classify-prompt.yaml", {  # its 10 + 54 tokens fill the 64 positions
            "method": "prefix_tuning", "num_virtual_tokens": 10, "modules_to_save": ["classifier", "pooler"]}, []),
    }


def run(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        sys.exit(f"jaxlm {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    out = json.loads(lines[-1])
    if out["code"]:
        sys.exit(f"jaxlm {' '.join(args)} exited {out['code']}:\n{done.stderr[-3000:]}")
    out["printed"], out["log"] = lines[:-1], done.stderr
    return out


def counts(run_dir: Path) -> tuple[int, int]:
    """(trainable params, all params) of a run's latest checkpoint."""
    import jax

    from jaxlm.checkpoint import Checkpoints

    ckpt = Checkpoints(run_dir, read_only=True)
    try:
        step = ckpt.latest_step()
        saved = sum(x.size for x in jax.tree.leaves(ckpt.read_params(step)))
        frozen = ckpt.read_meta(step).get("frozen", {}).get("params", 0)
    finally:
        ckpt.close()
    return saved, saved + frozen


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="runs/bert-tiny-mlm")
    p.add_argument("--root", default="runs/peft-methods")
    p.add_argument("--methods", nargs="+", help="names of the table's rows to run (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    table = methods(args.base)
    chosen = args.methods or list(table)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            config_path, peft, overrides = table[name]
            config = yaml.safe_load((ROOT / config_path).read_text())
            if peft is not None:
                config["peft"] = peft
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            run_dir = Path(args.root) / slug
            config["run"] = {"out_dir": str(run_dir), "seed": args.seed}
            path = Path(tmp) / f"{slug}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            trained = run(["train", str(path), *overrides, "trainer.progress_bar=false"])
            evaluated = run(["eval", str(path), *overrides, "task.eval_split=test", "--best"])
            metrics = json.loads(evaluated["printed"][-1])
            trainable, total = counts(ROOT / run_dir)
            rows.append((name, trainable, total, metrics["eval_accuracy"], metrics["step"], trained["seconds"],
                         trained["peak_mib"]))
            print(f"# {name}: {rows[-1]}", flush=True)
    print("| method | trainable params | share | test accuracy | best step | wall time | peak host memory |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, trainable, total, accuracy, step, seconds, peak in rows:
        print(f"| {name} | {trainable:,} | {100 * trainable / total:.2f} % | {accuracy:.3f} | {step} | {seconds:.0f} s "
              f"| {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
