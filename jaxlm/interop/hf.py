"""``from_pretrained`` / ``save_pretrained`` for local Hugging Face model directories.

The architecture comes from ``config.json`` (``architectures``, else ``model_type``'s base
model) and is the jaxlm class of the same name; config fields keep their Hugging Face
names, so translating a config is picking the fields jaxlm knows and refusing settings it
does not implement (``TorchKeyMap.fixed``). Classification labels travel as transformers
stores them (``id2label``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import ValidationError

from jaxlm.interop import files, walker
from jaxlm.interop.errors import InteropError
from jaxlm.models import MODEL_FAMILIES, ModelFamily
from jaxlm.models.base import ModelConfig, TransformerVariants

CONFIG = "config.json"


def architectures() -> dict[str, tuple[str, type[nn.Module]]]:
    """transformers architecture name -> (model type, jaxlm class), for every importable model."""
    return {cls.__name__: (model_type, cls) for model_type, family in MODEL_FAMILIES.items()
            if family.torch_keys is not None for cls in family.heads.values()}


def from_pretrained(path: str | os.PathLike, dtype=jnp.float32, *, seed: int = 0, step: int | None = None,
                    best: bool = False, base: str | os.PathLike | None = None, head: str | None = None
                    ) -> tuple[nn.Module, dict]:
    """``(model, params)`` from a Hugging Face directory (``config.json`` + weights), a Hugging Face
    PEFT adapter directory (``adapter_config.json``; its base from ``base_model_name_or_path`` or
    ``base``) or a jaxlm run directory (its latest checkpoint, ``step`` or the ``best``).

    ``params`` are plain arrays of ``dtype``, which is also the model's compute dtype. A head
    the checkpoint lacks is initialised from ``seed`` (and a warning names its weights); ``head``
    (``classification``, ...) asks for another head of the checkpoint's family.
    """
    directory = Path(path)
    if (directory / "checkpoints").is_dir() or (directory.name.isdigit() and directory.parent.name == "checkpoints"):
        from jaxlm.interop.runs import load_run_model

        model, params, _ = load_run_model(directory, step, best)
        return model, params
    if (directory / "adapter_config.json").is_file():
        from jaxlm.peft.interop import from_adapter

        return from_adapter(directory, base, dtype=dtype, seed=seed)
    if not (directory / CONFIG).is_file():
        raise InteropError(f"{directory} has no {CONFIG}: point at a Hugging Face model directory "
                           f"({CONFIG} + {files.SAFETENSORS} or pytorch_model.bin), a PEFT adapter directory "
                           "(adapter_config.json) or a jaxlm run directory")
    try:
        hf = json.loads((directory / CONFIG).read_text())
    except ValueError as e:
        raise InteropError(f"{directory / CONFIG} is not valid JSON ({e}): download or export it again") from e
    model_type, cls = _architecture(hf)
    family = MODEL_FAMILIES[model_type]
    if head is not None and head in family.heads:
        cls = family.heads[head]
    model = cls(config_from_hf(hf, family), dtype=dtype)
    params = walker.params_from_torch(model, files.read_state_dict(directory), family.torch_keys, dtype=dtype,
                                      seed=seed, source=str(directory))
    return model, params


def save_pretrained(model: nn.Module, params, out_dir: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads; returns the directory."""
    name = type(model).__name__
    if name not in architectures():
        raise InteropError(f"{name} has no transformers counterpart; exportable: {', '.join(sorted(architectures()))}")
    changed = model.config.variant_changes() if isinstance(model.config, TransformerVariants) else []
    if changed:
        raise InteropError(f"this {name} uses {', '.join(changed)}, which transformers' {name} does not have; "
                           "only models with the reference layer settings export")
    family = MODEL_FAMILIES[model.config.type]
    tensors = walker.params_to_torch(model, params, family.torch_keys)
    dtype = np.dtype(jax.tree.leaves(nn.meta.unbox(params))[0].dtype).name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files.write_safetensors(out / files.SAFETENSORS, tensors)
    tmp = out / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config_to_hf(model.config, name, dtype), indent=2) + "\n")
    os.replace(tmp, out / CONFIG)
    return out


def config_from_hf(hf: dict, family: ModelFamily) -> ModelConfig:
    """The jaxlm config for a ``config.json`` dict; settings jaxlm does not implement are refused."""
    for key, value in family.torch_keys.fixed.items():
        if hf.get(key, value) != value:
            raise InteropError(f"{CONFIG} sets {key}={hf[key]!r}, which jaxlm does not implement "
                               f"(its {family.config.__name__} supports only {key}={value!r})")
    kwargs = family.config.fields_from_hf(hf)
    if "id2label" in family.config.model_fields and hf.get("id2label"):
        labels = {int(i): label for i, label in hf["id2label"].items()}
        kwargs["num_labels"] = len(labels)
        kwargs["id2label"] = None if labels == default_labels(len(labels)) else labels
    try:
        return family.config(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise InteropError(f"{CONFIG}: {where}={err.get('input')!r} is not supported by jaxlm's "
                           f"{family.config.__name__} ({err['msg']})") from None


def config_to_hf(config: ModelConfig, architecture: str, dtype: str) -> dict:
    """The ``config.json`` dict transformers expects for ``config``."""
    hf = config.hf_dict()
    if "num_labels" in hf:
        n, labels = hf.pop("num_labels"), hf.pop("id2label")
        if not labels or len(labels) != n:
            labels = default_labels(n)
        hf["id2label"] = {str(i): label for i, label in labels.items()}
        hf["label2id"] = {label: i for i, label in labels.items()}
    return {"architectures": [architecture], "model_type": config.type, **hf, "dtype": dtype}


def default_labels(n: int) -> dict[int, str]:
    """transformers' names for labels nobody named."""
    return {i: f"LABEL_{i}" for i in range(n)}


def _architecture(hf: dict) -> tuple[str, type[nn.Module]]:
    known = architectures()
    names = hf.get("architectures") or []
    for name in names:
        if name in known:
            return known[name]
    family = MODEL_FAMILIES.get(hf.get("model_type"))
    if not names and family is not None and family.torch_keys is not None:
        return hf["model_type"], family.heads["base"]
    found = ", ".join(names) or f"model_type {hf.get('model_type')!r}"
    raise InteropError(f"{CONFIG} names {found}, which jaxlm cannot import; supported: {', '.join(sorted(known))}")
