"""Pruning: which weights to zero (masks), when (schedules), and how training keeps them zero.

Masks (:func:`compute_masks`), each matching ``torch.nn.utils.prune``'s choice on the same weights:

* ``magnitude``: the fraction ``sparsity`` of smallest |w| (L1 unstructured), per layer or ``global``
  over all targeted weights (``global_unstructured``);
* ``random``: the same count, chosen at random (``random_unstructured``): the top of uniform scores;
* ``structured``: whole output neurons / channels / filters with the smallest L2 norm over their
  inputs (``ln_structured(n=2, dim=0)``; for a conv kernel ``HWIO`` a filter is one ``O``);
* ``n_m``: in every group of ``m`` consecutive input weights of an output, keep the ``n`` largest
  (2:4 is the pattern sparse tensor cores run).

Schedules: ``one_shot`` at ``start_step``, or ``gradual`` (Zhu & Gupta 2017): sparsity rises from
``initial_sparsity`` to ``sparsity`` as ``s_f + (s_i - s_f)(1 - (t - t0) / (t1 - t0))^3``, masks
recomputed every ``frequency`` steps from the (masked) weights, so pruned weights stay pruned.

Training (:func:`prune_optimizer`) follows jaxpruner's ``wrap_optax`` (jaxpruner itself is not on
PyPI): the optimizer is wrapped, the masks live in its state (checkpointed with it, so a resumed
run continues exactly), and every update is rewritten so that ``params + update`` is masked.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxlm.compress.quantize import kernel_reduce_axes
from jaxlm.errors import ConfigError


class PruneState(NamedTuple):
    """The wrapped optimizer's state plus the masks (True = kept; a scalar True for weights that
    are not pruned), the number of updates done, and the key random masks are drawn from."""

    inner: Any
    masks: Any
    count: jax.Array
    key: jax.Array


def target_paths(params, pattern: str) -> list[tuple[str, ...]]:
    """Paths of the floating weights with two or more axes whose ``a/b/kernel`` name matches ``pattern``."""
    regex = re.compile(pattern)
    return [p for p, x in traverse_util.flatten_dict(params).items()
            if jnp.issubdtype(x.dtype, jnp.floating) and np.ndim(x) >= 2 and regex.search("/".join(p))]


def prune_count(sparsity, n: int):
    """How many of ``n`` weights to prune: ``round(sparsity * n)``, half to even as torch's ``round``."""
    return jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)


def keep_largest(scores: jax.Array, n_pruned) -> jax.Array:
    """True except at the ``n_pruned`` smallest ``scores`` (ties: the earlier position goes first)."""
    flat = scores.reshape(-1)
    rank = jnp.zeros(flat.shape, jnp.int32).at[jnp.argsort(flat, stable=True)].set(jnp.arange(flat.size,
                                                                                              dtype=jnp.int32))
    return (rank >= n_pruned).reshape(scores.shape)


