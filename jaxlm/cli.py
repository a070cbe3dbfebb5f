"""``jaxlm`` command line: train, eval, generate, predict, embed, fill-mask, checkpoints, convert, merge,
tokenizer, data, quantize, prune, distill, compare."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

from jaxlm.errors import JaxlmError


def _config(args):
    from jaxlm.config import load_config

    return load_config(args.config, args.overrides)


def _print_metrics(metrics: dict) -> None:
    import jax

    if jax.process_index() == 0:
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}))


def cmd_train(args) -> int:
    from jaxlm.parallel import distributed
    from jaxlm.train.trainer import train

    config = _config(args)
    distributed.initialize()
    _print_metrics(train(config))
    return 0


def cmd_eval(args) -> int:
    from jaxlm.checkpoint import load_model_state, load_run
    from jaxlm.interop.runs import for_params
    from jaxlm.parallel import distributed
    from jaxlm.train.trainer import evaluate, setup

    if (args.epsilon, args.steps, args.step_size) != (None, None, None) and not args.attack:
        raise JaxlmError("--epsilon / --steps / --step-size set an attack: add --attack fgm|pgd|noise")
    cfg = None
    if args.attack:  # checked before any data or checkpoint is read
        from pydantic import ValidationError

        from jaxlm.config import AdversarialConfig

        settings = {"method": args.attack, "epsilon": args.epsilon, "steps": args.steps, "step_size": args.step_size}
        try:
            cfg = AdversarialConfig(**{k: v for k, v in settings.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            raise JaxlmError(f"--{str(err['loc'][0]).replace('_', '-')} {err['input']}: {err['msg'].lower()}") from None
    config = _config(args)
    distributed.initialize()
    _, params, meta = load_run(config.run.out_dir, args.step, args.best)
    model_state = load_model_state(config.run.out_dir, meta["step"])
    s = setup(config.model_copy(update={"distill": None}))  # a distilled student evaluates without its teacher
    s.model = for_params(s.model, params)
    attack = {}
    if cfg is not None:
        from jaxlm.train.adversarial import AdversarialTask

        clean = s.task.task if isinstance(s.task, AdversarialTask) else s.task  # attack the task, not its training loss
        s.task = AdversarialTask(clean, s.model, None, attack=cfg)
        attack = {"attack": args.attack, "epsilon": cfg.epsilon}
    _print_metrics({"step": meta["step"], **attack, **evaluate(s, params, model_state=model_state)})
    return 0


def load_for_inference(run: str | None, model_dir: str | None, step=None, best=False):
    """``(model, params, tokenizer)`` from a jaxlm run / checkpoint or a Hugging Face directory."""
    model, params, config = load_model(run, model_dir, step, best)
    return model, params, tokenizer_of(run, model_dir, config)


def tokenizer_of(run: str | None, model_dir: str | None, config):
    """The tokenizer of a run (``config``: its config) or of a Hugging Face directory."""
    from jaxlm.checkpoint import resolve
    from jaxlm.data.tokenizer import load_tokenizer

    if model_dir is not None:
        return load_tokenizer(model_dir)
    kept = resolve(run)[0] / "tokenizer"  # runs keep a copy of the tokenizer they loaded
    return load_tokenizer(kept if kept.is_dir() or not config.data.tokenizer.path else config.data.tokenizer.path,
                          config.data.tokenizer.segmenter)


def load_model(run: str | None, model_dir: str | None, step=None, best=False):
    """``(model, params, config)`` from a jaxlm run / checkpoint (its config) or a Hugging
    Face directory (config ``None``)."""
    from jaxlm.interop.runs import load_run_model

    if model_dir is not None:
        from jaxlm.interop import from_pretrained

        model, params = from_pretrained(model_dir)
        return model, params, None
    return load_run_model(run, step, best)


def cmd_generate(args) -> int:
    """Print the prompt's continuation; greedy and sampled text streams as it is decoded, beam search at the end."""
    import numpy as np

    from jaxlm.generation import generate, generate_stream

    from jaxlm.models import head_of

    if args.max_matching_ngram_size is not None and args.prompt_lookup_num_tokens is None:
        raise JaxlmError("--max-matching-ngram-size tunes prompt lookup: add --prompt-lookup-num-tokens K, or drop it")
    model, params, tokenizer = load_for_inference(args.run, args.model, args.step, args.best)
    # A Hugging Face directory's prompt is framed as transformers frames it (Llama's BOS), and its
    # config names the eos ids (Llama 3 has two); jaxlm runs train on unframed text.
    prompt = tokenizer.encode(args.prompt, add_special_tokens=args.model is not None) or [tokenizer.eos_id]
    eos = getattr(model.config, "eos_token_id", None) if args.model is not None else None
    options = dict(max_new_tokens=args.max_new_tokens or 64, do_sample=args.do_sample, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                   num_beams=args.num_beams, length_penalty=args.length_penalty,
                   early_stopping={"true": True, "false": False}.get(args.early_stopping, args.early_stopping),
                   eos_token_id=tokenizer.eos_id if eos is None else eos, seed=args.seed,
                   num_return_sequences=args.num_return_sequences,
                   prompt_lookup_num_tokens=args.prompt_lookup_num_tokens)
    if args.max_matching_ngram_size is not None:
        options["max_matching_ngram_size"] = args.max_matching_ngram_size
    seq2seq = head_of(model) == "seq2seq"
    if seq2seq:  # translate the prompt: the decoder writes the target at once
        from jaxlm.tasks.seq2seq import special_ids

        pad, start, end = special_ids(tokenizer)
        limit = model.config.max_positions
        if args.max_new_tokens is None and limit:
            options["max_new_tokens"] = min(64, limit - 1)
        options.update(eos_token_id=end, pad_token_id=pad, decoder_start_token_id=start)
    if seq2seq or args.num_beams > 1 or args.num_return_sequences > 1:  # printed at the end, one after another
        rows = np.asarray(generate(model, params, np.asarray([prompt]), **options))
        skip = 1 if seq2seq else 0  # the decoder's start token
        print("\n\n".join(tokenizer.decode(row[skip:].tolist()) for row in rows))
        return 0
    ids, shown = list(prompt), ""
    for chunk in generate_stream(model, params, np.asarray([prompt]), **options):
        ids += chunk[0].tolist()
        text = tokenizer.decode(ids)
        # Hold back the last word: the next tokens may still change it (a split UTF-8 character, "##").
        upto = max(text.rfind(" "), text.rfind("\n"), len(shown))
        print(text[len(shown):upto], end="", flush=True)
        shown = text[:upto]
    print(tokenizer.decode(ids)[len(shown):])
    return 0


