"""Structured shrinking of Transformers: attention heads by importance, and whole layers.

**Head importance** (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?"):
a gate ``g_h`` multiplies head ``h``'s output; its importance is ``E_x |dL(x) / dg_h|`` at
``g = 1``, normalised by the L2 norm over each layer's heads. Scaling a head's output is scaling
its slice of the attention's output projection, so the gates are applied to those params and the
models stay unchanged; per-example gradients come from a ``vmap`` over the rows of each batch.

**Removal** is physical: a removed head's query / key / value columns and output-projection rows
are cut out and the model config records it (``model.pruned_heads``), so the model is smaller and
faster. :func:`restore_heads` puts zero heads back for transformers, whose classes have one head
count for every layer; a zero head adds nothing, so the exported model computes the same function.
**Layer dropping** (and DistilBERT-style student initialisation, which keeps chosen layers) removes
whole layers and renumbers the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxlm.errors import JaxlmError


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its layers and attention params, and its config's depth / head fields."""

    layers: str
    attention: str
    qkv: tuple[str, ...]
    out: str
    depth_field: str


LAYOUTS = {
    "bert": Layout("layer", "attention", ("query", "key", "value"), "output", "num_hidden_layers"),
    "roberta": Layout("layer", "attention", ("query", "key", "value"), "output", "num_hidden_layers"),
    "distilbert": Layout("layer", "attention", ("q_lin", "k_lin", "v_lin"), "out_lin", "n_layers"),
    "gpt2": Layout("h", "attn", ("c_attn",), "c_proj", "n_layer"),
    "vit": Layout("layer", "attention", ("query", "key", "value"), "output", "num_hidden_layers"),
}


def layout_of(config) -> Layout:
    if config.type not in LAYOUTS:
        raise JaxlmError(f"head pruning and layer dropping work on {', '.join(LAYOUTS)} models, not {config.type}")
    if config.scan_layers:
        raise JaxlmError("head pruning and layer dropping need unscanned layers: use a run with "
                         "model.scan_layers=false")
    return LAYOUTS[config.type]


def layer_paths(params, config) -> dict[int, tuple[str, ...]]:
    """Layer index -> the path of its subtree (``("bert", "layer_3")``)."""
    lay = layout_of(config)
    pattern = re.compile(rf"{lay.layers}_(\d+)")
    found = {}
    for path in traverse_util.flatten_dict(params):
        for depth, part in enumerate(path):
            m = pattern.fullmatch(part)
            if m:
                found[int(m.group(1))] = path[:depth + 1]
                break
    return dict(sorted(found.items()))


def kept_heads(config, layer: int) -> list[int]:
    """The original indices of the heads layer ``layer`` still has, in order."""
    heads = getattr(config, type(config).heads_field)
    removed = set(config.removed_heads(layer))
    return [h for h in range(heads) if h not in removed]


def _attention_leaves(flat: dict, layer_path: tuple[str, ...], lay: Layout):
    """``(path, heads axis)`` of every attention param of one layer whose size is per head."""
    base = (*layer_path, lay.attention)
    for name in lay.qkv:
        for leaf in ("kernel", "bias"):
            if (*base, name, leaf) in flat:
                yield (*base, name, leaf), -2  # [..., heads, head_dim]
    yield (*base, lay.out, "kernel"), 0  # [heads, head_dim, embed]


def _check_params(flat: dict, layers: dict, lay: Layout, config) -> None:
    for i, path in layers.items():
        for leaf, axis in _attention_leaves(flat, path, lay):
            if leaf not in flat:
                raise JaxlmError(f"the params have no {'/'.join(leaf)}: not a {config.type} with this layout")
            if flat[leaf].shape[axis] != len(kept_heads(config, i)):
                raise JaxlmError(f"{'/'.join(leaf)} has {flat[leaf].shape[axis]} heads but the config says "
                                 f"{len(kept_heads(config, i))}: these params are not this model's")


def with_pruned_heads(config, per_layer, **changes):
    """``config`` recording ``per_layer`` removed heads (none at all: ``()``), validated."""
    pruned = [tuple(sorted(h)) for h in per_layer]
    return type(config).model_validate({**config.model_dump(), **changes,
                                        "pruned_heads": tuple(pruned) if any(pruned) else ()})


