"""Each optimizer and schedule against PyTorch (where conventions match) or its formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.config import OptimizerConfig, PlateauConfig, ScheduleConfig
from jaxlm.train.optim import build_optimizer, build_schedule, decay_mask

torch = pytest.importorskip("torch")

LR, STEPS = 0.05, 4


def params0():
    rng = np.random.RandomState(0)
    return {"dense": {"kernel": rng.randn(3, 4).astype(np.float32), "bias": rng.randn(4).astype(np.float32)},
            "ln": {"scale": rng.randn(4).astype(np.float32)}}


def grads_at(step):
    rng = np.random.RandomState(100 + step)
    return {"dense": {"kernel": rng.randn(3, 4).astype(np.float32), "bias": rng.randn(4).astype(np.float32)},
            "ln": {"scale": rng.randn(4).astype(np.float32)}}


def run_jaxlm(**opt):
    cfg = OptimizerConfig(learning_rate=LR, clip_norm=None, **opt)
    tx, _ = build_optimizer(cfg, ScheduleConfig(name="constant"), STEPS)
    params = jax.tree.map(jnp.asarray, params0())
    state = tx.init(params)
    for s in range(STEPS):
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads_at(s)), state, params, value=jnp.zeros(()))
        params = optax.apply_updates(params, updates)
    return jax.tree.map(np.asarray, params)


def run_torch(make, decay_all=True):
    p0 = params0()
    tensors = {k: {n: torch.tensor(v, requires_grad=True) for n, v in d.items()} for k, d in p0.items()}
    decayed = [tensors["dense"]["kernel"]] if not decay_all else [t for d in tensors.values() for t in d.values()]
    rest = [t for d in tensors.values() for t in d.values() if all(t is not x for x in decayed)]
    opt = make([{"params": decayed}, {"params": rest, "weight_decay": 0.0}])
    for s in range(STEPS):
        g = grads_at(s)
        for k, d in tensors.items():
            for n, t in d.items():
                t.grad = torch.tensor(g[k][n])
        opt.step()
    return {k: {n: t.detach().numpy() for n, t in d.items()} for k, d in tensors.items()}


def assert_close(a, b, tol=1e-5):  # float32: torch and optax order eps / bias correction differently
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), a, b)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd(momentum, nesterov):
    ours = run_jaxlm(name="sgd", momentum=momentum, nesterov=nesterov, weight_decay=0.01, decay_exclude=[])
    ref = run_torch(lambda g: torch.optim.SGD(g, lr=LR, momentum=momentum, nesterov=nesterov, weight_decay=0.01))
    assert_close(ours, ref)


def test_adam_with_coupled_l2():
    ours = run_jaxlm(name="adam", weight_decay=0.01, decay_exclude=[])
    assert_close(ours, run_torch(lambda g: torch.optim.Adam(g, lr=LR, weight_decay=0.01)))


def test_adamw_decays_only_unmasked_params():
    ours = run_jaxlm(name="adamw", weight_decay=0.1, b2=0.95)  # bias and norm excluded by default
    ref = run_torch(lambda g: torch.optim.AdamW(g, lr=LR, betas=(0.9, 0.95), weight_decay=0.1), decay_all=False)
    assert_close(ours, ref)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop(momentum):
    ours = run_jaxlm(name="rmsprop", momentum=momentum)
    assert_close(ours, run_torch(lambda g: torch.optim.RMSprop(g, lr=LR, alpha=0.99, eps=1e-8, momentum=momentum)))


def test_adagrad_formula():
    """optax puts eps inside the square root: p -= lr * g / sqrt(sum g^2 + eps)."""
    ours = run_jaxlm(name="adagrad", eps=1e-8)
    p, acc = params0(), jax.tree.map(np.zeros_like, params0())
    for s in range(STEPS):
        g = grads_at(s)
        acc = jax.tree.map(lambda a, x: a + x * x, acc, g)
        p = jax.tree.map(lambda p_, a, x: p_ - LR * x / np.sqrt(a + 1e-8), p, acc, g)
    assert_close(ours, p, 1e-5)


def test_lamb_formula():
    wd, b1, b2, eps = 0.01, 0.9, 0.999, 1e-6
    ours = run_jaxlm(name="lamb", weight_decay=wd, eps=eps, decay_exclude=[])
    p = params0()
    m, v = jax.tree.map(np.zeros_like, p), jax.tree.map(np.zeros_like, p)
    for s in range(STEPS):
        g = grads_at(s)
        m = jax.tree.map(lambda m_, x: b1 * m_ + (1 - b1) * x, m, g)
        v = jax.tree.map(lambda v_, x: b2 * v_ + (1 - b2) * x * x, v, g)

        def upd(p_, m_, v_, t=s + 1):
            r = (m_ / (1 - b1 ** t)) / (np.sqrt(v_ / (1 - b2 ** t)) + eps) + wd * p_
            trust = np.linalg.norm(p_) / np.linalg.norm(r)
            return p_ - LR * trust * r

        p = jax.tree.map(upd, p, m, v)
    assert_close(ours, p, 1e-5)


def test_decay_mask_excludes_bias_norm_embedding():
    tree = {"wte": {"embedding": 0}, "ln": {"scale": 0, "bias": 0}, "fc": {"kernel": 0, "bias": 0}}
    assert decay_mask(tree, ["bias", "norm", "embedding"]) == {
        "wte": {"embedding": False}, "ln": {"scale": False, "bias": False}, "fc": {"kernel": True, "bias": False}}
    assert all(jax.tree.leaves(decay_mask(tree, [])))


# ----------------------------------------------------------------------------------------------
# Schedules

PEAK, TOTAL = 1.0, 100
STEPS_TO_CHECK = [0, 1, 5, 9, 10, 11, 33, 50, 77, 99]


def lr(name, **kw):
    s = build_schedule(PEAK, ScheduleConfig(name=name, **kw), TOTAL)
    return np.array([float(s(t)) for t in STEPS_TO_CHECK])


def formula(f):
    return np.array([f(t) for t in STEPS_TO_CHECK])


def test_constant_linear_cosine_with_warmup():
    w, d = 10, TOTAL - 10
    warm = lambda t, after: PEAK * t / w if t < w else after(t - w)  # noqa: E731
    np.testing.assert_allclose(lr("constant"), PEAK)
    np.testing.assert_allclose(lr("linear", warmup_steps=w, end_lr_fraction=0.1),
                               formula(lambda t: warm(t, lambda u: PEAK + (0.1 - 1) * PEAK * min(u / d, 1))), atol=1e-6)
    np.testing.assert_allclose(
        lr("cosine", warmup_steps=w, end_lr_fraction=0.1),
        formula(lambda t: warm(t, lambda u: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(u, d) / d)))), atol=1e-6)


def test_step_and_exponential():
    np.testing.assert_allclose(lr("step", step_size=30, gamma=0.5), formula(lambda t: 0.5 ** (t // 30)), rtol=1e-6)
    np.testing.assert_allclose(lr("exponential", gamma=0.97), formula(lambda t: 0.97 ** t), rtol=1e-5)


def torch_lrs(make_sched):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    sched = make_sched(opt)
    out = []
    for _ in range(TOTAL):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array([out[t] for t in STEPS_TO_CHECK])


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
def test_cyclic_matches_torch(mode):
    ours = lr("cyclic", step_size=8, cyclic_mode=mode, cyclic_min_lr_fraction=0.1)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.1 * PEAK, PEAK, step_size_up=8, mode=mode,
                                                                  cycle_momentum=False))
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_cosine_restarts_matches_torch():
    ours = lr("cosine_restarts", restart_period=10, restart_mult=2, end_lr_fraction=0.01)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 10, 2, eta_min=0.01 * PEAK))
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_one_cycle_formula():
    pct, div, final = 0.3, 25.0, 1e4
    up = int(pct * TOTAL)

    def f(t):
        cos = lambda a, b, frac: b + (a - b) * (1 + math.cos(math.pi * frac)) / 2  # noqa: E731
        if t < up:
            return cos(PEAK / div, PEAK, t / up)
        return cos(PEAK, PEAK / div / final, (t - up) / (TOTAL - up))

    np.testing.assert_allclose(lr("one_cycle", pct_start=pct, div_factor=div, final_div_factor=final),
                               formula(f), rtol=1e-5, atol=1e-7)


def test_reduce_on_plateau_scales_after_patience():
    sched = ScheduleConfig(name="constant", plateau=PlateauConfig(factor=0.5, patience=2, accumulation_size=1))
    tx, _ = build_optimizer(OptimizerConfig(name="sgd", learning_rate=1.0, clip_norm=None), sched, 10)
    params = {"w": jnp.ones(())}
    state = tx.init(params)
    sizes = []
    for _ in range(8):
        updates, state = tx.update({"w": jnp.ones(())}, state, params, value=jnp.asarray(1.0))
        sizes.append(float(-updates["w"]))
    assert sizes[0] == 1.0 and sizes[-1] < 1.0  # a flat loss lowers the learning rate
