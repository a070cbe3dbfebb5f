"""Per-device memory of the training state (params, gradients, optimizer state) under a mesh.

Computed from abstract shapes and the sharding rules alone (``jax.eval_shape`` on an
``AbstractMesh``), so it runs on a laptop for a pod-sized mesh. Activations are not
included: they depend on batch, sequence length and ``model.remat``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import AbstractMesh

from jaxlm.config import Config, MeshConfig
from jaxlm.models import build_model
from jaxlm.parallel.mesh import AXES, mesh_shape, param_shardings, rules_for
from jaxlm.train.optim import build_optimizer

GPT2_SIZES = {  # OpenAI's four GPT-2 sizes
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
}


def per_device_bytes(tree, shardings) -> int:
    return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True))


def state_memory(config: Config, head: str, n_devices: int) -> dict[str, int]:
    """Bytes per device for params, gradients and optimizer state, and the parameter count."""
    mesh = AbstractMesh(mesh_shape(config.mesh, n_devices), AXES)
    model = build_model(config.model, head)
    tx, _ = build_optimizer(config.optimizer, config.schedule, config.trainer.max_steps)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **config.model.dummy_inputs())["params"])
    boxed_opt = jax.eval_shape(tx.init, boxed)
    params = nn.meta.unbox(boxed)
    rules = rules_for(config.mesh)
    param_sh = param_shardings(nn.get_partition_spec(boxed), params, mesh, rules)
    opt = nn.meta.unbox(boxed_opt)
    opt_sh = param_shardings(nn.get_partition_spec(boxed_opt), opt, mesh, rules)
    param_bytes = per_device_bytes(params, param_sh)
    return {"parameters": sum(math.prod(a.shape) for a in jax.tree.leaves(params)),
            "params": param_bytes, "grads": param_bytes, "optimizer": per_device_bytes(opt, opt_sh)}


def table(n_devices: int = 8, tensor: int = 4) -> str:
    """The markdown table in docs/scaling.md: GPT-2 sizes x (DP, FSDP, TP), AdamW, float32."""
    layouts = {f"DP ({n_devices},1,1)": MeshConfig(data=n_devices),
               f"FSDP (1,{n_devices},1)": MeshConfig(data=1, fsdp=n_devices),
               f"FSDP+TP (1,{n_devices // tensor},{tensor})": MeshConfig(data=1, fsdp=n_devices // tensor,
                                                                       tensor=tensor)}
    rows = ["| model | params | layout | params / device | grads / device | AdamW state / device | total / device |",
            "|---|---:|---|---:|---:|---:|---:|"]
    for name, size in GPT2_SIZES.items():
        for layout, mesh in layouts.items():
            config = Config.model_validate({"model": {"type": "gpt2", **size}, "mesh": mesh.model_dump()})
            try:
                m = state_memory(config, "causal_lm", n_devices)
            except ValueError as e:
                rows.append(f"| {name} | | {layout} | {str(e).split(';')[0].split(': ', 1)[-1]} | | | |")
                continue
            total = m["params"] + m["grads"] + m["optimizer"]
            rows.append(f"| {name} | {m['parameters'] / 1e6:.0f}M | {layout} | {gib(m['params'])} | {gib(m['grads'])} "
                        f"| {gib(m['optimizer'])} | {gib(total)} |")
    return "\n".join(rows)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
