"""Hugging Face PEFT adapter directories in and out: LoRA, prompt tuning, P-tuning, prefix tuning.

The format is peft 0.21's (``PeftModel.save_pretrained``, read from its source and checked by
``tests/test_peft_interop.py``): ``adapter_config.json`` and ``adapter_model.safetensors`` with

- LoRA: ``base_model.model.<module>.lora_A.weight`` ``[r, in]`` and ``.lora_B.weight`` ``[out, r]``
  (GPT-2's ``Conv1D`` layers too: peft orients them as ``nn.Linear``; an embedding table's are
  ``.lora_embedding_A`` ``[r, vocab]`` and ``.lora_embedding_B`` ``[dim, r]``), and each of
  ``modules_to_save`` as ``base_model.model.<module>.<weight|bias>``;
- prompt learning: ``prompt_embeddings``, the virtual tokens as the model reads them (for P-tuning
  the encoder's output, for prefix tuning every layer's keys and values ``[n, layers * 2 * width]``),
  and ``modules_to_save`` as ``base_model.<module>.<weight|bias>``.

So a P-tuning or reparameterized prefix adapter imports as its output (prompt tuning / a plain
prefix) and gives peft's outputs exactly; the encoder itself does not travel, in either direction.
Module names are transformers', mapped to jaxlm's through each family's ``TORCH_KEY_MAP``.
Adapters (Houlsby / Pfeiffer) have no format here: AdapterHub's ``adapters`` package pins
transformers releases older than jaxlm's, so they stay jaxlm runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxlm.interop import files, walker
from jaxlm.interop.errors import InteropError
from jaxlm.models import MODEL_FAMILIES, head_of
from jaxlm.peft import lora
from jaxlm.peft.model import PeftModel, PeftSpec, dims
from jaxlm.train.trainable import flat, unflat

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TASK_HEADS = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal_lm", "TOKEN_CLS": "token_classification",
              "QUESTION_ANS": "question_answering", "FEATURE_EXTRACTION": "base"}
PEFT_TYPES = {"lora": "LORA", "prompt_tuning": "PROMPT_TUNING", "p_tuning": "P_TUNING", "prefix_tuning": "PREFIX_TUNING"}


def from_adapter(directory: str | os.PathLike, base: str | os.PathLike | None = None, *, dtype=jnp.float32,
                 seed: int = 0) -> tuple[PeftModel, dict]:
    """``(model, params)`` of a PEFT adapter directory over its base (``base_model_name_or_path``, or ``base``)."""
    from jaxlm.interop.hf import from_pretrained

    directory = Path(directory)
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
    except ValueError as e:
        raise InteropError(f"{directory / ADAPTER_CONFIG} is not valid JSON ({e}): save the adapter again") from None
    kind = config.get("peft_type")
    if kind not in PEFT_TYPES.values():
        raise InteropError(f"{directory} holds a {kind} adapter; jaxlm imports {', '.join(PEFT_TYPES.values())}")
    base = adapter_base(directory, base)
    model, params = from_pretrained(base, dtype, seed=seed, head=TASK_HEADS.get(config.get("task_type")))
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise InteropError(f"{directory} has no {ADAPTER_WEIGHTS}: save the adapter with safe_serialization")
    tensors = safetensors.numpy.load_file(weights)
    names = _module_names(model)
    if kind == "LORA":
        spec, extra = _lora_in(config, tensors, names, model, params, directory)
    else:
        spec, extra = _prompt_in(kind, config, tensors, model, directory)
    saved = _saved_modules(tensors, "base_model.model." if kind == "LORA" else "base_model.", names, model, params,
                           directory)
    params = unflat({**flat(params), **saved, **{p: jnp.asarray(v, dtype) for p, v in extra.items()}})
    modules = tuple(sorted({".".join(p[:-1]) for p in saved}))
    return PeftModel(model, dataclasses.replace(spec, modules_to_save=modules)), params


def adapter_base(directory: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """The base model directory of an adapter: ``base``, else its ``base_model_name_or_path``."""
    from jaxlm.interop.hf import CONFIG

    directory = Path(directory)
    try:
        base = base or json.loads((directory / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except ValueError as e:
        raise InteropError(f"{directory / ADAPTER_CONFIG} is not valid JSON ({e}): save the adapter again") from None
    if not base or not (Path(base) / CONFIG).is_file():
        raise InteropError(f"the adapter's base {str(base)!r} is not a local Hugging Face model directory: pass "
                           "base=DIR (--base DIR) with the model the adapter was trained on")
    return Path(base)


def run_settings(model) -> dict:
    """The config sections that rebuild ``model`` (an imported adapter's ``peft`` section), for ``jaxlm convert``."""
    if not isinstance(model, PeftModel):
        return {}
    spec, save = model.spec, list(model.spec.modules_to_save) or None
    if spec.lora is not None:
        section = {"method": "lora", "r": spec.lora.r, "alpha": spec.lora.alpha, "dropout": spec.lora.dropout,
                   "use_rslora": spec.lora.use_rslora, "target_modules": list(spec.lora.names)}
    elif spec.prefix_tokens:
        section = {"method": "prefix_tuning", "num_virtual_tokens": spec.prefix_tokens}
    else:
        section = {"method": "prompt_tuning", "num_virtual_tokens": spec.prompt_tokens}
    return {"peft": {**section, "modules_to_save": save}}


def _module_names(model) -> dict[str, tuple]:
    """transformers module name -> ``(jaxlm module path, {leaf: Slot})`` for every module with params."""
    key_map = MODEL_FAMILIES[model.config.type].torch_keys
    out: dict[str, tuple] = {}
    for slot in walker.slots(walker.param_shapes(model), key_map):
        module, leaf = slot.key.rsplit(".", 1)
        out.setdefault(module, (slot.path[:-1], {}))[1][leaf] = slot
    return out


def _in_out(slots: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A kernel's input and output axes (a bias has the output axes)."""
    kernel = slots["weight"].shape
    n_out = len(slots["bias"].shape) if "bias" in slots else 1
    return kernel[:len(kernel) - n_out], kernel[len(kernel) - n_out:]


def _lora_in(config, tensors, names, model, params, directory):
    for key in ("use_dora", "lora_bias"):
        if config.get(key):
            raise InteropError(f"{directory}: {key}=true is not implemented in jaxlm's LoRA")
    if config.get("bias", "none") != "none" or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise InteropError(f"{directory}: bias, rank_pattern and alpha_pattern are not implemented in jaxlm's LoRA")
    prefix, extra, modules = "base_model.model.", {}, []
    for key, value in tensors.items():
        if ".lora_" not in key:
            continue
        module, part = key.removeprefix(prefix).rsplit(".lora_", 1)
        part = part.removeprefix("embedding_")  # an embedding table's lora_embedding_A [r, vocab] / _B [dim, r]
        if module not in names:
            raise InteropError(f"{directory}: {key} names {module}, which the base model does not have; its modules "
                               f"are like {', '.join(list(names)[:6])}: use the base the adapter was trained on")
        path, slots = names[module]
        ins, outs = _in_out(slots)
        want = (config["r"], math.prod(ins)) if part.startswith("A") else (math.prod(outs), config["r"])
        if tuple(value.shape) != want:
            raise InteropError(f"the adapter does not fit its base: {key} is {tuple(value.shape)} but {module} of the "
                               f"base needs {want} (r={config['r']}, {math.prod(ins)} in, {math.prod(outs)} out)")
        if part.startswith("A"):
            extra[(*path, "lora_A")] = value.T.reshape(*ins, config["r"])
            modules.append(".".join(path))
        else:
            extra[(*path, "lora_B")] = value.T.reshape(config["r"], *outs)
    if not modules:
        raise InteropError(f"{directory}/{ADAPTER_WEIGHTS} holds no lora_A / lora_B weights")
    spec = lora.LoraSpec(config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                         config.get("use_rslora", False), names=tuple(sorted(modules)))
    return PeftSpec("lora", lora=spec), extra


def _prompt_in(kind, config, tensors, model, directory):
    if "prompt_embeddings" not in tensors:
        raise InteropError(f"{directory}/{ADAPTER_WEIGHTS} has no prompt_embeddings")
    value, n, d = tensors["prompt_embeddings"], config["num_virtual_tokens"], dims(model.config)
    if kind == "PREFIX_TUNING":
        want = (n, d["layers"] * 2 * d["kv_heads"] * d["head_dim"])
        spec, path = PeftSpec("prefix_tuning", prefix_tokens=n), ("prefix_encoder", "embedding")
    else:
        want = (n, d["width"])
        spec, path = PeftSpec("prompt_tuning", prompt_tokens=n), ("prompt_embeddings",)
    if tuple(value.shape) != want:
        raise InteropError(f"the adapter does not fit its base: prompt_embeddings is {tuple(value.shape)} but the base "
                           f"({d['layers']} layers of width {d['width']}) needs {want}")
    return spec, {path: value}


def _saved_modules(tensors, prefix, names, model, params, directory) -> dict:
    """``modules_to_save`` weights of the adapter, as jaxlm params (shapes checked)."""
    out, current = {}, flat(params)
    for key, value in tensors.items():
        if not key.startswith(prefix) or ".lora_" in key:
            continue
        module, leaf = key.removeprefix(prefix).rsplit(".", 1)
        if module not in names or leaf not in names[module][1]:
            raise InteropError(f"{directory}: {key} is not a weight of the base model")
        slot = names[module][1][leaf]
        if tuple(value.shape) != slot.torch_shape:
            raise InteropError(f"the adapter does not fit its base: {key} is {tuple(value.shape)} but the base's is "
                               f"{slot.torch_shape}")
        out[slot.path] = jnp.asarray(slot.to_jax(value), current[slot.path].dtype)
    return out


def to_adapter(model: PeftModel, params, out_dir: str | os.PathLike, tokenizer=None, base_name: str = "base") -> Path:
    """Write ``model``'s method as a PEFT adapter directory, and its base (the frozen params the run
    used, with any head it initialised, and ``tokenizer``) in ``out_dir/base_name`` for
    ``PeftModel.from_pretrained``; the directory appears only when complete."""
    from jaxlm.interop.hf import save_pretrained
    from jaxlm.rundir import fresh_output_dir

    spec = model.spec
    if spec.method not in PEFT_TYPES:
        raise InteropError(f"peft.method={spec.method} has no Hugging Face PEFT format (AdapterHub's adapters package "
                           "does not install with jaxlm's transformers); keep it as a jaxlm run")
    base = model.base
    base_paths = set(flat(walker.param_shapes(base)))
    everything = flat(params)
    base_params = unflat({p: v for p, v in everything.items() if p in base_paths})
    names = {path: (module, slots) for module, (path, slots) in _module_names(base).items()}
    tensors, saved = {}, []
    prefix = "base_model.model." if spec.method == "lora" else "base_model."
    for path, (module, slots) in names.items():
        if lora.matches_name(".".join(path), spec.modules_to_save):
            saved.append(module)
            for leaf, slot in slots.items():
                tensors[f"{prefix}{module}.{leaf}"] = slot.to_torch(np.asarray(everything[slot.path]))
    if spec.method == "lora":
        targets = []
        for path, (module, slots) in names.items():
            if (*path, "lora_A") in everything:
                ins, outs = _in_out(slots)
                a, b = (np.asarray(everything[(*path, k)], np.float32) for k in ("lora_A", "lora_B"))
                a, b = a.reshape(math.prod(ins), -1).T, b.reshape(-1, math.prod(outs)).T
                names_ab = ("lora_embedding_A", "lora_embedding_B") if (*path, "embedding") in everything else \
                    ("lora_A.weight", "lora_B.weight")
                tensors[f"{prefix}{module}.{names_ab[0]}"], tensors[f"{prefix}{module}.{names_ab[1]}"] = a, b
                targets.append(module)
        config = _lora_config(spec.lora, targets, model)
    else:
        tensors["prompt_embeddings"] = np.asarray(prompt_embeddings(model, params), np.float32)
        config = _prompt_config(model, tensors["prompt_embeddings"].shape[0])
    out = Path(out_dir)
    config.update(base_model_name_or_path=str((out / base_name).absolute()), modules_to_save=list(saved) or None,
                  task_type=_task_type(model), inference_mode=True, revision=None)
    with fresh_output_dir(out) as tmp:
        save_pretrained(base, base_params, tmp / base_name)
        if tokenizer is not None:
            tokenizer.save(tmp / base_name)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        files.write_safetensors(tmp / ADAPTER_WEIGHTS, {k: np.ascontiguousarray(v, np.float32)
                                                        for k, v in tensors.items()})
    return out


def prompt_embeddings(model: PeftModel, params) -> np.ndarray:
    """What peft saves as ``prompt_embeddings``: the virtual tokens, or the flat per-layer prefix."""
    if model.spec.prefix_tokens:
        prefix = model.apply({"params": params}, method=lambda m: m.prefix_encoder())  # [layers, 2, n, heads, dim]
        return np.asarray(prefix).transpose(2, 0, 1, 3, 4).reshape(prefix.shape[2], -1)
    return np.asarray(model.apply({"params": params}, True, method=PeftModel.virtual_tokens))


def _task_type(model) -> str | None:
    return {v: k for k, v in TASK_HEADS.items()}.get(head_of(model))


def _lora_config(spec: lora.LoraSpec, targets: list[str], model) -> dict:
    return {"peft_type": "LORA", "r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "use_rslora": spec.use_rslora, "target_modules": sorted(targets), "bias": "none",
            "fan_in_fan_out": MODEL_FAMILIES[model.config.type].torch_keys.conv1d, "init_lora_weights": True}


def _prompt_config(model: PeftModel, n: int) -> dict:
    d, spec = dims(model.config), model.spec
    kind = "PREFIX_TUNING" if spec.prefix_tokens else "P_TUNING" if spec.encoder and not spec.prompt_tokens \
        else "PROMPT_TUNING"
    config = {"peft_type": kind, "num_virtual_tokens": n, "token_dim": d["width"], "num_transformer_submodules": 1,
              "num_attention_heads": d["heads"], "num_layers": d["layers"]}
    if kind == "PREFIX_TUNING":
        config.update(prefix_projection=False, encoder_hidden_size=d["width"])
    elif kind == "P_TUNING":
        config.update(encoder_reparameterization_type=spec.encoder.upper(),
                      encoder_hidden_size=spec.encoder_hidden_size or d["width"], encoder_num_layers=2,
                      encoder_dropout=0.0)
    else:
        config.update(prompt_tuning_init="RANDOM")
    return config
