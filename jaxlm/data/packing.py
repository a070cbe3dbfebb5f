"""Sequence packing for fine-tuning (classification, seq2seq): several short examples share one
row, so padding does not dominate the compute on short texts.

Each packed row keeps its examples apart: ``segment_ids`` (1, 2, ... per example, 0 on
padding) become an attention mask in which no token sees another example
(:func:`jaxlm.layers.attention.segment_mask`), ``position_ids`` restart at 0 for every
example, and ``pooled_positions`` point at each example's first token (``[CLS]``), where the
classification head reads it. A packed row gives each example the logits it gets alone.
"""

from __future__ import annotations

import numpy as np


def best_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Example indices grouped into rows of at most ``capacity`` tokens: best-fit decreasing
    (longest first, each into the fullest row it fits), a pure function of ``lengths``.
    Rows are kept by their free space, so each placement costs O(capacity), not O(rows)."""
    by_space: dict[int, list[int]] = {}  # free tokens -> rows with that much room
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        need = int(lengths[i])
        space = next((s for s in range(need, capacity + 1) if by_space.get(s)), None)
        if space is None:
            rows.append([])
            row, space = len(rows) - 1, capacity
        else:
            row = by_space[space].pop()
        rows[row].append(i)
        by_space.setdefault(space - need, []).append(row)
    return [sorted(r) for r in rows]


def pack_rows(rows: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Framed examples (``input_ids``, ``token_type_ids``, ``attention_mask`` ``[n, length]``,
    padded at the end) packed into as few rows of ``length`` tokens as fit them.

    Returns ``input_ids``, ``token_type_ids``, ``position_ids``, ``segment_ids`` ``[rows, length]``
    and ``pooled_positions``, ``label``, ``label_weight`` ``[rows, P]`` (P: the most examples in
    a row; unused slots have weight 0).
    """
    n, length = rows["input_ids"].shape
    lengths = rows["attention_mask"].sum(1)
    groups = best_fit(lengths, length)
    most = max(map(len, groups), default=1)
    out = {k: np.zeros((len(groups), length), np.int32) for k in ("input_ids", "token_type_ids", "position_ids",
                                                                   "segment_ids")}
    out.update({k: np.zeros((len(groups), most), np.int32) for k in ("pooled_positions", "label", "label_weight")})
    for r, group in enumerate(groups):
        start = 0
        for slot, i in enumerate(group):
            end = start + int(lengths[i])
            out["input_ids"][r, start:end] = rows["input_ids"][i, :lengths[i]]
            out["token_type_ids"][r, start:end] = rows["token_type_ids"][i, :lengths[i]]
            out["position_ids"][r, start:end] = np.arange(lengths[i])
            out["segment_ids"][r, start:end] = slot + 1
            out["pooled_positions"][r, slot] = start
            out["label"][r, slot], out["label_weight"][r, slot] = labels[i], 1
            start = end
    return out


def pack_pairs(rows: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Seq2seq rows (``input_ids`` / ``attention_mask`` sources, ``decoder_input_ids`` / ``labels`` /
    ``decoder_attention_mask`` targets, padded at the end) packed in their order: each packed row
    takes pairs while both its source and its target side have room (next fit: the pairs of a
    synthetic or sorted set are alike, so the simplest packing wastes little).

    Adds ``segment_ids`` / ``decoder_segment_ids`` (pair k of a row is segment k + 1 on both sides);
    ``attention_mask`` / ``decoder_attention_mask`` stay 1 on every real token.
    """
    sources, targets = rows["attention_mask"].sum(1), rows["decoder_attention_mask"].sum(1)
    width, target_width = rows["input_ids"].shape[1], rows["labels"].shape[1]
    groups, current, used = [], [], (0, 0)
    for i in range(len(sources)):
        if current and (used[0] + sources[i] > width or used[1] + targets[i] > target_width):
            groups.append(current)
            current, used = [], (0, 0)
        current.append(i)
        used = (used[0] + int(sources[i]), used[1] + int(targets[i]))
    groups += [current] if current else []
    out = {k: np.full((len(groups), v.shape[1]), pad_id if k in ("input_ids", "decoder_input_ids", "labels") else 0,
                      np.int32) for k, v in rows.items()}
    out["segment_ids"] = np.zeros((len(groups), width), np.int32)
    out["decoder_segment_ids"] = np.zeros((len(groups), target_width), np.int32)
    for r, group in enumerate(groups):
        s = t = 0
        for slot, i in enumerate(group):
            for segments, start, size, keys in (("segment_ids", s, sources[i], ("input_ids", "attention_mask")),
                                                ("decoder_segment_ids", t, targets[i],
                                                 ("decoder_input_ids", "labels", "decoder_attention_mask"))):
                for k in keys:
                    out[k][r, start:start + size] = rows[k][i, :size]
                out[segments][r, start:start + size] = slot + 1
            s, t = s + sources[i], t + targets[i]
    return out
