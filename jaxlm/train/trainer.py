"""The one training loop. Every task (causal and masked LM, text and image classification,
seq2seq) runs through :func:`train`; a task supplies data and a loss, nothing else changes."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxlm.checkpoint import (CheckpointError, Checkpoints, checkpoint_dir, load_model_state, load_params_into,
                              resolve)
from jaxlm.config import Config, resume_conflicts, save_config
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.train.preemption import PreemptionGuard
from jaxlm.models import build_model
from jaxlm.models.state import split_variables
from jaxlm.parallel.mesh import batch_sharding, data_parallel_size, make_mesh, param_shardings, rules_for
from jaxlm.tasks import Task, build_task
from jaxlm.train.adversarial import AdversarialTask
from jaxlm.train.early_stopping import EarlyStopping, LoopPosition
from jaxlm.train.groups import GroupSpec, ParamGroup, build_groups, init_opt_state
from jaxlm.train.logging import MetricsLogger, console_summary, rewind_metrics
from jaxlm.train.optim import build_optimizer, plateau_observer
from jaxlm.train.precision import DTYPES, LossScale, cast_floats, skip_nonfinite
from jaxlm.train.step import TrainState, make_eval_step, make_train_step

log = logging.getLogger("jaxlm")


@dataclass
class Setup:
    """Everything built from a config before the loop starts."""

    config: Config
    run_dir: Path
    mesh: jax.sharding.Mesh
    task: Task
    model: nn.Module
    groups: list[ParamGroup]
    """What trains, with which optimizer (jaxlm/train/groups.py)."""
    abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings
    batch_sharding: jax.sharding.NamedSharding
    rules: tuple

    def init_state(self) -> TrainState:
        c = self.config
        example = self.task.model_inputs(self.task.example_batch(1))
        shardings = jax.tree.map(lambda a: a.sharding, self.abstract_state)

        @jax.jit
        def init(key):
            params_key, key = jax.random.split(key)
            params, model_state = nn.meta.unbox(init_variables(self.model, self.config, params_key, example))
            return TrainState(jnp.zeros((), jnp.int32), params, init_opt_state(self.groups, params), key,
                              new_loss_scale(c), model_state)

        with self.sharding_context():
            state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(c.run.seed))
        return state

    def sharding_context(self):
        """The mesh and the logical-axis rules, active while steps are traced and run."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.mesh)
        stack.enter_context(nn.logical_axis_rules(list(self.rules)))
        return stack

    def put_batch(self, batch: dict[str, np.ndarray], *, is_global: bool = False) -> dict[str, jax.Array]:
        """Device arrays from this process's rows (``is_global``: take them from the full batch)."""
        if is_global and jax.process_count() > 1:
            n, p, c = len(next(iter(batch.values()))), jax.process_index(), jax.process_count()
            batch = {k: v[p * n // c:(p + 1) * n // c] for k, v in batch.items()}
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()}


def init_variables(model, config: Config, key, example):
    """Freshly initialised (boxed) params in ``precision.params``, and the model's other
    collections (``model_state``: BatchNorm statistics, kept in float32)."""
    params, model_state = split_variables(model.init(key, **example))
    return cast_floats(params, DTYPES[config.precision.params]), model_state


def new_loss_scale(config: Config) -> LossScale:
    p = config.precision
    return LossScale.create(p.compute, p.loss_scale, p.loss_scale_period)


def check_batch(name: str, size: int, mesh, rules) -> None:
    dp = data_parallel_size(mesh, rules)
    if size % dp:
        raise ConfigError(f"{name}={size} is not divisible by the {dp} data-parallel devices "
                          f"(mesh.data x mesh.fsdp); use a multiple of {dp}")


def setup(config: Config) -> Setup:
    run_dir = Path(config.run.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mesh, rules = make_mesh(config.mesh), rules_for(config.mesh)
    t = config.trainer
    check_batch("trainer.batch_size", t.batch_size, mesh, rules)
    check_batch("trainer.batch_size / trainer.grad_accum_steps", t.batch_size // t.grad_accum_steps, mesh, rules)
    check_batch("trainer.eval_batch_size", t.eval_batch_size or t.batch_size, mesh, rules)
    task = build_task(config, run_dir)
    # A task may pass the module data-dependent arguments (a word model's pretrained embeddings).
    model = build_model(config.model, task.head, dtype=DTYPES[config.precision.compute],
                        **getattr(task, "model_kwargs", {}))
    example = task.model_inputs(task.example_batch(1))

    def make_tx(group: str):
        tx, schedule = build_optimizer(config.optimizer.for_group(group), config.schedule, t.max_steps)
        return skip_nonfinite(tx, config.precision.compute), schedule

    if t.adversarial is not None:  # a loss wrapper: clean + adversarial loss
        task = AdversarialTask(task, model, t.adversarial)
    noisy = t.adversarial is not None and t.adversarial.method == "noise"
    specs = task.param_groups() if hasattr(task, "param_groups") else [GroupSpec("all", task.loss, random=noisy)]
    abstract_params = jax.eval_shape(lambda key: init_variables(model, config, key, example)[0], jax.random.key(0))
    groups = build_groups(specs, nn.meta.unbox(abstract_params), t.trainable, make_tx)

    def boxed_state(key):
        params, model_state = init_variables(model, config, key, example)
        return TrainState(jnp.zeros((), jnp.int32), params, init_opt_state(groups, params), key,
                          new_loss_scale(config), model_state)

    boxed = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
    shardings = param_shardings(nn.get_partition_spec(boxed), nn.meta.unbox(boxed), mesh, rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            nn.meta.unbox(boxed), shardings)
    return Setup(config, run_dir, mesh, task, model, groups, abstract, batch_sharding(mesh, rules), rules)


def evaluate(s: Setup, params, eval_fn=None, model_state=None) -> dict[str, float]:
    """Eval metrics of ``params`` (and ``model_state``: BatchNorm running averages, if the model has any)."""
    t = s.config.trainer
    eval_fn = eval_fn or jax.jit(make_eval_step(s.model, s.task))
    model_state = {} if model_state is None else model_state
    totals, n_batches = None, 0
    with s.sharding_context():
        for batch in s.task.eval_batches(t.eval_batch_size or t.batch_size, t.eval_batches):
            sums = eval_fn(params, model_state, s.put_batch(batch, is_global=True))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            n_batches += 1
    if totals is None:
        raise JaxlmError("the validation split is empty; raise data.validation_fraction or add text")
    complete = t.eval_batches is None or n_batches < t.eval_batches
    sums = {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in jax.device_get(totals).items()}
    return s.task.summarize(sums, complete)


def train(config: Config) -> dict[str, float]:
    """Train until ``trainer.max_steps``, resuming from the run directory's latest checkpoint."""
    s = setup(config)
    c, t = config, config.trainer
    is_main = jax.process_index() == 0
    ckpt = Checkpoints(s.run_dir, c.checkpoint)
    data = s.task.train_iterator(t.batch_size, jax.process_index(), jax.process_count())
    stopping = EarlyStopping(t.early_stopping)
    position = LoopPosition(data, stopping)
    state = start_state(s, ckpt, position)
    if is_main:
        save_config(c, s.run_dir / "config.yaml")
        rewind_metrics(s.run_dir, int(state.step))

    shardings = jax.tree.map(lambda a: a.sharding, s.abstract_state)
    train_step = jax.jit(
        make_train_step(s.model, s.task, None, None, t.grad_accum_steps, t.label_smoothing, c.model.uses_dropout,
                        s.groups),
        in_shardings=(shardings, s.batch_sharding), out_shardings=(shardings, None), donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(s.model, s.task),
                      in_shardings=(shardings.params, shardings.model_state, s.batch_sharding))
    observe_plateau = plateau_observer(c.schedule.plateau, shardings.opt_state)

    logger = MetricsLogger(s.run_dir, enabled=is_main)
    step = int(state.step)
    bar = tqdm(total=t.max_steps, initial=step, disable=not (is_main and t.progress_bar), unit="step",
               dynamic_ncols=True)
    last: dict[str, float] = {}
    example_ids = s.task.model_inputs(s.task.example_batch(1)).get("input_ids")
    tokens_per_step = None if example_ids is None else t.batch_size * int(np.prod(example_ids.shape))
    tick, ticked_at = time.perf_counter(), step
    config_json = c.model_dump(mode="json")
    guard = PreemptionGuard(ckpt.manager)
    try:
        if stopping.stop:
            log.warning("this run already stopped early; raise trainer.early_stopping.patience to continue it")
        while step < t.max_steps and not stopping.stop:
            with s.sharding_context():
                state, metrics = train_step(state, s.put_batch(next(data)))
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == t.max_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                metrics["examples_per_second"] = t.batch_size * (step - ticked_at) / (now - tick)
                if tokens_per_step:  # models that read token ids
                    metrics["tokens_per_second"] = tokens_per_step * (step - ticked_at) / (now - tick)
                tick, ticked_at = now, step
                if not math.isfinite(metrics["loss"]) and not metrics.get("skipped"):
                    raise JaxlmError(f"the loss became {metrics['loss']} at step {step}; lower "
                                     "optimizer.learning_rate or set optimizer.clip_norm")
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['learning_rate']:.2e}")
                last.update(metrics)
            evaluated, improved = {}, False
            if step % t.eval_every == 0 or step == t.max_steps:
                evaluated = evaluate(s, state.params, eval_fn, state.model_state)
                logger.log(step, evaluated)
                last.update(evaluated)
                if is_main:
                    bar.write(f"step {step}: {console_summary(evaluated)}")
                improved = stopping.update(evaluated)
                if observe_plateau:
                    state = state.replace(opt_state=observe_plateau(state.opt_state, evaluated))
            preempted = guard.reached(step)
            # An early-stopping run checkpoints every new best, so the best is always kept.
            ckpt.save(step, state, position.state(), config_json, evaluated,
                      force=preempted or step == t.max_steps or improved or stopping.stop)
            if stopping.stop:
                log.info("%s", stopping.describe(step))
            if preempted:
                ckpt.wait()
                log.warning("stopped by %s at step %d; checkpoint saved; rerun the same command to resume",
                            guard.signal_name, step)
                break
    finally:
        guard.close()
        bar.close()
        ckpt.wait()
        ckpt.close()
        logger.close()
    return last


def start_state(s: Setup, ckpt: Checkpoints, data) -> TrainState:
    """Resume (``checkpoint.resume``) or initialise, with ``model.init_from`` params if given."""
    c = s.config
    resume = c.checkpoint.resume

    def check(saved_config: dict) -> None:
        conflicts = resume_conflicts(saved_config, c)
        if conflicts:
            raise CheckpointError(f"cannot resume {s.run_dir}: {'; '.join(conflicts)}. Use a new run.out_dir "
                                  "(or undo the change)")

    if ckpt.all_steps():
        if resume == "never":
            raise CheckpointError(f"{checkpoint_dir(s.run_dir)} already holds checkpoints and checkpoint.resume="
                                  "never; choose a new run.out_dir or set checkpoint.resume=auto")
        found = ckpt.restore_latest(s.abstract_state, check)
        if found is not None:
            state, data_state, step = found
            data.restore(data_state)
            log.info("resumed from %s at step %d", checkpoint_dir(s.run_dir), step)
            return state
    elif resume not in ("auto", "never"):
        source_dir, step = resolve(resume)
        source = Checkpoints(source_dir, read_only=True) if checkpoint_dir(source_dir).is_dir() else None
        if source is None or not source.all_steps():
            raise CheckpointError(f"checkpoint.resume={resume} holds no jaxlm checkpoint")
        step = source.latest_step() if step is None else step
        check(source.read_meta(step)["config"])
        state, data_state = source.restore(step, s.abstract_state)
        source.close()
        data.restore(data_state)
        log.info("started from %s at step %d", resume, step)
        return state

    state = s.init_state()
    if c.model.init_from:
        params = load_params_into(c.model.init_from, s.abstract_state.params, initial=state.params)
        opt_shardings = jax.tree.map(lambda a: a.sharding, s.abstract_state.opt_state)
        state = state.replace(params=params, opt_state=jax.jit(partial(init_opt_state, s.groups),
                                                               out_shardings=opt_shardings)(params))
        log.info("initialised params from %s", c.model.init_from)
        if state.model_state:  # BatchNorm statistics come with the weights when the checkpoint has them
            saved = load_model_state(c.model.init_from, abstract_state=s.abstract_state.model_state)
            state = state.replace(model_state=saved or state.model_state)
    return state
