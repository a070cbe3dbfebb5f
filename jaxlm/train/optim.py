"""Optimizers and learning-rate schedules, all built from optax.

Written here because optax has none: the cyclic (triangular / triangular2) schedule and
FTRL-Proximal (:func:`ftrl`, Keras' ``Ftrl``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import OptimizerConfig, PlateauConfig, ScheduleConfig
from jaxlm.errors import ConfigError

# Leaf names that mark what ``optimizer.decay_exclude`` leaves out of weight decay.
# Flax calls norm gains ``scale`` and embedding tables ``embedding``.
_EXCLUDED_LEAVES = {"bias": {"bias"}, "norm": {"scale"}, "embedding": {"embedding"}}


def decay_mask(params, exclude: list[str]):
    names = set().union(*(_EXCLUDED_LEAVES[e] for e in exclude)) if exclude else set()

    def keep(path, _):  # the last dict key is the leaf's name (boxed params add an attribute key)
        name = next((p.key for p in reversed(path) if isinstance(p, jax.tree_util.DictKey)), None)
        return name not in names

    return jax.tree_util.tree_map_with_path(keep, params)


def _cyclic(peak: float, cfg: ScheduleConfig) -> optax.Schedule:
    """PyTorch ``CyclicLR``: linear up for ``step_size`` steps, down for ``step_size``;
    ``triangular2`` halves the amplitude every cycle."""
    low = peak * cfg.cyclic_min_lr_fraction

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        cycle = jnp.floor(1 + step / (2 * cfg.step_size))
        x = jnp.abs(step / cfg.step_size - 2 * cycle + 1)
        scale = 1.0 if cfg.cyclic_mode == "triangular" else 1 / (2.0 ** (cycle - 1))
        return low + (peak - low) * jnp.maximum(0.0, 1 - x) * scale

    return schedule


def _cosine_restarts(peak: float, cfg: ScheduleConfig, total: int) -> optax.Schedule:
    """PyTorch ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)``."""
    cycles, length, covered = [], cfg.restart_period, 0
    while covered < total:
        cycles.append(dict(init_value=peak, peak_value=peak, warmup_steps=0, decay_steps=length,
                           end_value=peak * cfg.end_lr_fraction))
        covered += length
        length *= cfg.restart_mult
    return optax.sgdr_schedule(cycles)


def build_schedule(peak: float, cfg: ScheduleConfig, max_steps: int) -> optax.Schedule:
    if cfg.name == "one_cycle":
        return optax.cosine_onecycle_schedule(max_steps, peak, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    if cfg.name == "cyclic":
        return _cyclic(peak, cfg)
    decay_steps = cfg.decay_steps or max(max_steps - cfg.warmup_steps, 1)
    end = peak * cfg.end_lr_fraction
    main = {
        "constant": lambda: optax.constant_schedule(peak),
        "linear": lambda: optax.linear_schedule(peak, end, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction),
        "step": lambda: optax.exponential_decay(peak, cfg.step_size, cfg.gamma, staircase=True),
        "exponential": lambda: optax.exponential_decay(peak, 1, cfg.gamma),
        "cosine_restarts": lambda: _cosine_restarts(peak, cfg, decay_steps),
    }[cfg.name]()
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


class FtrlState(NamedTuple):
    count: jax.Array
    """Updates so far (the learning-rate schedule's step)."""
    accumulator: optax.Updates
    """``n``: the running sum of squared gradients, from ``initial_accumulator_value``."""
    linear: optax.Updates
    """``z``: the FTRL linear term."""


def ftrl(learning_rate: float | optax.Schedule = 0.001, learning_rate_power: float = -0.5,
         initial_accumulator_value: float = 0.1, l1_regularization_strength: float = 0.0,
         l2_regularization_strength: float = 0.0, l2_shrinkage_regularization_strength: float = 0.0,
         beta: float = 0.0) -> optax.GradientTransformation:
    """FTRL-Proximal (McMahan et al., 2013) with Keras ``keras.optimizers.Ftrl``'s parameters,
    defaults and update, as an optax transformation (optax has no FTRL).

    Per coordinate, with ``p = learning_rate_power`` and ``lr`` the (scheduled) rate::

        n' = n + g^2
        z += g + 2 * l2_shrinkage * w - (n'^-p - n^-p) / lr * w
        w  = (clip(z, -l1, l1) - z) / (n'^-p / lr + 2 * (l2 + beta / (2 lr)))

    Every coordinate with ``|z| <= l1`` becomes exactly 0 (the L1 sparsity FTRL is used for).
    The update is the new value minus the old, so ``update`` needs ``params``.
    """
    checks = {"initial_accumulator_value": initial_accumulator_value,
              "l1_regularization_strength": l1_regularization_strength,
              "l2_regularization_strength": l2_regularization_strength,
              "l2_shrinkage_regularization_strength": l2_shrinkage_regularization_strength, "beta": beta}
    for name, value in checks.items():
        if value < 0:
            raise ConfigError(f"FTRL's {name}={value} is negative; it must be 0 or more")
    if learning_rate_power > 0:
        raise ConfigError(f"FTRL's learning_rate_power={learning_rate_power} is positive; it must be 0 or less "
                          "(-0.5 is the usual AdaGrad-like decay)")
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)

    def init(params):
        return FtrlState(jnp.zeros((), jnp.int32),
                         jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params),
                         jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("ftrl computes new parameter values: pass params to update()")
        lr = schedule(state.count)
        l2 = l2_regularization_strength + beta / (2.0 * lr)

        def one(g, w, n, z):
            g = g.astype(w.dtype)
            n_new = n + g * g
            z = z + g + 2 * l2_shrinkage_regularization_strength * w - (
                n_new ** -learning_rate_power - n ** -learning_rate_power) / lr * w
            quadratic = n_new ** -learning_rate_power / lr + 2 * l2
            w_new = (jnp.clip(z, -l1_regularization_strength, l1_regularization_strength) - z) / quadratic
            return w_new - w, n_new, z

        out = jax.tree.map(one, grads, params, state.accumulator, state.linear)
        pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)  # noqa: E731
        return pick(0), FtrlState(optax.safe_increment(state.count), pick(1), pick(2))

    return optax.GradientTransformation(init, update)


