"""Non-parameter model state (BatchNorm's batch_stats) in the one trainer: updated by the
training step only, threaded through gradient accumulation, checkpointed and resumed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.checkpoint import load_model_state, load_run
from jaxlm.cli import main
from jaxlm.models.resnet import ResNetConfig, ResNetForImageClassification
from jaxlm.models.state import split_variables
from jaxlm.train.losses import cross_entropy_sum
from jaxlm.train.precision import LossScale
from jaxlm.train.step import TrainState, make_eval_step, make_train_step

MODEL = ResNetForImageClassification(ResNetConfig(stem="cifar", stage_sizes=(1,), stage_widths=(4,), num_channels=1,
                                                  num_labels=3))


class PixelTask:
    """Only what the step uses: a loss and eval sums over ``pixel_values``."""

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        logits = model.apply({"params": params}, pixel_values=batch["pixel_values"]).logits
        return cross_entropy_sum(logits, batch["label"], jnp.ones(len(batch["label"])), label_smoothing)

    def eval_sums(self, model, params, batch):
        return {"logits": model.apply({"params": params}, pixel_values=batch["pixel_values"]).logits}


def setup(batch_size=8):
    rng = np.random.RandomState(0)
    batch = {"pixel_values": rng.normal(2.0, 3.0, (batch_size, 6, 6, 1)).astype(np.float32),
             "label": rng.randint(0, 3, batch_size).astype(np.int32)}
    params, state = split_variables(nn.meta.unbox(MODEL.init(jax.random.PRNGKey(0), batch["pixel_values"][:1])))
    tx = optax.sgd(0.1)
    train_state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(0),
                             LossScale.create("float32", 1.0, 1), state)
    return batch, tx, train_state


def close(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.allclose(x, y, atol=1e-6), a, b)))


def test_batch_stats_update_in_train_mode_only():
    batch, tx, state = setup()
    assert set(state.model_state) == {"batch_stats"}
    before = state.model_state
    eval_step = jax.jit(make_eval_step(MODEL, PixelTask()))
    logits = eval_step(state.params, before, batch)["logits"]
    assert close(before, state.model_state)  # evaluation reads the statistics, never writes them
    expected = MODEL.apply({"params": state.params, **before}, batch["pixel_values"]).logits
    np.testing.assert_allclose(logits, expected, atol=1e-6)

    new, _ = jax.jit(make_train_step(MODEL, PixelTask(), tx, lambda s: 0.1, 1, 0.0, dropout=False))(state, batch)
    stem = new.model_state["batch_stats"]["stem_bn"]
    assert not np.allclose(stem["mean"], before["batch_stats"]["stem_bn"]["mean"])
    # one update of the running mean towards the batch mean (momentum 0.9), as flax computes it
    _, mutated = MODEL.apply({"params": state.params, **before}, batch["pixel_values"], mutable=["batch_stats"])
    assert close(new.model_state, mutated)
    # eval with the running averages differs from train-mode normalisation of the same batch
    assert not np.allclose(eval_step(new.params, new.model_state, batch)["logits"],
                           MODEL.apply({"params": new.params, **new.model_state}, batch["pixel_values"],
                                       mutable=["batch_stats"])[0].logits, atol=1e-3)


def test_accumulation_threads_batch_stats_through_the_micro_batches():
    batch, tx, state = setup()
    step = jax.jit(make_train_step(MODEL, PixelTask(), tx, lambda s: 0.1, 2, 0.0, dropout=False))
    new, _ = step(state, batch)
    expected = state.model_state
    for i in range(2):  # micro-batch i holds rows i, i + 2, i + 4, ...
        _, expected = MODEL.apply({"params": state.params, **expected}, batch["pixel_values"][i::2],
                                  mutable=["batch_stats"])
    assert close(new.model_state, expected)


def test_checkpoint_resume_restores_batch_stats(tmp_path):
    from jaxlm.checkpoint import Checkpoints
    from jaxlm.config import load_config
    from jaxlm.train.early_stopping import EarlyStopping, LoopPosition
    from jaxlm.train.trainer import setup as trainer_setup, start_state

    args = [f"run.out_dir={tmp_path}", "trainer.max_steps=2", "trainer.batch_size=16", "trainer.eval_batches=1",
            "trainer.progress_bar=false", "model.stage_sizes=[1]", "model.stage_widths=[4]"]
    assert main(["train", "configs/resnet-digits.yaml", *args]) == 0
    saved = load_model_state(tmp_path)
    s = trainer_setup(load_config("configs/resnet-digits.yaml", args))
    assert not close(saved, s.init_state().model_state)  # two steps moved the statistics
    ckpt = Checkpoints(tmp_path, s.config.checkpoint)
    try:
        data = s.task.train_iterator(16)
        resumed, _ = start_state(s, ckpt, LoopPosition(data, EarlyStopping(None)))
    finally:
        ckpt.close()
    assert int(resumed.step) == 2 and close(resumed.model_state, saved)
    assert close(resumed.params, load_run(tmp_path)[1])
