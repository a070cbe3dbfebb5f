"""What trains: parameter groups, each with its own optax transformation and state.

A run trains one group by default: every parameter left trainable by ``trainer.trainable`` /
``trainer.freeze`` (jaxlm/train/trainable.py, whose frozen rest is a constant of the step). A
task may declare several groups instead (a GAN's ``discriminator`` and ``generator``), each with its own loss, its own
optimizer (``optimizer.groups.<name>`` overrides the ``optimizer`` section) and a number of
updates per trainer step; the one train step updates them in turn (jaxlm/train/step.py).

Gradients are taken of each group's leaves only (the other groups are constants of its loss),
and each group's optimizer state covers its own leaves; ``TrainState.params`` holds every
group, so a checkpoint holds both players of a GAN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optax
from flax import traverse_util

from jaxlm.errors import ConfigError



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


def build_groups(specs: list[GroupSpec], trainable, make_tx) -> list[ParamGroup]:
    """The groups of ``specs`` over the ``trainable`` tree (abstract or real: what
    ``trainer.trainable`` / ``trainer.freeze`` left to train, jaxlm/train/trainable.py);
    ``make_tx(name, own_trainable) -> (tx, schedule)`` builds each optimizer."""
    groups = []
    for spec in specs:
        if spec.owns is None:
            groups.append(ParamGroup(spec, None, *make_tx(spec.name, trainable)))
            continue
        paths = frozenset(p for p in traverse_util.flatten_dict(trainable) if p[0] in spec.owns)
        if not paths:
            raise ConfigError(f"the {spec.name} parameters ({', '.join(spec.owns)}) are all frozen; "
                              "trainer.trainable / trainer.freeze must leave them some to train")
        group = ParamGroup(spec, paths, None, None)
        groups.append(ParamGroup(spec, paths, *make_tx(spec.name, group.trainable(trainable))))
    return groups


def init_opt_state(groups: list[ParamGroup], params):
    """One group: its optimizer state (the layout checkpoints had before groups); several: a dict by name."""
    states = {g.name: g.tx.init(params if g.paths is None else g.trainable(params)) for g in groups}
    return states[groups[0].name] if len(groups) == 1 else states


def group_states(groups: list[ParamGroup], opt_state) -> dict:
    return {groups[0].name: opt_state} if len(groups) == 1 else dict(opt_state)


def pack_states(groups: list[ParamGroup], states: dict):
    return states[groups[0].name] if len(groups) == 1 else states
