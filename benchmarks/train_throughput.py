"""Training tokens/s: jaxlm vs Hugging Face PyTorch, side by side, with CPU MFU.

Both frameworks train the same architecture (random init, dropout on, AdamW with the same
hyperparameters, global-norm clipping) at the same batch and sequence length, one after the
other in this process: GPT-2 as a causal LM, BERT as a masked LM (15 % of positions scored;
both compute the prediction head over every position, as transformers does).

MFU = model FLOPs per second / the machine's measured float32 matmul peak (the faster of a
jitted ``jnp.dot`` and ``torch.mm`` on 2048 x 2048 matrices). Model FLOPs per trained token:
6 x (parameters used in matmuls, the tied output embedding included, position tables not)
+ 12 x layers x sequence x width for attention scores and mixing (PaLM's count).

Usage: python benchmarks/train_throughput.py [--model gpt2|bert] [--size base|tiny]
       [--batch 8] [--seq 128 | --seq 128 256 512 1024] [--steps 5]
With several ``--seq`` values the tokens per step stay fixed (batch x seq = --batch x the first
length), so the rows show how the cost of a token grows with the context.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.config import OptimizerConfig, ScheduleConfig  # noqa: E402
from jaxlm.models import build_model  # noqa: E402
from jaxlm.models.bert import BertConfig  # noqa: E402
from jaxlm.models.gpt2 import GPT2Config  # noqa: E402
from jaxlm.train.losses import cross_entropy_sum  # noqa: E402
from jaxlm.train.optim import build_optimizer  # noqa: E402
from jaxlm.train.precision import LossScale  # noqa: E402
from jaxlm.train.step import TrainState, make_train_step  # noqa: E402

SIZES = {
    "gpt2": {"base": dict(n_embd=768, n_layer=12, n_head=12), "tiny": dict(n_embd=128, n_layer=4, n_head=4)},
    "bert": {"base": {}, "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=512)},
}
LR, WD, BETAS = 6e-4, 0.1, (0.9, 0.95)
MASK_RATE = 0.15
POSITION_TABLES = ("wpe", "position_embeddings", "token_type_embeddings")


class Objective:
    """The benchmark's task: the loss of a token batch (``tokens`` and, for BERT, ``labels``)."""

    def __init__(self, kind: str):
        self.kind = kind

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        if self.kind == "gpt2":
            logits = model.apply({"params": params}, batch["tokens"][:, :-1], rngs=rngs).logits
            return cross_entropy_sum(logits, batch["tokens"][:, 1:], jnp.ones_like(batch["tokens"][:, 1:]))
        logits = model.apply({"params": params}, batch["tokens"], rngs=rngs).logits
        labels = batch["labels"]
        return cross_entropy_sum(logits, jnp.maximum(labels, 0), labels >= 0)


def make_batch(kind: str, vocab: int, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    if kind == "gpt2":
        return {"tokens": rng.randint(0, vocab, (batch, seq + 1)).astype(np.int32)}
    tokens = rng.randint(1, vocab, (batch, seq)).astype(np.int32)
    labels = np.where(rng.rand(batch, seq) < MASK_RATE, tokens, -100).astype(np.int32)
    return {"tokens": np.where(labels >= 0, 103, tokens).astype(np.int32), "labels": labels}


def time_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def bench_jaxlm(kind: str, cfg, batch: dict, warmup: int, steps: int) -> tuple[float, int]:
    """Seconds per step and the number of parameters used in matmuls."""
    model = build_model(cfg, "causal_lm" if kind == "gpt2" else "masked_lm")
    tx, schedule = build_optimizer(
        OptimizerConfig(learning_rate=LR, weight_decay=WD, b1=BETAS[0], b2=BETAS[1], clip_norm=1.0),
        ScheduleConfig(name="constant"), 1000)
    inputs = batch["tokens"][:1, :-1] if kind == "gpt2" else batch["tokens"][:1]
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.asarray(inputs)))["params"]
    matmul_params = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                        if x.ndim >= 2 and not any(getattr(k, "key", None) in POSITION_TABLES for k in path))
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(1),
                       LossScale.create("float32", 1.0, 1))
    train_step = jax.jit(make_train_step(model, Objective(kind), tx, schedule, 1, 0.0, dropout=True),
                         donate_argnums=0)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    holder = [state]

    def step():
        holder[0], metrics = train_step(holder[0], device_batch)
        metrics["loss"].block_until_ready()

    return time_steps(step, warmup, steps), matmul_params


