"""The data half of a task whose splits are dicts of row arrays sharing a leading dimension."""

from __future__ import annotations

import numpy as np

from jaxlm.data.pipeline import BatchIterator, eval_batches


class ArrayTask:
    """``self.train`` is served shuffled and resumable, ``self.valid`` every row once, in order."""

    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    seed: int

    def train_iterator(self, batch_size, process_index=0, process_count=1):
        return BatchIterator(self.train, batch_size, self.seed, process_index=process_index,
                             process_count=process_count)

    def eval_batches(self, batch_size, limit=None):
        return eval_batches(self.valid, batch_size, limit)

    def example_batch(self, batch_size):
        return {k: v[:1].repeat(batch_size, 0) for k, v in self.valid.items()}
