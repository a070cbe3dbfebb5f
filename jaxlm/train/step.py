"""The train state and the jit-compiled train / eval steps.

Both steps take ``constants``: a pytree the step reads but never updates or donates (the
frozen params of a parameter-efficient run, a distillation teacher). ``assemble(trainable,
constants)`` builds the params the model is applied with; gradients are taken with respect to
the trainable tree only, so none are computed for what ``constants`` holds. A task whose loss
needs the constants itself (a teacher's logits) sets ``needs_constants = True`` and receives them
as the ``constants`` keyword of ``loss`` and ``eval_sums``. See docs/constants.md.
Parameter groups (jaxlm/train/groups.py) split the trainable tree further: each group is
updated in turn, with its own optimizer, the other groups held constant for its gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxlm.models.state import StatefulModel
from jaxlm.train.groups import GroupSpec, ParamGroup, group_states, pack_states
from jaxlm.train.optim import plateau_scale
from jaxlm.train.precision import LossScale, all_finite


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (checkpointed whole).

    ``step`` counts completed optimizer updates: a checkpoint labelled N holds N updates.
    ``model_state`` holds the model's non-parameter collections (BatchNorm's ``batch_stats``;
    empty for most models), updated by the training step and read by evaluation.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    loss_scale: LossScale
    model_state: dict = flax.struct.field(default_factory=dict)


def trainable_only(trainable, constants):
    """The default ``assemble``: the model's params are the trainable tree itself."""
    return trainable


def task_kwargs(task, constants) -> dict:
    return {"constants": constants} if getattr(task, "needs_constants", False) else {}


def make_train_step(model, task, tx: optax.GradientTransformationExtraArgs, schedule: Callable,
                    grad_accum_steps: int, label_smoothing: float, dropout: bool,
                    assemble: Callable = trainable_only, groups: list[ParamGroup] | None = None):
    """One optimizer update per call (per parameter group): ``step(state, batch, constants=None)``.

    ``groups`` (built by the trainer) say which parts of the trainable tree train, with which
    optimizer, in which order; ``None`` is one group of the whole trainable tree trained by ``tx``
    on ``task.loss``. Each group's update takes the gradients of its own leaves only, the other
    groups and the constants held fixed.

    Gradient accumulation is a ``lax.scan`` over micro-batches inside the step rather than
    ``optax.MultiSteps``: one call is one update (so steps, the data position and checkpoints
    line up), and no second copy of the gradients lives in the optimizer state. Losses are
    summed and divided by the total weight once, so k micro-batches equal one k-times-larger
    batch exactly, padding included (BatchNorm statistics excepted: each micro-batch is
    normalised by its own, and updates the running averages in turn).
    """
    if groups is None:
        groups = [ParamGroup(GroupSpec("all", task.loss), None, tx, schedule)]

    def group_update(group: ParamGroup, params, constants, opt_state, model_state, batch, step_rng, scale,
                     step_count):
        def summed_loss(trainable, model_state, batch, rng):
            bound = StatefulModel(model, model_state, train=True)
            own = trainable if group.paths is None else group.merge(params, trainable)
            loss, weight = group.spec.loss(bound, assemble(own, constants), batch,
                                           rng if dropout or group.spec.random else None, label_smoothing,
                                           **task_kwargs(task, constants))
            return loss * scale, (weight, bound.state)  # float16: scaled up so small gradients survive

        grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
        trainable = params if group.paths is None else group.trainable(params)
        if grad_accum_steps == 1:
            (loss_sum, (weight, model_state)), grads = grad_fn(trainable, model_state, batch, step_rng)
        else:
            # Row j of micro-batch i is row j*k + i: each device keeps its own rows.
            micro = jax.tree.map(
                lambda x: x.reshape(-1, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, xs):
                i, mb = xs
                sums, model_state = carry
                (s, (w, model_state)), g = grad_fn(trainable, model_state, mb, jax.random.fold_in(step_rng, i))
                return (jax.tree.map(jnp.add, sums, (s, w, g)), model_state), None

            zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, trainable))
            ((loss_sum, weight, grads), model_state), _ = jax.lax.scan(
                body, (zeros, model_state), (jnp.arange(grad_accum_steps), micro))
        weight = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / (weight * scale)).astype(g.dtype), grads)
        loss = loss_sum / (weight * scale)
        finite = all_finite(grads)
        updates, opt_state = group.tx.update(grads, opt_state, trainable, value=loss)
        trainable = optax.apply_updates(trainable, updates)
        params = trainable if group.paths is None else group.merge(params, trainable)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
                   "learning_rate": group.schedule(step_count) * plateau_scale(opt_state)}
        return params, opt_state, model_state, finite, metrics

    def step(state: TrainState, batch, constants=None):
        rng, step_rng = jax.random.split(state.rng)
        scale = state.loss_scale.scale
        params, model_state, finite = state.params, state.model_state, jnp.asarray(True)
        states, metrics = group_states(groups, state.opt_state), {}
        for g, group in enumerate(groups):  # in turn, each seeing the others' latest params
            for r in range(group.spec.repeats):
                key = step_rng if len(groups) == 1 and group.spec.repeats == 1 else \
                    jax.random.fold_in(jax.random.fold_in(step_rng, g), r)
                params, states[group.name], model_state, ok, m = group_update(
                    group, params, constants, states[group.name], model_state, batch, key, scale, state.step)
                finite &= ok
            metrics.update(m if len(groups) == 1 else {f"{group.name}_{k}": v for k, v in m.items()})
        if len(groups) > 1:
            metrics.update(loss=sum(metrics[f"{g.name}_loss"] for g in groups),
                           learning_rate=metrics[f"{groups[0].name}_learning_rate"])
        if state.loss_scale.dynamic:
            metrics.update(loss_scale=scale, skipped=1.0 - finite.astype(jnp.float32))
            # A skipped update keeps the statistics too: they came from an overflowing pass.
            model_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), model_state, state.model_state)
        return TrainState(state.step + 1, params, pack_states(groups, states), rng, state.loss_scale.adjust(finite),
                          model_state), metrics

    return step


def make_eval_step(model, task, assemble: Callable = trainable_only):
    def step(params, model_state, batch, constants=None):
        return task.eval_sums(StatefulModel(model, model_state), assemble(params, constants), batch,
                              **task_kwargs(task, constants))

    return step
