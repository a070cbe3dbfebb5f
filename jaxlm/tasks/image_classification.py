"""Image classification for any model with an ``image_classification`` head (ViT, ResNet, ...).

The labelled images of ``task.dataset`` are split per class into train / validation / test
(``task.split``, seeded by ``task.split_seed``) and kept as uint8; the model gets
``pixel_values`` ``[batch, height, width, channels]`` normalised by ``task.mean`` /
``task.std`` on the device. Training batches are augmented in the train step
(:mod:`jaxlm.data.augment`), deterministically given the data position. Evaluation reports
accuracy, precision, recall, F1 and the confusion matrix, as ``classification`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data.augment import SEED_KEY, AugmentSeeds, augment
from jaxlm.data.images import ImageSet, load_image, load_images, normalize
from jaxlm.data.labeled import label_ids, stratified_split
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.models import head_of
from jaxlm.tasks.base import ArrayTask
from jaxlm.tasks.classification import classification_summary, classification_sums, label_names
from jaxlm.train.losses import cross_entropy_sum


def check_fits(images: ImageSet, model_config) -> None:
    """The images have the size and channels the model takes (a model without ``image_size``,
    such as a ResNet, takes any size)."""
    height, width, channels = images.shape
    size = getattr(model_config, "image_size", None)
    want = getattr(model_config, "num_channels", channels)
    if (size is None or (height, width) == (size, size)) and channels == want:
        return
    takes = f"{size}x{size} images with {want} channel(s)" if size is not None else f"{want} channel(s)"
    fixes = [f"model.num_channels={channels}"] if channels != want else []
    if size is not None and (height, width) != (size, size):
        fixes.insert(0, f"model.image_size={height}" if height == width else "resize the images to squares")
    raise ConfigError(f"{images.where} holds {height}x{width} images with {channels} channel(s) but the model takes "
                      f"{takes}; set {' '.join(fixes)} (or choose another task.dataset)")


class ImageClassificationTask(ArrayTask):
    def __init__(self, config: Config, run_dir: Path):
        t, model = config.task, config.model
        self.head, self.seed, self.num_labels = t.head, config.run.seed, model.num_labels
        self.crop_padding, self.flip = t.crop_padding, t.flip
        images = load_images(t.dataset, t.dataset_config, t.dataset_split, t.image_column, t.label_column)
        check_fits(images, model)
        if len(t.mean) not in (1, images.shape[2]):
            raise ConfigError(f"task.mean / task.std have {len(t.mean)} values but the images have "
                              f"{images.shape[2]} channels; give one value or one per channel")
        self.mean, self.std = t.mean, t.std
        labels = label_ids(images.labels, label_names(model), model.num_labels, images.where)
        rows = {"pixel_values": images.pixels, "label": labels, "weight": np.ones(len(labels), np.float32)}
        parts = stratified_split(labels, t.split, t.split_seed)
        self.train, valid, test = ({k: v[part] for k, v in rows.items()} for part in parts)
        self.valid = valid if t.eval_split == "validation" else test
        if not len(self.valid["label"]):
            raise ConfigError(f"task.eval_split={t.eval_split} but task.split={t.split} leaves it no rows")

    def train_iterator(self, batch_size, process_index=0, process_count=1):
        return AugmentSeeds(super().train_iterator(batch_size, process_index, process_count))

    def model_inputs(self, batch):
        return {"pixel_values": normalize(batch["pixel_values"], self.mean, self.std)}

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        pixels = self.model_inputs(batch)["pixel_values"]
        if SEED_KEY in batch and (self.crop_padding or self.flip):
            pixels = augment(pixels, batch[SEED_KEY], self.crop_padding, self.flip)
        logits = apply(model, params, pixels, dropout_rng).logits
        return cross_entropy_sum(logits, batch["label"], batch["weight"], label_smoothing)

    def eval_sums(self, model, params, batch):
        logits = apply(model, params, self.model_inputs(batch)["pixel_values"], None).logits
        return classification_sums(logits, batch["label"], batch["weight"], self.num_labels)

    def summarize(self, sums, complete):
        return classification_summary(sums)


def apply(model, params, pixel_values, dropout_rng, **kwargs):
    return model.apply({"params": params}, pixel_values=pixel_values,
                       rngs={"dropout": dropout_rng} if dropout_rng is not None else None, **kwargs)


def classify_image(model, params, image: np.ndarray, mean, std) -> list[tuple[str, float]]:
    """Every class of an image classifier with its probability for one uint8 ``[height, width,
    channels]`` ``image`` (normalised by ``mean`` / ``std``), most likely first."""
    if head_of(model) != "image_classification":
        raise JaxlmError(f"this is a {type(model).__name__}; it has no image classification head")
    logits = apply(model, params, normalize(image[None], mean, std), None).logits[0]
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32)))
    names = label_names(model.config) or [str(i) for i in range(model.config.num_labels)]
    return [(names[i], float(probs[i])) for i in np.argsort(-probs)]


def image_normalization(config: Config | None, model_dir: str | None) -> tuple[list[float], list[float]]:
    """``(mean, std)`` a model was trained with: its run's ``task.mean`` / ``task.std``, a
    Hugging Face directory's ``preprocessor_config.json``, else transformers' ViT default 0.5 / 0.5."""
    if config is not None and config.task.type == "image_classification":
        return config.task.mean, config.task.std
    processor = Path(model_dir or "") / "preprocessor_config.json"
    if model_dir is not None and processor.is_file():
        settings = json.loads(processor.read_text())
        return settings.get("image_mean", [0.5]), settings.get("image_std", [0.5])
    return [0.5], [0.5]


def image_of(spec: str, model) -> np.ndarray:
    """``spec`` (an image file, ``digits:INDEX`` or ``shapes:INDEX``) as the model takes it."""
    c = model.config
    return load_image(spec, getattr(c, "image_size", None), getattr(c, "num_channels", 3))
