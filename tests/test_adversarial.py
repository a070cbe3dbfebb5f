"""Adversarial training and attacks on the embedding output: FGM / PGD / noise, eval --attack, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_cli import jaxlm, one_line_error
from jaxlm.config import AdversarialConfig, load_config
from jaxlm.train.adversarial import AdversarialTask, Perturbed, per_example_norm, perturbation
from jaxlm.train.trainer import setup

TINY = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.progress_bar=false", "model.embedding_dim=16",
        "model.num_filters=8", "trainer.early_stopping=null", "checkpoint.keep_best=0", "checkpoint.every=2"]


@pytest.fixture(scope="module")
def textcnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("textcnn")
    s = setup(load_config("configs/textcnn-sentiment-fgm.yaml", [f"run.out_dir={out}", *TINY]))
    state = s.init_state()
    batch = {k: jnp.asarray(v) for k, v in next(s.task.train_iterator(8)).items()}
    return s, state.params, batch, out


def test_fgm_is_epsilon_times_the_normalised_gradient(textcnn):
    s, params, batch, _ = textcnn
    task = s.task.task  # the classification task inside the adversarial wrapper
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         jax.eval_shape(lambda: s.model.init(jax.random.key(0), **task.model_inputs(batch)))[
                             "perturbations"])

    def loss(delta):  # the model applied with its perturbation collection, as flax documents
        logits = s.model.apply({"params": params, "perturbations": delta}, **task.model_inputs(batch)).logits
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1))

    g = jax.grad(loss)(zeros)["embed"]["embeddings_output"]
    delta = perturbation(lambda d: task.loss(Perturbed(s.model, d), params, batch, None)[0], zeros,
                         AdversarialConfig(method="fgm", epsilon=0.3), jax.random.key(0))
    d = delta["embed"]["embeddings_output"]
    expected = 0.3 * g / np.linalg.norm(np.asarray(g).reshape(len(g), -1), axis=1)[:, None, None]
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(per_example_norm(delta), 0.3, rtol=1e-5)


def test_pgd_stays_in_the_ball_and_noise_has_its_scale(textcnn):
    s, params, batch, _ = textcnn
    task = s.task.task
    probe = Perturbed(s.model)
    clean = task.loss(probe, params, batch, None)[0]

    def loss_at(delta):
        return task.loss(Perturbed(s.model, delta), params, batch, None)[0]

    fgm = perturbation(loss_at, probe.shapes, AdversarialConfig(method="fgm", epsilon=0.5), jax.random.key(0))
    pgd = perturbation(loss_at, probe.shapes, AdversarialConfig(method="pgd", epsilon=0.5, steps=5),
                       jax.random.key(0))
    assert np.all(np.asarray(per_example_norm(pgd)) <= 0.5 + 1e-5)
    assert float(loss_at(pgd)) >= float(loss_at(fgm)) - 1e-4 and float(loss_at(fgm)) > float(clean)
    noise = perturbation(loss_at, probe.shapes, AdversarialConfig(method="noise", epsilon=1e-3), jax.random.key(1))
    assert float(jnp.std(noise["embed"]["embeddings_output"])) == pytest.approx(1e-3, rel=0.05)


def test_training_loss_is_clean_plus_adversarial(textcnn):
    s, params, batch, _ = textcnn
    wrapped = s.task
    total, weight = wrapped.loss(s.model, params, batch, None)
    clean, w = wrapped.task.loss(s.model, params, batch, None)
    assert float(weight) == float(w) and float(total) > float(clean)


def test_train_then_eval_under_attack(tmp_path):
    config = "configs/textcnn-sentiment-fgm.yaml"
    assert jaxlm("train", config, f"run.out_dir={tmp_path}", *TINY).returncode == 0
    clean = json.loads(jaxlm("eval", config, f"run.out_dir={tmp_path}", *TINY).stdout)
    attacked = jaxlm("eval", config, f"run.out_dir={tmp_path}", *TINY, "--attack", "pgd", "--epsilon", "5")
    result = json.loads(attacked.stdout)
    assert result["attack"] == "pgd" and result["epsilon"] == 5 and result["eval_loss"] > clean["eval_loss"]
    one_line_error(jaxlm("eval", config, f"run.out_dir={tmp_path}", *TINY, "--epsilon", "1"), "--attack")
    one_line_error(jaxlm("eval", config, f"run.out_dir={tmp_path}", *TINY, "--attack", "fgm", "--epsilon", "-1"),
                   "--epsilon -1")


def test_a_model_without_embeddings_is_refused(tmp_path):
    one_line_error(jaxlm("train", "configs/regression-linear.yaml", f"run.out_dir={tmp_path}",
                         "trainer.adversarial.method=fgm"), "adversarial fgm", "has none")
