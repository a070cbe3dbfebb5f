"""What jaxlm's 16-bit dropout masks save: the gpt2-small train step with flax's ``nn.Dropout``
(32 random bits per element) against ``jaxlm.layers.core.Dropout`` (16), alternating in one process.

The two steps are the same program but for the masks (dropout 0.1 on embeddings, attention
probabilities and residuals); each is compiled once, then they alternate ``--rounds`` times, one
step a round. Prints each one's fastest and median step.

Usage: python benchmarks/dropout_masks.py [--seq 128 | --seq 1024] [--rounds 6]
(the batch is 1024 // seq rows, as in train_throughput.py's sweep)
"""

from __future__ import annotations

import argparse
import statistics

import flax.linen as nn

import jaxlm.layers.attention
import jaxlm.layers.core
import jaxlm.models.gpt2
from train_throughput import jaxlm_step, make_batch, mean_step_time, model_config


class FlaxDropout(nn.Module):
    """flax's own dropout behind jaxlm's call signature."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        return nn.Dropout(self.rate)(x, deterministic=deterministic)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    cfg = model_config("gpt2", "small", args.seq, 0.1)
    batch = make_batch("gpt2", cfg.vocab_size, max(1024 // args.seq, 1), args.seq)
    steps = {}
    for name, dropout in (("flax nn.Dropout (32 bits)", FlaxDropout), ("jaxlm Dropout (16 bits)",
                                                                       jaxlm.layers.core.Dropout)):
        jaxlm.models.gpt2.Dropout = jaxlm.layers.attention.Dropout = dropout  # the modules GPT-2 builds
        steps[name], _ = jaxlm_step("gpt2", cfg, batch, "float32")
        mean_step_time(steps[name], 1)  # compiles
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(mean_step_time(step, 1))
    print(f"# gpt2-small train step, {batch['tokens'].shape[0]} x {args.seq}, {args.rounds} alternating rounds")
    print("| dropout | fastest s/step | median s/step |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {min(t):.2f} | {statistics.median(t):.2f} |")


if __name__ == "__main__":
    main()
