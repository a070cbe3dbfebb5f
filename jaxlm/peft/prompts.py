"""The trained virtual tokens of prompt tuning and P-tuning, and the key / value prefixes of prefix tuning.

Shapes and initialisations follow Hugging Face peft's ``PromptEmbedding``, ``PromptEncoder`` and
``PrefixEncoder`` (embeddings start as ``torch.nn.Embedding``'s N(0, 1), dense layers as
``torch.nn.Linear``'s), so a run trains like its peft counterpart; peft stores only their outputs
(``prompt_embeddings``), which is what jaxlm exports and imports.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.core import Dropout


def torch_linear(features: int, name: str, fan_in: int) -> nn.Dense:
    """``nn.Dense`` initialised as ``torch.nn.Linear``: weights and bias uniform in ±1/sqrt(fan_in)."""
    bound = 1 / math.sqrt(fan_in)

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.Dense(features, kernel_init=uniform, bias_init=uniform, name=name)


class PromptEncoder(nn.Module):
    """P-tuning's encoder: ``n`` trained embeddings through an MLP (width -> hidden -> hidden -> width,
    ReLUs between) or a bidirectional LSTM (``num_layers``, ``hidden`` per direction) and an MLP
    (2 hidden -> 2 hidden -> width): the ``[n, width]`` virtual tokens."""

    n: int
    width: int
    hidden: int
    kind: str = "mlp"
    num_layers: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, deterministic: bool = True):
        x = self.param("embedding", nn.initializers.normal(1.0), (self.n, self.width))
        if self.kind == "mlp":
            h = nn.relu(torch_linear(self.hidden, "mlp_head_0", self.width)(x))
            h = nn.relu(torch_linear(self.hidden, "mlp_head_1", self.hidden)(h))
            return torch_linear(self.width, "mlp_head_2", self.hidden)(h)
        h = x[None]
        for i in range(self.num_layers):
            if i:
                h = Dropout(self.dropout)(h, deterministic=deterministic)
            h = nn.Bidirectional(nn.RNN(nn.LSTMCell(self.hidden), name=f"lstm_{i}_forward"),
                                 nn.RNN(nn.LSTMCell(self.hidden), name=f"lstm_{i}_backward"), name=f"lstm_{i}")(h)
        h = nn.relu(torch_linear(2 * self.hidden, "mlp_head_0", 2 * self.hidden)(h[0]))
        return torch_linear(self.width, "mlp_head_1", 2 * self.hidden)(h)


class PrefixEncoder(nn.Module):
    """Prefix tuning's keys and values, ``[layers, 2, n, kv_heads, head_dim]``: one trained embedding of
    every layer's keys and values per virtual token (peft's ``[n, layers * 2 * width]`` layout), or,
    with ``projection``, an embedding of ``width`` through ``Linear(hidden)``, tanh, ``Linear(layers * 2
    * width)`` (the reparameterization of Li & Liang)."""

    n: int
    layers: int
    kv_heads: int
    head_dim: int
    width: int
    projection: bool = False
    hidden: int = 0

    @nn.compact
    def __call__(self):
        out = self.layers * 2 * self.kv_heads * self.head_dim
        if self.projection:
            x = self.param("embedding", nn.initializers.normal(1.0), (self.n, self.width))
            h = jnp.tanh(torch_linear(self.hidden, "transform_0", self.width)(x))
            flat = torch_linear(out, "transform_1", self.hidden)(h)
        else:
            flat = self.param("embedding", nn.initializers.normal(1.0), (self.n, out))
        return flat.reshape(self.n, self.layers, 2, self.kv_heads, self.head_dim).transpose(1, 2, 0, 3, 4)
