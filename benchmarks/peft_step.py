"""A LoRA train step against full fine-tuning and against Hugging Face peft + PyTorch, side by side.

GPT-2 (random init, dropout 0.1, causal LM loss) at the same batch and sequence length, AdamW
with global-norm clipping; LoRA of rank ``--r`` (alpha 2r) on ``--targets`` (peft's default for
GPT-2 is the fused ``c_attn``). Three contenders, each in a fresh process, alternating
``--rounds`` times, each keeping its fastest round (so load from elsewhere on a shared machine hits
all alike): jaxlm LoRA (the trainable / frozen split of ``jaxlm.train.trainable``: gradients and
AdamW state for the LoRA matrices only, the base a constant of the jitted step), jaxlm full
fine-tuning, and transformers + peft LoRA in eager PyTorch (its trainable params only in AdamW).

Usage: python benchmarks/peft_step.py [--size small|medium|tiny] [--batch 8] [--seq 128] [--r 8]
       [--targets c_attn] [--steps 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import (BETAS, LR, SIZES, WD, Objective, make_batch, mean_step_time,  # noqa: E402
                              model_config)

CONTENDERS = ("jaxlm-lora", "jaxlm-full", "peft-torch")


def jaxlm_step(cfg, batch: dict, lora: bool, r: int, targets: tuple[str, ...]):
    import flax.linen as nn

    from jaxlm.config import OptimizerConfig, ScheduleConfig
    from jaxlm.models import build_model
    from jaxlm.peft import lora as lora_lib
    from jaxlm.peft.model import PeftModel, PeftSpec
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.precision import LossScale
    from jaxlm.train.step import TrainState, make_train_step
    from jaxlm.train.trainable import make_split, merge

    model = build_model(cfg, "causal_lm")
    if lora:
        model = PeftModel(model, PeftSpec("lora", lora=lora_lib.LoraSpec(r, 2.0 * r, names=targets)))
    tx, schedule = build_optimizer(
        OptimizerConfig(learning_rate=LR, weight_decay=WD, b1=BETAS[0], b2=BETAS[1], clip_norm=1.0),
        ScheduleConfig(name="constant"), 1000)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.asarray(batch["tokens"][:1, :-1])))["params"]
    own = {tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
           if p[-1].key.startswith("lora_")}
    split = make_split(params, extra=own) if lora else make_split(params)
    trainable, frozen = split.split(params)
    state = TrainState(jnp.zeros((), jnp.int32), trainable, tx.init(trainable), jax.random.PRNGKey(1),
                       LossScale.create("float32", 1.0, 1))
    step_fn = jax.jit(make_train_step(model, Objective("gpt2"), tx, schedule, 1, 0.0, dropout=True,
                                      assemble=lambda t, c: merge(t, c["frozen"])), donate_argnums=0)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    constants = {"frozen": frozen}
    holder = [state]

    def step():
        holder[0], metrics = step_fn(holder[0], device_batch, constants)
        metrics["loss"].block_until_ready()

    n = sum(x.size for x in jax.tree.leaves(trainable))
    return step, n


def torch_step(cfg, batch: dict, r: int, targets: tuple[str, ...]):
    import peft
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.hf_dict()))
    model = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                       fan_in_fan_out=True, task_type=peft.TaskType.CAUSAL_LM))
    model.train()
    ids = torch.tensor(batch["tokens"][:, :-1], dtype=torch.long)
    labels = torch.tensor(batch["tokens"][:, 1:], dtype=torch.long)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=LR, betas=BETAS, weight_decay=WD)

    def step():
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()

    return step, sum(p.numel() for p in trained)


def child(args) -> None:
    from jaxlm.host_memory import keep_freed_memory

    if args.child != "peft-torch":
        keep_freed_memory()  # as the jaxlm command does
    cfg = model_config("gpt2", args.size, args.seq, 0.1)
    batch = make_batch("gpt2", cfg.vocab_size, args.batch, args.seq)
    targets = tuple(args.targets)
    if args.child == "peft-torch":
        step, n = torch_step(cfg, batch, args.r, targets)
    else:
        step, n = jaxlm_step(cfg, batch, args.child == "jaxlm-lora", args.r, targets)
    mean_step_time(step, args.warmup)
    print(json.dumps({"sec": mean_step_time(step, args.steps), "trainable": n}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(SIZES["gpt2"]), default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--targets", nargs="+", default=["c_attn"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import peft
    import torch

    print(f"# gpt2-{args.size} train step, batch {args.batch} x {args.seq} tokens, LoRA r={args.r} on "
          f"{' '.join(args.targets)}, on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); "
          f"jax {jax.__version__}, torch {torch.__version__}, peft {peft.__version__}; best of {args.rounds} "
          f"alternating rounds of {args.steps} steps, each in its own process")
    best, trainable = dict.fromkeys(CONTENDERS, float("inf")), {}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            command = [sys.executable, __file__, "--child", name, "--size", args.size, "--batch", str(args.batch),
                       "--seq", str(args.seq), "--r", str(args.r), "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--targets", *args.targets]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            out = json.loads(done.stdout.strip().splitlines()[-1])
            best[name], trainable[name] = min(best[name], out["sec"]), out["trainable"]
    print("| step | trainable params | s / step | vs jaxlm LoRA |\n|---|---:|---:|---:|")
    for name, label in zip(CONTENDERS, ("jaxlm LoRA", "jaxlm full fine-tuning", "peft + PyTorch LoRA")):
        print(f"| {label} | {trainable[name]:,} | {best[name]:.3f} | {best[name] / best['jaxlm-lora']:.2f}x |")


if __name__ == "__main__":
    main()
