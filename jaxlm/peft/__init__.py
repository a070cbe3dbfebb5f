"""Parameter-efficient fine-tuning: LoRA / QLoRA, bottleneck adapters, prompt tuning, P-tuning and
prefix tuning, all through the one trainer.

A run's ``peft`` section turns its model into a :class:`~jaxlm.peft.model.PeftModel`; the method's
own params (and ``modules_to_save``) are the trainable tree of :mod:`jaxlm.train.trainable`, the
base is the frozen one. :func:`build` is what the trainer calls.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from jaxlm.errors import ConfigError
from jaxlm.layers.adapters import AdapterSpec, Hooks
from jaxlm.models import build_model
from jaxlm.peft import lora
from jaxlm.peft.model import PROMPT_METHODS, PeftModel, PeftSpec, dims

# peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the families jaxlm has.
DEFAULT_TARGETS = {"gpt2": ("c_attn",), "bert": ("query", "value"), "roberta": ("query", "value"),
                   "distilbert": ("q_lin", "v_lin"), "vit": ("query", "value"),
                   "transformer_seq2seq": ("q_proj", "v_proj"), "llama": ("q_proj", "v_proj"),
                   "qwen2": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj")}
# Modules a classification head adds (peft's default modules_to_save: the decoders' is ``score``),
# and output layers all-linear skips.
HEAD_MODULES = {"classification": ("classifier", "score"), "image_classification": ("classifier",),
                "token_classification": ("classifier",), "question_answering": ("qa_outputs",)}
OUTPUT_LAYERS = ("classifier", "score", "qa_outputs", "seq_relationship", "lm_head")
TRANSFORMERS = ("gpt2", "bert", "distilbert", "vit", "transformer_seq2seq")
NEEDS = {"adapter": TRANSFORMERS, "prefix_tuning": ("gpt2", "bert", "distilbert", "vit"),
         "prompt_tuning": ("gpt2", "bert", "distilbert"), "p_tuning": ("gpt2", "bert", "distilbert")}
WHY = {"adapter": "a Transformer's layers", "prefix_tuning": "attention layers of a decoder-only or encoder-only "
       "Transformer", "prompt_tuning": "a Transformer that reads token embeddings",
       "p_tuning": "a Transformer that reads token embeddings"}


def build(config, head: str, dtype, module_kwargs: dict, tokenizer=None) -> tuple[nn.Module, frozenset, frozenset]:
    """The model of a run with a ``peft`` section, the paths of the method's own params (which
    ``model.init_from`` never provides) and the paths it trains (those and ``modules_to_save``)."""
    p, m = config.peft, config.model
    if p.method in NEEDS and m.type not in NEEDS[p.method]:
        raise ConfigError(f"peft.method={p.method} needs {WHY[p.method]}; model.type={m.type} has none (it takes "
                          f"{', '.join(NEEDS[p.method])}): use peft.method=lora or trainer.trainable")
    hooks = Hooks()
    if p.method == "adapter":
        after = ("attention", "feed_forward") if p.kind == "houlsby" else ("feed_forward",)
        hooks = Hooks(AdapterSpec(after, p.reduction_factor,
                                  p.non_linearity or {"houlsby": "swish", "pfeiffer": "relu"}[p.kind]))
    base = build_model(m, head, dtype=dtype, **({"hooks": hooks} if p.method == "adapter" else {}), **module_kwargs)
    plain = build_model(m, head, dtype=dtype, **module_kwargs)
    inputs = m.dummy_inputs()
    save = _modules_to_save(p.modules_to_save, head, plain, inputs)
    model = PeftModel(base, dataclasses.replace(spec(config, head, save, tokenizer), modules_to_save=save))
    base_paths, paths = _param_paths(plain, inputs), _param_paths(model, inputs)
    own = frozenset(paths - base_paths)
    if p.method == "lora" and not own:
        names = ", ".join(dense_modules(plain, inputs))
        raise ConfigError(f"peft.target_modules={p.target_modules!r} matches no dense layer of this model; its dense "
                          f"layers (and embedding tables) are: {names}")
    trained = own | {q for q in paths if lora.matches_name(".".join(q[:-1]), save)}
    return model, own, frozenset(trained)


def spec(config, head: str, save: tuple[str, ...], tokenizer=None) -> PeftSpec:
    """The :class:`PeftSpec` of a config's ``peft`` section."""
    p, m = config.peft, config.model
    if p.method == "lora":
        targets = p.target_modules if p.target_modules is not None else DEFAULT_TARGETS.get(m.type)
        if targets is None:
            raise ConfigError(f"model.type={m.type} has no default LoRA targets: set peft.target_modules (module "
                              "names, a regex, or all-linear)")
        all_linear = isinstance(targets, str) and targets.lower() == "all-linear"  # dense layers, no embeddings
        pattern = targets if isinstance(targets, str) and not all_linear else None
        exclude = save + (OUTPUT_LAYERS if all_linear else ())
        return PeftSpec("lora", lora=lora.LoraSpec(
            p.r, p.alpha, p.dropout, p.use_rslora, names=() if isinstance(targets, str) else tuple(targets),
            pattern=pattern, exclude=exclude, all_linear=all_linear))
    if p.method == "adapter":
        return PeftSpec("adapter")
    if p.method == "prefix_tuning":
        return PeftSpec("prefix_tuning", prefix_tokens=p.num_virtual_tokens, prefix_projection=p.prefix_projection,
                        encoder_hidden_size=p.encoder_hidden_size or 0)
    prompt = p.num_virtual_tokens if p.method == "prompt_tuning" else p.num_prompt_tokens
    encoder = {} if p.method == "prompt_tuning" else dict(
        encoder=p.encoder, encoder_tokens=p.num_virtual_tokens, encoder_hidden_size=p.encoder_hidden_size or 0,
        encoder_num_layers=p.encoder_num_layers, encoder_dropout=p.encoder_dropout)
    return PeftSpec(p.method, prompt_tokens=prompt, init_token_ids=_init_ids(config, prompt, tokenizer), **encoder)


