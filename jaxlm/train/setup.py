"""Everything built from a config before the training loop: mesh, task, model, optimizer,
the trainable / frozen split and the abstract (sharded) shapes of the state."""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import yaml

from jaxlm.config import Config
from jaxlm.errors import ConfigError
from jaxlm.models.state import split_variables
from jaxlm.parallel.mesh import batch_sharding, data_parallel_size, make_mesh, param_shardings, rules_for
from jaxlm.tasks import Task, build_task
from jaxlm.train import layerwise
from jaxlm.train.optim import build_optimizer
from jaxlm.train.precision import DTYPES, LossScale, cast_floats, skip_nonfinite
from jaxlm.train.adversarial import AdversarialTask
from jaxlm.train.groups import GroupSpec, ParamGroup, build_groups, init_opt_state
from jaxlm.train.step import TrainState
from jaxlm.train.trainable import TrainableSplit, check_frozen, describe, make_split, merge

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
    """What trains in turn, each with its optimizer (one group of every trainable param by default)."""
    abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings (trainable params only)
    batch_sharding: jax.sharding.NamedSharding
    rules: tuple
    split: TrainableSplit
    abstract_params: Any  # every param (trainable and frozen), with shardings
    abstract_model_state: Any
    fresh: frozenset = frozenset()
    """Param paths that ``model.init_from`` never provides (a PEFT method's own params)."""
    teacher: Any = None
    """A distillation teacher's params, on their shardings (``distill.teacher``)."""
    nf4: bool = False
    """QLoRA: the frozen params are stored in 4-bit NormalFloat (:mod:`jaxlm.peft.qlora`)."""

    @property
    def abstract_constants(self) -> dict:
        """The step's constant input: ``{"frozen": frozen params}`` (empty when everything trains;
        QLoRA: in NF4, its arrays sharded by the generic FSDP rule), and ``"teacher"``, a
        distillation teacher's params."""
        frozen = self.split.split(self.abstract_params)[1]
        teacher = {} if self.teacher is None else {"teacher": jax.tree.map(_abstract, self.teacher)}
        if not self.nf4:
            return {"frozen": frozen, **teacher}
        from jaxlm.peft.qlora import quantize_frozen

        stored = jax.eval_shape(lambda f: quantize_frozen(f, self.config), frozen)
        specs = jax.tree.map(lambda a: jax.sharding.PartitionSpec(*[None] * len(a.shape)), stored)
        shardings = param_shardings(specs, stored, self.mesh, self.rules)
        return {"frozen": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), stored,
                                       shardings), **teacher}

    def assemble(self, trainable, constants) -> dict:
        """The params the model is applied with, from the trainable tree and the constants (a QLoRA
        base dequantized here, inside the jitted step)."""
        frozen = constants["frozen"]
        if self.nf4:
            from jaxlm.peft.qlora import dequantize_frozen

            frozen = dequantize_frozen(frozen)
        return merge(trainable, frozen)

    def initial_params(self) -> tuple[Any, dict]:
        """Freshly initialised params (and model state) on their shardings, with ``model.init_from`` loaded."""
        example = self.task.model_inputs(self.task.example_batch(1))
        shardings = jax.tree.map(lambda a: a.sharding, (self.abstract_params, self.abstract_model_state))
        with self.sharding_context():
            return initial_params(self.config, self.model, example, self.fresh, shardings)

    def init_state(self, params=None, model_state=None) -> TrainState:
        """A step-0 state over the trainable part of ``params`` (default: :meth:`initial_params`)."""
        if params is None:
            params, model_state = self.initial_params()
        trainable, frozen = self.split.split(params)
        shardings = jax.tree.map(lambda a: a.sharding, self.abstract_state.opt_state)
        with self.sharding_context():
            opt_state = jax.jit(partial(init_opt_state, self.groups), out_shardings=shardings)(trainable)
        _, rng = jax.random.split(jax.random.PRNGKey(self.config.run.seed))
        return TrainState(jnp.zeros((), jnp.int32), trainable, opt_state, rng, new_loss_scale(self.config),
                          model_state)

    def constants(self, params) -> dict:
        """The step's constants for ``params`` (every param; the trainable ones are ignored)."""
        frozen = self.split.split(params)[1]
        teacher = {} if self.teacher is None else {"teacher": self.teacher}
        if not self.nf4:
            return {"frozen": frozen, **teacher}
        from jaxlm.peft.qlora import log_bytes, quantize_frozen

        stored = quantize_frozen(frozen, self.config)
        log_bytes(frozen, stored)
        shardings = jax.tree.map(lambda a: a.sharding, self.abstract_constants["frozen"])
        return {"frozen": jax.device_put(stored, shardings), **teacher}

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