def bench_torch(kind: str, cfg, batch: dict, warmup: int, steps: int) -> float:
    import torch
    import transformers

    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.hf_dict()))
        ids = torch.tensor(batch["tokens"][:, :-1], dtype=torch.long)
        labels = torch.tensor(batch["tokens"][:, 1:], dtype=torch.long)
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**cfg.hf_dict()))
        ids = torch.tensor(batch["tokens"], dtype=torch.long)
        labels = torch.tensor(batch["labels"], dtype=torch.long)
    model.train()
    no_decay = ("wte", "wpe", "embeddings", "bias", "LayerNorm", "ln_")
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)]
    rest = [p for n, p in model.named_parameters() if any(k in n for k in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)

    def step():
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return time_steps(step, warmup, steps)


def matmul_peak(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured float32 matmul FLOP/s of jax (jitted) and torch on this machine."""
    import torch

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        dot(a, a).block_until_ready()
    jax_time = (time.perf_counter() - start) / repeats
    t = torch.randn(n, n)
    torch.mm(t, t)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(t, t)
    torch_time = (time.perf_counter() - start) / repeats
    return {"jax": 2 * n**3 / jax_time, "torch": 2 * n**3 / torch_time}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=SIZES, default="gpt2")
    p.add_argument("--size", choices=["base", "tiny"], default="base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, nargs="+", default=[128])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    import torch
    import transformers

    peak = matmul_peak()
    name = {"gpt2": {"base": "gpt2-small"}, "bert": {"base": "bert-base"}}[args.model].get(args.size, f"{args.model}-tiny")
    print(f"# {name} training, {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"# measured float32 matmul peak: jax {peak['jax'] / 1e9:.1f} GFLOP/s, torch {peak['torch'] / 1e9:.1f} "
          f"GFLOP/s; MFU below is against the larger")
    print("| seq | batch | jaxlm s/step | jaxlm tokens/s | PyTorch tokens/s | jaxlm / PyTorch | jaxlm MFU | "
          "PyTorch MFU |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    tokens_per_step = args.batch * args.seq[0]
    for seq in args.seq:
        batch_size = max(tokens_per_step // seq, 1)
        if args.model == "gpt2":
            cfg = GPT2Config(**SIZES["gpt2"][args.size], n_positions=max(1024, seq))
            layers, width = cfg.n_layer, cfg.n_embd
        else:
            cfg = BertConfig(**SIZES["bert"][args.size], max_position_embeddings=max(512, seq))
            layers, width = cfg.num_hidden_layers, cfg.hidden_size
        batch = make_batch(args.model, cfg.vocab_size, batch_size, seq)
        jax_sec, matmul_params = bench_jaxlm(args.model, cfg, batch, args.warmup, args.steps)
        torch_sec = bench_torch(args.model, cfg, batch, args.warmup, args.steps)
        n_tokens = batch_size * seq
        flops = n_tokens * (6 * matmul_params + 12 * layers * seq * width)
        best = max(peak.values())
        print(f"| {seq} | {batch_size} | {jax_sec:.3f} | {n_tokens / jax_sec:.0f} | {n_tokens / torch_sec:.0f} | "
              f"{torch_sec / jax_sec:.2f} | {flops / jax_sec / best:.1%} | {flops / torch_sec / best:.1%} |",
              flush=True)


if __name__ == "__main__":
    main()
