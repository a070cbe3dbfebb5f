"""Training tokens/s: jaxlm vs Hugging Face PyTorch, side by side, with CPU MFU.

Both frameworks train the same architecture (random init, dropout ``--dropout``, AdamW with the
same hyperparameters, global-norm clipping) at the same batch and sequence length: GPT-2 as a
causal LM, BERT as a masked LM (15 % of positions scored, chosen by jaxlm's masker). jaxlm
runs its prediction head over the scored positions only, as its ``mlm`` task does
(``jaxlm.tasks.mlm.ScoredPositions``); transformers' ``BertForMaskedLM`` runs it over every
position, and so does jaxlm with ``--full-head``. After warm-up (jaxlm compiles
there) the two alternate ``--rounds`` times, ``--steps`` steps a round, and each keeps its
fastest round, so that load from elsewhere on the machine hits both alike. Each round runs
in a fresh process: with both frameworks loaded in one process, jaxlm's step ran slower after
torch had run.

``--precision bfloat16`` (meant for GPUs; on CPUs without bfloat16 units it is very slow)
computes in bfloat16 with float32 master weights: jaxlm's
``precision.compute``, and ``torch.autocast`` for PyTorch. On a GPU (jax's default backend;
torch on CUDA) both run there.

MFU = model FLOPs per second / the measured matmul peak in the compute dtype (the faster of
a jitted ``jnp.dot`` and ``torch.mm``: 2048 x 2048 on CPU, 8192 x 8192 on GPU). Model FLOPs
per trained token: 6 x (parameters used in matmuls, the tied output embedding included,
position tables not) + 12 x layers x sequence x width for attention scores and mixing
(PaLM's count). BERT's prediction head (its transform and the tied decoder) counts at the scored
positions only, the work the loss needs (with ``--full-head``, at every position), for both
frameworks.

jaxlm's process keeps freed host memory for reuse (``jaxlm.host_memory``), as the ``jaxlm``
command does; ``--malloc both`` gives PyTorch's process the same glibc settings, ``--malloc
default`` neither.

Usage: python benchmarks/train_throughput.py [--model gpt2|bert] [--size small|medium|tiny]
       [--batch 8] [--seq 128 | --seq 128 256 512 1024] [--steps 3] [--rounds 3]
       [--precision float32|bfloat16] [--dropout 0.1] [--malloc jaxlm|both|default] [--full-head]
With several ``--seq`` values the tokens per step stay fixed (batch x seq = --batch x the first
length), so the rows show how the cost of a token grows with the context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.config import OptimizerConfig, ScheduleConfig  # noqa: E402
from jaxlm.data.masking import Masker  # noqa: E402
from jaxlm.host_memory import keep_freed_memory  # noqa: E402
from jaxlm.models import build_model  # noqa: E402
from jaxlm.models.bert import BertConfig  # noqa: E402
from jaxlm.models.gpt2 import GPT2Config  # noqa: E402
from jaxlm.tasks.mlm import ScoredPositions  # noqa: E402
from jaxlm.train.losses import cross_entropy_sum  # noqa: E402
from jaxlm.train.optim import build_optimizer  # noqa: E402
from jaxlm.train.precision import DTYPES, LossScale  # noqa: E402
from jaxlm.train.step import TrainState, make_train_step  # noqa: E402

SIZES = {  # the first is the default
    "gpt2": {"small": {}, "medium": dict(n_embd=1024, n_layer=24, n_head=16),
             "tiny": dict(n_embd=128, n_layer=4, n_head=4)},
    "bert": {"base": {}, "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096),
             "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)},
}
DROPOUT_FIELDS = {"gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
                  "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob")}
LR, WD, BETAS = 6e-4, 0.1, (0.9, 0.95)
BERT_SPECIAL = (0, 101, 102, 103)  # [PAD] [CLS] [SEP] [MASK] in BERT's vocabulary
POSITION_TABLES = ("wpe", "position_embeddings", "token_type_embeddings")


class Objective:
    """The benchmark's task: the loss of a token batch (``tokens`` and, for BERT, ``labels``)."""

    def __init__(self, kind: str, head_positions: int = 0):
        self.kind, self.head_positions = kind, head_positions  # BERT's prediction head runs at this many a row

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        if self.kind == "gpt2":
            logits = model.apply({"params": params}, batch["tokens"][:, :-1], rngs=rngs).logits
            return cross_entropy_sum(logits, batch["tokens"][:, 1:], jnp.ones_like(batch["tokens"][:, 1:]))
        labels = batch["labels"]
        scored = ScoredPositions.of(labels, jnp.ones_like(labels), self.head_positions)
        logits = model.apply({"params": params}, batch["tokens"], masked_positions=scored.positions, rngs=rngs).logits
        return scored.checked(cross_entropy_sum(logits, scored.targets, scored.weights))


def bert_masker(vocab: int) -> Masker:
    special = np.zeros(max(vocab, max(BERT_SPECIAL) + 1), bool)
    special[list(BERT_SPECIAL)] = True
    return Masker(mask_id=103, special=special)


