"""Pruning: masks against torch.nn.utils.prune (and torch.ao's 2:4 sparsifier) on the same weights,
the gradual schedule, masks held through training and resumes (SIGKILL), `jaxlm prune` and its
report, and one-line errors for bad settings."""

import os
import random
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from conftest import small_corpus, tiny_overrides
from jaxlm.cli import main
from jaxlm.compress.prune import compute_masks, is_update_step, prune_optimizer, sparsity_at, sparsity_report
from jaxlm.config import PruneConfig
from test_checkpoint import assert_same_losses, losses, run, start, wait_for_step

RNG = np.random.default_rng(0)
PARAMS = {  # a dense layer [in, out] with its bias, a conv kernel HWIO, an embedding (not a target)
    "dense": {"kernel": RNG.standard_normal((16, 6)).astype(np.float32), "bias": np.zeros(6, np.float32)},
    "proj": {"kernel": RNG.standard_normal((8, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)},
    "conv": {"kernel": RNG.standard_normal((3, 3, 2, 5)).astype(np.float32)},
    "embed": {"embedding": RNG.standard_normal((10, 4)).astype(np.float32)},
}


def masks(**settings):
    cfg = PruneConfig(**settings)
    return traverse_util.flatten_dict(compute_masks(PARAMS, cfg, sparsity_at(cfg, 0, 1), jax.random.PRNGKey(0)))


def torch_weight(torch, path):
    """The PyTorch layout of a param: Linear ``[out, in]``, Conv2d ``OIHW``."""
    w = torch.tensor(traverse_util.flatten_dict(PARAMS)[path])
    return w.T.contiguous() if w.ndim == 2 else w.permute(3, 2, 0, 1).contiguous()


def to_jax(torch, mask):
    m = mask.numpy().astype(bool)
    return m.T if m.ndim == 2 else m.transpose(2, 3, 1, 0)


KERNELS = [("dense", "kernel"), ("proj", "kernel"), ("conv", "kernel")]


@pytest.mark.torch
def test_unstructured_and_structured_masks_match_torch_prune():
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    ours = masks(method="magnitude", sparsity=0.3)
    for path in KERNELS:
        torch_mask = prune.l1_unstructured(_Holder(torch_weight(torch, path)), "weight", amount=0.3).weight_mask
        np.testing.assert_array_equal(ours[path], to_jax(torch, torch_mask))
    assert ours[("embed", "embedding")].shape == () and ours[("dense", "bias")].shape == ()  # not targets

    ours = masks(method="magnitude", sparsity=0.4, scope="global")
    holders = [_Holder(torch_weight(torch, p)) for p in KERNELS]
    prune.global_unstructured([(h, "weight") for h in holders], pruning_method=prune.L1Unstructured, amount=0.4)
    for path, holder in zip(KERNELS, holders):
        np.testing.assert_array_equal(ours[path], to_jax(torch, holder.weight_mask))

    ours = masks(method="structured", sparsity=0.34)  # whole output neurons / filters by their L2 norm
    for path in KERNELS:
        torch_mask = prune.ln_structured(_Holder(torch_weight(torch, path)), "weight", amount=0.34, n=2,
                                         dim=0).weight_mask
        np.testing.assert_array_equal(ours[path], to_jax(torch, torch_mask))


@pytest.mark.torch
def test_random_masks_prune_torch_s_count_at_the_lowest_scores():
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    ours = masks(method="random", sparsity=0.3)
    key = jax.random.PRNGKey(0)
    for i, path in enumerate(KERNELS):
        shape = traverse_util.flatten_dict(PARAMS)[path].shape
        scores = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), shape))
        # random_unstructured prunes as many; ours are the lowest of uniform scores (as torch's are of torch.rand)
        torch_random = prune.random_unstructured(_Holder(torch_weight(torch, path)), "weight", amount=0.3).weight_mask
        assert int((~ours[path]).sum()) == int((torch_random == 0).sum())
        by_score = prune.l1_unstructured(_Holder(torch.tensor(scores)), "weight", amount=0.3).weight_mask
        np.testing.assert_array_equal(ours[path], by_score.numpy().astype(bool))
    other = masks(method="random", sparsity=0.3, scope="global")
    assert sum((~other[p]).sum() for p in KERNELS) == round(0.3 * sum(other[p].size for p in KERNELS))


@pytest.mark.torch
def test_two_of_four_matches_torch_ao_sparsifier():
    torch = pytest.importorskip("torch")
    from torch.ao.pruning import WeightNormSparsifier

    ours = masks(method="n_m", n=2, m=4, targets="dense|proj")
    for path in KERNELS[:2]:
        layer = torch.nn.Linear(*traverse_util.flatten_dict(PARAMS)[path].shape)
        layer.weight.data = torch_weight(torch, path)
        model = torch.nn.Sequential(layer)
        sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
        sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
        sparsifier.step()
        sparsifier.squash_mask()
        np.testing.assert_array_equal(ours[path], layer.weight.data.numpy().T != 0)
        assert ours[path].mean() == 0.5


class _Holder:
    """The smallest module torch's prune functions accept, holding one weight."""

    def __new__(cls, weight):
        import torch

        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(weight)
        return module


