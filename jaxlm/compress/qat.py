"""Quantization-aware training (the ``qat:`` config section): the model trains with its dense
layers' weights (per output channel) and inputs (per token) rounded to the integer grid they will
be served on, so it learns to live with the rounding; gradients pass the rounding unchanged (the
straight-through estimator, Bengio et al. 2013; Jacob et al. 2018).

Like :func:`jaxlm.compress.quantize.quantized_model` it is a model whose ``apply`` intercepts the
Dense / DenseGeneral calls: the params stay float32 master weights, the optimizer and checkpoints
are the ordinary ones. ``jaxlm quantize RUN --method int8-dynamic`` then serves exactly the
arithmetic the model trained with (int8 weights and per-token int8 activations).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.compress.quantize import dense_axes, model_subclass

LEVELS = {"int8": 127, "int4": 7}


def fake_quantize(x: jax.Array, reduce_axes: tuple[int, ...], levels: int) -> jax.Array:
    """``x`` rounded to ``levels`` symmetric steps per slice over ``reduce_axes`` (absmax scale),
    with the gradient of the identity (straight-through)."""
    absmax = jnp.max(jnp.abs(jax.lax.stop_gradient(x)), axis=reduce_axes, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / levels, 1.0)
    rounded = jnp.clip(jnp.round(x / scale), -levels, levels) * scale
    return x + jax.lax.stop_gradient(rounded - x)


class _QATApply:
    """Mixed into a model class by :func:`qat_model`; the settings ride on the class."""

    qat_levels = 127
    qat_activations = True

    def apply(self, variables, *args, **kwargs):
        levels, activations = self.qat_levels, self.qat_activations

        def fake_quantized_dense(next_fun, call_args, call_kwargs, context):
            module = context.module
            if not (context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.DenseGeneral))
                    and module.has_variable("params", "kernel")):
                return next_fun(*call_args, **call_kwargs)
            x = call_args[0]
            contract, n_in = dense_axes(module, x)
            kernel = fake_quantize(module.get_variable("params", "kernel"), tuple(range(n_in)), levels)
            if activations:
                x = fake_quantize(x, contract, LEVELS["int8"])
            dtype = module.dtype or x.dtype
            out = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), ((contract, tuple(range(n_in))), ((), ())))
            if module.use_bias:
                out = out + module.get_variable("params", "bias").astype(dtype)
            return out

        with nn.intercept_methods(fake_quantized_dense):
            return super().apply(variables, *args, **kwargs)


def qat_model(model: nn.Module, weights: str = "int8", activations: bool = True) -> nn.Module:
    """``model`` training with fake-quantized dense layers: ``weights`` ``int8`` or ``int4`` per
    output channel, and (``activations``) int8 inputs per token."""
    return model_subclass(model, _QATApply, f"{weights}-{'act' if activations else 'w'}",
                          qat_levels=LEVELS[weights], qat_activations=activations)
