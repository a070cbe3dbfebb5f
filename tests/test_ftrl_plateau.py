"""FTRL-Proximal against a NumPy transcription of the paper's update; reduce-on-plateau on an eval metric."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_overrides
from jaxlm.config import OptimizerConfig, PlateauConfig, ScheduleConfig, load_config
from jaxlm.errors import ConfigError
from jaxlm.train.optim import build_optimizer, ftrl, observe_plateau, plateau_scale

STEPS = 20


def numpy_ftrl(w, grads, alpha, power, n0, l1, l2, shrinkage, beta):
    """McMahan et al. (2013), Algorithm 1, per coordinate, in float64, with Keras' parameterisation:
    its L2 strength is the coefficient of ||w||^2 (gradient 2 * l2 * w), beta adds beta / alpha to
    the quadratic term, and a general learning-rate power replaces the square root."""
    w = w.astype(np.float64)
    n = np.full_like(w, n0)
    z = np.zeros_like(w)
    for g in grads:
        g = g.astype(np.float64)
        sigma = ((n + g * g) ** -power - n ** -power) / alpha
        z = z + g + 2 * shrinkage * w - sigma * w
        n = n + g * g
        w = np.where(np.abs(z) <= l1, 0.0,
                     -(z - np.sign(z) * l1) / (n ** -power / alpha + beta / alpha + 2 * l2))
    return w


SETTINGS = [
    dict(alpha=0.1, power=-0.5, n0=0.1, l1=0.0, l2=0.0, shrinkage=0.0, beta=0.0),
    dict(alpha=0.05, power=-0.5, n0=0.1, l1=0.02, l2=0.01, shrinkage=0.0, beta=0.0),
    dict(alpha=0.2, power=-0.3, n0=0.5, l1=0.01, l2=0.05, shrinkage=0.03, beta=0.4),
    dict(alpha=0.1, power=0.0, n0=0.0, l1=0.0, l2=0.1, shrinkage=0.0, beta=1.0),
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_ftrl_matches_numpy_transcription(kw):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 7)).astype(np.float32)
    grads = [rng.normal(size=(5, 7)).astype(np.float32) for _ in range(STEPS)]
    tx = ftrl(kw["alpha"], kw["power"], kw["n0"], kw["l1"], kw["l2"], kw["shrinkage"], kw["beta"])
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    expected = numpy_ftrl(w0, grads, **kw)
    np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-6, atol=1e-6)


def test_l1_gives_exact_zeros_and_the_config_builds_ftrl():
    cfg = OptimizerConfig(name="ftrl", learning_rate=0.5, clip_norm=None,
                          ftrl={"l1_regularization_strength": 2.0})
    tx, _ = build_optimizer(cfg, ScheduleConfig(name="constant"), STEPS)
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=64), jnp.float32)}
    state = tx.init(params)
    signal = np.where(np.arange(64) < 8, 1.0, 0.0)  # 8 coordinates see a steady push, the rest noise
    for _ in range(STEPS):
        g = jnp.asarray(signal + 0.1 * rng.normal(size=64), jnp.float32)
        updates, state = tx.update({"w": g}, state, params, value=jnp.zeros(()))
        params = optax.apply_updates(params, updates)
    w = np.asarray(params["w"])
    assert np.all(w[:8] < 0) and np.all(w[8:] == 0.0)  # exactly zero, not merely small


@pytest.mark.parametrize("key,value,expected", [
    ("optimizer.ftrl.l1_regularization_strength", -0.1, "optimizer.ftrl.l1_regularization_strength"),
    ("optimizer.ftrl.l2_shrinkage_regularization_strength", -1, "l2_shrinkage_regularization_strength"),
    ("optimizer.ftrl.learning_rate_power", 0.5, "optimizer.ftrl.learning_rate_power"),
    ("optimizer.ftrl.initial_accumulator_value", -0.1, "initial_accumulator_value"),
])
def test_nonsense_ftrl_settings_are_one_line_errors(key, value, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}", "optimizer.name=ftrl"])
    assert expected in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="negative"):
        ftrl(0.1, l2_regularization_strength=-1.0)
    with pytest.raises(ConfigError, match="plateau"):
        build_optimizer(OptimizerConfig(name="ftrl"), ScheduleConfig(plateau=PlateauConfig()), 10)


def torch_scales(values, mode, patience, factor, cooldown, rtol, atol):
    """PyTorch ``ReduceLROnPlateau``: the scale after each value. Its ``patience`` counts the bad
    evaluations it tolerates, ours (as Keras' and optax's) those that trigger: ours - 1."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    rel = rtol > 0
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode, factor, patience - 1, rtol if rel else atol,
                                                       "rel" if rel else "abs", cooldown)
    out = []
    for v in values:
        sched.step(v)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.torch
