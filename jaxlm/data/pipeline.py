"""Packing token streams into fixed-length blocks, and a deterministic, resumable batch iterator."""

from __future__ import annotations

import numpy as np

from jaxlm.errors import DataError


def pack_blocks(docs: list[list[int]], eos_id: int | None, seq_len: int, keep_last: bool,
                stride: int | None = None) -> dict[str, np.ndarray]:
    """Concatenate documents (each followed by EOS) and cut into ``seq_len + 1`` token windows.

    Windows start every ``stride`` tokens (default ``seq_len``: consecutive windows overlap
    by one token, so every token after the first is a target exactly once; a smaller stride
    shows each token in several contexts). ``keep_last`` keeps the final partial window,
    zero-padded, with ``loss_mask`` marking the real targets (validation uses it so no text
    is skipped). Returns ``tokens [n, seq_len + 1]`` and ``loss_mask [n, seq_len]``.
    """
    sep = [] if eos_id is None else [eos_id]
    stream = np.fromiter((t for d in docs for t in (*d, *sep)), dtype=np.int32)
    stride = stride or seq_len
    n_targets = max(len(stream) - 1, 0)
    n = max(n_targets - seq_len, -1) // stride + 1
    if keep_last and n_targets > (n - 1) * stride + seq_len:
        n += 1
    tokens = np.zeros((n, seq_len + 1), np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    for i in range(n):
        window = stream[i * stride: i * stride + seq_len + 1]
        tokens[i, : len(window)] = window
        mask[i, : len(window) - 1] = 1
    return {"tokens": tokens, "loss_mask": mask}


class BatchIterator:
    """Shuffled batches over arrays sharing a leading dimension; the order is a pure function
    of ``(seed, epoch)``, so ``state()`` / ``restore()`` resume exactly where it stopped.

    Each process of a multi-host job takes its own contiguous slice of every global batch.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, *, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        if self.n < batch_size:
            raise DataError(f"only {self.n} training sequences but trainer.batch_size={batch_size}; lower "
                            "trainer.batch_size or data.seq_len, or add text")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.local = slice(process_index * batch_size // process_count,
                           (process_index + 1) * batch_size // process_count)
        self.batches_per_epoch = self.n // batch_size
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        rows = self._order[self.index * self.batch_size:(self.index + 1) * self.batch_size][self.local]
        self.index += 1
        return {k: v[rows] for k, v in self.arrays.items()}

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def restore(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise DataError(f"the checkpoint's data order was made with run.seed={state['seed']}, not "
                            f"{self.seed}; keep run.seed to resume")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, limit: int | None = None):
    """Every row once, in order; the last batch is padded with zero rows (their masks are 0)."""
    n = len(next(iter(arrays.values())))
    count = -(-n // batch_size)
    for b in range(count if limit is None else min(count, limit)):
        batch = {k: v[b * batch_size:(b + 1) * batch_size] for k, v in arrays.items()}
        short = batch_size - len(next(iter(batch.values())))
        if short:
            batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        yield batch