def test_gradual_schedule_is_zhu_and_gupta_cubic():
    cfg = PruneConfig(schedule="gradual", sparsity=0.8, start_step=10, end_step=50, frequency=10)
    for t in (0, 10, 20, 35, 50, 70):
        expected = 0.0 if t < 10 else 0.8 * (1 - (1 - min(t - 10, 40) / 40) ** 3)
        assert float(sparsity_at(cfg, t, 100)) == pytest.approx(expected, abs=1e-6)
    assert [t for t in range(80) if is_update_step(cfg, t, 100)] == [10, 20, 30, 40, 50]
    one = PruneConfig(sparsity=0.5, start_step=3)
    assert [t for t in range(8) if is_update_step(one, t, 100)] == [3]


def test_the_optimizer_keeps_pruned_weights_zero_and_masks_only_grow():
    cfg = PruneConfig(schedule="gradual", sparsity=0.5, start_step=1, end_step=7, frequency=2)
    params = jax.tree.map(jnp.asarray, PARAMS)
    tx = prune_optimizer(optax.adam(0.1), cfg, 10, seed=0)
    state = tx.init(params)
    grad = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p)))
    update = jax.jit(tx.update)
    kept, last_pruned_at = None, 0
    for step in range(1, 11):
        updates, state = update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        mask = state.masks["dense"]["kernel"]
        assert bool(jnp.all(jnp.where(mask, True, params["dense"]["kernel"] == 0)))
        if kept is not None:
            assert bool(jnp.all(kept | ~mask))  # a pruned weight stays pruned
        kept = mask
        last_pruned_at = step if is_update_step(cfg, step, 10) else last_pruned_at
        assert int((~mask).sum()) == round(float(sparsity_at(cfg, last_pruned_at, 10)) * mask.size)
    assert float((~state.masks["dense"]["kernel"]).mean()) == 0.5


def test_bad_prune_settings_are_one_line(tmp_path, capsys):
    from jaxlm.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the 8 inputs of proj/kernel"):
        masks(method="n_m", n=2, m=3, targets="proj")

    def error(*args):
        assert main(list(map(str, args))) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    config = ["train", "configs/gpt2-tiny.yaml", *tiny_overrides(tmp_path / "run")]
    assert "prune.sparsity=1.0 is outside [0, 1)" in error(*config, "prune.sparsity=1.0")
    assert "prune.sparsity=-0.1 is outside [0, 1)" in error(*config, "prune.sparsity=-0.1")
    assert "prune.n=4 must be below prune.m=4" in error(*config, "prune.method=n_m", "prune.n=4")
    assert "does not divide" in error(*config, "prune.method=n_m", "prune.m=5")
    assert "matches no weight" in error(*config, "prune.targets=nothing$")


# ---------------------------------------------------------------------------------------------
# Runs


MAX_STEPS = 24
GRADUAL = {"prune.schedule": "gradual", "prune.sparsity": 0.5, "prune.start_step": 2, "prune.end_step": 18,
           "prune.frequency": 2}


def command(run_dir, corpus, **extra):
    settings = {"data.paths": corpus, "trainer.max_steps": MAX_STEPS, "trainer.log_every": 1,
                "trainer.eval_every": 1000, "checkpoint.every": 4, "checkpoint.keep": 3, "model.positions": "learned",
                **{k: str(v) for k, v in GRADUAL.items()}, **extra}
    return ["train", "configs/gpt2-tiny.yaml", *tiny_overrides(run_dir, **settings)]


@pytest.fixture(scope="module")
def gradual_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradual")
    corpus = small_corpus(root)
    code, _, err = run(command(root / "run", corpus))
    assert code == 0, err
    return root, corpus, losses(root / "run")


def test_sigkill_during_gradual_pruning_then_resume(gradual_run, tmp_path):
    _, corpus, expected = gradual_run
    kill_at = random.Random(os.getpid()).randint(6, 16)
    p = start(command(tmp_path / "run", corpus))
    wait_for_step(tmp_path / "run", kill_at, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    code, _, err = run(command(tmp_path / "run", corpus))
    assert code == 0, err
    assert_same_losses(tmp_path / "run", expected)


def test_prune_report_finetune_and_export(gradual_run, tmp_path, capsys):
    root, corpus, _ = gradual_run
    capsys.readouterr()
    assert main(["prune", "--report", str(root / "run")]) == 0
    report = capsys.readouterr().out
    assert "transformer/h_0/mlp/c_fc/kernel" in report and " 50.0%" in report
    # One shot on a trained run, then fine-tune with the masks held, then export: half of each matrix is zero.
    assert main(["prune", str(root / "run"), "--method", "structured", "--sparsity", "0.25", "--out",
                 str(tmp_path / "pruned")]) == 0
    assert "wrote" in capsys.readouterr().out
    tuned = tmp_path / "tuned"
    assert main(["train", str(tmp_path / "pruned" / "config.yaml"), f"run.out_dir={tuned}",
                 f"model.init_from={tmp_path / 'pruned'}", "trainer.max_steps=2"]) == 0
    rows = {name: (size, zeros) for name, _, size, zeros in sparsity_report(
        __import__("jaxlm.checkpoint", fromlist=["load_run"]).load_run(str(tuned))[1], "kernel$")}
    for name, (size, zeros) in rows.items():
        if name.startswith("transformer/h_") and name.endswith("c_fc/kernel"):
            assert zeros >= 0.25 * size
    assert main(["convert", "--to-torch", str(root / "run"), "--out", str(tmp_path / "hf")]) == 0
    from safetensors.numpy import load_file

    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    fc = tensors["transformer.h.0.mlp.c_fc.weight"]
    assert (fc == 0).mean() == pytest.approx(0.5, abs=1e-3)
