"""SimCLR's augmented views of images, with dm-pix, jitted on the device and seeded per example.

A view of an image in [0, 1] is: a random resized crop (area share in ``crop_scale``, aspect
ratio in ``crop_ratio``, resized back with bilinear interpolation), a left-right flip, colour
jitter with probability ``color_jitter`` (brightness, contrast, and for RGB saturation and hue,
of strength ``jitter_strength`` as in SimCLR's ``0.8 s / 0.2 s``), grayscale with probability
``grayscale`` (RGB only) and a Gaussian blur with probability ``blur``. The crop is the one step
not taken from dm-pix whole: its affine resampling (``dm_pix.affine_transform``) is, given a box
sampled as torchvision's ``RandomResizedCrop`` does (clipped to the image instead of retried).
Each example's ``seed`` and the view number pick all of it, so a resumed run sees the same views.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import ViewsConfig
from jaxlm.errors import ConfigError


def _pix():
    try:
        import dm_pix
    except ImportError:
        raise ConfigError("SimCLR views are made with dm-pix, which is not installed: pip install 'jaxlm[vision]'") \
            from None
    return dm_pix


def resized_crop(key, image, scale, ratio):
    pix = _pix()
    height, width = image.shape[:2]
    area_key, ratio_key, y_key, x_key = jax.random.split(key, 4)
    area = jax.random.uniform(area_key, (), minval=scale[0], maxval=scale[1]) * height * width
    log_ratio = jax.random.uniform(ratio_key, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    w = jnp.clip(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0, width)
    h = jnp.clip(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0, height)
    y0 = jax.random.uniform(y_key, (), maxval=height - h + 1e-6)
    x0 = jax.random.uniform(x_key, (), maxval=width - w + 1e-6)
    # Output pixel (i, j) samples the input at (y0 + (i + 0.5) h / H - 0.5, ...): pixel centres map.
    sy, sx = h / height, w / width
    matrix = jnp.diag(jnp.stack([sy, sx, jnp.ones(())]))
    offset = jnp.stack([y0 + 0.5 * sy - 0.5, x0 + 0.5 * sx - 0.5, jnp.zeros(())])
    return pix.affine_transform(image, matrix, offset=offset, order=1, mode="nearest")


def view(image: jax.Array, key, c: ViewsConfig) -> jax.Array:
    """One augmented view of a float ``[height, width, channels]`` image in [0, 1]."""
    pix = _pix()
    keys = iter(jax.random.split(key, 12))
    rgb = image.shape[-1] == 3
    x = resized_crop(next(keys), image, c.crop_scale, c.crop_ratio)
    if c.flip:
        x = pix.random_flip_left_right(next(keys), x)
    s = c.jitter_strength
    jittered = pix.random_brightness(next(keys), x, 0.8 * s)
    jittered = pix.random_contrast(next(keys), jittered, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    if rgb:
        jittered = pix.random_saturation(next(keys), jnp.clip(jittered, 0, 1), max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
        jittered = pix.random_hue(next(keys), jittered, 0.2 * s)
    x = jnp.where(jax.random.bernoulli(next(keys), c.color_jitter), jnp.clip(jittered, 0, 1), x)
    if rgb and c.grayscale:
        gray = jnp.broadcast_to(pix.rgb_to_grayscale(x, keep_dims=True), x.shape)
        x = jnp.where(jax.random.bernoulli(next(keys), c.grayscale), gray, x)
    if c.blur:
        sigma = jax.random.uniform(next(keys), (), minval=c.blur_sigma[0], maxval=c.blur_sigma[1])
        size = max(3, round(0.1 * image.shape[0]) | 1)  # SimCLR: a kernel of 10 % of the image side
        x = jnp.where(jax.random.bernoulli(next(keys), c.blur), pix.gaussian_blur(x, sigma, size), x)
    return jnp.clip(x, 0.0, 1.0)


def two_views(images: jax.Array, seeds: jax.Array, c: ViewsConfig) -> tuple[jax.Array, jax.Array]:
    """Two views of each of ``images`` ``[batch, height, width, channels]`` in [0, 1]."""

    def both(image, seed):
        k1, k2 = jax.random.split(jax.random.key(seed))
        return view(image, k1, c), view(image, k2, c)

    return jax.vmap(both)(images, seeds)
