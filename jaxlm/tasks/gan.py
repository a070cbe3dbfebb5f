"""A generative adversarial network on images: two parameter groups, one trainer step.

The task declares two groups (jaxlm/train/groups.py): ``discriminator`` (``d_steps`` updates
per step, the generator held constant) and then ``generator`` (one update, the discriminator
held constant), each with its own optimizer state; both players are in one params tree, so a
checkpoint holds both and a resumed run continues exactly. Latents are drawn from the step's
random key (part of the train state). Losses, on the discriminator's logits ``l``:
  bce    D: softplus(-l_real) + softplus(l_fake); G: softplus(-l_fake) (non-saturating)
  hinge  D: relu(1 - l_real) + relu(1 + l_fake);  G: -l_fake
Real images are scaled to [-1, 1], the generator's tanh range.

Evaluation generates one sample per validation row from fixed latents and reports both
losses and the discriminator's mean probabilities on real and fake images; with
``task.classifier`` (a trained image classifier, loaded once, held fixed) it also scores the
samples: the share classified confidently, the entropy of the mean predicted class
distribution (diversity, in nats; ln 10 = 2.30 for 10 even classes) and the Inception Score
``exp(E KL(p(y|x) || p(y)))`` computed with that classifier.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.checkpoint import CheckpointError, checkpoint_dir, load_model_state, load_run
from jaxlm.config import Config, validate_config
from jaxlm.data.images import load_images, normalize
from jaxlm.data.labeled import stratified_split
from jaxlm.errors import ConfigError
from jaxlm.models import build_model, head_of
from jaxlm.models.state import StatefulModel
from jaxlm.tasks.base import ArrayTask
from jaxlm.tasks.image_classification import check_fits
from jaxlm.train.groups import GroupSpec

PLAYERS = ("discriminator", "generator")


def to_unit(images: jax.Array) -> jax.Array:
    """Generator output in [-1, 1] -> [0, 1]."""
    return (jnp.clip(images, -1.0, 1.0) + 1.0) / 2.0


def latents(key, count: int, dim: int) -> jax.Array:
    return jax.random.normal(key, (count, dim), jnp.float32)


def row_latents(seeds: jax.Array, dim: int) -> jax.Array:
    """One latent per row, a pure function of the row's seed (the fixed evaluation latents)."""
    return jax.vmap(lambda s: jax.random.normal(jax.random.key(s), (dim,), jnp.float32))(seeds)


class GANTask(ArrayTask):
    def __init__(self, config: Config, run_dir: Path):
        t, model = config.task, config.model
        if model.type != "dcgan":
            raise ConfigError(f"task: gan trains a generator and a discriminator; model.type={model.type} is not such "
                              "a pair: use model.type=dcgan")
        self.head, self.seed, self.t, self.latent_dim = t.head, config.run.seed, t, model.latent_dim
        images = load_images(t.dataset, t.dataset_config, t.dataset_split, t.image_column, t.label_column)
        check_fits(images, model)
        _, labels = np.unique(np.asarray([str(v) for v in images.labels]), return_inverse=True)
        train, valid, _ = stratified_split(labels, t.split, t.split_seed)
        self.train = {"pixel_values": images.pixels[train], "weight": np.ones(len(train), np.float32)}
        rows = np.resize(valid, t.eval_samples)
        self.valid = {"pixel_values": images.pixels[rows], "weight": np.ones(len(rows), np.float32),
                      "latent_seed": np.arange(len(rows), dtype=np.uint32)}
        self.classifier = load_classifier(t.classifier, model) if t.classifier else None

    def held_fixed(self) -> dict:
        """The scoring classifier, fingerprinted in the checkpoint so a resumed run scores with the same one."""
        return {} if self.classifier is None else {"classifier": ("task.classifier", self.t.classifier,
                                                                   self.classifier.params)}

    def model_inputs(self, batch):
        return {"latents": jnp.zeros((len(batch["pixel_values"]), self.latent_dim), jnp.float32),
                "pixel_values": self.real(batch)}

    @staticmethod
    def real(batch) -> jax.Array:
        return normalize(batch["pixel_values"], [0.5], [0.5])  # [-1, 1]

    def param_groups(self) -> list[GroupSpec]:
        return [GroupSpec("discriminator", self.discriminator_loss, ("discriminator",), self.t.d_steps, random=True),
                GroupSpec("generator", self.generator_loss, ("generator",), 1, random=True)]

    def _play(self, model, params, batch, z):
        fake = model.apply({"params": params}, z, method="generate")
        return (model.apply({"params": params}, self.real(batch), method="discriminate"),
                model.apply({"params": params}, fake, method="discriminate"))

    def _d_loss(self, real_logits, fake_logits):
        if self.t.loss == "hinge":
            return jax.nn.relu(1 - real_logits) + jax.nn.relu(1 + fake_logits)
        return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)

    def _g_loss(self, fake_logits):
        return -fake_logits if self.t.loss == "hinge" else jax.nn.softplus(-fake_logits)

    def discriminator_loss(self, model, params, batch, rng, label_smoothing=0.0):
        w = batch["weight"]
        real_logits, fake_logits = self._play(model, params, batch, latents(rng, len(w), self.latent_dim))
        return jnp.sum(self._d_loss(real_logits, fake_logits) * w), jnp.sum(w)

    def generator_loss(self, model, params, batch, rng, label_smoothing=0.0):
        w = batch["weight"]
        fake = model.apply({"params": params}, latents(rng, len(w), self.latent_dim), method="generate")
        fake_logits = model.apply({"params": params}, fake, method="discriminate")
        return jnp.sum(self._g_loss(fake_logits) * w), jnp.sum(w)

    def eval_sums(self, model, params, batch):
        w = batch["weight"]
        z = row_latents(batch["latent_seed"], self.latent_dim)
        fake = model.apply({"params": params}, z, method="generate")
        real_logits = model.apply({"params": params}, self.real(batch), method="discriminate")
        fake_logits = model.apply({"params": params}, fake, method="discriminate")
        sums = {"d_loss": jnp.sum(self._d_loss(real_logits, fake_logits) * w),
                "g_loss": jnp.sum(self._g_loss(fake_logits) * w), "examples": jnp.sum(w),
                "d_real": jnp.sum(jax.nn.sigmoid(real_logits) * w), "d_fake": jnp.sum(jax.nn.sigmoid(fake_logits) * w)}
        if self.classifier is not None:
            sums.update(self.classifier.score(fake, w, self.t.confidence))
        return sums

    def summarize(self, sums, complete):
        n = max(sums["examples"], 1.0)
        out = {"eval_loss": float((sums["d_loss"] + sums["g_loss"]) / n), "eval_d_loss": float(sums["d_loss"] / n),
               "eval_g_loss": float(sums["g_loss"] / n), "eval_d_real": float(sums["d_real"] / n),
               "eval_d_fake": float(sums["d_fake"] / n)}
        if "class_probs" in sums:
            marginal = np.asarray(sums["class_probs"], np.float64) / n
            marginal_entropy = float(-np.sum(marginal * np.log(np.maximum(marginal, 1e-12))))
            out.update(eval_confident=float(sums["confident"] / n), eval_class_entropy=marginal_entropy,
                       eval_inception_score=math.exp(marginal_entropy - float(sums["entropy"] / n)))
        return out


