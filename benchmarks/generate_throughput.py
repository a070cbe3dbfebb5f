"""Greedy generation tokens/s: ``jaxlm.generate`` vs transformers ``generate``, same weights, one process.

A random-weight GPT-2 (the 124M gpt2-small by default) is saved once with ``random_checkpoint``
and loaded by both frameworks; each generates ``--new-tokens`` tokens greedily from random prompts
of ``--prompt`` tokens at each batch size. The first call of each shape is a warm-up (jaxlm
compiles there; its time is reported apart); then the two alternate ``--repeats`` times and each
keeps its best time. tokens/s counts new tokens, prefill included; a random model practically
never emits eos (a warning says so if it does).

``--prompt-lookup K`` runs both with ``prompt_lookup_num_tokens=K`` (transformers: batch 1 only)
and reports jaxlm's new tokens per forward pass and what one pass over 1, 2 and 1 + K tokens
costs. A random model does not repeat its context, so its proposals are rarely right; ``--run DIR`` measures a trained jaxlm run instead (its
config and tokenizer, prompts from the embedded corpus), jaxlm greedy against jaxlm prompt
lookup, since transformers cannot load every jaxlm model (rotary positions, say).
``--num-beams N`` runs both with beam search instead (tokens/s counts each prompt's new tokens, not
every beam's; both keep the best hypothesis).
``--seq2seq`` times encoder-decoder decoding instead: jaxlm's ``TransformerSeq2Seq`` against
transformers' ``MarianMTModel`` of the same shapes (Transformer-base: 6 + 6 layers, d_model 512, relu,
post-LN, sinusoidal positions, tied embeddings; vocabulary 32000), each with its own random weights, so
their tokens differ; sources of ``--source`` tokens, no eos, so both decode all ``--new-tokens``.
``--prefill N`` times jaxlm's prefill of an N-token prompt as shipped and with
``attend_past_and_new`` (which decoding steps use), and nothing else.
Usage: python benchmarks/generate_throughput.py [--size small|tiny] [--batch 1 8] [--new-tokens 128]
       [--prompt-lookup K | --num-beams N] | --seq2seq [--source 128] [--num-beams N] | --run runs/gpt2-tiny --prompt-lookup K [--prompts 8] | --prefill 512
Prints a markdown table with the speed ratio and whether the tokens agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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


def tokens_per_pass(model, params, ids, **options) -> tuple[float, int]:
    """The new tokens per forward pass of jaxlm's decoding loop for ``ids`` (more than 1 with prompt
    lookup; eos ends the count), and the passes."""
    from jaxlm import generation as decoding

    ids, mask, plan, knobs, _ = decoding._prepare(model, ids, None, options)
    state = decoding._start(model, params, ids, mask, plan, knobs)
    state = decoding._advance(model, params, state, plan.max_new_tokens, plan, knobs)
    return int(state.step) / int(state.passes), int(state.passes)


def pass_times(model, params, prompt: int, counts, repeats: int) -> list[float]:
    """jaxlm's best time for one cached forward pass at batch 1 over each of ``counts`` new tokens after a
    ``prompt``-token cache, as the decoding loop runs it (the cache donated, updated in place, its index
    set back after each pass)."""
    from jaxlm import generation as decoding

    total = prompt + max(counts)
    mask = jnp.ones((1, total), jnp.int32)

    @partial(jax.jit, donate_argnums=1)
    def forward(params, cache, fed):
        positions = prompt + jnp.arange(fed.shape[1])[None, :]
        out, variables = model.apply({"params": params, "cache": cache}, fed, attention_mask=mask,
                                     position_ids=positions, decode=True, mutable=["cache"])
        return out.logits.sum(), decoding._rewind(variables["cache"], prompt)  # every logit, as the loop needs

    cache = decoding._rewind(decoding.init_cache(model, 1, total), prompt)

    def one_pass(fed):
        nonlocal cache
        total_logit, cache = forward(params, cache, fed)
        return total_logit.block_until_ready()

    best = []
    for count in counts:
        run = partial(one_pass, jnp.ones((1, count), jnp.int32))
        run()  # compiles
        best.extend(best_of(repeats, run))
    return best


def prefill_times(model, params, length: int, repeats: int) -> list[float]:
    """jaxlm's best time to cache a ``length``-token prompt at batch 1, as shipped (a call of more than
    ``PAST_AND_NEW_MAX_TOKENS`` tokens writes the cache first) and with the prompt attending to the
    cache before it and to its own keys and values apart, as decoding steps do."""
    from jaxlm.generation import init_cache
    from jaxlm.layers import attention

    ids = jnp.ones((1, length), jnp.int32)
    shipped, best = attention.PAST_AND_NEW_MAX_TOKENS, []
    try:
        for limit in (shipped, length):
            attention.PAST_AND_NEW_MAX_TOKENS = limit

            @jax.jit  # defined anew for each limit, so that it is traced with it
            def prefill(params, ids):
                _, variables = model.apply({"params": params, "cache": init_cache(model, 1, length)}, ids,
                                           attention_mask=jnp.ones_like(ids), position_ids=jnp.arange(length)[None],
                                           decode=True, mutable=["cache"])
                return variables["cache"]

            def run():
                return jax.block_until_ready(prefill(params, ids))

            run()  # compiles
            best.extend(best_of(repeats, run))
    finally:
        attention.PAST_AND_NEW_MAX_TOKENS = shipped
    return best


def best_of(repeats: int, *runs) -> list[float]:
    """Each run's best time over ``repeats`` rounds, the runs alternating so that other load hits them alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        best = [min(b, timed(run)[0]) for b, run in zip(best, runs)]
    return best


