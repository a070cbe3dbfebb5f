"""PyTorch / Hugging Face interop: load transformers checkpoints into jaxlm models and back.

``from_pretrained(dir)`` reads ``config.json`` + ``model.safetensors`` (no torch needed) or
``pytorch_model.bin`` (torch needed); ``save_pretrained(model, params, dir)`` writes files
that ``transformers`` loads. The per-model key maps live next to the models
(``TORCH_KEY_MAP`` in :mod:`jaxlm.models.gpt2`, ``.bert``, ``.distilbert``).
"""

from jaxlm.interop.errors import InteropError
from jaxlm.interop.hf import from_pretrained, save_pretrained

__all__ = ["InteropError", "from_pretrained", "save_pretrained"]
