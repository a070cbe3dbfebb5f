"""The base of every model config: Hugging Face field names plus a few jaxlm-only fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Fields that are jaxlm's own and never go into an exported config.json.
JAXLM_ONLY_FIELDS = {"type", "init_from", "attention_implementation"}


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    init_from: str | None = None
    """Load params (only) from a jaxlm run or checkpoint directory before training."""
    attention_implementation: Literal["xla", "cudnn"] | None = None
    """Force an attention kernel; ``None`` lets JAX pick (cuDNN flash on GPU when it can)."""

    def hf_dict(self) -> dict:
        """The fields that transformers' config class knows."""
        return self.model_dump(exclude=JAXLM_ONLY_FIELDS)
