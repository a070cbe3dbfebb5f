"""The one training loop. Every task (causal and masked LM, text and image classification,
seq2seq) runs through :func:`train`; a task supplies data and a loss, nothing else changes."""

from __future__ import annotations

import logging
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxlm.checkpoint import CheckpointError, Checkpoints, checkpoint_dir, resolve
from jaxlm.config import Config, resume_conflicts, save_config
from jaxlm.errors import JaxlmError
from jaxlm.rundir import RunClaim, claim_run_dir
from jaxlm.train.early_stopping import EarlyStopping, LoopPosition
from jaxlm.train.logging import MetricsLogger, console_summary, rewind_metrics
from jaxlm.train.optim import plateau_observer
from jaxlm.train.preemption import PreemptionGuard
from jaxlm.train.setup import (  # noqa: F401 - setup is part of this module's interface
    Setup, check_init_from, inherit_base_tokenizer, setup)
from jaxlm.train.step import TrainState, make_eval_step, make_train_step
from jaxlm.train.trainable import check_frozen, frozen_meta

log = logging.getLogger("jaxlm")


def evaluate(s: Setup, params, eval_fn=None, model_state=None, constants=None) -> dict[str, float]:
    """Eval metrics of ``params`` (and ``model_state``: BatchNorm running averages, if the model has any):
    the trainable params with the step's ``constants``, or, without them, every param."""
    t = s.config.trainer
    if constants is None:
        params, constants = s.split.split(params)[0], s.constants(params)
    eval_fn = eval_fn or jax.jit(make_eval_step(s.model, s.task, s.assemble))
    model_state = {} if model_state is None else model_state
    totals, n_batches = None, 0
    with s.sharding_context():
        for batch in s.task.eval_batches(t.eval_batch_size or t.batch_size, t.eval_batches):
            sums = eval_fn(params, model_state, s.put_batch(batch, is_global=True), constants)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            n_batches += 1
    if totals is None:
        raise JaxlmError("the validation split is empty; raise data.validation_fraction or add text")
    complete = t.eval_batches is None or n_batches < t.eval_batches
    sums = {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in jax.device_get(totals).items()}
    return s.task.summarize(sums, complete)


def train(config: Config) -> dict[str, float]:
    """Train until ``trainer.max_steps``, resuming from the run directory's latest checkpoint.

    The run directory is this job's alone while it trains (:func:`claim_run_dir`); a run that
    fails before its first step leaves no directory it created.
    """
    check_init_from(config)
    config = inherit_base_tokenizer(config)
    with claim_run_dir(config.run.out_dir) as claim:
        return _train(setup(config), claim)


def _train(s: Setup, claim: RunClaim) -> dict[str, float]:
    c, t = s.config, s.config.trainer
    is_main = jax.process_index() == 0
    ckpt = Checkpoints(s.run_dir, c.checkpoint)
    data = s.task.train_iterator(t.batch_size, jax.process_index(), jax.process_count())
    stopping = EarlyStopping(t.early_stopping)
    position = LoopPosition(data, stopping)
    state, constants = start_state(s, ckpt, position)
    if is_main:
        save_config(c, s.run_dir / "config.yaml")
        rewind_metrics(s.run_dir, int(state.step))

    shardings = jax.tree.map(lambda a: a.sharding, s.abstract_state)
    constant_shardings = jax.tree.map(lambda a: a.sharding, s.abstract_constants)
    # The constants (the frozen params) are an input of every step, never donated, never updated.
    train_step = jax.jit(
        make_train_step(s.model, s.task, None, None, t.grad_accum_steps, t.label_smoothing,
                        c.model.uses_dropout, s.assemble, s.groups),
        in_shardings=(shardings, s.batch_sharding, constant_shardings), out_shardings=(shardings, None),
        donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(s.model, s.task, s.assemble),
                      in_shardings=(shardings.params, shardings.model_state, s.batch_sharding, constant_shardings))
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
                state, metrics = train_step(state, s.put_batch(next(data)), constants)
            step += 1
            claim.mark_started()
            bar.update(1)
            ckpt.check_saved()
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
                evaluated = evaluate(s, state.params, eval_fn, state.model_state, constants)
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
        close_all(guard.close, bar.close, ckpt.close, logger.close)
    return last


