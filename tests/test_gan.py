"""task: gan: the two players updated in turn in one step, exact resume, samples, the quality metric."""

import jax
import numpy as np
import optax
import pytest

from test_checkpoint import KILL_DURING_SAVE, assert_same_losses, losses, run
from test_cli import jaxlm, one_line_error
from jaxlm.config import load_config
from jaxlm.models.state import StatefulModel
from jaxlm.train.trainer import setup

TINY = {"model.generator_features": 16, "model.discriminator_features": 8, "model.latent_dim": 8,
        "trainer.batch_size": 16, "trainer.max_steps": 4, "trainer.log_every": 1, "trainer.eval_every": 4,
        "task.eval_samples": 32, "trainer.progress_bar": "false", "checkpoint.every": 2, "task.classifier": "null"}


def gan(out, **extra):
    settings = {**TINY, **extra}
    return ["train", "configs/gan-digits.yaml", f"run.out_dir={out}", *[f"{k}={v}" for k, v in settings.items()]]


@pytest.mark.parametrize("d_steps", [1, 2])
def test_one_step_updates_the_discriminator_then_the_generator(tmp_path, d_steps):
    s = setup(load_config("configs/gan-digits.yaml", gan(tmp_path, **{"task.d_steps": d_steps})[2:]))
    state = s.init_state()
    batch = next(s.task.train_iterator(16))
    assert set(state.opt_state) == {"discriminator", "generator"}
    from jaxlm.train.step import make_train_step

    step = make_train_step(s.model, s.task, None, None, 1, 0.0, False, s.assemble, s.groups)
    new, metrics = jax.jit(step)(state, batch, s.constants(state.params))
    # By hand: d_steps Adam updates of the discriminator's params alone, then one of the generator's
    # against the updated discriminator, each with its fold of the step's key.
    _, step_rng = jax.random.split(state.rng)
    params, model_state = state.params, state.model_state
    tx = optax.adam(1e-3, b1=0.5)
    for g, (name, loss) in enumerate([("discriminator", s.task.discriminator_loss),
                                      ("generator", s.task.generator_loss)]):
        opt = tx.init(params[name])
        for r in range(d_steps if name == "discriminator" else 1):
            key = jax.random.fold_in(jax.random.fold_in(step_rng, g), r)

            def f(own, model_state):
                bound = StatefulModel(s.model, model_state, train=True)
                total, weight = loss(bound, {**params, name: own}, batch, key)
                return total / weight, bound.state

            (value, model_state), grads = jax.value_and_grad(f, has_aux=True)(params[name], model_state)
            updates, opt = tx.update(grads, opt, params[name])
            params = {**params, name: optax.apply_updates(params[name], updates)}
        assert float(metrics[f"{name}_loss"]) == pytest.approx(float(value), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), new.params, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), new.model_state, model_state)


def test_sigkill_during_a_gan_save_then_resume_and_sample(tmp_path):
    code, _, err = run(gan(tmp_path / "whole"))
    assert code == 0, err
    expected = losses(tmp_path / "whole")
    code, _, _ = run(gan(tmp_path / "killed"), script=KILL_DURING_SAVE, KILL_AT_SAVE="2")
    assert code < 0
    code, _, err = run(gan(tmp_path / "killed"))
    assert code == 0, err
    assert_same_losses(tmp_path / "killed", expected)
    assert jaxlm("sample", "--run", tmp_path / "killed", "--num", "10", "--out", tmp_path / "s.npy").returncode == 0
    images = np.load(tmp_path / "s.npy")
    assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0
    assert jaxlm("sample", "--run", tmp_path / "killed", "--num", "10", "--out", tmp_path / "g.png").returncode == 0
    one_line_error(jaxlm("sample", "--run", tmp_path / "killed", "--out", tmp_path / "g.gif"), ".png")


def test_the_quality_metric_from_a_fixed_classifier(tmp_path):
    code, _, err = run(["train", "configs/resnet-digits.yaml", f"run.out_dir={tmp_path / 'clf'}", "trainer.max_steps=2",
                        "trainer.eval_every=2", "model.stage_sizes=[1]", "model.stage_widths=[8]",
                        "trainer.progress_bar=false"])
    assert code == 0, err
    code, out, err = run(gan(tmp_path / "gan", **{"task.classifier": tmp_path / "clf", "trainer.max_steps": 2,
                                                  "trainer.eval_every": 2}))
    assert code == 0, err
    import json

    m = json.loads(out.strip().splitlines()[-1])
    assert 0 <= m["eval_confident"] <= 1 and 0 <= m["eval_class_entropy"] <= np.log(10) + 1e-6
    assert 1 <= m["eval_inception_score"] <= 10
    # The classifier is held fixed: its fingerprint is in the checkpoint, and a resume with a changed one refuses.
    from jaxlm.checkpoint import load_run

    assert load_run(tmp_path / "gan")[2]["classifier"]["source"] == str(tmp_path / "clf")
    code, _, err = run(["train", "configs/resnet-digits.yaml", f"run.out_dir={tmp_path / 'clf'}", "trainer.max_steps=3",
                        "trainer.eval_every=2", "model.stage_sizes=[1]", "model.stage_widths=[8]",
                        "trainer.progress_bar=false"])
    assert code == 0, err
    one_line_error(jaxlm(*gan(tmp_path / "gan", **{"task.classifier": tmp_path / "clf", "trainer.max_steps": 4,
                                                   "trainer.eval_every": 2})), "trained with the classifier",
                   "use that classifier or a new run.out_dir")
    one_line_error(jaxlm(*gan(tmp_path / "g2", **{"task.classifier": tmp_path / "nothing"})), "task.classifier",
                   "resnet-digits")
    one_line_error(jaxlm(*gan(tmp_path / "g3", **{"task.classifier": tmp_path / "gan"})), "not an image classifier")
