"""Long texts as overlapping windows of token ids, for classifiers that read at most
``data.seq_len`` tokens: a text becomes up to ``max_windows`` windows starting every
``stride`` tokens; the model scores each and the task pools their logits.

Rows are ``[texts, max_windows, length]`` arrays plus ``window_mask [texts, max_windows]``
(1 for a real window). Unused window slots repeat the text's first window, so every slot is
a well-formed input (no all-padding row reaches the model) and the mask alone keeps them out
of the pooling.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def window_starts(n_tokens: int, size: int, stride: int) -> list[int]:
    """Starts of the windows that cover ``n_tokens``: every ``stride``, the last one reaching the end."""
    if n_tokens <= size:
        return [0]
    starts = list(range(0, n_tokens - size, stride))
    return starts + [n_tokens - size] if starts[-1] != n_tokens - size else starts


def windowed(ids: list[list[int]], size: int, stride: int, max_windows: int, frame
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``frame(list of token id lists) -> (rows, cut)`` makes single rows (word padding or
    ``[CLS] ... [SEP]`` framing) of ``size`` content tokens; returns the stacked windows and
    which texts had more than ``max_windows`` windows (their ends are cut)."""
    pieces, owners, cut = [], [], np.zeros(len(ids), bool)
    for t, row in enumerate(ids):
        starts = window_starts(len(row), size, stride)
        cut[t] = len(starts) > max_windows
        for s in starts[:max_windows]:
            pieces.append(row[s:s + size])
            owners.append(t)
    flat, _ = frame(pieces)
    owners = np.asarray(owners)
    slots = np.zeros((len(ids), max_windows), np.int64)
    mask = np.zeros((len(ids), max_windows), np.int32)
    for t in range(len(ids)):
        mine = np.flatnonzero(owners == t)
        slots[t] = mine[0]
        slots[t, :len(mine)] = mine
        mask[t, :len(mine)] = 1
    rows = {k: v[slots] for k, v in flat.items()}
    rows["window_mask"] = mask
    return rows, cut


def flatten_windows(inputs: dict) -> dict:
    """``[texts, windows, length]`` model inputs -> ``[texts * windows, length]``."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}


def pool_logits(logits, window_mask, pooling: str):
    """``logits [texts * windows, classes]`` -> ``[texts, classes]``: the mean or the max over
    each text's real windows."""
    logits = logits.reshape(*window_mask.shape, -1).astype(jnp.float32)
    valid = window_mask[..., None] > 0
    if pooling == "max":  # a row with no window (the padding of a last eval batch) pools to zeros
        return jnp.where(valid.any(1), jnp.where(valid, logits, -jnp.inf).max(1), 0)
    return jnp.where(valid, logits, 0).sum(1) / jnp.maximum(window_mask.sum(1), 1)[:, None]
