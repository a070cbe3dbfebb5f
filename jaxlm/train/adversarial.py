"""Adversarial training and attacks on the embedding output (``trainer.adversarial``,
``jaxlm eval --attack``), as a loss wrapper around any task.

Models mark their embedding output with flax's ``self.perturb`` (token embeddings of BERT,
DistilBERT, GPT-2, the word models; ViT's patch embeddings; a ResNet's input pixels): applied
with a ``perturbations`` collection ``delta`` they compute on ``embedding + delta``, without it
they are unchanged. The wrapped loss is the clean loss plus the loss at ``delta``:
  noise  ``delta ~ epsilon * N(0, I)`` (the book's small embedding noise);
  fgm    ``delta = epsilon * g / ||g||`` (Miyato et al., 2017), ``g`` the gradient of the loss
         with respect to the embedding output and ``||g||`` its L2 norm per example;
  pgd    ``steps`` steps of ``delta += step_size * g / ||g||``, each projected back into the
         per-example L2 ball of radius ``epsilon`` (Madry et al., 2018), from ``delta = 0``.
``delta`` is a constant of the parameter gradient (no second-order terms). Under attack,
evaluation scores the task's eval statistics at the FGM / PGD ``delta`` of each batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import AdversarialConfig
from jaxlm.errors import ConfigError


class Perturbed:
    """A model applied with ``delta`` as its ``perturbations``; with ``delta=None`` it applies the
    model unchanged and records the perturbations' shapes (``shapes``) from the call's inputs."""

    def __init__(self, model, delta=None):
        self.model, self.delta, self.shapes = model, delta, None

    def apply(self, variables, *args, **kwargs):
        if self.delta is not None:
            return self.model.apply({**variables, "perturbations": self.delta}, *args, **kwargs)
        module = getattr(self.model, "module", self.model)
        init_kwargs = {k: v for k, v in kwargs.items() if k not in ("rngs", "mutable")}
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
        self.shapes = jax.eval_shape(lambda: module.init(rngs, *args, **init_kwargs)).get("perturbations")
        return self.model.apply(variables, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def has_embedding_hook(model, example_inputs: dict) -> bool:
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
    return "perturbations" in jax.eval_shape(lambda: model.init(rngs, **example_inputs))


def per_example_norm(tree) -> jax.Array:
    """``[batch]`` L2 norms over every non-batch axis of every leaf of ``tree``."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(len(x), -1), 1) for x in leaves))


def scale_per_example(tree, factor: jax.Array):
    return jax.tree.map(lambda x: x * factor.reshape(-1, *([1] * (x.ndim - 1))).astype(x.dtype), tree)


def fgm_perturbation(grads, epsilon: float):
    """``epsilon * g / ||g||`` per example (0 where the gradient is 0)."""
    return scale_per_example(grads, epsilon / jnp.maximum(per_example_norm(grads), 1e-12))


def perturbation(loss_at, shapes, cfg: AdversarialConfig, key):
    """``delta`` for ``cfg.method``; ``loss_at(delta)`` is the summed loss with the perturbation."""
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if cfg.method == "noise":
        keys = iter(jax.random.split(key, len(jax.tree.leaves(zeros))))
        return jax.tree.map(lambda z: cfg.epsilon * jax.random.normal(next(keys), z.shape, z.dtype), zeros)
    if cfg.method == "fgm":
        return fgm_perturbation(jax.grad(loss_at)(zeros), cfg.epsilon)
    step = cfg.step_size or 2.5 * cfg.epsilon / cfg.steps

    def body(delta, _):
        delta = jax.tree.map(jnp.add, delta, fgm_perturbation(jax.grad(loss_at)(delta), step))
        norm = per_example_norm(delta)
        return scale_per_example(delta, jnp.minimum(1.0, cfg.epsilon / jnp.maximum(norm, 1e-12))), None

    return jax.lax.scan(body, zeros, None, length=cfg.steps)[0]


class AdversarialTask:
    """``task`` with the adversarial loss (``train``) and / or evaluation under attack (``attack``)."""

    def __init__(self, task, model, train: AdversarialConfig | None, attack: AdversarialConfig | None = None):
        if not has_embedding_hook(model, task.model_inputs(task.example_batch(1))):
            method = (train or attack).method
            raise ConfigError(f"adversarial {method} perturbs the embedding output, but this "
                              f"{type(model).__name__} has none (models that embed tokens or pixels do: bert, "
                              "distilbert, gpt2, vit, resnet, text_cnn, rnn)")
        self.task, self.train, self.attack = task, train, attack

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        if self.train is None:
            return self.task.loss(model, params, batch, dropout_rng, label_smoothing)
        key = jax.random.fold_in(dropout_rng, 7) if dropout_rng is not None else jax.random.key(0)
        probe = Perturbed(model)
        clean, weight = self.task.loss(probe, params, batch, dropout_rng, label_smoothing)

        def loss_at(delta):
            return self.task.loss(Perturbed(model, delta), jax.lax.stop_gradient(params), batch, dropout_rng,
                                  label_smoothing)[0]

        delta = jax.lax.stop_gradient(perturbation(loss_at, probe.shapes, self.train, key))
        adversarial, _ = self.task.loss(Perturbed(model, delta), params, batch, dropout_rng, label_smoothing)
        return clean + adversarial, weight

    def eval_sums(self, model, params, batch):
        if self.attack is None:
            return self.task.eval_sums(model, params, batch)
        probe = Perturbed(model)
        self.task.loss(probe, params, batch, None)

        def loss_at(delta):
            return self.task.loss(Perturbed(model, delta), params, batch, None)[0]

        delta = perturbation(loss_at, probe.shapes, self.attack, jax.random.key(0))
        return self.task.eval_sums(Perturbed(model, delta), params, batch)
