"""The one orbax wrapper: save, list, validate and restore training checkpoints.

A run directory holds ``checkpoints/<N>/`` with four items: ``params``, ``train``
(optimizer state, step, RNG key, float16 loss scale), ``data`` (the
iterator position) and ``meta`` (format version, the resolved config, eval metrics), and a
fifth, ``model_state``, for models with non-parameter variables (BatchNorm statistics).
**A checkpoint labelled N holds N completed optimizer updates.** Params are an item of
their own so evaluation, generation and ``model.init_from`` read them alone.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a process killed at any instant (mid-save included) leaves only complete checkpoints
visible; a complete-looking but damaged newest checkpoint is detected on restore, moved to
``corrupt/`` and the previous one is used.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers as policies

from jaxlm.errors import JaxlmError, first_line

FORMAT_VERSION = 1
HEAD_PARAMS = r"(classifier|projection_\d+)(/|$)"
"""Top-level params that are heads in every family: a checkpoint may lack or carry them
(``model.init_from`` of a contrastive run into a classifier: the projection out, a classifier in)."""
log = logging.getLogger("jaxlm")


class CheckpointError(JaxlmError):
    pass


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).absolute() / "checkpoints"


def resolve(path: str | Path) -> tuple[Path, int | None]:
    """``runs/x`` -> (runs/x, None); ``runs/x/checkpoints/400`` -> (runs/x, 400)."""
    path = Path(path)
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    return path, None


class Checkpoints:
    def __init__(self, run_dir: str | Path, config=None, read_only: bool = False):
        """``config``: a CheckpointConfig for a training run; ``None`` opens read-only."""
        self.run_dir = Path(run_dir)
        if config is None or read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False)
            self.best_metric = None
        else:
            keep = [policies.LatestN(config.keep)]
            if config.keep_best:
                keep.append(policies.BestN(get_metric_fn=lambda m: m[config.best_metric], n=config.keep_best,
                                           reverse=config.best_mode == "min",
                                           keep_checkpoints_without_metrics=False))
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policies.AnyPreservationPolicy(keep), cleanup_tmp_directories=True)
            self.best_metric, self.every = config.best_metric, config.every
        handlers = {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
                    "model_state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_handlers=handlers)
        self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight
        self._failed: set[int] = set()  # steps whose save failed: their partial files go, now and at close
        self.extra_meta: dict = {}
        """Saved into every checkpoint's meta: ``{"frozen": ...}`` when the params item holds the
        trainable params only (:mod:`jaxlm.train.trainable`)."""

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, data_state: dict, config: dict, metrics: dict, force: bool = False) -> bool:
        """Start an asynchronous save every ``checkpoint.every`` steps, or now if ``force``.

        A save that cannot be written raises a :class:`CheckpointError` naming the step, the
        directory and the fix: here if the disk cannot hold it, else at the next
        :meth:`check_saved` or :meth:`wait` after orbax's background write failed.
        """
        if not force and step % self.every:
            return False
        self.wait()  # orbax would wait for the previous save too; this way its failure is named as its own
        needed = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state, state.model_state)))
        free = shutil.disk_usage(self.run_dir).free
        if free < needed:
            raise self._save_error(step, needed, OSError(errno.ENOSPC, "No space left on device"), free)
        train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng, "loss_scale": state.loss_scale}
        items = dict(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave({"format_version": FORMAT_VERSION, "step": step, "config": config,
                                    "metrics": metrics, **self.extra_meta}),
        )
        if state.model_state:
            items["model_state"] = ocp.args.StandardSave(state.model_state)
        args = ocp.args.Composite(**items)
        best = {self.best_metric: metrics[self.best_metric]} if self.best_metric in metrics else None
        try:
            saved = self.manager.save(step, args=args, metrics=best, force=True)
        except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise many kinds; the user needs one line
            raise self._save_error(step, needed, e) from None
        self._pending = (step, needed)
        return saved

    def check_saved(self) -> None:
        """Raise a :class:`CheckpointError` if the save in flight has failed (cheap: the
        trainer calls it after every step, so no step trains on past a failed save once orbax
        has reported it)."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def _save_error(self, step: int, needed: int, error: BaseException, free: int | None = None) -> CheckpointError:
        """The one-line error for a checkpoint that could not be written; its partial files are removed."""
        where = checkpoint_dir(self.run_dir)
        self._failed.add(step)
        self._remove_partials()
        previous = [s for s in self.all_steps() if s < step]
        kept = f"checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        if _disk_full(error):
            free = shutil.disk_usage(self.run_dir).free if free is None else free
            return CheckpointError(
                f"checkpoint {step} could not be written to {where}: the disk is full (it needs about "
                f"{needed / 2**20:.1f} MB, {free / 2**20:.1f} MB are free); {kept}. Free some space or set run.out_dir "
                "on a larger disk, then rerun the same command to resume")
        return CheckpointError(f"checkpoint {step} could not be written to {where} ({first_line(error)}); {kept}. "
                               "Check that the directory is writable, then rerun the same command to resume")

    def save_weights(self, params, config: dict, architecture: str, *, step: int = 0, metrics: dict | None = None,
                     model_state: dict | None = None, **extra_meta) -> None:
        """A weights-only checkpoint (what ``jaxlm convert`` writes at step 0, and ``jaxlm quantize``
        / ``prune`` at their source's step): usable by ``model.init_from``, ``eval`` and
        ``generate``, not resumable. Quantized params are stored as their integer arrays and
        scales, their layout in the metadata (``quantization``)."""
        from jaxlm.compress.quantize import is_quantized, storable

        meta = {"format_version": FORMAT_VERSION, "step": step, "config": config, "metrics": metrics or {},
                "weights_only": True, "architecture": architecture, **extra_meta}
        if is_quantized(params):
            params, layout = storable(params)
            meta["quantization"] = {**meta.get("quantization", {}), "leaves": layout}
        items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
        if model_state:  # BatchNorm statistics travel with the weights
            items["model_state"] = ocp.args.StandardSave(model_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.wait()

    def read_meta(self, step: int) -> dict:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {step} has format {meta['format_version']}; this jaxlm reads up to "
                                  f"{FORMAT_VERSION}: upgrade jaxlm")
        return meta

    def read_params(self, step: int, abstract_params=None):
        restore = ocp.args.StandardRestore(abstract_params)
        return self.manager.restore(step, args=ocp.args.Composite(params=restore)).params

    def has_model_state(self, step: int) -> bool:
        return (checkpoint_dir(self.run_dir) / str(step) / "model_state").is_dir()

    def read_model_state(self, step: int, abstract_state=None) -> dict:
        """The model's non-parameter collections at ``step`` (``{}`` if the model has none)."""
        if not self.has_model_state(step):
            return {}
        restore = ocp.args.StandardRestore(abstract_state)
        return self.manager.restore(step, args=ocp.args.Composite(model_state=restore)).model_state

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """The full TrainState at ``step`` on ``abstract_state``'s shardings, and the data position."""
        abstract_train = {"opt_state": abstract_state.opt_state, "step": abstract_state.step,
                          "rng": abstract_state.rng, "loss_scale": abstract_state.loss_scale}
        items = dict(params=ocp.args.StandardRestore(abstract_state.params),
                     train=ocp.args.StandardRestore(abstract_train), data=ocp.args.JsonRestore())
        if abstract_state.model_state:
            if not self.has_model_state(step):
                raise CheckpointError(f"{checkpoint_dir(self.run_dir) / str(step)} has no model_state (the model's "
                                      f"{', '.join(abstract_state.model_state)}); it was written for another model: "
                                      "use a new run.out_dir")
            items["model_state"] = ocp.args.StandardRestore(abstract_state.model_state)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        t = out.train
        state = abstract_state.replace(params=out.params, opt_state=t["opt_state"], step=t["step"], rng=t["rng"],
                                       loss_scale=t["loss_scale"],
                                       model_state=out.model_state if abstract_state.model_state else {})
        return state, out.data

    def restore_latest(self, abstract_state, check_meta) -> tuple[Any, dict, int] | None:
        """Newest readable checkpoint; damaged ones are moved to ``corrupt/`` with a warning.

        ``check_meta(meta)`` raises if the checkpoint (its config, its frozen params' fingerprint)
        cannot continue this run.
        """
        for step in reversed(self.all_steps()):
            try:
                meta = self.read_meta(step)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
                self._quarantine(step, e)
                continue
            if meta.get("weights_only"):
                raise CheckpointError(f"{checkpoint_dir(self.run_dir) / str(step)} holds weights only (written by "
                                      "jaxlm convert); start a new run.out_dir with model.init_from pointing at it")
            check_meta(meta)
            try:
                state, data = self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001
                self._quarantine(step, e)
                continue
            return state, data, step
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        src = checkpoint_dir(self.run_dir) / str(step)
        dst = self.run_dir / "corrupt" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        reason = first_line(error)
        log.warning("checkpoint %s is damaged (%s); moved to %s, falling back to the previous one", src, reason, dst)
        if jax.process_index() == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        self.manager.reload()

    def best_step(self) -> int | None:
        """The step with the best ``checkpoint.best_metric`` of the run's latest config
        (checkpoints whose metadata cannot be read are passed over)."""
        from jaxlm.config import validate_config

        metas = {}
        for step in self.all_steps():
            try:
                metas[step] = self.read_meta(step)
            except CheckpointError:
                raise
            except Exception:  # noqa: BLE001 - a damaged checkpoint is not a candidate
                continue
        if not metas:
            return None
        cfg = validate_config(metas[max(metas)]["config"]).checkpoint
        scored = [(m["metrics"][cfg.best_metric], s) for s, m in metas.items() if cfg.best_metric in m["metrics"]]
        if not scored:
            return None
        return (min if cfg.best_mode == "min" else max)(scored)[1]

    def wait(self) -> None:
        """Block until the save in flight is complete; raise a :class:`CheckpointError` if it failed."""
        pending, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if pending is not None:
                raise self._save_error(*pending, e) from None
            return  # orbax raises a failed save again at every wait; it was reported when it happened
        if pending is not None and not (checkpoint_dir(self.run_dir) / str(pending[0])).is_dir():
            raise self._save_error(*pending, RuntimeError("orbax did not commit it"))

    def _remove_partials(self, settle: float = 0.0) -> None:
        """Remove the failed saves' partial directories; with ``settle``, keep removing them until
        none has reappeared for ``settle`` seconds (at most 20 times that): TensorStore writes still
        in flight when orbax reported the failure recreate them, and Python cannot wait on those."""
        if jax.process_index() or not self._failed:
            return
        quiet_since = deadline = time.monotonic()
        deadline += 20 * settle
        while True:
            for step in self._failed:
                for partial in checkpoint_dir(self.run_dir).glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(partial, ignore_errors=True)
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since >= settle or time.monotonic() > deadline:
                return
            time.sleep(settle / 10)

    def close(self) -> None:
        """Wait for the save in flight (raising if it failed), then release orbax's resources; a
        failed save's partial files are removed again then, as writes still in flight when orbax
        reported the failure may have recreated them."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - it waits again: a failed save was reported above
                pass
            self._remove_partials(settle=0.5)


def open_run(path: str | Path, step: int | None = None, best: bool = False) -> tuple[Checkpoints, int]:
    """A read-only view of a run's checkpoints and the step to read (latest, ``step`` or best)."""
    run_dir, path_step = resolve(path)
    step = path_step if step is None else step
    if not checkpoint_dir(run_dir).is_dir():
        raise CheckpointError(f"{path} is not a jaxlm run or checkpoint directory (no checkpoints/ inside); "
                              "pass a training run's run.out_dir")
    ckpt = Checkpoints(run_dir, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint yet")
    if best:
        step = ckpt.best_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {run_dir} has its checkpoint.best_metric recorded")
    elif step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{run_dir} has no checkpoint at step {step}; it has {steps}")
    return ckpt, step


def read_newest(path: str | Path, read, step: int | None = None, best: bool = False):
    """``read(ckpt, step)`` of the checkpoint that ``path`` / ``step`` / ``best`` name, else of the
    newest checkpoint that can be read: a damaged one is skipped with a warning, as ``train``
    skips it on resume (but left in place: reading never moves a run's files). A damaged
    checkpoint that was asked for by its step is an error naming it."""
    ckpt, chosen = open_run(path, step, best)
    named = best or step is not None or resolve(path)[1] is not None
    try:
        steps = [chosen] if named else sorted(ckpt.all_steps(), reverse=True)
        for i, candidate in enumerate(steps):
            try:
                return read(ckpt, candidate)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
                where = checkpoint_dir(ckpt.run_dir) / str(candidate)
                if named:
                    others = [s for s in ckpt.all_steps() if s != candidate]
                    raise CheckpointError(f"checkpoint {where} is damaged ({first_line(e)}); read another with "
                                          f"--step (this run also has {others or 'no other'})") from None
                if i + 1 == len(steps):
                    raise CheckpointError(f"no checkpoint of {ckpt.run_dir} can be read; the oldest, {where}, is "
                                          f"damaged ({first_line(e)})") from None
                log.warning("checkpoint %s is damaged (%s); reading checkpoint %d instead", where, first_line(e),
                            steps[i + 1])
    finally:
        ckpt.close()


def load_run(path: str | Path, step: int | None = None, best: bool = False) -> tuple[dict, Any, dict]:
    """``(config dict, params, meta)`` from a run directory or a ``checkpoints/N`` directory;
    ``meta["step"]`` is the step read (the newest readable one unless ``step`` / ``best`` say).

    ``params`` are all of the model's: for a run that trained some of them only (``meta["frozen"]``),
    the frozen ones are rebuilt from its initialisation and ``model.init_from`` and checked against
    the checkpoint's fingerprint; a quantized run's are :class:`~jaxlm.compress.quantize.QuantizedArray`
    leaves where they were stored as integers and scales.
    """
    def read(ckpt, step):
        meta = ckpt.read_meta(step)
        params = ckpt.read_params(step)
        if meta.get("quantization"):  # integer arrays and scales -> QuantizedArray leaves
            from jaxlm.compress.quantize import from_storable

            params = from_storable(params, meta["quantization"]["leaves"])
        if meta.get("teacher"):  # a distilled student: the projection its training used is not the model's
            params = {k: v for k, v in params.items() if k != "distill_projection"}
        return meta["config"], params, meta

    config, params, meta = read_newest(path, read, step, best)
    if meta.get("frozen"):
        from jaxlm.config import validate_config
        from jaxlm.train.setup import full_params

        params = full_params(validate_config(meta["config"]), params, meta["frozen"], str(path))
    return config, params, meta


def load_model_state(path: str | Path, step: int | None = None, best: bool = False, abstract_state=None) -> dict:
    """The non-parameter collections (BatchNorm statistics) of the checkpoint that
    :func:`load_run` reads with the same arguments; ``{}`` for models without any."""
    return read_newest(path, lambda ckpt, step: ckpt.read_model_state(step, abstract_state), step, best)


def load_params_into(path: str | Path, abstract_params, initial=None, may_lack=None) -> Any:
    """Params from a run / checkpoint for a model with ``abstract_params``; every mismatch is named.

    The checkpoint may hold another head of the same model family (a jaxlm MLM run, a
    converted ``BertForMaskedLM`` or base ``BertModel``): its trunk loads, its head params
    (and optional trunk parts such as BERT's pooler) that this model lacks are skipped, and
    those it lacks are taken from ``initial`` (the freshly initialised params); both are
    named in the log. Params whose path ``may_lack(path)`` accepts (a PEFT method's own) are
    taken from ``initial`` too when the checkpoint lacks them. Missing or extra trunk params
    and shape differences are errors.
    A checkpoint with the other layer layout (``model.scan_layers``) is converted to this one.
    """
    from jaxlm.models import MODEL_FAMILIES
    from jaxlm.models.layout import is_stacked, stack_layers, unstack_layers

    quantized = _dequantized(path, abstract_params)
    if quantized is not None:
        return quantized
    config, saved_stacked = _saved_layout(path)
    if config is not None:
        stacked = is_stacked(abstract_params, config)
        if stacked != saved_stacked:
            to_saved, to_model = (unstack_layers, stack_layers) if stacked else (stack_layers, unstack_layers)
            params = load_params_into(path, to_saved(abstract_params, config),
                                      None if initial is None else to_saved(initial, config), may_lack)
            return jax.tree.map(lambda x, a: x if a.sharding is None else jax.device_put(x, a.sharding),
                                to_model(params, config), abstract_params)

    source = _ParamSource(path)
    try:
        family = MODEL_FAMILIES.get(source.meta["config"]["model"]["type"])
        keys = family.torch_keys if family else None
        saved = _by_trunk_name(source.tree, keys and keys.prefix)
        wanted = _by_trunk_name(abstract_params, keys and keys.prefix)

        def optional(name):
            if re.match(HEAD_PARAMS, name[1]):  # a flat model's head: ResNet's classifier, a projection head
                return True
            return keys is not None and (name[0] == "head" or re.search(keys.optional, name[1].replace("/", ".")))

        fresh = sorted(n for n in wanted.keys() - saved.keys()
                       if initial is not None and (optional(n) or (may_lack and may_lack(wanted[n][0]))))
        skipped = sorted(n for n in saved.keys() - wanted.keys() if optional(n))
        shown = {n: "/".join(p) for n, (p, _) in {**saved, **wanted}.items()}

        def shape(table, name):
            return tuple(table[name][1].shape)

        problems = [f"{shown[n]}: missing from {path}" for n in sorted(wanted.keys() - saved.keys() - set(fresh))]
        problems += [f"{shown[n]}: not in this model" for n in sorted(saved.keys() - wanted.keys() - set(skipped))]
        problems += [f"{shown[n]}: shape {shape(saved, n)} in {path} vs {shape(wanted, n)} in this model"
                     for n in sorted(wanted.keys() & saved.keys()) if shape(saved, n) != shape(wanted, n)]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise CheckpointError(f"model.init_from={path} does not fit this model: {'; '.join(problems[:3])}{more}")
        if not fresh and not skipped and all(saved[n][0] == wanted[n][0] for n in saved):
            return source.read(abstract_params)
        # Params this model does not use are read too (as host arrays; orbax's standard handler
        # cannot skip leaves) and dropped.
        item = {p: wanted[n][1] if n in wanted else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
                for n, (p, leaf) in saved.items()}
        restored = traverse_util.flatten_dict(source.read(traverse_util.unflatten_dict(item)))
        start = traverse_util.flatten_dict(initial) if fresh else {}
        out = {p: restored[saved[n][0]] if n in saved else start[p] for n, (p, _) in wanted.items()}
        if fresh:
            log.info("model.init_from=%s lacks %d params of this model, initialised afresh: %s", path, len(fresh),
                     ", ".join(shown[n] for n in fresh))
        if skipped:
            log.info("model.init_from=%s: %d of its params are not in this model and were skipped: %s", path,
                     len(skipped), ", ".join(shown[n] for n in skipped))
        return traverse_util.unflatten_dict(out)
    finally:
        source.close()


def _dequantized(path: str | Path, abstract_params) -> Any:
    """A quantized run's params, dequantized, for a model with exactly its ``abstract_params``
    (None if the run at ``path`` is not quantized)."""
    ckpt, step = open_run(path)
    try:
        quantization = ckpt.read_meta(step).get("quantization")
    finally:
        ckpt.close()
    if not quantization:
        return None
    from jaxlm.compress.quantize import dequantize_params

    params = dequantize_params(load_run(path)[1])
    want = {p: (a.shape, a.dtype) for p, a in traverse_util.flatten_dict(abstract_params).items()}
    have = {p: (x.shape, x.dtype) for p, x in traverse_util.flatten_dict(params).items()}
    if want != have:
        wrong = sorted("/".join(p) for p in want.keys() ^ have.keys() or
                       {p for p in want if want[p] != have[p]})
        raise CheckpointError(f"model.init_from={path} is a quantized run of another model (differs at "
                              f"{', '.join(wrong[:3])}); start from the float run it was quantized from")
    log.info("model.init_from=%s is quantized (%s): its params were dequantized", path, quantization["method"])
    return jax.tree.map(lambda x, a: x if a.sharding is None else jax.device_put(x, a.sharding),
                        params, abstract_params)


def _saved_layout(path: str | Path) -> tuple[Any, bool]:
    """The model config class of the checkpoint at ``path`` (None if its family has no layer
    stack) and whether its saved params hold the layers stacked (``model.scan_layers``)."""
    from jaxlm.models import MODEL_FAMILIES
    from jaxlm.models.layout import is_stacked

    source = _ParamSource(path)
    try:
        family = MODEL_FAMILIES.get(source.meta["config"]["model"]["type"])
        if family is None or family.config.layers_name is None:
            return None, False
        return family.config, is_stacked(source.tree, family.config)
    finally:
        source.close()


class _ParamSource:
    """The latest checkpoint's params at ``path``: their metadata (``tree``) and a reader of any
    subset of them. A run that saved its trainable params only is rebuilt whole (:func:`load_run`)."""

    def __init__(self, path: str | Path):
        self.ckpt, self.step = open_run(path)
        self.meta = self.ckpt.read_meta(self.step)
        self.full = None
        if self.meta.get("frozen"):
            self.ckpt.close()
            self.full = load_run(path, self.step)[1]
        self.tree = self.full if self.full is not None else self.ckpt.manager.item_metadata(self.step).params

    def read(self, abstract):
        if self.full is None:
            return self.ckpt.read_params(self.step, abstract)
        saved = traverse_util.flatten_dict(self.full)
        return traverse_util.unflatten_dict({
            p: jax.device_put(saved[p], a.sharding) if getattr(a, "sharding", None) is not None else saved[p]
            for p, a in traverse_util.flatten_dict(abstract).items()})

    def close(self) -> None:
        self.ckpt.close()


def _by_trunk_name(tree, prefix: str | None) -> dict[tuple[str, str], tuple[tuple[str, ...], Any]]:
    """``(part, name) -> (path, leaf)`` for every leaf (with ``shape`` and ``dtype``): trunk
    params named without the head model's ``prefix`` (``bert/``), so base and head models
    line up; other params of a head model are ``("head", path)``."""
    flat = {tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    head_model = prefix is not None and any(p[0] == prefix for p in flat)
    out = {}
    for path, leaf in flat.items():
        if not head_model:
            name = ("trunk", "/".join(path))
        elif path[0] == prefix:
            name = ("trunk", "/".join(path[1:]))
        else:
            name = ("head", "/".join(path))
        out[name] = (path, leaf)
    return out


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or an exception it came from) says the disk is full."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