def close_all(*closers) -> None:
    """Run every closer; raise the first error, unless an exception is already on its way out
    (a save that failed also fails the close that waits for it: the first report stands)."""
    leaving = sys.exc_info()[1] is not None
    first = None
    for close in closers:
        try:
            close()
        except Exception as e:  # noqa: BLE001
            first = first or e
    if first is not None and not leaving:
        raise first


def start_state(s: Setup, ckpt: Checkpoints, data) -> tuple[TrainState, dict]:
    """Resume (``checkpoint.resume``) or initialise, with ``model.init_from`` params if given; and
    the step's constants (the frozen params, checked against a resumed checkpoint's fingerprint)."""
    c = s.config
    resume = c.checkpoint.resume
    params = model_state = None
    constants = {"frozen": {}, **({} if s.teacher is None else {"teacher": s.teacher})}
    if not s.split.everything:  # the frozen params come from the initialisation, also when resuming
        params, model_state = s.initial_params()
        constants = s.constants(params)
    ckpt.extra_meta = {"frozen": frozen_meta(constants["frozen"])} if not s.split.everything else {}
    # Models held fixed outside the params (a distillation teacher, a GAN's scoring classifier): their
    # fingerprints, so a resume cannot switch them.
    held = {"teacher": ("distill.teacher", c.distill.teacher, s.teacher)} if s.teacher is not None else {}
    held.update(s.task.held_fixed() if hasattr(s.task, "held_fixed") else {})
    for name, (_, source, tree) in held.items():
        ckpt.extra_meta[name] = {"source": source, **frozen_meta(tree)}

    def check(meta: dict, where) -> None:
        conflicts = resume_conflicts(meta["config"], c)
        if conflicts:
            raise CheckpointError(f"cannot resume {s.run_dir}: {'; '.join(conflicts)}. Use a new run.out_dir "
                                  "(or undo the change)")
        check_frozen(meta.get("frozen"), constants["frozen"], f"cannot resume {where}: the checkpoint",
                     "point model.init_from at the base it was trained from, or use a new run.out_dir")
        for name, (key, source, _) in held.items():
            saved, now = meta.get(name, {}), ckpt.extra_meta[name]["fingerprint"]
            if saved.get("fingerprint") != now:
                raise CheckpointError(f"cannot resume {where}: it was trained with the {name} {saved.get('source')} "
                                      f"(fingerprint {saved.get('fingerprint')}), but {key}={source} is {now}; use "
                                      f"that {name} or a new run.out_dir")

    if ckpt.all_steps():
        if resume == "never":
            raise CheckpointError(f"{checkpoint_dir(s.run_dir)} already holds checkpoints and checkpoint.resume="
                                  "never; choose a new run.out_dir or set checkpoint.resume=auto")
        found = ckpt.restore_latest(s.abstract_state, lambda meta: check(meta, s.run_dir))
        if found is not None:
            state, data_state, step = found
            data.restore(data_state)
            log.info("resumed from %s at step %d", checkpoint_dir(s.run_dir), step)
            return state, constants
    elif resume not in ("auto", "never"):
        source_dir, step = resolve(resume)
        source = Checkpoints(source_dir, read_only=True) if checkpoint_dir(source_dir).is_dir() else None
        if source is None or not source.all_steps():
            raise CheckpointError(f"checkpoint.resume={resume} holds no jaxlm checkpoint")
        if step is not None and step not in source.all_steps():
            raise CheckpointError(f"checkpoint.resume={resume}: {source_dir} has no checkpoint at step {step}; it "
                                  f"has {source.all_steps()}")
        step = source.latest_step() if step is None else step
        check(source.read_meta(step), resume)
        state, data_state = source.restore(step, s.abstract_state)
        source.close()
        data.restore(data_state)
        log.info("started from %s at step %d", resume, step)
        return state, constants
    return s.init_state(params, model_state), constants
