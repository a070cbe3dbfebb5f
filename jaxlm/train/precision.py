"""Mixed precision: compute dtype, parameter dtype, and dynamic loss scaling for float16.

Models compute in ``precision.compute`` (Flax modules cast weights and activations to it)
while the optimizer updates parameters kept in ``precision.params`` (float32 master
weights by default); losses and softmaxes stay in float32. float16 needs the loss scaled up
so small gradients do not flush to zero: the scale halves whenever gradients overflow
(that update is skipped by ``optax.apply_if_finite``) and doubles after ``period`` finite
steps. optax has no loss scaler and jmp is unmaintained, so the few lines live here.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MAX_CONSECUTIVE_SKIPS = 64  # enough halvings to bring any overflowing scale down


@flax.struct.dataclass
class LossScale:
    scale: jax.Array
    finite_steps: jax.Array
    period: int = flax.struct.field(pytree_node=False, default=2000)
    dynamic: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(cls, compute: str, initial: float, period: int) -> "LossScale":
        dynamic = compute == "float16"
        return cls(jnp.asarray(initial if dynamic else 1.0, jnp.float32), jnp.zeros((), jnp.int32), period, dynamic)

    def adjust(self, grads_finite: jax.Array) -> "LossScale":
        if not self.dynamic:
            return self
        grown = self.finite_steps + 1 >= self.period
        scale = jnp.where(grads_finite, jnp.where(grown, self.scale * 2, self.scale), jnp.maximum(self.scale / 2, 1.0))
        steps = jnp.where(grads_finite & ~grown, self.finite_steps + 1, 0)
        return self.replace(scale=scale, finite_steps=steps)


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def skip_nonfinite(tx: optax.GradientTransformationExtraArgs, compute: str):
    """float16 runs skip updates whose gradients overflowed (the loss scale then drops)."""
    return optax.apply_if_finite(tx, MAX_CONSECUTIVE_SKIPS) if compute == "float16" else tx