def header(what: str, args) -> str:
    return (f"# {what}, {os.cpu_count()} CPU cores ({processor()}), jax {jax.__version__}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}; 1-minute load average {args.load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after")


def trained_run(args):
    """jaxlm greedy against jaxlm prompt lookup on a trained run, prompts from the embedded corpus."""
    from jaxlm.cli import load_for_inference
    from jaxlm.data.corpus import embedded_corpus

    model, params, tokenizer = load_for_inference(args.run, None)
    documents = [ids for ids in map(tokenizer.encode, embedded_corpus()) if len(ids) >= args.prompt]
    picked = np.random.default_rng(0).choice(len(documents), args.prompts, replace=False)
    options = dict(max_new_tokens=args.new_tokens, eos_token_id=tokenizer.eos_id)
    lookup = dict(options, prompt_lookup_num_tokens=args.prompt_lookup)
    rows = []
    for d in picked:
        ids = np.array([documents[d][:args.prompt]])
        runs = [lambda o=o: np.asarray(jaxlm.generate(model, params, ids, **o)) for o in (options, lookup)]
        (_, greedy), (_, looked_up) = timed(runs[0]), timed(runs[1])  # warm-up: compiles
        rows.append((d, *best_of(args.repeats, *runs), *tokens_per_pass(model, params, ids, **lookup),
                     np.array_equal(greedy, looked_up)))
    print(header(f"{args.run} greedy generation, prompt {args.prompt} + {args.new_tokens} new tokens, batch 1, "
                 f"prompt_lookup_num_tokens={args.prompt_lookup}", args))
    print("| corpus document | greedy s | prompt lookup s | passes | new tokens / pass | speed-up | same tokens |\n"
          "|---|---|---|---|---|---|---|")
    for d, plain, looked, per_pass, n, same in rows:
        print(f"| {d} | {plain:.3f} | {looked:.3f} | {n} | {per_pass:.2f} | {plain / looked:.2f} "
              f"| {'yes' if same else 'no'} |")
    print_pass_times(model, params, args)


