"""Greedy generation tokens/s: ``jaxlm.generate`` vs transformers ``generate``, same weights, one process.

A random-weight GPT-2 (the 124M gpt2-small by default) is saved once with ``random_checkpoint``
and loaded by both frameworks; each generates ``--new-tokens`` tokens greedily from random prompts
of ``--prompt`` tokens at each batch size. The first call of each shape is a warm-up (jaxlm
compiles there; its time is reported apart); then the two alternate ``--repeats`` times and each
keeps its best time. tokens/s counts new tokens, prefill included; a random model practically
never emits eos (a warning says so if it does).
Usage: python benchmarks/generate_throughput.py [--size small|tiny] [--batch 1 8] [--new-tokens 128]
Prints a markdown table with the jaxlm / transformers ratio and whether the tokens agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.interop.parity import random_checkpoint  # noqa: E402


def timed(run) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    tokens = run()
    return time.perf_counter() - start, tokens


def processor() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("small", "tiny"), default="small")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as directory:
        random_checkpoint("GPT2LMHeadModel", directory, tiny=args.size == "tiny")
        model, params = jaxlm.from_pretrained(directory)
        hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    vocab, eos = model.config.vocab_size, model.config.eos_token_id
    rows = []
    for batch in args.batch:
        ids = np.random.default_rng(batch).integers(0, vocab, (batch, args.prompt))

        def run_jaxlm():
            return np.asarray(jaxlm.generate(model, params, ids, max_new_tokens=args.new_tokens, eos_token_id=eos))

        def run_hf():
            with torch.inference_mode():
                return hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                                   max_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                                   eos_token_id=eos, pad_token_id=eos).numpy()

        (j_first, j_tokens), (_, h_tokens) = timed(run_jaxlm), timed(run_hf)  # warm-up; jaxlm compiles
        # Alternate the two so that other load on the machine hits both alike; keep each one's best.
        j_best = h_best = float("inf")
        for _ in range(args.repeats):
            j_best, h_best = min(j_best, timed(run_jaxlm)[0]), min(h_best, timed(run_hf)[0])
        if h_tokens.shape[1] < ids.shape[1] + args.new_tokens or (j_tokens[:, ids.shape[1]:] == eos).any():
            print(f"warning: batch {batch} emitted eos: fewer than {args.new_tokens} real new tokens per row")
        new = batch * args.new_tokens
        rows.append((batch, j_first, j_best, new / j_best, h_best, new / h_best, h_best / j_best,
                     np.array_equal(j_tokens, h_tokens)))

    print(f"# gpt2-{args.size} greedy generation, prompt {args.prompt} + {args.new_tokens} new tokens, "
          f"{os.cpu_count()} CPU cores ({processor()}), jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; 1-minute load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print("| batch | jaxlm first call s (compile) | jaxlm s | jaxlm tokens/s | transformers s | transformers tokens/s "
          "| jaxlm / transformers | same tokens |\n|---|---|---|---|---|---|---|---|")
    for batch, j_first, j_best, j_rate, h_best, h_rate, ratio, same in rows:
        print(f"| {batch} | {j_first:.1f} | {j_best:.2f} | {j_rate:.1f} | {h_best:.2f} | {h_rate:.1f} | {ratio:.2f} "
              f"| {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