class SampleScorer:
    """A trained image classifier, held fixed, that scores generated images."""

    def __init__(self, model, params, mean, std):
        self.model, self.params, self.mean, self.std = model, params, mean, std

    def score(self, images, weights, confidence: float) -> dict[str, jax.Array]:
        pixels = normalize(to_unit(images) * 255, self.mean, self.std)
        probs = jax.nn.softmax(self.model.apply({"params": self.params}, pixels).logits.astype(jnp.float32))
        entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-12)), -1)
        return {"confident": jnp.sum((probs.max(-1) >= confidence) * weights),
                "class_probs": jnp.sum(probs * weights[:, None], 0), "entropy": jnp.sum(entropy * weights)}


def load_classifier(path: str, gan_config) -> SampleScorer:
    """The image classifier of the run at ``path``; it must take the GAN's image size and channels."""
    if not checkpoint_dir(path).is_dir():
        raise ConfigError(f"task.classifier={path} holds no checkpoint; train an image classifier there first "
                          "(jaxlm train configs/resnet-digits.yaml) or set task.classifier=null")
    try:
        saved, params, _ = load_run(path)
    except CheckpointError as e:
        raise ConfigError(f"task.classifier={path}: {e}") from None
    config = validate_config(saved)
    model = build_model(config.model, config.task.head)
    if head_of(model) != "image_classification":
        raise ConfigError(f"task.classifier={path} is a {config.task.type} run, not an image classifier")
    size, channels = getattr(config.model, "image_size", None), getattr(config.model, "num_channels", None)
    if channels != gan_config.num_channels or size not in (None, gan_config.image_size):
        raise ConfigError(f"task.classifier={path} takes {size or 'any'}-pixel images with {channels} channel(s); "
                          f"the GAN makes {gan_config.image_size}x{gan_config.image_size} with "
                          f"{gan_config.num_channels}")
    state = load_model_state(path)
    return SampleScorer(StatefulModel(model, state) if state else model, params, config.task.mean, config.task.std)


def sample(model, params, num: int, seed: int) -> np.ndarray:
    """``num`` uint8 ``[num, height, width, channels]`` images from a generator (BatchNorm on its
    running averages), from the latents that ``seed`` draws."""
    if head_of(model) != "gan":
        raise ConfigError(f"this is a {type(getattr(model, 'module', model)).__name__}; jaxlm sample needs a GAN run "
                          "(task: gan)")
    z = latents(jax.random.key(seed), num, model.config.latent_dim)
    images = jax.jit(lambda p, z: model.apply({"params": p}, z, method="generate"))(params, z)
    return np.asarray(jnp.round(to_unit(images) * 255)).astype(np.uint8)


def write_samples(images: np.ndarray, path: Path) -> None:
    """A ``.npy`` of the images, or a PNG grid (about square, 2-pixel gaps; small images enlarged
    to at least 32 pixels a side, nearest neighbour), written under a temporary name and renamed."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        if path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, images)
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            n, h, w, c = images.shape
            zoom = max(1, -(-32 // max(h, w)))
            cols = math.ceil(math.sqrt(n))
            rows = math.ceil(n / cols)
            grid = np.full((rows * (h * zoom + 2) + 2, cols * (w * zoom + 2) + 2, c), 255, np.uint8)
            for i, image in enumerate(images):
                r, q = divmod(i, cols)
                big = image.repeat(zoom, 0).repeat(zoom, 1)
                grid[2 + r * (h * zoom + 2):2 + r * (h * zoom + 2) + h * zoom,
                     2 + q * (w * zoom + 2):2 + q * (w * zoom + 2) + w * zoom] = big
            Image.fromarray(grid[..., 0] if c == 1 else grid).save(tmp, format="JPEG" if path.suffix.lower() in (
                ".jpg", ".jpeg") else "PNG")
        else:
            raise ConfigError(f"--out {path}: write samples to a .png (a grid) or .npy (the images) file")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
