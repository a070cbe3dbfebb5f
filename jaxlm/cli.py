"""``jaxlm`` command line: train, eval, generate, checkpoints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from jaxlm.errors import JaxlmError


def _config(args):
    from jaxlm.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args) -> int:
    from jaxlm.train.trainer import train

    metrics = train(_config(args))
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))
    return 0


def cmd_eval(args) -> int:
    from jaxlm.checkpoint import load_run
    from jaxlm.train.trainer import evaluate, setup

    config = _config(args)
    _, params, step = load_run(config.run.out_dir, args.step, args.best)
    metrics = evaluate(setup(config), params)
    print(json.dumps({"step": step, **{k: round(v, 6) for k, v in metrics.items()}}))
    return 0


def cmd_generate(args) -> int:
    import numpy as np

    from jaxlm.checkpoint import load_run, resolve
    from jaxlm.config import validate_config
    from jaxlm.data.tokenizer import load_tokenizer
    from jaxlm.generate import generate
    from jaxlm.models import build_model

    config_dict, params, _ = load_run(args.run, args.step, args.best)
    config = validate_config(config_dict)
    tokenizer = load_tokenizer(config.data.tokenizer.path or resolve(args.run)[0] / "tokenizer")
    model = build_model(config.model, "causal_lm")
    prompt = tokenizer.encode(args.prompt) or [tokenizer.eos_id]
    out = generate(model, params, np.asarray([prompt]), max_new_tokens=args.max_new_tokens,
                   eos_token_id=tokenizer.eos_id)
    print(tokenizer.decode(np.asarray(out[0]).tolist()))
    return 0


def cmd_checkpoints(args) -> int:
    from jaxlm.checkpoint import checkpoint_dir, dir_size, open_run

    ckpt, latest = open_run(args.run)
    try:
        best = ckpt.best_step()
        print(f"{'step':>8}  {'size':>9}  metrics")
        for step in ckpt.all_steps():
            metrics = ckpt.read_meta(step)["metrics"]
            shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("eval_")) or "-"
            size = dir_size(checkpoint_dir(ckpt.run_dir) / str(step)) / 2**20
            tags = [t for t, s in (("latest", latest), ("best", best)) if s == step]
            print(f"{step:>8}  {size:>7.1f}MB  {shown}{'  (' + ', '.join(tags) + ')' if tags else ''}")
    finally:
        ckpt.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlm", description=__doc__.split("\n")[0].strip("`"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p):
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. trainer.max_steps=100")

    p = sub.add_parser("train", help="train a model from a config (resumes from run.out_dir)")
    with_config(p)
    p.set_defaults(func=cmd_train)

    def which_checkpoint(p):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
        group.add_argument("--best", action="store_true", help="the best checkpoint by checkpoint.best_metric")

    p = sub.add_parser("eval", help="evaluate a checkpoint of a config's run.out_dir")
    with_config(p)
    which_checkpoint(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a trained language model (greedy)")
    p.add_argument("--run", required=True, help="a jaxlm run directory (or one of its checkpoints/N)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    which_checkpoint(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("checkpoints", help="list a run's checkpoints: steps, eval metrics, sizes")
    p.add_argument("run", help="a jaxlm run directory")
    p.set_defaults(func=cmd_checkpoints)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("jax", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax reports routine events as warnings
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JaxlmError as e:
        print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