def initial_params(config: Config, model, example: dict, fresh=frozenset(), shardings=None) -> tuple[Any, dict]:
    """A run's params (and model state) before its first step: initialised from ``run.seed``, with
    ``model.init_from`` loaded over them but for the ``fresh`` paths (a PEFT method's own params)."""
    from jaxlm.checkpoint import load_model_state, load_params_into

    def init(key):
        params_key, _ = jax.random.split(key)
        return nn.meta.unbox(init_variables(model, config, params_key, example))

    params, model_state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(config.run.seed))
    start_prompt = getattr(model, "start_prompt", None)  # a PEFT prompt read from the loaded word embeddings
    if config.model.init_from:
        own = {_layerless(p) for p in fresh}
        params = load_params_into(config.model.init_from, jax.tree.map(_abstract, params), initial=params,
                                  may_lack=lambda path: _layerless(path) in own)
        log.info("initialised params from %s", config.model.init_from)
        if model_state:  # BatchNorm statistics come with the weights when the checkpoint has them
            saved = load_model_state(config.model.init_from, abstract_state=jax.tree.map(_abstract, model_state))
            model_state = saved or model_state
    if start_prompt is not None:
        params = start_prompt(params)
        if shardings is not None:
            params = jax.device_put(params, shardings[0])
    return params, model_state


def _layerless(path: tuple[str, ...]) -> tuple[str, ...]:
    """A param path with layer numbers dropped (``h_3`` -> ``h``): the same for either layer layout."""
    return tuple(re.sub(r"_\d+$", "", part) for part in path)


