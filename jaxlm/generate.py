"""Decoding with a preallocated KV cache: one jit-compiled prefill + token loop.

Prompts are left-padded (``attention_mask`` 0 on the left); positions count real tokens
only, so a padded prompt decodes exactly like the same prompt unpadded.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxlm.errors import JaxlmError


def init_cache(model, batch: int, length: int):
    """A zeroed KV cache for ``length`` total tokens (prompt + new)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((batch, length), jnp.int32),
                                               decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _greedy(model, params, input_ids, attention_mask, max_new_tokens: int, eos_token_id, pad_token_id):
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    mask = jnp.concatenate([attention_mask, jnp.ones((batch, max_new_tokens), attention_mask.dtype)], axis=1)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    out, vars_ = model.apply({"params": params, "cache": init_cache(model, batch, total)}, input_ids,
                             attention_mask=mask, position_ids=positions, decode=True, mutable=["cache"])
    next_token = jnp.argmax(out.logits[:, -1], axis=-1).astype(input_ids.dtype)
    tokens = jnp.concatenate([input_ids, jnp.full((batch, max_new_tokens), pad_token_id, input_ids.dtype)], 1)
    done = jnp.zeros((batch,), bool)

    def body(i, carry):
        tokens, token, cache, done, pos = carry
        token = jnp.where(done, pad_token_id, token)
        tokens = tokens.at[:, prompt_len + i].set(token)
        done = done | (token == eos_token_id)
        out, v = model.apply({"params": params, "cache": cache}, token[:, None], attention_mask=mask,
                             position_ids=pos[:, None], decode=True, mutable=["cache"])
        token = jnp.argmax(out.logits[:, -1], axis=-1).astype(tokens.dtype)
        return tokens, token, v["cache"], done, pos + 1

    last_pos = positions[:, -1] + 1
    tokens, *_ = jax.lax.fori_loop(0, max_new_tokens, body, (tokens, next_token, vars_["cache"], done, last_pos))
    return tokens


def generate(model, params, input_ids, attention_mask=None, *, max_new_tokens: int = 32,
             eos_token_id: int | None = None, pad_token_id: int = 0) -> jax.Array:
    """Greedy decoding: ``[batch, prompt]`` -> ``[batch, prompt + max_new_tokens]``.

    After a sequence emits ``eos_token_id`` the rest of its row is ``pad_token_id``.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    limit = model.config.max_positions
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise JaxlmError(f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's {limit} positions; shorten the prompt or lower --max-new-tokens")
    eos = -1 if eos_token_id is None else eos_token_id
    return _greedy(model, params, input_ids, jnp.asarray(attention_mask, jnp.int32), max_new_tokens, eos,
                   pad_token_id)
