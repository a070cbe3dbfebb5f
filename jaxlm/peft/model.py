"""A model with a parameter-efficient method: :class:`PeftModel` wraps any jaxlm model.

The wrapper shares its base's scope (``nn.share_scope``), so the base's params keep their names
(a base checkpoint loads as it is) and the method's own params sit beside them:

- LoRA: ``lora_A`` / ``lora_B`` next to each target's ``kernel`` (:mod:`jaxlm.peft.lora`);
- adapters: ``{attention,feed_forward}_adapter`` in each layer (the base is built with those hooks);
- prompt tuning / P-tuning: ``prompt_embeddings`` and / or ``prompt_encoder``, whose virtual tokens
  are put before the input's word embeddings (``inputs_embeds``; the attention mask gets ones, the
  token types zeros, and the outputs of token-level heads lose those positions again, so a task's
  loss is unchanged);
- prefix tuning: ``prefix_encoder``, whose keys / values go before every layer's (``kv_prefix``;
  the text's positions start after them, as transformers counts a cache).

Decoding (:mod:`jaxlm.generation`) keeps the virtual tokens' or the prefix's keys / values in the
cache's first ``cache_offset`` slots: :meth:`PeftModel.prime_cache` writes the virtual tokens
before the prompt; the prefix is written by the attention itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.peft import lora
from jaxlm.peft.prompts import PrefixEncoder, PromptEncoder

PROMPT_METHODS = ("prompt_tuning", "p_tuning")
TOKEN_HEADS = ("base", "causal_lm", "masked_lm", "pretraining", "token_classification", "question_answering")
TEXT_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass(frozen=True)
class PeftSpec:
    """Everything about a method that shapes the wrapped model (hashable: jit treats models as static)."""

    method: str
    lora: lora.LoraSpec | None = None
    prompt_tokens: int = 0
    """Plain trained virtual tokens (prompt tuning; the first part of the combination with P-tuning)."""
    encoder: str | None = None
    """P-tuning's encoder (``mlp`` / ``lstm``) of ``encoder_tokens`` virtual tokens."""
    encoder_tokens: int = 0
    encoder_hidden_size: int = 0
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0
    prefix_tokens: int = 0
    prefix_projection: bool = False
    init_token_ids: tuple[int, ...] | None = None
    """Prompt tokens start as these tokens' word embeddings (after the base's weights are loaded)."""
    modules_to_save: tuple[str, ...] = ()
    """Modules of the base trained in full (their dotted paths' last parts)."""

    @property
    def virtual_tokens(self) -> int:
        return self.prompt_tokens + self.encoder_tokens