def remove_heads(params, config, remove: dict[int, list[int]]):
    """``(params, config)`` without the heads ``remove`` names (original indices, per layer)."""
    lay, layers = layout_of(config), layer_paths(params, config)
    flat = traverse_util.flatten_dict(params)
    _check_params(flat, layers, lay, config)
    pruned = {i: sorted(set(config.removed_heads(i)) | set(remove.get(i, ()))) for i in layers}
    for i, path in layers.items():
        keep = [pos for pos, h in enumerate(kept_heads(config, i)) if h not in set(remove.get(i, ()))]
        if not keep:
            raise JaxlmError(f"removing heads {remove[i]} would leave layer {i} without a head; keep at least one")
        for leaf, axis in _attention_leaves(flat, path, lay):
            flat[leaf] = jnp.take(flat[leaf], jnp.asarray(keep), axis=axis)
    return traverse_util.unflatten_dict(flat), with_pruned_heads(config, [pruned[i] for i in sorted(layers)])


def restore_heads(params, config):
    """``(params, config)`` with every removed head back, all zeros: the same function, the family's
    original shapes (what transformers' classes take)."""
    if not config.pruned_heads:
        return params, config
    lay, layers = layout_of(config), layer_paths(params, config)
    flat = traverse_util.flatten_dict(params)
    heads = getattr(config, type(config).heads_field)
    for i, path in layers.items():
        kept = kept_heads(config, i)
        for leaf, axis in _attention_leaves(flat, path, lay):
            x = flat[leaf]
            axis = axis % x.ndim
            full = jnp.zeros(x.shape[:axis] + (heads,) + x.shape[axis + 1:], x.dtype)
            flat[leaf] = full.at[(slice(None),) * axis + (jnp.asarray(kept),)].set(x)
    full_config = with_pruned_heads(config, [])
    return traverse_util.unflatten_dict(flat), full_config


def keep_layers(params, config, keep: list[int]):
    """``(params, config)`` with only the layers ``keep`` (original indices, in this order), renumbered
    from 0; ``model.pruned_heads`` follows them."""
    lay, layers = layout_of(config), layer_paths(params, config)
    bad = [i for i in keep if i not in layers]
    if bad or len(set(keep)) != len(keep) or not keep:
        raise JaxlmError(f"layers {keep} must be distinct indices of the model's {len(layers)} layers (0 to "
                         f"{len(layers) - 1}), at least one")
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, x in flat.items():
        index = next((i for i, p in layers.items() if path[:len(p)] == p), None)
        if index is None:
            out[path] = x
        elif index in keep:
            new = f"{lay.layers}_{keep.index(index)}"
            depth = len(layers[index]) - 1
            out[(*path[:depth], new, *path[depth + 1:])] = x
    new_config = with_pruned_heads(config, [config.removed_heads(i) for i in keep], **{lay.depth_field: len(keep)})
    return traverse_util.unflatten_dict(out), new_config


def gate_heads(params, config, gates: jax.Array):
    """``params`` with each head's output scaled by ``gates[layer, head]`` (over the kept heads)."""
    lay, layers = layout_of(config), layer_paths(params, config)
    flat = dict(traverse_util.flatten_dict(params))
    for i, path in layers.items():
        leaf = (*path, lay.attention, lay.out, "kernel")
        n = flat[leaf].shape[0]
        flat[leaf] = flat[leaf] * gates[i, :n, None, None].astype(flat[leaf].dtype)
    return traverse_util.unflatten_dict(flat)