def cmd_checkpoints(args) -> int:
    from jaxlm.checkpoint import checkpoint_dir, dir_size, open_run
    from jaxlm.errors import first_line

    ckpt, latest = open_run(args.run)
    try:
        best = ckpt.best_step()
        print(f"{'step':>8}  {'size':>9}  metrics")
        for step in ckpt.all_steps():
            meta = {}
            try:
                meta = ckpt.read_meta(step)
                shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(meta["metrics"].items())
                                  if k.startswith("eval_")) or "-"
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint is listed as such
                shown = f"damaged: {first_line(e, 80)}"
            size = dir_size(checkpoint_dir(ckpt.run_dir) / str(step)) / 2**20
            tags = [t for t, s in (("latest", latest), ("best", best)) if s == step]
            if meta.get("quantization"):
                tags.append(meta["quantization"].get("method", "quantized"))
            print(f"{step:>8}  {size:>7.1f}MB  {shown}{'  (' + ', '.join(tags) + ')' if tags else ''}")
    finally:
        ckpt.close()
    return 0


def cmd_convert(args) -> int:
    """Import a transformers directory as a jaxlm run, or export a run as one. ``--out`` is
    written under a temporary name and appears only when complete."""
    from jaxlm.checkpoint import Checkpoints, checkpoint_dir
    from jaxlm.config import save_config, validate_config
    from jaxlm.interop.commands import export_torch
    from jaxlm.rundir import fresh_output_dir

    out = Path(args.out)
    if checkpoint_dir(out).exists():
        raise JaxlmError(f"{out} already holds checkpoints; choose an empty --out directory")
    if args.base and not args.from_torch:
        raise JaxlmError("--base names the base model of an adapter directory given to --from-torch")
    if args.merge and not args.to_torch:
        raise JaxlmError("--merge writes a LoRA run's merged weights with --to-torch RUN")
    if args.dtype and not args.merge:
        raise JaxlmError("--dtype sets the dtype of merged weights: add --merge")
    if args.from_torch:
        from jaxlm.interop import from_pretrained
        from jaxlm.peft.interop import adapter_base, run_settings

        model, params = from_pretrained(args.from_torch, base=args.base)
        base = getattr(model, "base", model)  # an adapter's base model
        sources = [Path(args.from_torch), *([adapter_base(args.from_torch, args.base)] if base is not model else [])]
        tokenizer_files = next(([d / f for f in TOKENIZER_FILES if (d / f).is_file()] for d in sources
                                if any((d / f).is_file() for f in TOKENIZER_FILES)), [])
        data = {"seq_len": min(128, model.config.max_positions or 128)}
        if tokenizer_files:
            data["tokenizer"] = {"path": str(out / "tokenizer")}
        config = validate_config({"run": {"out_dir": str(out)}, "model": model.config.model_dump(), "data": data,
                                  **run_settings(model)})
        with fresh_output_dir(out) as tmp:
            for f in tokenizer_files:
                (tmp / "tokenizer").mkdir(exist_ok=True)
                shutil.copy(f, tmp / "tokenizer" / f.name)
            ckpt = Checkpoints(tmp, config.checkpoint)
            ckpt.save_weights(params, config.model_dump(mode="json"), type(base).__name__)
            ckpt.close()
            save_config(config, tmp / "config.yaml")
        what = type(base).__name__ + (f" with its {model.spec.method} adapter" if base is not model else "")
        print(f"wrote {what} to {checkpoint_dir(out) / '0'}; use it with model.init_from={out}")
    else:
        from jaxlm.compress.quantize import dequantize_params, is_quantized
        from jaxlm.peft.model import PeftModel

        model, params, config = load_model(args.to_torch, None)
        if is_quantized(params):  # transformers' classes take float weights
            params = dequantize_params(params)
            print(f"{args.to_torch} is quantized: writing its dequantized float32 weights")
        if getattr(model.config, "pruned_heads", None):  # one head count for all layers in transformers
            from jaxlm.compress.heads import restore_heads

            params, full = restore_heads(params, model.config)
            model = model.clone(config=full)
            print(f"{args.to_torch} has pruned heads: they are written back as zeros (the same outputs)")
        text = "input_ids" in model.config.dummy_inputs()  # a text model: its tokenizer goes along
        tokenizer = tokenizer_of(args.to_torch, None, config) if text else None
        if isinstance(model, PeftModel) and not args.merge:
            from jaxlm.peft.interop import to_adapter

            to_adapter(model, params, out, tokenizer)
            print(f"wrote a PEFT {model.spec.method} adapter to {out} (adapter_config.json + adapter_model.safetensors) "
                  f"and its base to {out / 'base'}; load it with peft.PeftModel.from_pretrained(base, {str(out)!r})")
        elif args.merge:
            from jaxlm.peft.merge import merged_params

            if not isinstance(model, PeftModel):
                raise JaxlmError(f"{args.to_torch} has no peft section: there is nothing to merge; drop --merge")
            print(export_torch(model.base, merged_params(model, params, config, args.dtype), out, tokenizer))
        else:
            print(export_torch(model, params, out, tokenizer))
    return 0


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json")


