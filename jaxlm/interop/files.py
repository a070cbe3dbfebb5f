"""Reading and writing Hugging Face weight files.

Safetensors are read through ``safetensors``' Flax backend (no torch, and bfloat16 works)
and written with its numpy backend; ``pytorch_model.bin`` pickles need torch. Sharded
checkpoints (``*.index.json``) are read shard by shard.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.flax
import safetensors.numpy
from safetensors import SafetensorError

from jaxlm.errors import first_line
from jaxlm.interop.errors import InteropError

SAFETENSORS = "model.safetensors"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS + ".index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_state_dict(directory: Path) -> dict[str, Any]:
    """Every tensor of the checkpoint in ``directory``, by PyTorch key."""
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        raise InteropError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not name.endswith(".index.json"):
        return _read(directory / name)
    try:
        shards = sorted(set(json.loads((directory / name).read_text())["weight_map"].values()))
    except (ValueError, KeyError) as e:
        raise InteropError(f"{directory / name} is not a weight index ({e}): download or export it again") from e
    state = {}
    for shard in shards:
        if not (directory / shard).is_file():
            raise InteropError(f"{directory / name} lists {shard}, which is missing: download it too")
        state.update(_read(directory / shard))
    return state


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    safetensors.numpy.save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        try:
            return safetensors.flax.load_file(path)
        except SafetensorError as e:
            raise InteropError(f"{path} is truncated or corrupt ({e}): download or export it again") from e
    return _read_torch(path)


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise InteropError(f"{path} is a PyTorch pickle and reading it needs torch: pip install 'jaxlm[torch]', "
                           f"or save the model as {SAFETENSORS}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        reason = first_line(e)
        raise InteropError(f"{path} is truncated or corrupt ({reason}): download or export it again") from e
    # numpy has no bfloat16: widen it (exactly) and let the caller cast to the dtype it wants.
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}