def make_batch(kind: str, vocab: int, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    if kind == "gpt2":
        return {"tokens": rng.randint(0, vocab, (batch, seq + 1)).astype(np.int32)}
    tokens = rng.randint(1, vocab, (batch, seq)).astype(np.int32)
    corrupted, labels = bert_masker(vocab)(tokens, [np.random.default_rng([0, row]) for row in range(batch)])
    return {"tokens": corrupted.astype(np.int32), "labels": labels.astype(np.int32)}


def mean_step_time(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def jaxlm_step(kind: str, cfg, batch: dict, precision: str, full_head: bool = False):
    """A function that runs one jaxlm train step, and what its model FLOPs count: the parameters used
    in matmuls, how many of those are BERT's prediction head (its transform and the tied decoder; 0
    for GPT-2), and the tokens a step runs that head at (the scored ones, or every one)."""
    model = build_model(cfg, "causal_lm" if kind == "gpt2" else "masked_lm", dtype=DTYPES[precision])
    tx, schedule = build_optimizer(
        OptimizerConfig(learning_rate=LR, weight_decay=WD, b1=BETAS[0], b2=BETAS[1], clip_norm=1.0),
        ScheduleConfig(name="constant"), 1000)
    inputs = batch["tokens"][:1, :-1] if kind == "gpt2" else batch["tokens"][:1]
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.asarray(inputs)))["params"]
    matmul_params = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                        if x.ndim >= 2 and not any(getattr(k, "key", None) in POSITION_TABLES for k in path))
    counts = {"matmul_params": matmul_params, "head_params": 0, "head_tokens": 0}
    head_positions = 0
    if kind == "bert":
        counts["head_params"] = (params["cls"]["predictions"]["transform"]["kernel"].size
                                 + params["bert"]["embeddings"]["word_embeddings"]["embedding"].size)
        seq = batch["tokens"].shape[1]
        head_positions = seq if full_head else bert_masker(cfg.vocab_size).most_selected(seq)
        counts["head_tokens"] = batch["tokens"].size if full_head else int((batch["labels"] >= 0).sum())
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(1),
                       LossScale.create("float32", 1.0, 1))
    train_step = jax.jit(make_train_step(model, Objective(kind, head_positions), tx, schedule, 1, 0.0, dropout=True),
                         donate_argnums=0)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    holder = [state]

    def step():
        holder[0], metrics = train_step(holder[0], device_batch)
        metrics["loss"].block_until_ready()

    return step, counts


def torch_device() -> str:
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_step(kind: str, cfg, batch: dict, precision: str):
    """A function that runs one train step of transformers' model in eager mode."""
    import torch
    import transformers

    device = torch_device()
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.hf_dict()))
        ids = torch.tensor(batch["tokens"][:, :-1], dtype=torch.long, device=device)
        labels = torch.tensor(batch["tokens"][:, 1:], dtype=torch.long, device=device)
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**cfg.hf_dict()))
        ids = torch.tensor(batch["tokens"], dtype=torch.long, device=device)
        labels = torch.tensor(batch["labels"], dtype=torch.long, device=device)
    model.to(device).train()
    no_decay = ("wte", "wpe", "embeddings", "bias", "LayerNorm", "ln_")
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)]
    rest = [p for n, p in model.named_parameters() if any(k in n for k in no_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            logits = model(ids).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                     labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def matmul_peak(framework: str, precision: str, repeats: int = 10) -> float:
    """Measured matmul FLOP/s of one framework (jitted ``jnp.dot`` or ``torch.mm``) in the compute dtype."""
    n = 8192 if jax.default_backend() == "gpu" else 2048
    if framework == "jaxlm":
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), DTYPES[precision])
        dot = jax.jit(jnp.dot)

        def mm():
            dot(a, a).block_until_ready()
    else:
        import torch

        device = torch_device()
        t = torch.randn(n, n, device=device, dtype=getattr(torch, precision))

        def mm():
            torch.mm(t, t)
            if device == "cuda":
                torch.cuda.synchronize()

    mm()  # jax compiles here
    return 2 * n**3 / mean_step_time(mm, repeats)


def model_config(kind: str, size: str, seq: int, dropout: float):
    rates = dict.fromkeys(DROPOUT_FIELDS[kind], dropout)
    if kind == "gpt2":
        return GPT2Config(**SIZES["gpt2"][size], **rates, n_positions=max(1024, seq))
    return BertConfig(**SIZES["bert"][size], **rates, max_position_embeddings=max(512, seq))