def cmd_merge(args) -> int:
    from jaxlm.peft.merge import write_merged_run

    print(write_merged_run(args.run, args.out, args.step, args.best, args.dtype))
    return 0


def cmd_quantize(args) -> int:
    from jaxlm.compress.quantize import quantize_run

    print(quantize_run(args.run, args.out, args.method, block_size=args.block_size,
                       double_quant=not args.no_double_quant, step=args.step, best=args.best))
    return 0


def cmd_prune(args) -> int:
    from jaxlm.compress import prune

    if args.report:
        if args.out:
            raise JaxlmError("--report only prints the sparsity of RUN; drop --out (or --report to prune)")
        print(prune.report_run(args.run, args.step, args.best))
        return 0
    if not args.out:
        raise JaxlmError("give --out DIR for the pruned run (or --report to print RUN's sparsity)")
    if args.heads is not None or args.drop_layers:
        from jaxlm.compress.heads import shrink_run

        layers = [int(i) for i in args.drop_layers.split(",")] if args.drop_layers else None
        print(shrink_run(args.run, args.out, args.heads, layers, args.importance_batches, args.step, args.best))
        return 0
    from jaxlm.config import validate_config

    settings = {k: v for k, v in dict(method=args.method, sparsity=args.sparsity, scope=args.scope, n=args.n,
                                       m=args.m, targets=args.targets).items() if v is not None}
    cfg = validate_config({"model": {}, "prune": settings}).prune
    print(prune.prune_run(args.run, args.out, cfg, args.step, args.best))
    return 0


def cmd_distill_init(args) -> int:
    from jaxlm.compress.distill import init_student

    try:
        layers = [int(i) for i in args.layers.split(",")]
    except ValueError:
        raise JaxlmError(f"--layers {args.layers} is not a comma-separated list of layer indices, e.g. 0,2,4") from None
    print(init_student(args.teacher, args.out, layers, args.to))
    return 0


def cmd_compare(args) -> int:
    from jaxlm.compress.report import compare

    print(compare(args.runs, args.split, args.metric, args.repeats, args.out, args.json))
    return 0


def cmd_fill_mask(args) -> int:
    from jaxlm.interop.commands import fill_mask

    model, params, tokenizer = load_for_inference(args.run, args.model, args.step, args.best)
    for token, prob in fill_mask(model, params, tokenizer, args.text, args.top_k):
        print(f"{prob:.4f}  {token}")
    return 0


