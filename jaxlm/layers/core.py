"""Dense, LayerNorm / RMSNorm and Embed factories that attach logical axis names to every parameter.

The axis names (``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ...) are mapped to mesh
axes by the rule table in :mod:`jaxlm.parallel`; layers never mention mesh axes.
"""

from __future__ import annotations

from typing import Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = tuple[str | None, ...]

# Hugging Face activation names (``hidden_act`` / ``activation_function``) -> functions.
ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def normal(std: float, axes: Axes):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def zeros(axes: Axes):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones(axes: Axes):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def dense(
    features: int | Sequence[int],
    kernel_axes: Axes,
    *,
    std: float,
    name: str,
    axis: int | Sequence[int] = -1,
    use_bias: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
) -> nn.DenseGeneral:
    """A DenseGeneral whose kernel has ``kernel_axes`` and whose bias has the output axes."""
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=use_bias,
        kernel_init=normal(std, kernel_axes),
        bias_init=zeros(kernel_axes[-n_out:]),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(eps: float, *, name: str, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        scale_init=ones(("embed",)),
        bias_init=zeros(("embed",)),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def rms_norm(eps: float, *, name: str, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=eps, scale_init=ones(("embed",)), dtype=dtype, param_dtype=param_dtype, name=name)


NormType = Literal["layer_norm", "rms_norm"]


def norm(kind: NormType, eps: float, *, name: str, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.Module:
    """LayerNorm (centre and scale, with a bias) or RMSNorm (scale only), by a model's ``norm_type``."""
    make = layer_norm if kind == "layer_norm" else rms_norm
    return make(eps, name=name, dtype=dtype, param_dtype=param_dtype)


def embed(num: int, features: int, axes: Axes, *, std: float, name: str, dtype=jnp.float32,
          param_dtype=jnp.float32) -> nn.Embed:
    return nn.Embed(num, features, embedding_init=normal(std, axes), dtype=dtype,
                    param_dtype=param_dtype, name=name)


class Dropout(nn.Module):
    """Inverted dropout like ``flax.linen.Dropout``, drawing 16 random bits per element instead of 32.

    One 32-bit threefry word decides two elements, halving the generator's work: on CPU the
    masks over attention probabilities cost as much as the arithmetic at long context (the
    gpt2-small step at 1 x 1024 takes 21 % less time: ``benchmarks/dropout_masks.py``). An
    element is kept iff its 16 bits fall below ``t = round((1 - rate) * 2**16)``, and kept
    values are scaled by ``2**16 / t``, so the output is exactly unbiased and the rate is met
    to within 2**-17. Masks are threefry bits, so a mesh change leaves them unchanged. Written
    here because neither flax nor optax offers a cheaper mask.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0:
            return x
        threshold = round((1.0 - self.rate) * 2**16)
        if threshold == 0:
            return jnp.zeros_like(x)
        *lead, last = x.shape if x.ndim else (1,)
        words = jax.random.bits(self.make_rng(self.rng_collection), (*lead, (last + 1) // 2), jnp.uint32)
        # Element j reads the low (even j) or high (odd j) half of word j // 2: a broadcast and a
        # shift that XLA fuses into the select, where stacking the halves would materialise them.
        shift = jnp.arange(last, dtype=jnp.uint32) % 2 * 16
        halves = (jnp.repeat(words, 2, axis=-1)[..., :last] >> shift) & 0xFFFF
        keep = halves.reshape(x.shape) < threshold
        return jnp.where(keep, x * jnp.asarray(2**16 / threshold, x.dtype), jnp.zeros((), x.dtype))