@pytest.mark.parametrize("mode,values", [
    ("max", [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.65, 0.7, 0.71, 0.71, 0.71, 0.8, 0.8, 0.8]),
    ("min", [1.0, 0.9, 0.95, 0.9, 0.8, 0.85, 0.85, 0.85, 0.85, 0.7, 0.75, 0.7, 0.7, 0.7]),
])
@pytest.mark.parametrize("cooldown", [0, 2])
@pytest.mark.parametrize("rtol,atol", [(0.0, 0.001), (0.05, 0.0)])
def test_plateau_on_a_metric_matches_torch(mode, values, cooldown, rtol, atol):
    cfg = PlateauConfig(metric="eval_accuracy", mode=mode, patience=2, factor=0.5, cooldown=cooldown, rtol=rtol,
                        atol=atol)
    tx, _ = build_optimizer(OptimizerConfig(name="sgd", learning_rate=1.0, clip_norm=None),
                            ScheduleConfig(name="constant", plateau=cfg), 10)
    params = {"w": jnp.ones(())}
    state = tx.init(params)
    scales = []
    for v in values:
        updates, state = tx.update({"w": jnp.ones(())}, state, params, value=jnp.asarray(123.0))  # ignored
        state = observe_plateau(state, v, cfg)
        scales.append(float(plateau_scale(state)))
    assert scales == torch_scales(values, mode, 2, 0.5, cooldown, rtol, atol)
    assert min(scales) < 1
    updates, _ = tx.update({"w": jnp.ones(())}, state, params, value=jnp.asarray(0.0))
    assert float(-updates["w"]) == scales[-1]  # the step applies the scale the evaluations set


def test_plateau_on_eval_metric_resumes_exactly(tmp_path, corpus_file):
    from jaxlm.train.logging import read_metrics
    from jaxlm.train.trainer import train

    def run(out, steps):
        extra = {"data.paths": corpus_file, "trainer.max_steps": steps, "trainer.eval_every": 2,
                 "trainer.log_every": 1, "checkpoint.every": 2, "schedule.name": "constant",
                 "schedule.warmup_steps": 0, "schedule.plateau.metric": "eval_loss", "schedule.plateau.patience": 1,
                 "schedule.plateau.rtol": 0.5}
        train(load_config("configs/gpt2-tiny.yaml", tiny_overrides(out, **extra)))
        return {r["step"]: (r["loss"], r["learning_rate"]) for r in read_metrics(out) if "loss" in r}

    whole = run(tmp_path / "whole", 8)
    run(tmp_path / "parts", 4)
    parts = run(tmp_path / "parts", 8)
    assert whole == parts
    peak = load_config("configs/gpt2-tiny.yaml").optimizer.learning_rate
    # evaluations at steps 2 (the first best), 4 and 6 (no 50 % drop: halve): the steps after them
    assert [whole[s][1] / peak for s in (4, 5, 7, 8)] == pytest.approx([1, 0.5, 0.25, 0.25])