def head_importance(model, params, config, task, batches) -> dict[int, np.ndarray]:
    """Per layer, the normalised importance of each kept head over the rows of ``batches``."""
    layers = layer_paths(params, config)
    most = max(len(kept_heads(config, i)) for i in layers)
    gates = jnp.ones((max(layers) + 1, most))

    def loss(gates, row):
        batch = jax.tree.map(lambda x: x[None], row)
        total, weight = task.loss(model, gate_heads(params, config, gates), batch, None, 0.0)
        return total / jnp.maximum(weight, 1.0), weight

    @jax.jit
    def summed(batch):
        grads, weights = jax.vmap(jax.grad(loss, has_aux=True), in_axes=(None, 0))(gates, batch)
        real = (weights > 0).astype(grads.dtype)  # the padding rows of a last batch count nowhere
        return jnp.einsum("r,rlh->lh", real, jnp.abs(grads)), real.sum()

    total, rows = jnp.zeros_like(gates), 0.0
    for batch in batches:
        g, n = summed(batch)
        total, rows = total + g, rows + n
    if not rows:
        raise JaxlmError("no rows to measure head importance on: the split is empty")
    importance = np.asarray(total / rows)
    out = {}
    for i in layers:
        scores = importance[i, :len(kept_heads(config, i))]
        out[i] = scores / max(np.linalg.norm(scores), 1e-20)
    return out


def least_important(importance: dict[int, np.ndarray], config, fraction: float) -> dict[int, list[int]]:
    """The ``fraction`` of all kept heads with the lowest importance (original indices per layer),
    never a layer's last head."""
    if not 0 < fraction < 1:
        raise JaxlmError(f"--heads {fraction} is outside (0, 1); give the fraction of heads to remove, e.g. 0.25")
    ranked = sorted((float(s), i, kept_heads(config, i)[pos]) for i, scores in importance.items()
                    for pos, s in enumerate(scores))
    count = round(fraction * len(ranked))
    left = {i: len(scores) for i, scores in importance.items()}
    remove: dict[int, list[int]] = {}
    for _, i, head in ranked:
        if count == 0:
            break
        if left[i] > 1:
            remove.setdefault(i, []).append(head)
            left[i] -= 1
            count -= 1
    return remove


def shrink_run(source: str, out: str, heads: float | None = None, drop_layers: list[int] | None = None,
               batches: int = 8, step: int | None = None, best: bool = False) -> str:
    """``jaxlm prune RUN --heads F / --drop-layers ...``: remove the least important fraction ``heads``
    of the attention heads (measured on ``batches`` validation batches) and / or whole layers."""
    from jaxlm.compress.quantize import is_quantized
    from jaxlm.compress.runs import check_out, read_run, with_out_dir, write_run
    from jaxlm.config import load_config
    from jaxlm.models import build_model, head_of
    from jaxlm.train.trainer import setup

    check_out(out)
    src = read_run(source, step, best)
    if is_quantized(src.params):
        raise JaxlmError(f"{source} is quantized; shrink the float run, then quantize the result")
    params, mc = src.params, src.config.model
    lines = []
    if heads:
        s = setup(load_config(src.path / "config.yaml", [f"run.out_dir={src.path}"]).model_copy(
            update={"distill": None}))  # the run's own task and loss, without a teacher
        size = s.config.trainer.eval_batch_size or s.config.trainer.batch_size
        importance = head_importance(src.model, params, mc, s.task, s.task.eval_batches(size, batches))
        remove = least_important(importance, mc, heads)
        params, mc = remove_heads(params, mc, remove)
        lines.append(f"removed {sum(map(len, remove.values()))} heads by importance: " +
                     ", ".join(f"layer {i}: {sorted(h)}" for i, h in sorted(remove.items())))
    if drop_layers:
        depth = getattr(mc, layout_of(mc).depth_field)
        keep = [i for i in range(depth) if i not in set(drop_layers)]
        if len(keep) + len(set(drop_layers)) != depth:
            raise JaxlmError(f"--drop-layers {drop_layers} must name layers of the model's {depth} (0 to {depth - 1})")
        params, mc = keep_layers(params, mc, keep)
        lines.append(f"dropped layers {sorted(set(drop_layers))}; {len(keep)} remain")
    if not lines:
        raise JaxlmError("give --heads FRACTION and / or --drop-layers I,J,...")
    before = sum(x.size for x in jax.tree.leaves(src.params))
    after = sum(x.size for x in jax.tree.leaves(params))
    config = with_out_dir(src.config, out, model=mc.model_dump(mode="json"))
    model = build_model(mc, head_of(src.model))
    write_run(src, out, params, config=config, model=model,
              shrinking={"method": "heads" if heads else "layers", "heads": heads, "drop_layers": drop_layers})
    lines.append(f"params {before:,} -> {after:,} ({after / before:.1%}); wrote {out}")
    return "\n".join(lines)
