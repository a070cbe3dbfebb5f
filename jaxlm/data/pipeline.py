"""Token streams cut into fixed-length windows (in memory or streamed from shards), and a
deterministic, resumable batch iterator."""

from __future__ import annotations

import numpy as np

from jaxlm.errors import DataError


class TokenWindows:
    """Windows of ``width`` tokens starting every ``stride`` tokens of a token stream, cut
    when read: ``stream`` is anything with ``len()`` and ``read(start, stop)`` (an in-memory
    array, or :class:`jaxlm.data.shards.ShardedTokens` over memory-mapped shards), so memory
    does not grow with the corpus. ``keep_last`` adds the final partial window."""

    def __init__(self, stream, width: int, stride: int, keep_last: bool = False):
        self.stream, self.width, self.stride = stream, width, stride
        self.n = max(len(stream) - width, -1) // stride + 1
        if keep_last and len(stream) > (self.n - 1) * stride + width:
            self.n += 1

    def __len__(self) -> int:
        return self.n

    def read(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """``tokens [k, width]`` zero-padded and each window's real length ``[k]``."""
        tokens = np.zeros((len(rows), self.width), np.int32)
        lengths = np.zeros(len(rows), np.int32)
        for i, r in enumerate(np.asarray(rows).tolist()):
            window = self.stream.read(r * self.stride, min(r * self.stride + self.width, len(self.stream)))
            tokens[i, :len(window)], lengths[i] = window, len(window)
        return tokens, lengths


class ArrayStream:
    """An in-memory token array as a stream for :class:`TokenWindows`."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.tokens[start:stop]


class CausalWindows:
    """Causal-LM rows of a token stream: ``tokens [k, seq_len + 1]`` and ``loss_mask [k, seq_len]``
    (1 on real targets). Consecutive windows with ``stride == seq_len`` overlap by one token,
    so every token after the first is a target exactly once; a smaller stride shows each token
    in several contexts (``data.train_overlap``)."""

    def __init__(self, stream, seq_len: int, stride: int | None = None, keep_last: bool = False):
        self.windows = TokenWindows(stream, seq_len + 1, stride or seq_len, keep_last)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, rows) -> dict[str, np.ndarray]:
        tokens, lengths = self.windows.read(rows)
        mask = (np.arange(tokens.shape[1] - 1) < (lengths - 1)[:, None]).astype(np.int32)
        return {"tokens": tokens, "loss_mask": mask}


def pack_blocks(docs: list[list[int]], eos_id: int | None, seq_len: int, keep_last: bool,
                stride: int | None = None) -> dict[str, np.ndarray]:
    """Concatenate documents (each followed by EOS) and cut all the :class:`CausalWindows` at
    once. ``keep_last`` keeps the final partial window, zero-padded (validation uses it so
    no text is skipped)."""
    sep = [] if eos_id is None else [eos_id]
    stream = np.fromiter((t for d in docs for t in (*d, *sep)), dtype=np.int32)
    rows = CausalWindows(ArrayStream(stream), seq_len, stride, keep_last)
    return rows[np.arange(len(rows))]


class IndexShuffle:
    """A pseudo-random permutation of ``range(n)`` evaluated index by index (a 4-round Feistel
    network over the next even power of two, cycle-walking back into range), so shuffling a
    stream of any size takes O(1) memory. grain's ``index_shuffle`` does the same in C++, but
    would make grain a core dependency for twenty lines of numpy."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = n
        self.half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.keys = np.random.default_rng([seed, epoch, 0x5EED]).integers(0, 2**63, self.ROUNDS, dtype=np.uint64)

    def _round(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        z = (x + key) * np.uint64(0x9E3779B97F4A7C15)  # splitmix64's finaliser: a well-mixed 64-bit hash
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & np.uint64((1 << self.half) - 1)

    def _permute(self, x: np.ndarray) -> np.ndarray:
        mask, bits = np.uint64((1 << self.half) - 1), np.uint64(self.half)
        left, right = x >> bits, x & mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << bits) | right

    def __getitem__(self, positions) -> np.ndarray:
        x = self._permute(np.asarray(positions, np.uint64))
        while (out := x >= self.n).any():  # cycle-walk: a permutation of the power-of-two domain
            x[out] = self._permute(x[out])
        return x.astype(np.int64)


class ArrayRows:
    """Rows of arrays sharing a leading dimension, in memory or memory-mapped (``np.load(mmap_mode="r")``:
    indexing with the rows of a batch reads only those rows)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, rows) -> dict[str, np.ndarray]:
        return {k: v[rows] for k, v in self.arrays.items()}


class BatchIterator:
    """Shuffled batches of rows; the order is a pure function of ``(seed, epoch)``, so
    ``state()`` / ``restore()`` resume exactly where it stopped.

    ``rows``: a dict of arrays sharing a leading dimension (shuffled by a materialised
    permutation), or a row source read on demand (``len()`` and ``rows[indices]``: streamed
    windows, shuffled by :class:`IndexShuffle` in O(1) memory). Each process of a multi-host
    job takes its own contiguous slice of every global batch and reads only those rows.
    """

    def __init__(self, rows, batch_size: int, seed: int, *, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1):
        self.materialised = isinstance(rows, dict)
        self.rows = ArrayRows(rows) if self.materialised else rows
        self.n = len(self.rows)
        if self.n < batch_size:
            raise DataError(f"only {self.n} training sequences but trainer.batch_size={batch_size}; lower "
                            "trainer.batch_size or data.seq_len, or add text")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.local = slice(process_index * batch_size // process_count,
                           (process_index + 1) * batch_size // process_count)
        self.batches_per_epoch = self.n // batch_size
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int):
        if not self.shuffle:
            return IdentityOrder()
        if self.materialised:
            return np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return IndexShuffle(self.n, self.seed, epoch)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        positions = np.arange(self.index * self.batch_size, (self.index + 1) * self.batch_size)[self.local]
        self.index += 1
        return self.rows[self._order[positions]]

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def restore(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise DataError(f"the checkpoint's data order was made with run.seed={state['seed']}, not "
                            f"{self.seed}; keep run.seed to resume")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)


class IdentityOrder:
    """Position i is row i (an unshuffled order that takes no memory)."""

    def __getitem__(self, positions):
        return np.asarray(positions)


def eval_batches(rows, batch_size: int, limit: int | None = None):
    """Every row once, in order (``rows``: arrays or a row source, as for :class:`BatchIterator`);
    the last batch is padded with zero rows (their masks are 0)."""
    rows = ArrayRows(rows) if isinstance(rows, dict) else rows
    n = len(rows)
    count = -(-n // batch_size)
    for b in range(count if limit is None else min(count, limit)):
        batch = rows[np.arange(b * batch_size, min((b + 1) * batch_size, n))]
        short = batch_size - len(next(iter(batch.values())))
        if short:
            batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        yield batch