def cmd_predict(args) -> int:
    from jaxlm.models import head_of
    from jaxlm.tasks.classification import classify
    from jaxlm.tasks.image_classification import classify_image, image_normalization, image_of

    model, params, config = load_model(args.run, args.model, args.step, args.best)
    if head_of(model) == "regression":
        from jaxlm.tasks.regression import predict_value

        print(f"{predict_value(model, params, args.text):.6g}")
        return 0
    if head_of(model) == "image_classification":
        scores = classify_image(model, params, image_of(args.text, model), *image_normalization(config, args.model))
    else:
        scores = classify(model, params, tokenizer_of(args.run, args.model, config), args.text, args.text_pair, config)
    print(scores[0][0])
    for label, prob in scores:
        print(f"{prob:.4f}  {label}")
    return 0


def cmd_embed(args) -> int:
    """Print, write or plot the embeddings of texts or images (or a word2vec run's words)."""
    from jaxlm.analysis.embed import builtin_labels, embed, expand_inputs, plot, read_labels, write_embeddings

    model, params, config = load_model(args.run, args.model, args.step, args.best)
    if args.neighbors or (config is not None and config.task.type == "word2vec"):
        from jaxlm.tasks.word2vec import embed_words

        return embed_words(args, config, params)
    inputs = expand_inputs(args.inputs)
    if args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise JaxlmError(f"--from {path}: no such file")
        inputs += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not inputs:
        raise JaxlmError("give texts or images to embed (digits:0-99, files, or --from FILE with one per line)")
    labels = read_labels(args.labels, len(inputs)) or builtin_labels(inputs)
    images = "pixel_values" in model.config.dummy_inputs()
    tokenizer = None if images else tokenizer_of(args.run, args.model, config)
    vectors = embed(model, params, config, tokenizer, inputs, args.pooling)
    if args.plot:
        if not args.out:
            raise JaxlmError("--plot writes a figure: add --out fig.png")
        out = Path(args.out)
        plot(vectors, labels, args.plot, out, f"{args.run or args.model}: {len(inputs)} embeddings, {args.plot}",
             args.seed)
        print(f"wrote {out}: {args.plot} of {len(inputs)} embeddings of size {vectors.shape[1]}")
    elif args.out:
        write_embeddings(Path(args.out), inputs, vectors, labels)
        print(f"wrote {args.out}: {len(inputs)} embeddings of size {vectors.shape[1]}")
    else:
        for i, (text, v) in enumerate(zip(inputs, vectors)):
            print(json.dumps({"input": text, **({"label": labels[i]} if labels else {}),
                              "embedding": [round(float(x), 6) for x in v]}))
    return 0


def cmd_sample(args) -> int:
    """Write samples of a GAN run: a PNG grid or the images as .npy."""
    from jaxlm.tasks.gan import sample, write_samples

    if args.num < 1:
        raise JaxlmError(f"--num {args.num}: give at least 1 sample")
    model, params, _ = load_model(args.run, None, args.step, args.best)
    images = sample(model, params, args.num, args.seed)
    write_samples(images, Path(args.out))
    print(f"wrote {args.out}: {args.num} samples of {images.shape[1]}x{images.shape[2]} from {args.run}")
    return 0


