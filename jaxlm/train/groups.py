"""What trains: parameter groups, each with its own optax transformation and state.

A run trains one group by default: every parameter that ``trainer.trainable`` selects (all of
them when unset; a linear probe trains only ``classifier``). A task may declare several
groups instead (a GAN's ``discriminator`` and ``generator``), each with its own loss, its own
optimizer (``optimizer.groups.<name>`` overrides the ``optimizer`` section) and a number of
updates per trainer step; the one train step updates them in turn (jaxlm/train/step.py).

Gradients are taken of each group's trainable leaves only (the frozen rest is a constant of
the loss), so frozen parameters cost no gradient memory and have no optimizer state
(``optax.set_to_zero`` masking would still compute their gradients, optax #477). The full
params stay in ``TrainState.params``: checkpoints, evaluation and inference see one tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import optax
from flax import traverse_util

from jaxlm.errors import ConfigError

Path = tuple[str, ...]


@dataclass(frozen=True)
class GroupSpec:
    """What a task declares: a group's name, which top-level params it owns (``None``: all), its
    loss ``(model, params, batch, dropout_rng, label_smoothing) -> (sum, weight)`` and how many
    updates it gets per trainer step."""

    name: str
    loss: Callable
    owns: tuple[str, ...] | None = None
    repeats: int = 1
    random: bool = False
    """The loss draws random numbers (a GAN's latents): it gets a key even for models without dropout."""


@dataclass(frozen=True)
class ParamGroup:
    """A group ready to train: its spec, the paths of the leaves it trains, its optimizer and schedule."""

    spec: GroupSpec
    paths: frozenset | None
    """``None``: every param (the default group of a run without ``trainer.trainable``)."""
    tx: Any
    schedule: optax.Schedule

    @property
    def name(self) -> str:
        return self.spec.name

    def trainable(self, params) -> dict:
        """The nested dict of this group's leaves."""
        return traverse_util.unflatten_dict({p: v for p, v in traverse_util.flatten_dict(params).items()
                                             if p in self.paths})

    def merge(self, params, trainable) -> dict:
        """``params`` with this group's leaves replaced by ``trainable``'s."""
        return traverse_util.unflatten_dict({**traverse_util.flatten_dict(params),
                                             **traverse_util.flatten_dict(trainable)})


def path_name(path: Path) -> str:
    return "/".join(path)


def select_paths(params, owns: tuple[str, ...] | None, patterns: list[str] | None) -> frozenset:
    """Paths of the leaves under the top-level keys ``owns`` whose ``/``-joined name matches one of
    ``patterns`` (``re.search``; ``None``: every leaf)."""
    compiled = [re.compile(p) for p in patterns or []]
    return frozenset(p for p in traverse_util.flatten_dict(params)
                     if (owns is None or p[0] in owns)
                     and (patterns is None or any(c.search(path_name(p)) for c in compiled)))


def build_groups(specs: list[GroupSpec], params, patterns: list[str] | None, make_tx) -> list[ParamGroup]:
    """The groups of ``specs`` over ``params`` (abstract or real), trainable leaves chosen by
    ``trainer.trainable`` ``patterns``; ``make_tx(name) -> (tx, schedule)`` builds each optimizer."""
    groups = []
    for spec in specs:
        if spec.owns is None and patterns is None:
            groups.append(ParamGroup(spec, None, *make_tx(spec.name)))
            continue
        paths = select_paths(params, spec.owns, patterns)
        if not paths:
            names = sorted(path_name(p) for p in traverse_util.flatten_dict(params))
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            where = f" of {spec.name}" if len(specs) > 1 else ""
            raise ConfigError(f"trainer.trainable={patterns} matches no parameter{where}; params are named like "
                              f"{shown} (patterns are regular expressions searched in those names)")
        groups.append(ParamGroup(spec, paths, *make_tx(spec.name)))
    return groups


def init_opt_state(groups: list[ParamGroup], params):
    """One group: its optimizer state (the layout checkpoints had before groups); several: a dict by name."""
    states = {g.name: g.tx.init(params if g.paths is None else g.trainable(params)) for g in groups}
    return states[groups[0].name] if len(groups) == 1 else states


def group_states(groups: list[ParamGroup], opt_state) -> dict:
    return {groups[0].name: opt_state} if len(groups) == 1 else dict(opt_state)


def pack_states(groups: list[ParamGroup], states: dict):
    return states[groups[0].name] if len(groups) == 1 else states
