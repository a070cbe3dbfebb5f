"""Contrastive losses against hand computations, optax and PyTorch."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm.train import contrastive_losses as L


def direct_ntxent(z1, z2, t):
    """SimCLR's NT-Xent written out: view k of 2N against its other view and the 2N - 2 rest."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for k in range(2 * n):
        pos = (k + n) % (2 * n)
        denom = sum(math.exp(z[k] @ z[j] / t) for j in range(2 * n) if j != k)
        total += -math.log(math.exp(z[k] @ z[pos] / t) / denom)
    return total / (2 * n)


@pytest.fixture
def views():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)


def test_ntxent_equals_direct_and_optax(views):
    z1, z2 = views
    z = jnp.concatenate([z1, z2])
    ids = jnp.tile(jnp.arange(6), 2)
    total, count = L.ntxent(z, ids, jnp.ones(12, bool), 0.5)
    assert float(count) == 12
    np.testing.assert_allclose(float(total / count), direct_ntxent(z1, z2, 0.5), rtol=1e-5)
    np.testing.assert_allclose(float(total / count), float(optax.ntxent(z, ids, 0.5)), rtol=1e-5)
    classes = jnp.asarray([0, 1, 0, 2, 1, 2] * 2)  # several positives per anchor: optax's convention
    total, count = L.ntxent(z, classes, jnp.ones(12, bool), 0.1)
    np.testing.assert_allclose(float(total / count), float(optax.ntxent(z, classes, 0.1)), rtol=1e-5)


def test_ntxent_ignores_padding_rows(views):
    z1, z2 = views
    padded = [np.concatenate([z, np.zeros((2, 5), np.float32)]) for z in (z1, z2)]
    valid = jnp.asarray([True] * 6 + [False] * 2)
    total, count = L.ntxent(jnp.concatenate(padded), jnp.tile(jnp.arange(8), 2), jnp.tile(valid, 2), 0.5)
    np.testing.assert_allclose(float(total / count), direct_ntxent(z1, z2, 0.5), rtol=1e-5)


def test_info_nce_is_simcse(views):
    q, k = views
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    sims = qn @ kn.T / 0.05
    expected = np.mean([-sims[i, i] + np.log(np.exp(sims[i]).sum()) for i in range(6)])
    total, count = L.info_nce(jnp.asarray(q), jnp.asarray(k), jnp.ones(6, bool), 0.05)
    np.testing.assert_allclose(float(total / count), expected, rtol=1e-5)


def test_sampled_negatives_keep_that_many(views):
    negatives = ~jnp.eye(12, dtype=bool) & ~jnp.eye(12, k=6, dtype=bool) & ~jnp.eye(12, k=-6, dtype=bool)
    kept = L.sample_negatives(negatives, 4, jax.random.key(1))
    assert np.all(np.asarray(kept).sum(1) == 4) and not np.any(np.asarray(kept) & ~np.asarray(negatives))
    z = jnp.concatenate(views)
    full = L.ntxent(z, jnp.tile(jnp.arange(6), 2), jnp.ones(12, bool), 0.5)
    same = L.ntxent(z, jnp.tile(jnp.arange(6), 2), jnp.ones(12, bool), 0.5, num_negatives=10, key=jax.random.key(0))
    np.testing.assert_allclose(float(full[0]), float(same[0]), rtol=1e-6)  # 10 = every negative


def mined(x, labels, mining):
    """Triplets mined by brute force in NumPy (the definitions, not the vectorised code)."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    out = []
    for a in range(len(x)):
        pos = [p for p in range(len(x)) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(len(x)) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            out.append((a, max(pos, key=lambda p: d[a, p]), min(neg, key=lambda n: d[a, n])))
            continue
        for p in pos:
            farther = [n for n in neg if d[a, n] > d[a, p]]
            out.append((a, p, min(farther, key=lambda n: d[a, n]) if farther else max(neg, key=lambda n: d[a, n])))
    return np.asarray(out)


@pytest.mark.torch
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_mining_matches_torch_triplet_margin_loss(mining):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    labels = np.asarray([0, 0, 1, 1, 1, 2, 2, 3, 0, 2])  # class 3 has no positive: no triplet
    total, count = L.triplet(jnp.asarray(x), jnp.asarray(labels), jnp.ones(10, bool), 0.7, mining)
    a, p, n = mined(x, labels, mining).T
    t = torch.tensor(x)
    ref = torch.nn.TripletMarginLoss(margin=0.7)(t[a], t[p], t[n])
    assert float(count) == len(a)
    np.testing.assert_allclose(float(total / count), float(ref), rtol=1e-5)


def test_margin_contrastive_by_hand():
    x = np.asarray([[0.0, 0.0], [0.3, 0.4], [1.0, 0.0], [0.0, 2.0]], np.float32)
    labels = np.asarray([0, 0, 1, 1])
    m = 1.2
    expected = []
    for i, j in itertools.combinations(range(4), 2):
        d = float(np.linalg.norm(x[i] - x[j]))
        expected.append(0.5 * d * d if labels[i] == labels[j] else 0.5 * max(0.0, m - d) ** 2)
    total, count = L.margin_contrastive(jnp.asarray(x), jnp.asarray(labels), jnp.ones(4, bool), m)
    assert float(count) == 6
    np.testing.assert_allclose(float(total), sum(expected), rtol=1e-6)
    # by hand: (0,1) similar at d = 0.5; (0,2) dissimilar at d = 1; (1,2) dissimilar at d = sqrt(0.65);
    # (2,3) similar at d = sqrt(5); (0,3) and (1,3) dissimilar beyond the margin
    assert sum(expected) == pytest.approx(0.125 + 0.5 * 0.2**2 + 0.5 * (1.2 - 0.65**0.5) ** 2 + 2.5, rel=1e-6)


def test_alignment_and_uniformity():
    a = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    sums = L.alignment_uniformity(a, a, jnp.ones(2, bool))
    assert float(sums["alignment"]) == 0 and float(sums["top1"]) == 2
    np.testing.assert_allclose(float(sums["uniformity_exp"]), math.exp(-2 * 2.0), rtol=1e-6)  # |a0 - a1|^2 = 2
