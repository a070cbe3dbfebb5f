"""Which XLA:CPU flags speed up jaxlm's training step on this machine?

Runs ``benchmarks/train_throughput.py`` (jaxlm's step and PyTorch's, side by side) once per
``XLA_FLAGS`` setting, each in a fresh process (XLA reads the flags at start-up), and prints
the jaxlm / PyTorch ratio of each. Flags that XLA does not know make the process fail; they
are reported as such.
Usage: python benchmarks/xla_cpu_flags.py [--model gpt2|bert] [--size SIZE] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "default": "",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "XNNPACK": "--xla_cpu_use_xnnpack=true",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "no multi-thread Eigen": "--xla_cpu_multi_thread_eigen=false",
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--size", help="as train_throughput.py's (default: the family's base size)")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    script = Path(__file__).with_name("train_throughput.py")
    print("| XLA_FLAGS | jaxlm tokens/s | PyTorch tokens/s | jaxlm / PyTorch |\n|---|---:|---:|---:|")
    for name, flags in SETTINGS.items():
        env = {**os.environ, "XLA_FLAGS": flags}
        size = ["--size", args.size] if args.size else []
        result = subprocess.run([sys.executable, str(script), "--model", args.model, *size, "--steps", str(args.steps)],
                                env=env, capture_output=True, text=True)
        row = next((line for line in result.stdout.splitlines() if re.match(r"\| \d+ \|", line)), None)
        if result.returncode or row is None:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"| {name} (`{flags}`) | failed: {last[:80]} | | |", flush=True)
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        print(f"| {name} (`{flags or 'none'}`) | {cells[3]} | {cells[4]} | {cells[5]} |", flush=True)


if __name__ == "__main__":
    main()
