"""What a Transformer attends to: per-layer, per-head attention maps of one image (ViT) or one
text (BERT, DistilBERT, GPT-2, and any model that returns ``attentions``), their statistics, a
heatmap of a ViT's ``[CLS]`` attention over the patches, and token x token heatmaps of a text.

Statistics per layer and head, from one query token — ``[CLS]`` for a ViT and an encoder (the
token the classifier reads), the last token for a causal LM (the one that sees every token):
``mean`` and ``variance`` of its weights on the other tokens, and ``entropy`` (nats) of its
whole distribution over the ``n`` tokens — ``log(n)`` when it attends uniformly, 0 when it looks
at one token; ``mean_entropy`` averages the entropy of every query's distribution.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
from scipy.special import entr

from jaxlm.errors import JaxlmError

# Pillow has no colour maps and matplotlib is a large dependency for one: a perceptually
# ordered dark-to-bright ramp (close to matplotlib's "inferno") written as its anchors.
RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def attention_maps(model, params, pixel_values=None, **inputs) -> np.ndarray:
    """``[layers, heads, tokens, tokens]`` attention probabilities of the first example of
    ``pixel_values`` (a ViT; token 0 is ``[CLS]``) or of the text ``inputs`` (``input_ids``,
    ``attention_mask``); rows are queries."""
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    module = getattr(model, "module", model)  # a StatefulModel's module
    if "output_attentions" not in inspect.signature(type(module).__call__).parameters:
        raise JaxlmError(f"a {model.config.type} model has no attention maps: jaxlm attention needs a Transformer "
                         "(ViT, BERT, DistilBERT, GPT-2)")
    out = model.apply({"params": params}, **inputs, output_attentions=True)
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[0] is None:
        raise JaxlmError(f"{type(model).__name__} has no attention maps: jaxlm attention needs a Transformer "
                         "(ViT, BERT, DistilBERT, GPT-2)")
    return np.stack([np.asarray(a[0], np.float32) for a in attentions])


def text_inputs(tokenizer, text: str, max_positions: int | None) -> tuple[dict, list[str], int]:
    """``(inputs, tokens, query)`` of ``text`` for :func:`attention_maps`: framed as
    ``[CLS] text [SEP]`` when the tokenizer has those tokens (BERT, DistilBERT; query 0), else
    the plain tokens (GPT-2; query -1, the last); cut to the model's positions."""
    ids = tokenizer.encode(text)
    cls, sep = tokenizer.token_id("[CLS]"), tokenizer.token_id("[SEP]")
    framed = cls is not None and sep is not None
    room = (max_positions or len(ids) + 2) - (2 if framed else 0)
    ids = [cls, *ids[:room], sep] if framed else ids[:room]
    if len(ids) < (3 if framed else 1):
        raise JaxlmError(f"--text {text!r} has no tokens in this model's vocabulary; give some words")
    tokens = [tokenizer.tok.id_to_token(i) or str(i) for i in ids]
    inputs = {"input_ids": np.asarray([ids], np.int32), "attention_mask": np.ones((1, len(ids)), np.int32)}
    return inputs, tokens, 0 if framed else -1


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of distributions along ``axis`` (0 log 0 = 0)."""
    return entr(np.asarray(p, np.float64)).sum(axis)


def attention_statistics(weights: np.ndarray, query: int = 0) -> dict[str, np.ndarray]:
    """``[layers, heads]`` arrays ``mean``, ``variance``, ``entropy``, ``mean_entropy`` of the
    ``query`` token's attention (see the module docstring)."""
    row = weights[:, :, query]
    others = np.delete(row, query % weights.shape[-1], axis=-1)
    return {"mean": others.mean(-1), "variance": others.var(-1), "entropy": entropy(row),
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


def check_layer_head(weights: np.ndarray, layer: int | None, head: int | None) -> None:
    """Refuse a ``--layer`` / ``--head`` the ``[layers, heads, ...]`` maps do not have."""
    layers, heads = weights.shape[:2]
    if layer is not None and not -layers <= layer < layers:
        raise JaxlmError(f"--layer {layer} is out of range: the model has {layers} layers (0..{layers - 1}, or -1)")
    if head is not None and not 0 <= head < heads:
        raise JaxlmError(f"--head {head} is out of range: the model has {heads} heads (0..{heads - 1})")


def cls_grid(weights: np.ndarray, layer: int, head: int | None) -> np.ndarray:
    """The ``[CLS]`` query's weights on the patches of ``layer`` (negative: from the end) and
    ``head`` (``None``: the mean over heads), as the ``[rows, columns]`` grid of patches."""
    check_layer_head(weights, layer, head)
    tokens = weights.shape[2]
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


# Fonts that hold CJK glyphs, tried (after matplotlib's DejaVu Sans) for token labels when installed.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Droid Sans Fallback", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")


def label_fonts(labels: list[str]) -> tuple[list[str], bool]:
    """The font families (matplotlib falls back glyph by glyph along the list) for ``labels``,
    and whether they hold every character."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    files = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    families = [name for name in ("DejaVu Sans", *CJK_FONTS) if name in files]
    covered = set().union(*(FT2Font(files[name]).get_charmap() for name in families))
    return families, all(ord(c) in covered for label in labels for c in label if not c.isspace())


def write_token_heatmaps(weights: np.ndarray, tokens: list[str], layers: list[int], heads: list[int],
                         path: str | Path, caption: str) -> tuple[Path, bool]:
    """A PNG of the token x token maps (rows: queries, columns: keys) of ``layers`` x ``heads``
    (a grid, one map per layer and head), labelled with the tokens; each map is scaled to its own
    maximum. Returns the path and whether the labels are the tokens (``False``: the installed
    fonts lack their glyphs, so they are the tokens' positions)."""
    from jaxlm.analysis.plots import figure, save

    n = len(tokens)
    families, drawable = label_fonts(tokens)
    labels = tokens if drawable else [str(i) for i in range(n)]
    cell = max(2.2, min(0.22 * n, 7.0)) if len(layers) * len(heads) == 1 else max(1.6, min(0.12 * n, 3.2))
    fig = figure(cell * len(heads) + 0.6, cell * len(layers) + 0.5)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    fontsize = max(3.0, min(9.0, 240 / (n * max(len(heads), len(layers)))))
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(weights[layer, head], cmap="inferno", vmin=0, interpolation="nearest")
            ax.set_title(f"layer {layer % weights.shape[0]}, head {head}", fontsize="small")
            ticks = range(n) if n <= 64 else []
            ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=fontsize, fontfamily=families)
            ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize, fontfamily=families)
            if len(layers) * len(heads) == 1:
                fig.colorbar(image, ax=ax, label="attention weight")
    fig.suptitle(caption, fontsize="small")
    return save(fig, path), drawable
