"""The floor under batch-1 decoding on this machine: how fast can weights be streamed?

Greedy decoding of one row reads every weight once per token. This times that read alone: a
jitted chain of matrix-vector products shaped like gpt2-small's (per layer 768x2304, 768x768,
768x3072, 3072x768; then the 768x50257 LM head) in jax and in torch, in float32 and, for jax,
bfloat16 / float16 weights and int8 weights with a scale per column; and a plain jitted sum over
as many bytes (the memory read rate).
Prints a markdown table: milliseconds per chain, GB/s, and the tokens/s it allows.

Usage: python benchmarks/decode_bandwidth.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12 + [(768, 50257)]


def best_time(run, repeats: int) -> float:
    run()  # jax compiles here
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import torch

    weights = [jax.random.normal(jax.random.PRNGKey(i), s) * 0.02 for i, s in enumerate(SHAPES)]
    x = jnp.ones((1, 3072))
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        ws = [w.astype(dtype) for w in weights]

        @jax.jit
        def chain(x, ws):
            return sum(jnp.dot(x[:, :w.shape[0]].astype(w.dtype), w, preferred_element_type=jnp.float32).sum()
                       for w in ws)

        seconds = best_time(lambda: chain(x, ws).block_until_ready(), args.repeats)
        rows.append((f"jax, {jnp.dtype(dtype).name} weights", seconds, sum(w.nbytes for w in ws)))
    # int8 weights with a float32 scale per output column (weight-only quantisation), widened in the product
    scales = [jnp.abs(w).max(0) / 127 for w in weights]
    qs = [jnp.round(w / s).astype(jnp.int8) for w, s in zip(weights, scales)]

    @jax.jit
    def int8_chain(x, qs, scales):
        return sum((jnp.dot(x[:, :q.shape[0]], q.astype(jnp.float32)) * s).sum() for q, s in zip(qs, scales))

    seconds = best_time(lambda: int8_chain(x, qs, scales).block_until_ready(), args.repeats)
    rows.append(("jax, int8 weights, float32 scales", seconds, sum(q.nbytes + s.nbytes for q, s in zip(qs, scales))))
    tw, tx = [torch.tensor(np.asarray(w)) for w in weights], torch.ones(1, 3072)

    def torch_chain():
        with torch.inference_mode():
            return sum((tx[:, :w.shape[0]] @ w).sum() for w in tw)

    f32_bytes = rows[0][2]
    rows.append(("torch, float32 weights", best_time(torch_chain, args.repeats), f32_bytes))
    flat = jnp.ones(f32_bytes // 4)
    total = jax.jit(jnp.sum)
    rows.append(("jax sum over the float32 bytes", best_time(lambda: total(flat).block_until_ready(), args.repeats),
                 f32_bytes))
    print(f"# gpt2-small-shaped weight stream ({f32_bytes / 1e6:.0f} MB in float32), best of {args.repeats}; "
          f"jax {jax.__version__}, torch {torch.__version__}")
    print("| what | ms | GB/s | tokens/s it allows |\n|---|---:|---:|---:|")
    for name, seconds, nbytes in rows:
        print(f"| {name} | {seconds * 1e3:.1f} | {nbytes / seconds / 1e9:.1f} | {1 / seconds:.1f} |")


if __name__ == "__main__":
    main()