def build_optimizer(opt: OptimizerConfig, sched: ScheduleConfig, max_steps: int
                    ) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """The optax chain for a config: clipping, the optimizer, and optionally reduce-on-plateau.

    ``update`` takes ``value=loss`` (used by reduce-on-plateau, ignored otherwise).
    """
    lr = build_schedule(opt.learning_rate, sched, max_steps)
    mask = lambda params: decay_mask(params, opt.decay_exclude)  # noqa: E731
    wd = opt.weight_decay
    l2 = [optax.add_decayed_weights(wd, mask)] if wd else []  # PyTorch-style coupled L2
    core = {
        "adamw": lambda: [optax.adamw(lr, opt.b1, opt.b2, opt.eps, weight_decay=wd, mask=mask)],
        "lamb": lambda: [optax.lamb(lr, opt.b1, opt.b2, opt.eps, weight_decay=wd, mask=mask)],
        "adam": lambda: [*l2, optax.adam(lr, opt.b1, opt.b2, opt.eps)],
        "sgd": lambda: [*l2, optax.sgd(lr, opt.momentum or None, opt.nesterov)],
        "adagrad": lambda: [*l2, optax.adagrad(lr, opt.adagrad_initial_accumulator, opt.eps)],
        "rmsprop": lambda: [*l2, optax.rmsprop(lr, opt.rmsprop_decay, opt.eps, eps_in_sqrt=False, momentum=opt.momentum or None,
                                               nesterov=opt.nesterov)],
        "ftrl": lambda: [*l2, ftrl(lr, **opt.ftrl.model_dump())],
    }[opt.name]()
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts += core
    if sched.plateau is not None:
        p = sched.plateau
        if opt.name == "ftrl":
            raise ConfigError("schedule.plateau scales each update, but FTRL's update moves params to a computed "
                              "position (scaling it would undo its exact zeros); drop schedule.plateau or use "
                              "another optimizer.name")
        plateau = optax.contrib.reduce_on_plateau(p.factor, p.patience, p.rtol, p.atol, p.cooldown,
                                                  p.measurements, p.min_scale)
        # Watching an eval metric, the step only applies the scale; evaluations move it (observe_plateau).
        parts.append(plateau if p.metric is None else _scaled_by_plateau(plateau))
    return optax.chain(*parts), lr