def seq2seq(args):
    """jaxlm's encoder-decoder against transformers' Marian of the same shapes (their own random weights)."""
    from jaxlm.models.seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig

    vocab, shapes = 32000, dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                                decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048)
    model = TransformerSeq2Seq(TransformerSeq2SeqConfig(vocab_size=vocab, dropout=0.0, **shapes))
    params = jax.jit(model.init)(jax.random.key(0), *[jnp.ones((1, 8), jnp.int32)] * 3)["params"]
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, activation_function="relu", scale_embedding=True,
        max_position_embeddings=512, pad_token_id=0, decoder_start_token_id=0, eos_token_id=1,
        forced_eos_token_id=None, **shapes)).eval()
    options = dict(max_new_tokens=args.new_tokens, num_beams=args.num_beams, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=None, do_sample=False)
    rows = []
    for batch in args.batch:
        ids = np.random.default_rng(batch).integers(2, vocab, (batch, args.source))
        mask = np.ones_like(ids)

        def run_jaxlm():
            return np.asarray(jaxlm.generate(model, params, ids, mask, **options))

        def run_hf():
            with torch.inference_mode():
                return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **options).numpy()

        (j_first, j_tokens), (_, h_tokens) = timed(run_jaxlm), timed(run_hf)  # warm-up; jaxlm compiles
        assert j_tokens.shape == h_tokens.shape == (batch, 1 + args.new_tokens), (j_tokens.shape, h_tokens.shape)
        j_best, h_best = best_of(args.repeats, run_jaxlm, run_hf)
        new = batch * args.new_tokens
        rows.append((batch, j_first, j_best, new / j_best, h_best, new / h_best, h_best / j_best))
    how = f"beam search (num_beams={args.num_beams})" if args.num_beams > 1 else "greedy"
    print(header(f"Transformer-base encoder-decoder {how} decoding, source {args.source} + {args.new_tokens} new "
                 "tokens (jaxlm TransformerSeq2Seq vs transformers MarianMTModel, random weights)", args))
    print("| batch | jaxlm first call s (compile) | jaxlm s | jaxlm tokens/s | transformers s | transformers tokens/s "
          "| jaxlm / transformers |\n|---|---|---|---|---|---|---|")
    for batch, j_first, j_best, j_rate, h_best, h_rate, ratio in rows:
        print(f"| {batch} | {j_first:.1f} | {j_best:.2f} | {j_rate:.1f} | {h_best:.2f} | {h_rate:.1f} | {ratio:.2f} |")


