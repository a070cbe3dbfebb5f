"""Training tokens/s: jaxlm GPT-2 vs Hugging Face PyTorch GPT2LMHeadModel, side by side.

Both train the same architecture (random init, dropout on, AdamW with the same
hyperparameters) at the same batch and sequence length, in one process on this machine.
Usage: python benchmarks/train_throughput.py [--size small|tiny] [--batch 8] [--seq 128] [--steps 5]
Prints one markdown table row per framework and the jaxlm / PyTorch ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.config import OptimizerConfig, ScheduleConfig  # noqa: E402
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel  # noqa: E402
from jaxlm.tasks.causal_lm import CausalLMTask  # noqa: E402
from jaxlm.train.optim import build_optimizer  # noqa: E402
from jaxlm.train.precision import LossScale  # noqa: E402
from jaxlm.train.step import TrainState, make_train_step  # noqa: E402

SIZES = {"small": dict(n_embd=768, n_layer=12, n_head=12), "tiny": dict(n_embd=128, n_layer=4, n_head=4)}
LR, WD, BETAS = 6e-4, 0.1, (0.9, 0.95)


def time_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def bench_jaxlm(cfg: GPT2Config, tokens: np.ndarray, warmup: int, steps: int) -> float:
    import flax.linen as nn

    model = GPT2LMHeadModel(cfg)
    tx, schedule = build_optimizer(
        OptimizerConfig(learning_rate=LR, weight_decay=WD, b1=BETAS[0], b2=BETAS[1], clip_norm=1.0),
        ScheduleConfig(name="constant"), 1000)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.asarray(tokens[:1, :-1])))["params"]
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(1),
                       LossScale.create("float32", 1.0, 1))
    task = object.__new__(CausalLMTask)
    train_step = jax.jit(make_train_step(model, task, tx, schedule, 1, 0.0, dropout=True), donate_argnums=0)
    batch = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.int32)}
    holder = [state]

    def step():
        holder[0], metrics = train_step(holder[0], batch)
        metrics["loss"].block_until_ready()

    return time_steps(step, warmup, steps)


def bench_torch(cfg: GPT2Config, tokens: np.ndarray, warmup: int, steps: int) -> float:
    import torch
    from transformers import GPT2Config as HFConfig, GPT2LMHeadModel as HFModel

    model = HFModel(HFConfig(**cfg.hf_dict())).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "wte" not in n and "wpe" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)
    ids = torch.tensor(tokens[:, :-1], dtype=torch.long)
    labels = torch.tensor(tokens[:, 1:], dtype=torch.long)

    def step():
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return time_steps(step, warmup, steps)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    cfg = GPT2Config(**SIZES[args.size], n_positions=max(1024, args.seq))
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (args.batch, args.seq + 1)).astype(np.int32)
    n_tokens = args.batch * args.seq
    results = {"jaxlm": bench_jaxlm(cfg, tokens, args.warmup, args.steps),
               "pytorch": bench_torch(cfg, tokens, args.warmup, args.steps)}
    import torch
    import transformers

    print(f"# gpt2-{args.size} training, batch {args.batch} x {args.seq}, {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print("| framework | s/step | tokens/s |\n|---|---|---|")
    for name, sec in results.items():
        print(f"| {name} | {sec:.3f} | {n_tokens / sec:.0f} |")
    print(f"jaxlm / pytorch tokens/s ratio: {results['pytorch'] / results['jaxlm']:.2f}")


if __name__ == "__main__":
    main()
