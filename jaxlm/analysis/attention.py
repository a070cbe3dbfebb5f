"""What a Vision Transformer attends to: per-layer, per-head attention maps of one image,
their statistics, and a heatmap of the ``[CLS]`` token's attention over the patches.

Statistics per layer and head, from the ``[CLS]`` query (the token the classifier reads):
``mean`` and ``variance`` of its weights on the patches, and ``entropy`` (nats) of its whole
distribution over the ``n`` tokens — ``log(n)`` when it attends uniformly, 0 when it looks
at one token; ``mean_entropy`` averages the entropy of every query's distribution.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.special import entr

from jaxlm.errors import JaxlmError

# Pillow has no colour maps and matplotlib is a large dependency for one: a perceptually
# ordered dark-to-bright ramp (close to matplotlib's "inferno") written as its anchors.
RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def attention_maps(model, params, pixel_values) -> np.ndarray:
    """``[layers, heads, tokens, tokens]`` attention probabilities of the first image of
    ``pixel_values`` (rows: queries; token 0 is ``[CLS]``)."""
    out = model.apply({"params": params}, pixel_values=pixel_values, output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise JaxlmError(f"{type(model).__name__} has no attention maps (attention analysis needs a ViT)")
    return np.stack([np.asarray(a[0], np.float32) for a in out.attentions])


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of distributions along ``axis`` (0 log 0 = 0)."""
    return entr(np.asarray(p, np.float64)).sum(axis)


def attention_statistics(weights: np.ndarray) -> dict[str, np.ndarray]:
    """``[layers, heads]`` arrays ``mean``, ``variance``, ``entropy``, ``mean_entropy`` (see the module docstring)."""
    cls = weights[:, :, 0]
    return {"mean": cls[..., 1:].mean(-1), "variance": cls[..., 1:].var(-1), "entropy": entropy(cls),
            "mean_entropy": entropy(weights).mean(-1)}


def statistics_table(stats: dict[str, np.ndarray]) -> str:
    """One line per layer and head."""
    names = list(stats)
    lines = [f"{'layer':>5} {'head':>4}  " + "  ".join(f"{n:>12}" for n in names)]
    layers, heads = stats[names[0]].shape
    for layer in range(layers):
        for head in range(heads):
            lines.append(f"{layer:>5} {head:>4}  " + "  ".join(f"{stats[n][layer, head]:>12.6f}" for n in names))
    return "\n".join(lines)


def cls_grid(weights: np.ndarray, layer: int, head: int | None) -> np.ndarray:
    """The ``[CLS]`` query's weights on the patches of ``layer`` (negative: from the end) and
    ``head`` (``None``: the mean over heads), as the ``[rows, columns]`` grid of patches."""
    layers, heads, tokens, _ = weights.shape
    if not -layers <= layer < layers:
        raise JaxlmError(f"--layer {layer} is out of range: the model has {layers} layers (0..{layers - 1}, or -1)")
    if head is not None and not 0 <= head < heads:
        raise JaxlmError(f"--head {head} is out of range: the model has {heads} heads (0..{heads - 1})")
    row = weights[layer, :, 0, 1:]
    row = row.mean(0) if head is None else row[head]
    side = math.isqrt(tokens - 1)
    return row.reshape(side, side)


def colorize(values: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` of ``values`` scaled to their own range along :data:`RAMP`."""
    low, high = float(values.min()), float(values.max())
    t = (values - low) / (high - low) if high > low else np.zeros_like(values, np.float64)
    stops = np.linspace(0, 1, len(RAMP))
    return np.stack([np.interp(t, stops, RAMP[:, c]) for c in range(3)], -1).round().astype(np.uint8)


def write_heatmap(image: np.ndarray, grid: np.ndarray, path: str | Path, caption: str, side: int = 256) -> Path:
    """A PNG: the uint8 ``[height, width, channels]`` ``image`` beside itself overlaid with
    the patch ``grid`` of attention (each cell over its patch), and a caption below."""
    from PIL import Image, ImageDraw

    rgb = image[..., 0] if image.shape[-1] == 1 else image
    picture = Image.fromarray(rgb).convert("RGB").resize((side, side), Image.Resampling.NEAREST)
    heat = Image.fromarray(colorize(grid)).resize((side, side), Image.Resampling.NEAREST)
    gap, band = 8, 24
    canvas = Image.new("RGB", (2 * side + gap, side + band), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(Image.blend(picture, heat, 0.6), (side + gap, 0))
    ImageDraw.Draw(canvas).text((4, side + 6), caption, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