def print_pass_times(model, params, args):
    counts = sorted({1, 2, 1 + args.prompt_lookup})
    times = pass_times(model, params, args.prompt, counts, 10 * args.repeats)
    print(f"\njaxlm's forward pass at batch 1 after a {args.prompt}-token prompt: "
          + ", ".join(f"{t * 1e3:.2f} ms over {c} token{'s' if c > 1 else ''}" for c, t in zip(counts, times)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("small", "tiny"), default="small")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-lookup", type=int, help="prompt_lookup_num_tokens for both frameworks (batch 1)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search in both frameworks instead of greedy")
    p.add_argument("--seq2seq", action="store_true", help="an encoder-decoder: jaxlm against transformers' Marian")
    p.add_argument("--source", type=int, default=128, help="--seq2seq: source tokens per row")
    p.add_argument("--run", help="a trained jaxlm run: greedy against --prompt-lookup, jaxlm only")
    p.add_argument("--prompts", type=int, default=8, help="--run: how many corpus documents to prompt with")
    p.add_argument("--prefill", type=int, metavar="N", help="time jaxlm's prefill of an N-token prompt two ways")
    args = p.parse_args()
    args.load_before = os.getloadavg()[0]
    if args.prompt_lookup is not None and args.batch != [1] and not args.run:
        p.error("--prompt-lookup runs at batch 1 only (transformers' limit): add --batch 1")
    if args.num_beams > 1 and (args.prompt_lookup is not None or args.run):
        p.error("--num-beams times beam search against transformers: drop --prompt-lookup and --run")
    if args.seq2seq:
        if args.prompt_lookup is not None or args.run or args.prefill:
            p.error("--seq2seq times greedy or beam search decoding: drop --prompt-lookup, --run and --prefill")
        return seq2seq(args)
    if args.run:
        if args.prompt_lookup is None:
            p.error("--run compares greedy with prompt lookup: add --prompt-lookup K")
        return trained_run(args)

    with tempfile.TemporaryDirectory() as directory:
        random_checkpoint("GPT2LMHeadModel", directory, tiny=args.size == "tiny")
        model, params = jaxlm.from_pretrained(directory)
        hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    if args.prefill:
        shipped, apart = prefill_times(model, params, args.prefill, args.repeats)
        print(f"# gpt2-{args.size}: jaxlm's prefill of a {args.prefill}-token prompt at batch 1 ({processor()}): "
              f"{shipped:.3f} s writing the cache first (as shipped), {apart:.3f} s attending past and new apart")
        return
    vocab, eos = model.config.vocab_size, model.config.eos_token_id
    lookup = {} if args.prompt_lookup is None else dict(prompt_lookup_num_tokens=args.prompt_lookup)
    search = dict(lookup, num_beams=args.num_beams)
    rows = []
    for batch in args.batch:
        ids = np.random.default_rng(batch).integers(0, vocab, (batch, args.prompt))

        def run_jaxlm():
            return np.asarray(jaxlm.generate(model, params, ids, max_new_tokens=args.new_tokens, eos_token_id=eos,
                                             **search))

        def run_hf():
            with torch.inference_mode():
                return hf.generate(torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                                   max_new_tokens=args.new_tokens, do_sample=False,
                                   eos_token_id=eos, pad_token_id=eos, **search).numpy()

        (j_first, j_tokens), (_, h_tokens) = timed(run_jaxlm), timed(run_hf)  # warm-up; jaxlm compiles
        j_best, h_best = best_of(args.repeats, run_jaxlm, run_hf)
        if h_tokens.shape[1] < ids.shape[1] + args.new_tokens or (j_tokens[:, ids.shape[1]:] == eos).any():
            print(f"warning: batch {batch} emitted eos: fewer than {args.new_tokens} real new tokens per row")
        new = batch * args.new_tokens
        per_pass = f" | {tokens_per_pass(model, params, ids, max_new_tokens=args.new_tokens, **lookup)[0]:.2f}"
        rows.append((batch, j_first, j_best, new / j_best, h_best, new / h_best, h_best / j_best,
                     np.array_equal(j_tokens, h_tokens), per_pass if lookup else ""))

    what = f", prompt_lookup_num_tokens={args.prompt_lookup}" if lookup else ""
    how = f"beam search (num_beams={args.num_beams})" if args.num_beams > 1 else "greedy"
    print(header(f"gpt2-{args.size} {how} generation, prompt {args.prompt} + {args.new_tokens} new tokens{what}", args))
    extra = (" jaxlm new tokens / pass |", "---|") if lookup else ("", "")
    print("| batch | jaxlm first call s (compile) | jaxlm s | jaxlm tokens/s | transformers s | transformers tokens/s "
          f"| jaxlm / transformers | same tokens |{extra[0]}\n|---|---|---|---|---|---|---|---|{extra[1]}")
    for batch, j_first, j_best, j_rate, h_best, h_rate, ratio, same, per_pass in rows:
        print(f"| {batch} | {j_first:.1f} | {j_best:.2f} | {j_rate:.1f} | {h_best:.2f} | {h_rate:.1f} | {ratio:.2f} "
              f"| {'yes' if same else 'no'}{per_pass} |")
    if lookup:
        print_pass_times(model, params, args)


if __name__ == "__main__":
    main()