def dims(config) -> dict[str, int]:
    """Width, layers, heads, key / value heads and head size of a Transformer config."""
    get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
    width = get("n_embd", "hidden_size", "dim", "d_model")
    heads = get("n_head", "num_attention_heads", "n_heads", "encoder_attention_heads")
    return {"width": width, "layers": get("n_layer", "num_hidden_layers", "n_layers", "encoder_layers"),
            "heads": heads, "kv_heads": getattr(config, "num_kv_heads", None) or heads, "head_dim": width // heads}


def word_table_path(params) -> tuple[str, ...]:
    """Where a text model keeps its word embeddings (``transformer/wte``, ``bert/embeddings/word_embeddings``)."""
    from jaxlm.train.trainable import flat

    for path in flat(params):
        if path[-1] == "embedding" and path[-2] in ("wte", "word_embeddings"):
            return path
    raise ValueError("this model has no word embedding table")


class PeftModel(nn.Module):
    base: nn.Module
    spec: PeftSpec

    def setup(self):
        nn.share_scope(self, self.base)
        s, d = self.spec, dims(self.base.config) if self.spec.method != "lora" else {}
        if s.prompt_tokens:
            self.prompt_embeddings = self.param("prompt_embeddings", nn.initializers.normal(1.0),
                                                (s.prompt_tokens, d["width"]))
        if s.encoder:
            self.prompt_encoder = PromptEncoder(s.encoder_tokens, d["width"], s.encoder_hidden_size or d["width"],
                                                s.encoder, s.encoder_num_layers, s.encoder_dropout)
        if s.prefix_tokens:
            self.prefix_encoder = PrefixEncoder(s.prefix_tokens, d["layers"], d["kv_heads"], d["head_dim"],
                                                d["width"], s.prefix_projection, s.encoder_hidden_size or d["width"])

    @property
    def config(self):
        return self.base.config

    @property
    def cache_offset(self) -> int:
        """Cache slots that decoding fills before the prompt: the virtual tokens or the prefix."""
        return self.spec.virtual_tokens + self.spec.prefix_tokens

    def __call__(self, *args, **kwargs):
        with self._methods():
            if self.spec.virtual_tokens:
                return self._prompted(**_named(args, kwargs))
            if self.spec.prefix_tokens:
                return self._prefixed(*args, **kwargs)
            return self.base(*args, **kwargs)

    def encode(self, *args, **kwargs):
        with self._methods():
            return self.base.encode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        with self._methods():
            return self.base.decode(*args, **kwargs)

    def prime_cache(self, rows: int, total: int):
        """Decoding: write the virtual tokens' keys / values into an empty cache of ``total`` token slots
        (the prefix of prefix tuning is written by the attention itself)."""
        n = self.spec.virtual_tokens
        if not n:
            return None
        with self._methods():
            self.base(inputs_embeds=jnp.broadcast_to(self.virtual_tokens(True), (rows, n, dims(self.config)["width"])),
                      attention_mask=jnp.ones((rows, n + total), jnp.int32),
                      position_ids=jnp.broadcast_to(jnp.arange(n), (rows, n)), decode=True)
        return None

    def start_prompt(self, params) -> dict:
        """``params`` with the prompt tokens set to the word embeddings of ``spec.init_token_ids``
        (called on the full params once the base's weights are loaded; not an apply method)."""
        ids = self.spec.init_token_ids
        if not ids or not self.spec.prompt_tokens:
            return params
        table = _at(params, word_table_path(params))
        prompt = jnp.take(table, jnp.asarray(ids), axis=0).astype(params["prompt_embeddings"].dtype)
        return {**params, "prompt_embeddings": prompt}

    def virtual_tokens(self, deterministic: bool) -> jax.Array:
        """``[n, width]``: the prompt tokens, then the encoder's."""
        parts = []
        if self.spec.prompt_tokens:
            parts.append(self.prompt_embeddings)
        if self.spec.encoder:
            parts.append(self.prompt_encoder(deterministic))
        return jnp.concatenate(parts, axis=0)

    def _methods(self):
        return nn.intercept_methods(lora.interceptor(self.spec.lora)) if self.spec.lora else contextlib.nullcontext()

    def _prompted(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, decode=False,
                  masked_positions=None, **rest):
        n = self.spec.virtual_tokens
        rows, length = input_ids.shape
        if self.is_initializing():  # the base's params (its word table) first, at the prompted length (that of
            # the adversarial hook's perturbation); no cache yet, it needs the n slots
            self.base(jnp.zeros((rows, n + length), input_ids.dtype), **rest)
        table = nn.meta.unbox(_at(self.variables["params"], word_table_path(self.variables["params"])))
        embeds = jnp.take(table, input_ids, axis=0)
        starts = not decode or self.is_initializing()  # decoding after prime_cache: they are in the cache
        if attention_mask is not None:
            attention_mask = jnp.concatenate([jnp.ones((rows, n), attention_mask.dtype), attention_mask], axis=1)
        if starts:
            virtual = self.virtual_tokens(not self.has_rng("dropout")).astype(embeds.dtype)
            embeds = jnp.concatenate([jnp.broadcast_to(virtual, (rows, *virtual.shape)), embeds], axis=1)
            if token_type_ids is not None:
                token_type_ids = jnp.concatenate([jnp.zeros((rows, n), token_type_ids.dtype), token_type_ids], 1)
            if position_ids is not None:
                position_ids = jnp.concatenate([jnp.broadcast_to(jnp.arange(n), (rows, n)), position_ids + n], 1)
            if masked_positions is not None:
                masked_positions = masked_positions + n
        elif position_ids is not None:
            position_ids = position_ids + n
        kw = {k: v for k, v in dict(token_type_ids=token_type_ids, position_ids=position_ids,
                                     masked_positions=masked_positions).items() if v is not None}
        out = self.base(inputs_embeds=embeds, attention_mask=attention_mask, **kw,
                        **({"decode": decode} if decode else {}), **rest)
        if starts and masked_positions is None and _head(self.base) in TOKEN_HEADS:
            out = _drop_positions(out, n)
        return out

    def _prefixed(self, *args, **kwargs):
        n, prefix = self.spec.prefix_tokens, self.prefix_encoder()
        if "pixel_values" in kwargs or (args and args[0].ndim == 4):  # ViT: no mask, no positions
            first = args[0] if args else kwargs["pixel_values"]
            return self.base(*args, kv_prefix=_batched(prefix, first.shape[0]), **kwargs)
        kw = _named(args, kwargs)
        rows, length = kw["input_ids"].shape
        if kw.get("attention_mask") is not None:
            mask = kw["attention_mask"]
            kw["attention_mask"] = jnp.concatenate([jnp.ones((rows, n), mask.dtype), mask], axis=1)
        positions = kw.get("position_ids")
        kw["position_ids"] = n + (jnp.broadcast_to(jnp.arange(length), (rows, length)) if positions is None
                                  else positions)
        return self.base(**kw, kv_prefix=_batched(prefix, rows))


def _named(args, kwargs) -> dict:
    """A text model's positional arguments by name."""
    return {**dict(zip(TEXT_ARGS, args)), **kwargs}


def _at(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _batched(prefix, rows: int):
    """``[layers, 2, n, kv_heads, head_dim]`` -> ``[layers, 2, rows, n, kv_heads, head_dim]``."""
    return jnp.broadcast_to(prefix[:, :, None], (*prefix.shape[:2], rows, *prefix.shape[2:]))


def _head(model) -> str:
    from jaxlm.models import head_of

    return head_of(model)


def _drop_positions(out: Any, n: int):
    """A model output without its first ``n`` sequence positions (the virtual tokens)."""
    cut = lambda x: None if x is None else x[:, n:]  # noqa: E731
    extra = {k: cut(v) if k in ("prediction_logits", "start_logits", "end_logits") else v
             for k, v in out.extra.items()}
    return out.replace(logits=cut(out.logits), last_hidden_state=cut(out.last_hidden_state),
                       hidden_states=None if out.hidden_states is None else tuple(map(cut, out.hidden_states)),
                       extra=extra)
