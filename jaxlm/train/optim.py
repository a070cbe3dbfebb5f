"""Optimizers and learning-rate schedules, all built from optax.

Only the cyclic (triangular / triangular2) schedule is written here: optax has none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import OptimizerConfig, ScheduleConfig

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
    }[opt.name]()
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts += core
    if sched.plateau is not None:
        p = sched.plateau
        parts.append(optax.contrib.reduce_on_plateau(p.factor, p.patience, p.rtol, p.atol, p.cooldown,
                                                     p.accumulation_size, p.min_scale))
    return optax.chain(*parts), lr


def plateau_scale(opt_state) -> jax.Array:
    """The current reduce-on-plateau multiplier (1.0 when the chain has none)."""
    for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: hasattr(x, "plateau_count")):
        if hasattr(s, "plateau_count"):
            return s.scale
    return jnp.ones(())