def _init_ids(config, n: int, tokenizer) -> tuple[int, ...] | None:
    """The tokens whose embeddings start the prompt: ``prompt_init_text``'s, repeated or cut to ``n``
    (peft's rule), or ``n`` random vocabulary tokens."""
    p = config.peft
    if not n or p.prompt_init == "random":
        return None
    if p.prompt_init == "sample_vocab":
        return tuple(int(i) for i in np.random.RandomState(config.run.seed).randint(0, config.model.vocab_size, n))
    if tokenizer is None:
        return None  # rebuilding a trained run: its prompt comes from the checkpoint
    ids = tokenizer.encode(p.prompt_init_text)
    if not ids:
        raise ConfigError(f"peft.prompt_init_text={p.prompt_init_text!r} has no tokens; give a text with words")
    return tuple((ids * -(-n // len(ids)))[:n])


def _modules_to_save(names, head: str, model, inputs) -> tuple[str, ...]:
    modules = {".".join(p[:-1]) for p in _param_paths(model, inputs)}
    if names is None:
        return tuple(n for n in HEAD_MODULES.get(head, ()) if any(lora.matches_name(m, [n]) for m in modules))
    for name in names:
        if not any(lora.matches_name(m, [name]) for m in modules):
            raise ConfigError(f"peft.modules_to_save names {name!r}, which is not a module of this model; its modules "
                              f"with params are: {', '.join(sorted(modules)[:12])} ...")
    return tuple(names)


def _param_paths(model, inputs) -> set[tuple[str, ...]]:
    from jaxlm.train.trainable import flat

    return set(flat(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs)["params"])))


def dense_modules(model, inputs) -> list[str]:
    """The dotted paths of a model's dense layers and embedding tables (what ``target_modules`` may name)."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and lora.takes_lora(context.module):
            name = ".".join(context.module.path)
            if name not in seen:
                seen.append(name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))
    return seen


__all__ = ["PeftModel", "PeftSpec", "build", "dense_modules", "dims", "PROMPT_METHODS"]
