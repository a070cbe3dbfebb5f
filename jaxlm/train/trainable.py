"""What trains: the params split into a trainable tree and a frozen tree.

Gradients are taken, and optimizer state kept, for the trainable tree only; the frozen
tree is a constant input of the jitted step (:mod:`jaxlm.train.step`), sharded by the same
logical-axis rules, never donated or updated. Which leaves train is decided by rules over
their paths (``bert/layer_0/attention/query/kernel``):

- with no rule, every param trains (and the frozen tree is empty: a plain run);
- ``trainer.trainable`` regexes: only matching params train (a linear probe: ``[classifier]``);
- a PEFT method (:mod:`jaxlm.peft`) adds its own params (LoRA matrices, adapters, prompts)
  and its ``modules_to_save``;
- ``trainer.freeze`` regexes then take params out again.

A checkpoint of a run with a frozen tree holds the trainable params only; its metadata
records the frozen tree's :func:`fingerprint`, so a resumed run, or a run loaded for
evaluation, refuses a different base (:func:`check_frozen`).

How to use it for other constants of the step (a distillation teacher, the frozen
discriminator of a GAN step): see ``docs/constants.md``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxlm.errors import ConfigError, JaxlmError

log = logging.getLogger("jaxlm")

Path = tuple[str, ...]


def path_name(path: Path) -> str:
    """The ``/``-joined name of a param path, as rules and messages spell it."""
    return "/".join(path)


def flat(tree) -> dict[Path, Any]:
    """A nested dict of params (arrays, boxes or ``ShapeDtypeStruct`` s) by path."""
    return traverse_util.flatten_dict(tree) if tree else {}


def unflat(items: dict[Path, Any]) -> dict:
    return traverse_util.unflatten_dict(items) if items else {}


@dataclass(frozen=True)
class TrainableSplit:
    """The set of trainable param paths of one model (every other path is frozen)."""

    trainable: frozenset[Path]
    total: int  # number of param leaves in the model

    @property
    def everything(self) -> bool:
        """Every param trains: no frozen tree."""
        return len(self.trainable) == self.total

    def split(self, params) -> tuple[dict, dict]:
        """``params`` -> ``(trainable, frozen)``, two nested dicts that share no leaf."""
        items = flat(params)
        return (unflat({p: x for p, x in items.items() if p in self.trainable}),
                unflat({p: x for p, x in items.items() if p not in self.trainable}))


def merge(trainable, frozen) -> dict:
    """The full param tree from its two parts (inside the jitted step: no copy is made)."""
    if not frozen:
        return trainable
    return unflat({**flat(frozen), **flat(trainable)})


def make_split(params, *, trainable: Iterable[str] = (), freeze: Iterable[str] = (),
               extra: Iterable[Path] = ()) -> TrainableSplit:
    """The split of ``params`` (any tree with their paths) by ``trainer.trainable`` /
    ``trainer.freeze`` regexes (``re.search`` on the ``/``-joined path) and ``extra`` paths
    that a PEFT method trains. A pattern that matches no param is an error naming some."""
    paths = list(flat(params))
    extra = set(extra)
    keep = set(paths) if not trainable and not extra else set(extra)
    for key, patterns in (("trainer.trainable", trainable), ("trainer.freeze", freeze)):
        for pattern in patterns:
            try:
                matched = {p for p in paths if re.search(pattern, path_name(p))}
            except re.error as e:
                raise ConfigError(f"{key} pattern {pattern!r} is not a valid regex ({e})") from None
            if not matched:
                shown = ", ".join(path_name(p) for p in paths[:8])
                raise ConfigError(f"{key} pattern {pattern!r} matches no parameter; the params are named like: "
                                  f"{shown} ({len(paths)} in all)")
            keep = keep | matched if key == "trainer.trainable" else keep - matched
    if not keep:
        raise ConfigError("no parameter is left to train: trainer.freeze removed them all; loosen its patterns")
    return TrainableSplit(frozenset(keep), len(paths))


def _stored(x) -> bool:
    """A leaf that stands for one param though it holds several arrays (a quantized weight)."""
    return hasattr(x, "layout")


def count(tree) -> int:
    """Params in a tree (a quantized weight counts as the params it stands for)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree, is_leaf=_stored))


def describe(trainable, frozen) -> str:
    """``'trains 1.2M of 4.4M params (27.3 %)'``: the log line the trainer prints."""
    n, total = count(trainable), count(trainable) + count(frozen)
    return f"trains {_amount(n)} of {_amount(total)} params ({100 * n / max(total, 1):.2f} %)"


def _amount(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def fingerprint(tree) -> str:
    """A 16-hex-digit digest of a param tree's names, shapes, dtypes and exact bits (a quantized
    weight's arrays each count as a leaf).

    Each leaf's bits are reduced on its devices by two wrapping uint32 sums (plain and
    position-weighted), so a sharded or multi-host tree is never gathered; the sums, paths,
    shapes and dtypes are then hashed with SHA-256 on the host. Written here because no
    library fingerprints sharded arrays.
    """
    items = sorted((path_name(tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p)), x)
                   for p, x in jax.tree_util.tree_flatten_with_path(tree)[0])
    if not items:
        return ""
    sums = jax.device_get(_leaf_sums([x for _, x in items]))
    text = repr([(name, tuple(x.shape), str(x.dtype), int(a), int(b))
                 for (name, x), (a, b) in zip(items, sums, strict=True)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@jax.jit
def _leaf_sums(leaves):
    out = []
    for x in leaves:
        bits = _as_uint32(x).reshape(-1)
        weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
        out.append((jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)))
    return out


def _as_uint32(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize * 8
    if width > 32:
        raise JaxlmError(f"cannot fingerprint a {x.dtype} array: 64-bit params are not supported")
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def frozen_meta(frozen) -> dict:
    """What a checkpoint records about the frozen tree (``{}`` when everything trains)."""
    if not frozen:
        return {}
    return {"fingerprint": fingerprint(frozen), "params": count(frozen)}


def check_frozen(saved: dict | None, frozen, where: str, fix: str) -> None:
    """Refuse a frozen tree that is not the one a checkpoint was trained against."""
    saved = saved or {}
    now = frozen_meta(frozen)
    if saved.get("fingerprint", "") != now.get("fingerprint", ""):
        what = (f"its frozen base has fingerprint {saved['fingerprint']} ({saved['params']:,} params) but the one "
                f"built now has {now.get('fingerprint') or 'none'} ({now.get('params', 0):,} params)"
                if saved else "it trained every parameter but this config freezes some")
        raise JaxlmError(f"{where} does not match: {what}; {fix}")