def _scaled_by_plateau(plateau: optax.GradientTransformationExtraArgs) -> optax.GradientTransformationExtraArgs:
    def update(updates, state, params=None, **extra):
        return jax.tree.map(lambda g: state.scale * g, updates), state

    return optax.GradientTransformationExtraArgs(plateau.init, update)


def _is_plateau(x) -> bool:
    return isinstance(x, optax.contrib.ReduceLROnPlateauState)


def observe_plateau(opt_state, value, cfg: PlateauConfig):
    """``opt_state`` after one evaluation of ``cfg.metric`` gave ``value`` (the scale lives in the
    optimizer state, so it is checkpointed and resumes exactly).

    Written here rather than calling optax's ``reduce_on_plateau`` update: that one only
    minimises, with progress below ``(1 - rtol) * best``; a ``max`` metric fed negated would count
    an unchanged accuracy as progress. Progress is ``value < best * (1 - rtol) - atol`` (min)
    or ``value > best * (1 + rtol) + atol`` (max: PyTorch's relative threshold, Keras'
    ``min_delta`` as ``atol``), the best kept negated for max so it starts at +inf either way;
    ``patience`` measurements without progress scale the rate (as Keras and optax count).
    """
    sign = -1.0 if cfg.mode == "max" else 1.0

    def observe(s):
        x = jnp.asarray(sign * value, s.avg_value.dtype)
        count = s.count + 1
        avg = (s.count * s.avg_value + x) / count
        full = count >= cfg.measurements
        threshold = s.best_value * (1 - sign * cfg.rtol) - cfg.atol
        improved = full & (avg < threshold)
        stale = jnp.where(improved, 0, s.plateau_count + full)
        cooling = s.cooldown_count > 0
        reduce = full & ~cooling & ~improved & (stale >= cfg.patience)
        return s._replace(
            best_value=jnp.where(improved, avg, s.best_value).astype(s.best_value.dtype),
            plateau_count=jnp.where(cooling | reduce, 0, stale).astype(jnp.int32),
            scale=jnp.where(reduce, jnp.maximum(s.scale * cfg.factor, cfg.min_scale), s.scale).astype(s.scale.dtype),
            cooldown_count=jnp.where(reduce, cfg.cooldown, s.cooldown_count - (full & cooling)).astype(jnp.int32),
            count=jnp.where(full, 0, count).astype(jnp.int32),
            avg_value=jnp.where(full, 0.0, avg).astype(s.avg_value.dtype))

    return jax.tree.map(lambda s: observe(s) if _is_plateau(s) else s, opt_state, is_leaf=_is_plateau)


def plateau_observer(cfg: PlateauConfig | None, opt_shardings=None):
    """``observe(opt_state, eval_metrics) -> opt_state`` when ``schedule.plateau`` watches an eval
    metric (jitted onto the optimizer state's shardings), else ``None``."""
    if cfg is None or cfg.metric is None:
        return None
    jitted = jax.jit(lambda opt_state, value: observe_plateau(opt_state, value, cfg), out_shardings=opt_shardings)

    def observe(opt_state, metrics: dict[str, float]):
        if cfg.metric not in metrics:
            raise ConfigError(f"schedule.plateau.metric={cfg.metric!r} is not reported by this task; it reports "
                              f"{', '.join(sorted(metrics))}")
        return jitted(opt_state, metrics[cfg.metric])

    return observe


def plateau_scale(opt_state) -> jax.Array:
    """The current reduce-on-plateau multiplier (1.0 when the chain has none)."""
    for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_plateau):
        if _is_plateau(s):
            return s.scale
    return jnp.ones(())