def output_axes(path: tuple[str, ...], x, flat: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(input axes, output axes)`` of a weight (see :func:`kernel_reduce_axes`)."""
    bias = flat.get((*path[:-1], "bias"))
    inputs = kernel_reduce_axes(path[-1], x.shape, None if bias is None else np.ndim(bias))
    return inputs, tuple(a for a in range(np.ndim(x)) if a not in inputs)


def n_m_mask(w: jax.Array, inputs: tuple[int, ...], n: int, m: int, name: str) -> jax.Array:
    """Keep the ``n`` largest |w| of every ``m`` consecutive inputs of each output."""
    n_in = math.prod(w.shape[a] for a in inputs)
    if n_in % m:
        raise ConfigError(f"prune.m={m} does not divide the {n_in} inputs of {name} {tuple(w.shape)}; choose an m "
                          f"that divides it or leave {name} out of prune.targets")
    order = inputs + tuple(a for a in range(w.ndim) if a not in inputs)
    moved = jnp.transpose(jnp.abs(w), order)
    groups = moved.reshape(n_in // m, m, -1)
    rank = jnp.argsort(jnp.argsort(-groups, axis=1, stable=True), axis=1)  # 0 = largest in its group
    keep = (rank < n).reshape(moved.shape)
    return jnp.transpose(keep, np.argsort(order))


def compute_masks(params, cfg, sparsity, key: jax.Array, current=None) -> Any:
    """Masks for ``params`` under a ``prune:`` config at ``sparsity`` (``current``: masks already
    held, whose pruned weights count as zero)."""
    flat = traverse_util.flatten_dict(params)
    old = traverse_util.flatten_dict(current) if current is not None else {}
    targets = target_paths(params, cfg.targets)
    if not targets:
        raise ConfigError(f"prune.targets={cfg.targets!r} matches no weight of this model; the weights are named "
                          f"like {'/'.join(next(iter(flat)))}")
    masks = {p: jnp.ones((), bool) for p in flat}

    def weights(p):
        return flat[p] * old[p] if p in old else flat[p]

    if cfg.method in ("magnitude", "random"):
        def scores(i, p):
            if cfg.method == "random":
                return jax.random.uniform(jax.random.fold_in(key, i), flat[p].shape)
            return jnp.abs(weights(p)).astype(jnp.float32)

        if cfg.scope == "global":
            joined = jnp.concatenate([scores(i, p).reshape(-1) for i, p in enumerate(targets)])
            keep = keep_largest(joined, prune_count(sparsity, joined.size))
            start = 0
            for p in targets:
                masks[p] = keep[start:start + flat[p].size].reshape(flat[p].shape)
                start += flat[p].size
        else:
            for i, p in enumerate(targets):
                masks[p] = keep_largest(scores(i, p), prune_count(sparsity, flat[p].size))
    elif cfg.method == "structured":
        for p in targets:
            inputs, outputs = output_axes(p, flat[p], flat)
            norms = jnp.sqrt(jnp.sum(jnp.square(weights(p).astype(jnp.float32)), axis=inputs, keepdims=True))
            n_channels = math.prod(flat[p].shape[a] for a in outputs)
            masks[p] = jnp.broadcast_to(keep_largest(norms, prune_count(sparsity, n_channels)), flat[p].shape)
    else:
        for p in targets:
            inputs, _ = output_axes(p, flat[p], flat)
            masks[p] = n_m_mask(weights(p), inputs, cfg.n, cfg.m, "/".join(p))
    return traverse_util.unflatten_dict(masks)


def sparsity_at(cfg, t, max_steps: int):
    """The target sparsity after ``t`` updates (Zhu & Gupta's cubic ramp for ``gradual``)."""
    if cfg.method == "n_m":
        return jnp.asarray(1 - cfg.n / cfg.m, jnp.float32)
    if cfg.schedule == "one_shot":
        return jnp.where(t >= cfg.start_step, cfg.sparsity, 0.0)
    end = cfg.end_step or max_steps
    progress = jnp.clip((t - cfg.start_step) / max(end - cfg.start_step, 1), 0.0, 1.0)
    ramp = cfg.sparsity + (cfg.initial_sparsity - cfg.sparsity) * (1 - progress) ** cfg.power
    return jnp.where(t < cfg.start_step, 0.0, ramp)


def is_update_step(cfg, t, max_steps: int):
    """Whether the masks are recomputed after update ``t`` (``t = 0``: at initialisation)."""
    if cfg.schedule == "one_shot" or cfg.method == "n_m":
        return t == cfg.start_step
    end = cfg.end_step or max_steps
    return (t >= cfg.start_step) & (t <= end) & (((t - cfg.start_step) % cfg.frequency == 0) | (t == end))


def apply_masks(params, masks):
    return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, masks)


def prune_optimizer(tx: optax.GradientTransformationExtraArgs, cfg, max_steps: int, seed: int
                    ) -> optax.GradientTransformationExtraArgs:
    """``tx`` with pruning masks held in its state and applied after every update."""

    def masks_for(params, t, masks, key):
        def recompute():
            return compute_masks(params, cfg, sparsity_at(cfg, t, max_steps), jax.random.fold_in(key, t), masks)

        return jax.lax.cond(is_update_step(cfg, t, max_steps), recompute, lambda: masks)

    def init(params):
        key = jax.random.PRNGKey(seed)
        raw = nn.meta.unbox(params)  # the trainer's abstract state passes boxed params (logical axes) ...
        raw = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x,
                           raw)  # ... of shapes only
        targets = set(target_paths(raw, cfg.targets))
        ones = traverse_util.unflatten_dict({p: jnp.ones(np.shape(x) if p in targets else (), bool)
                                             for p, x in traverse_util.flatten_dict(raw).items()})
        masks = masks_for(raw, jnp.zeros((), jnp.int32), ones, key)
        # A full mask is sharded like its weight: it carries the weight's logical axes.
        masks = jax.tree.map(lambda p, m: p.replace_boxed(m) if isinstance(p, nn.meta.AxisMetadata) and np.ndim(m)
                             else m, params, masks, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
        return PruneState(tx.init(params), masks, jnp.zeros((), jnp.int32), key)

    def update(grads, state, params=None, **extra):
        updates, inner = tx.update(grads, state.inner, params, **extra)
        new = optax.apply_updates(params, updates)
        count = state.count + 1
        masks = masks_for(new, count, state.masks, state.key)
        updates = jax.tree.map(lambda n, p: n - p, apply_masks(new, masks), params)
        return updates, PruneState(inner, masks, count, state.key)

    return optax.GradientTransformationExtraArgs(init, update)


def masks_of(opt_state) -> Any | None:
    """The masks held in a (possibly wrapped) optimizer state, or None."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState)):
        if isinstance(s, PruneState):
            return s.masks
    return None


def sparsity_report(params, pattern: str = r".") -> list[tuple[str, tuple[int, ...], int, int]]:
    """``(name, shape, size, zeros)`` of every weight with two or more axes, then ``("total", ...)``."""
    from jaxlm.compress.quantize import dequantize_params

    flat = traverse_util.flatten_dict(dequantize_params(params))
    rows = [("/".join(p), tuple(np.shape(flat[p])), int(np.size(flat[p])), int(np.sum(np.asarray(flat[p]) == 0)))
            for p in target_paths(traverse_util.unflatten_dict(flat), pattern)]
    rows.append(("total (these weights)", (), sum(r[2] for r in rows), sum(r[3] for r in rows)))
    every = sum(int(np.size(x)) for x in flat.values())
    rows.append(("total (all params)", (), every, sum(int(np.sum(np.asarray(x) == 0)) for x in flat.values())))
    return rows


def report_table(rows) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'weight':<{width}}  {'shape':>16}  {'params':>10}  {'zeros':>10}  sparsity"]
    for name, shape, size, zeros in rows:
        shown = "x".join(map(str, shape)) if shape else ""
        lines.append(f"{name:<{width}}  {shown:>16}  {size:>10,}  {zeros:>10,}  {zeros / max(size, 1):8.1%}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# jaxlm prune RUN --out RUN2 ... / jaxlm prune --report RUN


def prune_run(source: str, out: str, cfg, step: int | None = None, best: bool = False) -> str:
    """Prune a trained run in one shot and write the result; its config holds the ``prune:`` section
    (one-shot at step 0), so fine-tuning it (``model.init_from``) keeps the same weights zero."""
    from jaxlm.compress.quantize import is_quantized
    from jaxlm.compress.runs import check_out, read_run, with_out_dir, write_run
    from jaxlm.errors import JaxlmError

    check_out(out)
    src = read_run(source, step, best)
    if is_quantized(src.params):
        raise JaxlmError(f"{source} is quantized; prune the float run, then quantize the pruned one")
    cfg = cfg.model_copy(update={"schedule": "one_shot", "start_step": 0})
    masks = compute_masks(src.params, cfg, sparsity_at(cfg, 0, 1), jax.random.PRNGKey(src.config.run.seed))
    params = apply_masks(src.params, masks)
    config = with_out_dir(src.config, out, prune=cfg.model_dump(mode="json"))
    write_run(src, out, params, config=config, pruning=cfg.model_dump(mode="json"))
    rows = sparsity_report(params, cfg.targets)
    return f"{report_table(rows)}\nwrote {out}; fine-tune it with model.init_from={out} (the same weights stay zero)"


def report_run(source: str, step: int | None = None, best: bool = False) -> str:
    from jaxlm.checkpoint import load_run

    return report_table(sparsity_report(load_run(source, step, best)[1]))
