"""What the ``fill-mask`` and ``convert --to-torch`` CLI commands do, as plain functions."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.tokenizer import Tokenizer
from jaxlm.interop.errors import InteropError
from jaxlm.interop.hf import save_pretrained
from jaxlm.models.bert import BertForMaskedLM, BertForPreTraining
from jaxlm.models.distilbert import DistilBertForMaskedLM
from jaxlm.rundir import fresh_output_dir

MASK = "[MASK]"
MASKED_LM = (BertForMaskedLM, BertForPreTraining, DistilBertForMaskedLM)


def fill_mask(model, params, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[tuple[str, float]]:
    """The ``top_k`` most likely tokens for the one ``[MASK]`` in ``text``, with probabilities.

    ``model`` is any masked LM (imported from Hugging Face or trained by jaxlm) and
    ``tokenizer`` its own.
    """
    if not isinstance(model, MASKED_LM):
        raise InteropError(f"this is a {type(model).__name__}; fill-mask needs a masked-LM checkpoint "
                           f"({', '.join(c.__name__ for c in MASKED_LM)})")
    tok = tokenizer.tok
    mask_id = tok.token_to_id(MASK)
    if mask_id is None:
        raise InteropError(f"the tokenizer has no {MASK} token: use the model's own tokenizer files")
    ids = tok.encode(text).ids
    where = [i for i, t in enumerate(ids) if t == mask_id]
    if len(where) != 1:
        raise InteropError(f"fill-mask needs exactly one {MASK} in the text, found {len(where)}")
    logits = model.apply({"params": params}, jnp.asarray([ids], jnp.int32)).logits[0, where[0]]
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32)))
    best = np.argsort(-probs)[:top_k]
    return [(tok.decode([int(i)], skip_special_tokens=False), float(probs[i])) for i in best]


def export_torch(model, params, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None) -> str:
    """Write ``model`` + ``params`` (and ``tokenizer``) as a transformers directory, which appears
    only when complete; returns a line saying what was written."""
    out = Path(out_dir)
    with fresh_output_dir(out) as tmp:
        save_pretrained(model, params, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    files = "config.json + model.safetensors" + (" + tokenizer.json" if tokenizer is not None else "")
    return (f"wrote {type(model).__name__} ({n / 1e6:.1f}M params) to {out}: {files}; "
            f"load it with transformers.{type(model).__name__}.from_pretrained({str(out)!r})")
