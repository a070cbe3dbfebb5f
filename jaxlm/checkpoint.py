"""The one orbax wrapper: save, list and restore training checkpoints.

A run directory holds ``checkpoints/<step>/`` with four items: ``params``, ``train``
(optimizer state, step, RNG key), ``data`` (the iterator position) and ``meta`` (format
version, the resolved config, eval metrics). A checkpoint labelled N holds N completed
optimizer updates. Params are a separate item so evaluation, generation and
``model.init_from`` read them without the optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxlm.errors import JaxlmError

FORMAT_VERSION = 1
ITEMS = ("params", "train", "data", "meta")


class CheckpointError(JaxlmError):
    pass


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).absolute() / "checkpoints"


class Checkpoints:
    def __init__(self, run_dir: str | Path, every: int | None = None, keep: int | None = None,
                 read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every or 1, max_to_keep=keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=not read_only)
        self.manager = ocp.CheckpointManager(checkpoint_dir(run_dir), options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict, force: bool = False) -> bool:
        train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave({"format_version": FORMAT_VERSION, **meta}),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
        """Restore onto the shardings of ``abstract_state`` (a TrainState of ShapeDtypeStructs)."""
        abstract_train = {"opt_state": abstract_state.opt_state, "step": abstract_state.step,
                          "rng": abstract_state.rng}
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            train=ocp.args.StandardRestore(abstract_train),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        t = out.train
        state = abstract_state.replace(params=out.params, opt_state=t["opt_state"], step=t["step"], rng=t["rng"])
        return state, out.data, out.meta

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def read_params(self, step: int, abstract_params=None):
        restore = ocp.args.StandardRestore(abstract_params)
        return self.manager.restore(step, args=ocp.args.Composite(params=restore)).params

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_run(path: str | Path, step: int | None = None) -> tuple[dict, Any, int]:
    """``(config dict, params, step)`` from a run directory's latest (or given) checkpoint."""
    path = Path(path)
    if not checkpoint_dir(path).is_dir():
        raise CheckpointError(f"{path} has no checkpoints/ directory; pass a jaxlm run directory "
                              "(run.out_dir of a training run)")
    ckpt = Checkpoints(path, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{path} holds no complete checkpoint yet")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise CheckpointError(f"{path} has no checkpoint at step {step}; it has {sorted(steps)}")
    meta = ckpt.read_meta(step)
    params = ckpt.read_params(step)
    ckpt.close()
    return meta["config"], params, step
