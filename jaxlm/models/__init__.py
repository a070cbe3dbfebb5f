"""Model registry: ``type`` in a config -> its config class and one Flax module per head.

A task asks for the head it needs (``causal_lm``, ``masked_lm``, ``classification``, ...)
and the registry answers with the module, so adding a model is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn

from jaxlm.models.base import ModelConfig
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model


@dataclass(frozen=True)
class ModelFamily:
    config: type[ModelConfig]
    heads: dict[str, type[nn.Module]]


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "gpt2": ModelFamily(GPT2Config, {"base": GPT2Model, "causal_lm": GPT2LMHeadModel}),
}


class ModelError(ValueError):
    pass


def build_model(config: ModelConfig, head: str, **module_kwargs) -> nn.Module:
    family = MODEL_FAMILIES[config.type]
    if head not in family.heads:
        raise ModelError(f"model type {config.type!r} has no {head!r} head; it has: "
                         f"{', '.join(sorted(family.heads))}")
    return family.heads[head](config, **module_kwargs)