def _abstract(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


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


def build_run_model(config: Config, head: str, tokenizer=None, dtype=None, **module_kwargs
                    ) -> tuple[nn.Module, frozenset, frozenset]:
    """The model a run trains (computing in ``dtype``, default ``precision.compute``), and its PEFT
    method's own param paths and those it trains (both empty without a ``peft`` section;
    ``tokenizer`` encodes ``peft.prompt_init_text``)."""
    from jaxlm.models import build_model

    dtype = dtype or DTYPES[config.precision.compute]
    if config.peft is None:
        model, fresh, trains = build_model(config.model, head, dtype=dtype, **module_kwargs), frozenset(), frozenset()
    else:
        from jaxlm import peft

        model, fresh, trains = peft.build(config, head, dtype, module_kwargs, tokenizer)
    if config.qat is not None:  # dense layers compute on fake-quantized weights and inputs
        from jaxlm.compress.qat import qat_model

        model = qat_model(model, config.qat.weights, config.qat.activations)
    return model, fresh, trains


def run_tokenizer(config: Config, run_dir: Path):
    """The tokenizer a task set up (``data.tokenizer.path``, else the one cached in the run), when the
    model needs it: to start a prompt from ``peft.prompt_init_text``."""
    if getattr(config.peft, "prompt_init", None) != "text":
        return None
    from jaxlm.data.tokenizer import load_tokenizer

    return load_tokenizer(config.data.tokenizer.path or run_dir / "tokenizer")


def full_params(config: Config, trainable, frozen_record: dict, where: str) -> dict:
    """Every param of a run whose checkpoint holds only its trainable ones (``trainable``): the frozen
    ones are rebuilt as training built them (initialisation, ``model.init_from``) and must match the
    checkpoint's fingerprint (``frozen_record``)."""
    model, fresh, peft_trainable = build_run_model(config, config.task.head)
    params, _ = initial_params(config, model, config.model.dummy_inputs(), fresh)
    t = config.trainer
    frozen = make_split(params, trainable=t.trainable, freeze=t.freeze, extra=peft_trainable).split(params)[1]
    if stores_nf4(config):  # training saw (and the fingerprint covers) the NF4 base; inference sees its floats
        from jaxlm.peft.qlora import dequantize_frozen, quantize_frozen

        stored = quantize_frozen(frozen, config)
        check_frozen(frozen_record, stored, f"{where}: its checkpoint",
                     f"the base it was trained from (model.init_from={config.model.init_from}) has changed; restore it")
        return merge(trainable, dequantize_frozen(stored))
    check_frozen(frozen_record, frozen, f"{where}: its checkpoint",
                 f"the base it was trained from (model.init_from={config.model.init_from}) has changed; restore it")
    return merge(trainable, frozen)


def build_tx(config: Config, trainable, split: TrainableSplit, group: str = "all") -> tuple[Callable, Any]:
    """The optimizer over the trainable params (of one parameter ``group``): the configured chain
    (with ``optimizer.groups.<group>``'s settings), layer-wise learning-rate decay, gradual
    unfreezing and float16's skipping of overflowing updates."""
    t, opt = config.trainer, config.optimizer.for_group(group)
    tx, schedule = build_optimizer(opt, config.schedule, t.max_steps)
    if opt.layer_decay is not None:
        import optax

        tx = optax.chain(tx, layerwise.layer_decay(opt.layer_decay, trainable, config.model))
    if t.unfreeze_every is not None:
        tx = layerwise.gradual_unfreeze(tx, t.unfreeze_every, trainable, config.model)
    if config.prune is not None:  # masks in the optimizer state, applied after every update
        from jaxlm.compress.prune import prune_optimizer

        tx = prune_optimizer(tx, config.prune, t.max_steps, config.run.seed)
    return skip_nonfinite(tx, config.precision.compute), schedule


def check_init_from(config: Config) -> None:
    """Before training: a ``model.init_from`` that does not exist yet is one line naming the command
    that makes it (before the task reads the tokenizer that run would have written). Reading a
    trained run (eval, compare) needs no base: its params are in its checkpoints."""
    source = config.model.init_from
    if source is None or Path(source).exists():
        return
    name = Path(source).name if Path(source).name != "0" else Path(source).parent.parent.name
    maker = Path("configs") / f"{name}.yaml"
    hint = f"run `jaxlm train {maker}` first" if maker.is_file() else "train or convert that run first"
    raise ConfigError(f"model.init_from={source} is not a jaxlm run or checkpoint directory (it does not exist): "
                      f"{hint}")


def inherit_base_tokenizer(config: Config) -> Config:
    """``model.init_from`` a run that has a tokenizer: that tokenizer (as ``data.tokenizer.path``),
    so each token id keeps the embedding row the base learned for it. A tokenizer trained afresh
    numbers the tokens differently, even on the same text (WordPiece breaks ties by hash order),
    and would scramble the base's embeddings without a word; a configured one must number them as
    the base's does. A resumed run keeps the tokenizer it began with."""
    from jaxlm.checkpoint import resolve
    from jaxlm.data.tokenizer import FILE, same_vocabulary

    source = config.model.init_from
    base = resolve(source)[0] / "tokenizer" if source else None
    if base is None or not (base / FILE).is_file():
        return config
    configured = config.data.tokenizer.path
    if configured is None:
        path = _started_with_tokenizer(Path(config.run.out_dir))
        if path is False:
            path = str(base)
            log.info("model.init_from=%s: using its tokenizer (data.tokenizer.path=%s)", source, base)
        if path is None:
            return config
        tokenizer = config.data.tokenizer.model_copy(update={"path": path})
        return config.model_copy(update={"data": config.data.model_copy(update={"tokenizer": tokenizer})})
    if Path(configured).exists() and not same_vocabulary(configured, base):
        raise ConfigError(f"data.tokenizer.path={configured} numbers tokens differently from {base}, the tokenizer "
                          f"model.init_from={source} was trained with: its embeddings would belong to other tokens; "
                          f"set data.tokenizer.path={base} or leave it unset")
    return config


def _started_with_tokenizer(run_dir: Path) -> str | None | bool:
    """The ``data.tokenizer.path`` a run began with (``None``: one of its own), or False if it has not begun."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return ((saved.get("data") or {}).get("tokenizer") or {}).get("path")


def setup(config: Config) -> Setup:
    run_dir = Path(config.run.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # train has claimed it already (claim_run_dir)
    mesh, rules = make_mesh(config.mesh), rules_for(config.mesh)
    t = config.trainer
    check_batch("trainer.batch_size", t.batch_size, mesh, rules)
    check_batch("trainer.batch_size / trainer.grad_accum_steps", t.batch_size // t.grad_accum_steps, mesh, rules)
    check_batch("trainer.eval_batch_size", t.eval_batch_size or t.batch_size, mesh, rules)
    task = build_task(config, run_dir)
    teacher = None
    if config.distill is not None:  # the task's loss against a frozen teacher: a constant of the step
        from jaxlm.compress.distill import build_distillation

        task, teacher = build_distillation(config, task, run_dir)
    # A task may pass the module data-dependent arguments (a word model's pretrained embeddings).
    model, fresh, peft_trainable = build_run_model(config, task.head, run_tokenizer(config, run_dir),
                                                   **getattr(task, "model_kwargs", {}))
    if teacher is not None:
        model = task.wrap_model(model)
        teacher = _place(task.teacher, teacher, mesh, rules)
    if t.adversarial is not None:  # a loss wrapper: clean + adversarial loss
        task = AdversarialTask(task, model, t.adversarial)
    example = task.model_inputs(task.example_batch(1))
    boxed_params, boxed_model_state = jax.eval_shape(
        lambda key: init_variables(model, config, key, example), jax.random.PRNGKey(0))
    split = make_split(boxed_params, trainable=t.trainable, freeze=t.freeze, extra=peft_trainable)
    boxed_trainable, boxed_frozen = split.split(boxed_params)
    noisy = t.adversarial is not None and t.adversarial.method == "noise"
    specs = task.param_groups() if hasattr(task, "param_groups") else [GroupSpec("all", task.loss, random=noisy)]
    trainable = nn.meta.unbox(boxed_trainable)
    groups = build_groups(specs, trainable, lambda g, own: build_tx(config, own, split, g))

    def boxed_state(key, trainable):  # params as arguments: optimizers that read values at init (plateau) trace
        return TrainState(jnp.zeros((), jnp.int32), trainable, init_opt_state(groups, trainable), key,
                          new_loss_scale(config), boxed_model_state)

    boxed = jax.eval_shape(boxed_state, jax.random.PRNGKey(0), boxed_trainable)
    tree = (boxed, boxed_frozen)
    shardings = param_shardings(nn.get_partition_spec(tree), nn.meta.unbox(tree), mesh, rules)
    abstract, abstract_frozen = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                             nn.meta.unbox(tree), shardings)
    if not split.everything:
        log.info("%s", describe(abstract.params, abstract_frozen))
    return Setup(config, run_dir, mesh, task, model, groups, abstract, batch_sharding(mesh, rules), rules,
                 split, merge(abstract.params, abstract_frozen), abstract.model_state, fresh, teacher,
                 stores_nf4(config))


def _place(model, params, mesh, rules):
    """A second model's params on the shardings its logical axes give under the run's rules."""
    module = getattr(model, "module", model)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), **module.config.dummy_inputs())["params"])
    shardings = param_shardings(nn.get_partition_spec(boxed), nn.meta.unbox(boxed), mesh, rules)
    return jax.device_put(params, shardings)


def stores_nf4(config: Config) -> bool:
    """QLoRA: the run keeps its frozen params in NF4 (``peft.quantize: nf4``)."""
    return getattr(config.peft, "quantize", None) == "nf4"
