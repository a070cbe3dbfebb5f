"""Image augmentation in JAX (random crop after padding, horizontal flip), seeded per example.

Each training batch carries ``augment_seed``, one integer per example drawn from the run
seed and the batch's position in the data order (:class:`AugmentSeeds`); the train step
turns them into the augmentation. So augmentation runs jitted on the device, sharded with
the batch, and a resumed run augments every example exactly as the uninterrupted run
would have — independently of dropout, which has its own RNG.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.pipeline import BatchIterator

SEED_KEY = "augment_seed"


def augment(images: jax.Array, seeds: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
    """``images`` ``[batch, height, width, channels]``, each padded by ``crop_padding`` zeros
    on every side and cropped back to its size at a random offset, then mirrored left-right
    with probability 1/2 when ``flip``; ``seeds`` ``[batch]`` pick the randomness."""

    def one(image, seed):
        crop_key, flip_key = jax.random.split(jax.random.key(seed))
        if crop_padding:
            p = crop_padding
            padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
            dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
            image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
        if flip:
            image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
        return image

    return jax.vmap(one)(images, seeds)


class AugmentSeeds:
    """A :class:`BatchIterator` whose batches also hold ``augment_seed``: this process's rows
    of a ``[global batch]`` array that is a pure function of ``(seed, epoch, index)``, so
    ``state()`` / ``restore()`` (the iterator's own) reproduce the augmentation too."""

    def __init__(self, batches: BatchIterator):
        self.batches = batches

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.batches)
        b = self.batches
        rng = np.random.default_rng([b.seed, b.epoch, b.index, 0xA06])  # after next(): this batch's position
        batch[SEED_KEY] = rng.integers(0, 2**31, b.batch_size, dtype=np.int64).astype(np.uint32)[b.local]
        return batch

    def state(self) -> dict[str, int]:
        return self.batches.state()

    def restore(self, state: dict[str, int]) -> None:
        self.batches.restore(state)