def child(args) -> None:
    """One framework in this fresh process: its matmul peak, then seconds per step after warm-up (JSON)."""
    if args.malloc == "both" or (args.malloc == "jaxlm" and args.child == "jaxlm"):
        keep_freed_memory()  # before jax or torch starts its threads
    cfg = model_config(args.model, args.size, args.seq[0], args.dropout)
    batch = make_batch(args.model, cfg.vocab_size, args.batch, args.seq[0])
    out = {"peak": matmul_peak(args.child, args.precision)}
    if args.child == "jaxlm":
        step, counts = jaxlm_step(args.model, cfg, batch, args.precision, args.full_head)
        out.update(counts)
    else:
        step = torch_step(args.model, cfg, batch, args.precision)
    mean_step_time(step, args.warmup)
    before = resource.getrusage(resource.RUSAGE_SELF)
    out["sec"] = mean_step_time(step, args.steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    out["faults"] = (after.ru_minflt - before.ru_minflt) / args.steps
    out["kernel_sec"] = (after.ru_stime - before.ru_stime) / args.steps
    print(json.dumps(out))


def run_child(args, framework: str, seq: int, batch: int) -> dict:
    command = [sys.executable, __file__, "--child", framework, "--model", args.model, "--size", args.size,
               "--batch", str(batch), "--seq", str(seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--precision", args.precision, "--dropout", str(args.dropout), "--malloc", args.malloc]
    command += ["--full-head"] if args.full_head else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{framework} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=SIZES, default="gpt2")
    p.add_argument("--size", help="gpt2: small (default), medium, tiny; bert: base (default), large, tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, nargs="+", default=[128])
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per framework, alternating; the fastest counts")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--dropout", type=float, default=0.1, help="every dropout probability of the model")
    p.add_argument("--malloc", choices=["jaxlm", "both", "default"], default="jaxlm",
                   help="which processes keep freed host memory (jaxlm.host_memory, as the jaxlm command does): "
                        "jaxlm's only (default), both frameworks', or neither")
    p.add_argument("--full-head", action="store_true",
                   help="BERT: jaxlm runs its prediction head over every position, as transformers does")
    p.add_argument("--child", choices=["jaxlm", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.size = args.size or next(iter(SIZES[args.model]))
    if args.size not in SIZES[args.model]:
        p.error(f"--size {args.size} is not a {args.model} size; choose from {', '.join(SIZES[args.model])}")
    if args.child:
        return child(args)
    import torch
    import transformers

    device = jax.devices()[0].device_kind if jax.default_backend() == "gpu" else (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})")
    print(f"# {args.model}-{args.size} training in {args.precision}, dropout {args.dropout}, on {device}; "
          f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}; "
          f"best of {args.rounds} alternating rounds of {args.steps} steps, each framework in its own process; "
          f"freed host memory kept by: {'neither' if args.malloc == 'default' else args.malloc}"
          + ("" if args.model != "bert" else "; jaxlm's prediction head runs at "
             + ("every position" if args.full_head else "the scored positions")))
    rows, peaks, faults = [], {"jaxlm": 0.0, "torch": 0.0}, {}
    tokens_per_step = args.batch * args.seq[0]
    for seq in args.seq:
        batch_size = max(tokens_per_step // seq, 1)
        best = {"jaxlm": float("inf"), "torch": float("inf")}
        for _ in range(args.rounds):
            for framework in best:
                out = run_child(args, framework, seq, batch_size)
                best[framework] = min(best[framework], out["sec"])
                peaks[framework] = max(peaks[framework], out["peak"])
                faults[framework] = out["faults"], out["kernel_sec"]
                if framework == "jaxlm":
                    counts = out
        cfg = model_config(args.model, args.size, seq, args.dropout)
        layers, width = (cfg.n_layer, cfg.n_embd) if args.model == "gpt2" else (cfg.num_hidden_layers, cfg.hidden_size)
        flops = (batch_size * seq * (6 * (counts["matmul_params"] - counts["head_params"]) + 12 * layers * seq * width)
                 + counts["head_tokens"] * 6 * counts["head_params"])
        rows.append((seq, batch_size, best["jaxlm"], best["torch"], flops))
    top = max(peaks.values())
    print(f"# measured {args.precision} matmul peak: jax {peaks['jaxlm'] / 1e9:.1f} GFLOP/s, torch "
          f"{peaks['torch'] / 1e9:.1f} GFLOP/s; MFU below is against the larger")
    print("| seq | batch | jaxlm s/step | jaxlm tokens/s | PyTorch tokens/s | jaxlm / PyTorch | jaxlm MFU | "
          "PyTorch MFU |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seq, batch_size, jax_sec, torch_sec, flops in rows:
        n_tokens = batch_size * seq
        print(f"| {seq} | {batch_size} | {jax_sec:.3f} | {n_tokens / jax_sec:.0f} | {n_tokens / torch_sec:.0f} | "
              f"{torch_sec / jax_sec:.2f} | {flops / jax_sec / top:.1%} | {flops / torch_sec / top:.1%} |")
    print("# per timed step of the last round: " + ", ".join(
        f"{name} {faults[key][0]:.0f} page faults, {faults[key][1]:.2f} s in the kernel"
        for key, name in (("jaxlm", "jaxlm"), ("torch", "PyTorch"))))


if __name__ == "__main__":
    main()
