"""The data half of a task whose splits are rows: arrays sharing a leading dimension, or streamed windows."""

from __future__ import annotations

import numpy as np

from jaxlm.data.pipeline import ArrayRows, BatchIterator, eval_batches


class ArrayTask:
    """``self.train`` is served shuffled and resumable, ``self.valid`` every row once, in order;
    each is a dict of arrays or a row source read on demand (see :class:`BatchIterator`)."""

    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    seed: int

    def train_iterator(self, batch_size, process_index=0, process_count=1):
        return BatchIterator(self.train, batch_size, self.seed, process_index=process_index,
                             process_count=process_count)

    def eval_batches(self, batch_size, limit=None):
        return eval_batches(self.valid, batch_size, limit)

    def example_batch(self, batch_size):
        rows = ArrayRows(self.valid) if isinstance(self.valid, dict) else self.valid
        return rows[np.zeros(batch_size, np.int64)]
