"""Labelled images: where they come from, how one image file is read, how pixels are normalised.

Sources, by ``task.dataset``:
  ``digits``   scikit-learn's 1,797 real 8x8 grey handwritten digits (ships with it: offline);
  ``shapes``   a synthetic, seeded set of 32x32 RGB circles, squares, triangles and crosses;
  a Hugging Face ``datasets`` name (``cifar10``, ``mnist``) or ``tfds:NAME``, when the user has
  that library and the data (imported only then).
Images are kept as uint8 ``[n, height, width, channels]`` (a quarter of float32's memory);
:func:`normalize` turns a batch into float ``pixel_values`` on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from jaxlm.data.labeled import read_dataset
from jaxlm.errors import DataError

SHAPES = ("circle", "square", "triangle", "cross")
SHAPES_SIZE = 32
SHAPES_COUNT = 2000
BUILTIN = ("digits", "shapes")
VISION_EXTRA = "pip install 'jaxlm[vision]'"


@dataclass
class ImageSet:
    """``pixels`` uint8 ``[n, height, width, channels]``, ``labels`` (ids or names) and, when
    the source names its classes, ``class_names`` in id order; ``where`` names it in messages."""

    pixels: np.ndarray
    labels: list[Any]
    class_names: list[str] | None
    where: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])


def load_images(name: str, config: str | None = None, split: str = "train", image_column: str = "image",
                label_column: str = "label") -> ImageSet:
    """The labelled images of ``task.dataset`` ``name`` (see the module docstring)."""
    if name == "digits":
        return digits()
    if name == "shapes":
        return shapes()
    table = read_dataset(name, config, split)
    images, labels = table.column(image_column, "task.image_column"), table.column(label_column, "task.label_column")
    return ImageSet(_stack(images, table.where), list(labels), None, table.where)


def digits() -> ImageSet:
    """scikit-learn's digits: 16 grey levels, scaled to 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("task.dataset=digits is read with scikit-learn, which is not installed: "
                        "pip install scikit-learn") from None
    data = load_digits()
    pixels = np.round(data.images * (255 / 16)).astype(np.uint8)[..., None]
    return ImageSet(pixels, data.target.tolist(), [str(i) for i in range(10)], "dataset 'digits'")


def shapes(n: int = SHAPES_COUNT, size: int = SHAPES_SIZE, seed: int = 0) -> ImageSet:
    """``n`` RGB images of one of :data:`SHAPES` each (classes in turn), at a random place,
    size and colour on a random darker background, with a little noise; a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES)
    r = rng.uniform(size * 0.18, size * 0.36, n)[:, None, None]
    cy, cx = (rng.uniform(r[:, 0, 0] + 1, size - 1 - r[:, 0, 0])[:, None, None] for _ in range(2))
    y, x = np.mgrid[:size, :size].astype(np.float64)
    dy, dx = y - cy, x - cx
    masks = np.stack([
        dy**2 + dx**2 <= r**2,
        (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8),
        (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2),
        ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)),
    ])[labels, np.arange(n)]
    background = rng.uniform(0.0, 0.35, (n, 1, 1, 3))
    foreground = rng.uniform(0.55, 1.0, (n, 1, 1, 3))
    images = np.where(masks[..., None], foreground, background) + rng.normal(0, 0.03, (n, size, size, 3))
    pixels = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    return ImageSet(pixels, labels.tolist(), list(SHAPES), "dataset 'shapes'")


def _stack(images: Sequence[Any], where: str) -> np.ndarray:
    """uint8 ``[n, height, width, channels]`` from PIL images or arrays (Hugging Face / tfds rows)."""
    arrays = []
    for row, image in enumerate(images):
        a = np.asarray(image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
                       if hasattr(image, "convert") else image)
        a = a[..., None] if a.ndim == 2 else a
        if a.ndim != 3 or (arrays and a.shape != arrays[0].shape):
            first = arrays[0].shape if arrays else "an image"
            raise DataError(f"{where} row {row + 1} holds a {a.shape} array, not {first} like the rows before it; "
                            "jaxlm needs images of one size (resize the dataset first)")
        arrays.append(a)
    if not arrays:
        raise DataError(f"{where} holds no images")
    return np.stack(arrays).astype(np.uint8)


def normalize(pixels, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
    """uint8 ``[..., channels]`` -> float32 ``(pixels / 255 - mean) / std`` per channel."""
    return (jnp.asarray(pixels, jnp.float32) / 255 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def load_image(spec: str, size: int | None, channels: int) -> np.ndarray:
    """One uint8 ``[height, width, channels]`` image: ``digits:INDEX`` / ``shapes:INDEX`` from
    the built-in sets, or a PNG / JPEG / ... file resized (bilinear) to ``size`` x ``size``
    when ``size`` is given."""
    name, _, index = spec.partition(":")
    if name in BUILTIN and index:
        images = load_images(name).pixels
        if not index.isdigit() or int(index) >= len(images):
            raise DataError(f"{spec!r}: the index must be 0..{len(images) - 1}")
        image = images[int(index)]
    else:
        image = _read_file(Path(spec), channels, size)
    if image.shape[-1] != channels:
        raise DataError(f"{spec!r} has {image.shape[-1]} channels but the model takes {channels}")
    return image


def _read_file(path: Path, channels: int, size: int | None) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(f"reading image files needs Pillow: {VISION_EXTRA} (or use digits:INDEX)") from None
    if not path.is_file():
        raise DataError(f"image file {str(path)!r} does not exist (or give digits:INDEX / shapes:INDEX)")
    if channels not in (1, 3):
        raise DataError(f"image files are read as grey (1 channel) or RGB (3), but the model takes {channels}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(image)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not an image Pillow can read ({e})") from None
    return a.reshape(*a.shape[:2], channels)
