"""Mixed precision: bfloat16 / float16 train like float32; float16 overflows are skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import small_corpus, tiny_overrides
from jaxlm.config import load_config
from jaxlm.train.logging import read_metrics
from jaxlm.train.precision import LossScale, skip_nonfinite
from jaxlm.train.trainer import train


@pytest.fixture(scope="module")
def final_losses(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    corpus = small_corpus(root)
    out = {}
    for compute in ("float32", "bfloat16", "float16"):
        run = root / compute
        train(load_config("configs/gpt2-tiny.yaml", tiny_overrides(run, **{
            "data.paths": corpus, "precision.compute": compute, "trainer.max_steps": 40, "trainer.log_every": 5,
            "trainer.eval_every": 40, "optimizer.learning_rate": 3e-3})))
        out[compute] = read_metrics(run)
    return out


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_low_precision_final_loss_within_2_percent(final_losses, compute):
    f32 = [r for r in final_losses["float32"] if "eval_loss" in r][-1]["eval_loss"]
    low = [r for r in final_losses[compute] if "eval_loss" in r][-1]["eval_loss"]
    first = [r for r in final_losses[compute] if "loss" in r][0]["loss"]
    assert low < 0.9 * first  # it learned
    assert abs(low - f32) <= 0.02 * f32, (compute, low, f32)


def test_float16_logs_its_loss_scale(final_losses):
    logs = [r for r in final_losses["float16"] if "loss" in r]
    assert all(r["loss_scale"] >= 1 for r in logs) and "loss_scale" not in final_losses["float32"][0]


def test_float16_overflow_skips_the_update_and_halves_the_scale():
    from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from jaxlm.tasks.causal_lm import CausalLMTask
    from jaxlm.train.step import TrainState, make_train_step

    import flax.linen as nn

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2),
                            dtype=jnp.float16)
    task = object.__new__(CausalLMTask)
    rng = np.random.RandomState(0)
    batch = {"tokens": rng.randint(0, 50, (4, 9)).astype(np.int32), "loss_mask": np.ones((4, 8), np.int32)}
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch["tokens"][:, :-1]))["params"]
    tx = skip_nonfinite(optax.adam(1e-2), "float16")
    step = jax.jit(make_train_step(model, task, tx, lambda s: 1e-2, 1, 0.0, dropout=False))
    huge = LossScale.create("float16", 2.0**40, period=1000)  # float16 gradients overflow at this scale
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(0), huge)
    state, metrics = step(state, batch)
    assert metrics["skipped"] == 1.0 and float(state.loss_scale.scale) == 2.0**39
    jax.tree.map(np.testing.assert_array_equal, state.params, params)  # the update was skipped
    losses = []
    for _ in range(40):  # the scale keeps halving until gradients fit, then training goes on
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert float(state.loss_scale.scale) < 2.0**16 and metrics["skipped"] == 0.0
    assert losses[-1] < losses[losses.index(next(x for x in losses if np.isfinite(x)))]