def cmd_attention(args) -> int:
    """Print per-layer, per-head attention statistics of an image or a text; write a heatmap PNG."""
    from jaxlm.analysis import attention as a

    model, params, config = load_model(args.run, args.model, args.step, args.best)
    source = args.run or args.model
    if args.text is not None:
        if model.config.type == "vit":
            raise JaxlmError(f"{source} holds a ViT, which reads images: give --image (a file, digits:INDEX or "
                             "shapes:INDEX) instead of --text")
        inputs, tokens, query = a.text_inputs(tokenizer_of(args.run, args.model, config), args.text,
                                              model.config.max_positions)
        weights = a.attention_maps(model, params, **inputs)
        a.check_layer_head(weights, args.layer, args.head)
        print(a.statistics_table(a.attention_statistics(weights, query)))
        layers = range(len(weights)) if args.layer is None else [args.layer]
        heads = range(weights.shape[1]) if args.head is None else [args.head]
        which = "[CLS]" if query == 0 else "the last token"
        out, labelled = a.write_token_heatmaps(weights, tokens, list(layers), list(heads), args.out,
                                               f"{source}: attention over {len(tokens)} tokens (rows: queries)")
        print("tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(tokens)))
        print(f"wrote {out}: token x token attention of {len(layers)} layer(s) x {len(heads)} head(s); statistics "
              f"of {which}'s row" + ("" if labelled else "; tokens labelled by position (no installed font has "
                                     "their glyphs: install a CJK font such as Noto Sans CJK to see them)"))
        return 0
    from jaxlm.data.images import normalize
    from jaxlm.tasks.image_classification import image_normalization, image_of

    if model.config.type != "vit":
        raise JaxlmError(f"--image draws a ViT's attention over an image, and {source} holds a {model.config.type} "
                         "model: give --text TEXT for a text model, or give a ViT run (e.g. of configs/vit-digits.yaml)")
    image = image_of(args.image, model)
    weights = a.attention_maps(model, params, normalize(image[None], *image_normalization(config, args.model)))
    layer = -1 if args.layer is None else args.layer
    grid = a.cls_grid(weights, layer, args.head)
    layer, heads = layer % len(weights), "mean of heads" if args.head is None else f"head {args.head}"
    print(a.statistics_table(a.attention_statistics(weights)))
    out = a.write_heatmap(image, grid, args.out, f"{args.image}: [CLS] -> patches, layer {layer}, {heads}")
    print(f"wrote {out}: [CLS] attention of layer {layer} ({heads}) over the {grid.shape[0]}x{grid.shape[1]} patches")
    return 0


def cmd_tokenizer_train(args) -> int:
    from jaxlm.data.corpus import load_documents
    from jaxlm.data.tokenizer import train_tokenizer

    if args.kind == "bpe-scratch":
        from jaxlm.data.bpe import write_codes

        print(write_codes(args.files, args.merges, args.min_frequency, Path(args.out)))
        return 0
    if args.vocab_size is None or args.merges is not None:
        raise JaxlmError(f"--kind {args.kind} takes --vocab-size N (--merges is for --kind bpe-scratch)")
    out = Path(args.out)
    tok = train_tokenizer(args.kind, load_documents(args.files or None), args.vocab_size)
    tok.save(out, vocab_files=True)
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(f"wrote a {args.kind} tokenizer with {tok.vocab_size} tokens to {out} ({files}); use it with "
          f"data.tokenizer.path={out} model.vocab_size={tok.vocab_size}")
    return 0


def cmd_data_prepare(args) -> int:
    """Encode a config's data into token shards, or a classification config's labelled rows into
    ``.npy`` files (what ``train`` would prepare if they were missing)."""
    from jaxlm.data.prepare import describe, prepare
    from jaxlm.train.setup import inherit_base_tokenizer

    config = inherit_base_tokenizer(_config(args))
    directory = prepare(config, workers=args.workers)
    print(f"prepared {directory}: {describe(config, directory)}; jaxlm train {args.config} "
          f"{' '.join(args.overrides)} streams them".rstrip())
    return 0


def cmd_memory(args) -> int:
    from jaxlm.parallel.memory import activation_memory, device_rows, gib, state_memory, table

    if args.gpt2_table:
        print(table(args.devices or 8))
        return 0
    if args.config is None:
        raise JaxlmError("give a CONFIG (or --gpt2-table)")
    import jax

    config = _config(args)
    n = args.devices or jax.device_count()
    head = config.task.head
    m = state_memory(config, head, n)
    act = activation_memory(config, head, n)
    remat = config.model.remat
    mesh = f"data={config.mesh.data} fsdp={config.mesh.fsdp} tensor={config.mesh.tensor}"
    print(f"{m['parameters'] / 1e6:.1f}M parameters on {n} devices ({mesh}), per device:")
    for k in ("params", "grads", "optimizer"):
        print(f"  {k:<12} {gib(m[k])}")
    others = ", ".join(f"{gib(v)} with remat={k}" for k, v in act.items() if k != remat)
    tokens = f" x {config.data.seq_len} tokens" if "input_ids" in config.model.dummy_inputs() else ""
    print(f"  {'activations':<12} {gib(act[remat])}  (model.remat={remat}; {others}) for "
          f"{device_rows(config, n)} rows{tokens}, {config.precision.compute}")
    print(f"  {'total':<12} {gib(m['params'] + m['grads'] + m['optimizer'] + act[remat])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlm", description="Build, train, evaluate and convert language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p):
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. trainer.max_steps=100")

    def which_checkpoint(p):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
        group.add_argument("--best", action="store_true", help="the best checkpoint by checkpoint.best_metric")

    p = sub.add_parser("train", help="train a model from a config (resumes from run.out_dir)")
    with_config(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint of a config's run.out_dir")
    with_config(p)
    which_checkpoint(p)
    p.add_argument("--attack", choices=["fgm", "pgd", "noise"],
                   help="evaluate under this perturbation of the embedding output (robustness)")
    p.add_argument("--epsilon", type=float, help="the attack's per-example L2 radius (noise: std; default 1.0)")
    p.add_argument("--steps", type=int, help="pgd: gradient steps (default 3)")
    p.add_argument("--step-size", type=float, help="pgd: each step's L2 length (default 2.5 * epsilon / steps)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a language model, or translate it with a seq2seq "
                       "model (greedy, sampling, beam search)",
                       description="Options and defaults as in transformers' generate; see jaxlm.generation.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a jaxlm run directory (or one of its checkpoints/N)")
    source.add_argument("--model", help="a Hugging Face directory (config.json + weights + tokenizer files)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, help="tokens to add (default 64; seq2seq: at most the positions)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy / beam search argmax")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling: divides the logits")
    p.add_argument("--top-k", type=int, default=50, help="sampling: keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: keep the most likely tokens up to this mass")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (printed at the end)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / new_tokens ** this")
    p.add_argument("--early-stopping", choices=("false", "true", "never"), default="false",
                   help="beam search: when to stop a prompt (see jaxlm.generation.GenerationOptions)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--num-return-sequences", type=int, default=1,
                   help="print this many continuations: samples, or beam search's best (blank line between)")
    p.add_argument("--prompt-lookup-num-tokens", type=int,
                   help="greedy: propose up to this many tokens per step from the text so far (same tokens)")
    p.add_argument("--max-matching-ngram-size", type=int,
                   help="prompt lookup: the longest n-gram of the text's end matched earlier in it (default 2)")
    which_checkpoint(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("memory", help="per-device memory of params, gradients, optimizer state and activations "
                       "under the mesh")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--devices", type=int, help="number of devices (default: those visible here)")
    p.add_argument("--gpt2-table", action="store_true", help="print the GPT-2 sizes x layouts table of docs/scaling.md")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("checkpoints", help="list a run's checkpoints: steps, eval metrics, sizes")
    p.add_argument("run", help="a jaxlm run directory")
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("convert", help="PyTorch (Hugging Face) checkpoint <-> jaxlm run directory")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="HF_DIR", help="a transformers directory to import")
    direction.add_argument("--to-torch", metavar="RUN_DIR", help="a jaxlm run (or checkpoints/N) to export; a PEFT "
                           "run becomes a PEFT adapter directory (its base in OUT/base)")
    p.add_argument("--out", required=True, help="the directory to write")
    p.add_argument("--merge", action="store_true", help="--to-torch a LoRA run: a plain transformers model with the "
                   "updates merged into its weights")
    p.add_argument("--base", help="--from-torch a PEFT adapter directory: its base model (default: the "
                   "adapter's base_model_name_or_path)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="--merge: the merged weights' dtype (a QLoRA "
                   "run's NF4 base is dequantized into it: required there)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("merge", help="write a LoRA run with its updates merged into the weights, as a plain run")
    p.add_argument("run", help="a jaxlm LoRA run directory (or one of its checkpoints/N)")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="the merged weights' dtype (a QLoRA run's NF4 "
                   "base is dequantized into it: required there)")
    which_checkpoint(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("quantize", help="write a quantized copy of a run (int8, int8-dynamic, nf4, int4 weights)",
                       description="The new run stores integer arrays and scales; eval, predict, generate, fill-mask, "
                       "checkpoints and convert work on it. See jaxlm/compress/quantize.py.")
    p.add_argument("run", help="a jaxlm run directory (or one of its checkpoints/N)")
    p.add_argument("--method", required=True, choices=("int8", "int8-dynamic", "nf4", "int4"),
                   help="int8: per-channel weights; int8-dynamic: also int8 activations per token at run time; "
                   "nf4 / int4: 4-bit weights in blocks")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--block-size", type=int, default=64, help="nf4 / int4: values per scale (default 64)")
    p.add_argument("--no-double-quant", action="store_true", help="nf4 / int4: keep the block scales in float32")
    which_checkpoint(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("prune", help="prune a trained run in one shot (then fine-tune it), or --report its sparsity",
                       description="Masks as torch.nn.utils.prune chooses them; see jaxlm/compress/prune.py.")
    p.add_argument("run", help="a jaxlm run directory (or one of its checkpoints/N)")
    p.add_argument("--report", action="store_true", help="print the per-layer sparsity of RUN")
    p.add_argument("--out", help="the pruned run directory to write")
    p.add_argument("--method", choices=("magnitude", "random", "structured", "n_m"), help="default magnitude")
    p.add_argument("--sparsity", type=float, help="fraction of the targeted weights to zero (default 0.5)")
    p.add_argument("--scope", choices=("layer", "global"), help="magnitude / random: per layer (default) or global")
    p.add_argument("--n", type=int, help="n_m: weights kept per group (default 2)")
    p.add_argument("--m", type=int, help="n_m: group size (default 4)")
    p.add_argument("--targets", help="regular expression over param names (default: kernel$)")
    p.add_argument("--heads", type=float, help="remove this fraction of the attention heads, least important first "
                   "(Michel et al. 2019; BERT, DistilBERT, GPT-2, ViT)")
    p.add_argument("--importance-batches", type=int, default=8, help="--heads: validation batches to measure on")
    p.add_argument("--drop-layers", help="remove these layers (comma-separated indices, e.g. 1,3)")
    which_checkpoint(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("distill", help="knowledge distillation tools (training itself: a config's distill: section)")
    distill_sub = p.add_subparsers(dest="distill_command", required=True, metavar="COMMAND")
    p = distill_sub.add_parser("init", help="a student run from a teacher's embeddings, chosen layers and head "
                               "(DistilBERT's initialisation)")
    p.add_argument("teacher", help="the teacher's jaxlm run directory")
    p.add_argument("--layers", required=True, help="teacher layers to keep, in order (DistilBERT: 0,2,4,7,9,11)")
    p.add_argument("--to", choices=("bert", "distilbert", "gpt2", "vit"),
                   help="the student's type (default: the teacher's; a BERT teacher may give a distilbert)")
    p.add_argument("--out", required=True, help="the student run directory to write")
    p.set_defaults(func=cmd_distill_init)

    p = sub.add_parser("compare", help="one row per run: params, non-zero params, size on disk, eval metric, "
                       "latency at batch 1 and 32, training time")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories; the first is the speed-up baseline")
    p.add_argument("--split", default="test", choices=("validation", "test"), help="the split to score (default test)")
    p.add_argument("--metric", help="the eval metric to show (default eval_accuracy, else eval_loss)")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes per batch size (median)")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.set_defaults(func=cmd_compare)

    def model_source(p, kind):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--run", help=f"a jaxlm run directory (or one of its checkpoints/N) of a {kind}")
        source.add_argument("--model", help=f"a Hugging Face {kind} directory (config.json + weights + tokenizer)")
        which_checkpoint(p)

    p = sub.add_parser("fill-mask", help="top-k tokens for the [MASK] in a text (masked LMs)")
    model_source(p, "masked LM")
    p.add_argument("text")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser("predict", help="the label of a text, text pair or image, with every label's probability "
                       "(a regression model: its prediction)")
    model_source(p, "sequence or image classifier, or regression model")
    p.add_argument("text", help="the text; for image classifiers an image file, digits:INDEX or shapes:INDEX; for "
                   "regression the features, comma-separated")
    p.add_argument("text_pair", nargs="?", help="the second text of a pair")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("embed", help="embeddings of texts, images or words: print them, write them, plot them "
                       "(t-SNE / PCA); `embed neighbors --run W2V WORD`: a word2vec run's nearest words",
                       description="jaxlm embed --run RUN [INPUT ...] prints, writes (--out) or draws (--plot) "
                       "embeddings; for a word2vec run the inputs are words (default for --plot: the --top-n most "
                       "frequent), --out FILE.txt writes every vector in the word2vec text format, and "
                       "`jaxlm embed neighbors --run RUN WORD` lists its nearest words.")
    model_source(p, "encoder (a contrastive run, any text / image model, or a word2vec run)")
    p.add_argument("inputs", nargs="*", metavar="TEXT_OR_IMAGE",
                   help="texts, or images: files, digits:INDEX, shapes:INDEX, ranges such as digits:0-499; words "
                   "of a word2vec run; or `neighbors WORD`")
    p.add_argument("--from", dest="input_file", metavar="FILE", help="more inputs, one per line")
    p.add_argument("--out", help="write the embeddings (.npy or .jsonl; a word2vec run: .txt in the word2vec text "
                   "format), or with --plot the figure (.png)")
    p.add_argument("--plot", choices=["tsne", "pca"], help="draw the embeddings in 2-D (scikit-learn, matplotlib)")
    p.add_argument("--neighbors", action="store_true", help=argparse.SUPPRESS)  # `jaxlm embed neighbors ...`
    p.add_argument("--top-k", type=int, default=10, help="neighbors: how many words (default 10)")
    p.add_argument("--top-n", type=int, default=60,
                   help="word2vec --plot without words: the most frequent this many (default 60)")
    p.add_argument("--seed", type=int, default=0, help="--plot tsne: its seed (default 0)")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help="one label per input (or a file with one per line) to colour the plot; digits:/shapes: "
                   "inputs are labelled with their classes")
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls",
                   help="for runs that are not contrastive: how a sequence becomes one vector (default cls)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("sample", help="samples of a GAN run (task: gan): a PNG grid or .npy images")
    p.add_argument("--run", required=True, help="a jaxlm GAN run directory (or one of its checkpoints/N)")
    which_checkpoint(p)
    p.add_argument("--num", type=int, default=64, help="how many samples (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    p.add_argument("--out", required=True,
                   help="grid.png (a grid) or samples.npy (uint8 [num, height, width, channels])")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("attention", help="a Transformer's attention on an image (ViT: [CLS] -> patches) or a text "
                       "(BERT, DistilBERT, GPT-2: token x token per layer and head): per-head statistics and a PNG")
    model_source(p, "ViT or text Transformer")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="ViT: an image file (PNG, JPEG, ...), digits:INDEX or shapes:INDEX")
    what.add_argument("--text", help="a text model: the text to read")
    p.add_argument("--layer", type=int, help="the layer to draw (default: ViT the last, text every layer)")
    p.add_argument("--head", type=int, help="the head to draw (default: ViT the mean over heads, text every head)")
    p.add_argument("--out", default="attention.png", help="the PNG to write (default: attention.png)")
    p.set_defaults(func=cmd_attention)

    from jaxlm.analysis.commands import add_command as add_plot_command

    add_plot_command(sub)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tokenizer_sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    p = tokenizer_sub.add_parser("train", help="train a WordPiece (BERT) or byte-level BPE (GPT-2) tokenizer, or "
                                 "learn BPE merges from scratch (subword-nmt's codes file)")
    p.add_argument("--kind", choices=["wordpiece", "bpe", "bpe-scratch"], required=True)
    p.add_argument("--vocab-size", type=int, help="wordpiece / bpe: the tokens to train")
    p.add_argument("--merges", type=int, help="bpe-scratch: the merges to learn (subword-nmt learn-bpe -s N)")
    p.add_argument("--min-frequency", type=int, default=2, help="bpe-scratch: stop when no pair occurs this often")
    p.add_argument("--out", required=True, help="the directory to write (tokenizer.json + vocabulary files)")
    p.add_argument("files", nargs="*", metavar="FILES", help="UTF-8 text files or globs (none: the embedded corpus)")
    p.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="data tools: prepare (tokenize into shards), clean, augment, export")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("prepare", help="tokenize a config's data.paths / data.dataset into shards (a "
                            "classification config's labelled rows into .npy files) under data.cache_dir (train "
                            "streams them)")
    with_config(p)
    p.add_argument("--workers", type=int, help="encoding processes (default: data.prepare.workers, 0 = all cores)")
    p.set_defaults(func=cmd_data_prepare)
    from jaxlm.data.text_commands import add_commands as add_text_data_commands

    add_text_data_commands(data_sub)
    from jaxlm.data.export import add_command as add_export_command

    add_export_command(data_sub)

    for p in _all_parsers(parser):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show library logs and full tracebacks (also JAXLM_DEBUG=1)")
    return parser


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _all_parsers(child)


NOISY_LIBRARIES = ("absl", "orbax", "asyncio")


def _debug_env() -> bool:
    return os.environ.get("JAXLM_DEBUG", "") not in ("", "0")


def _silence_library_noise():
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda args: None
    sys.excepthook = _main_thread_only(sys.excepthook)


def _main_thread_only(hook):
    """TensorStore's C++ threads report a callback that failed on orbax's closed event loop through
    ``sys.excepthook`` (``RuntimeError: Event loop is closed``); only the main thread's errors are jaxlm's."""

    def excepthook(kind, value, tb):
        if threading.current_thread() is threading.main_thread():
            hook(kind, value, tb)

    return excepthook


@contextlib.contextmanager
def _library_noise(debug: bool):
    """orbax, TensorStore and asyncio report failures that jaxlm names in one line of its own:
    their logs, thread and coroutine tracebacks show only with --debug or JAXLM_DEBUG=1."""
    saved = ({name: logging.getLogger(name).level for name in NOISY_LIBRARIES}, threading.excepthook,
             sys.unraisablehook, sys.excepthook)
    if debug:
        for name in NOISY_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
    else:
        _silence_library_noise()
    try:
        yield
    finally:
        for name, level in saved[0].items():
            logging.getLogger(name).setLevel(level)
        threading.excepthook, sys.unraisablehook, sys.excepthook = saved[1:]


def main(argv: list[str] | None = None) -> int:
    from jaxlm.host_memory import keep_freed_memory

    keep_freed_memory()  # before jax starts: XLA:CPU steps then reuse their buffers instead of faulting them in
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("jax", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:2] == ["embed", "neighbors"]:  # a sub-action in front of options and the word: argparse's positionals
        argv = ["embed", "--neighbors", *argv[2:]]  # would take it as the first input and then refuse the word
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or _debug_env()
    try:
        with _library_noise(debug):
            return args.func(args)
    except JaxlmError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxlm {args.command}: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``jaxlm`` command: ``main``, then the process exits. Failed reads and writes leave
    TensorStore futures and asyncio tasks that report while the interpreter shuts down, after the
    one-line error, some of them from C++ threads straight to the stderr descriptor: outside
    --debug, their reports are silenced for the whole process (not only while a command runs: the
    threads outlive it), and stderr is closed once ``main`` has returned and said what it had to say."""
    quiet = not (_debug_env() or "--debug" in sys.argv)
    if quiet:
        _silence_library_noise()
    code = main()
    if quiet:
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    sys.exit(code)


if __name__ == "__main__":
    console()
