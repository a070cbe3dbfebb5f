"""Per-device memory of training: the state (params, gradients, optimizer state) under a mesh, and
the activations the backward pass keeps.

Computed from abstract shapes and the sharding rules alone (``jax.eval_shape`` on an
``AbstractMesh``), so it runs on a laptop for a pod-sized mesh. Activations are what the
gradient of one micro-batch's loss saves from the forward pass (its residuals, as
``jax.ad_checkpoint.print_saved_residuals`` lists them), traced at the config's batch and
sequence length for each ``model.remat`` setting: a device holds its share of the batch rows.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax._src.ad_checkpoint import saved_residuals  # the list print_saved_residuals prints
from jax.sharding import AbstractMesh

from jaxlm.config import Config, MeshConfig
from jaxlm.models import build_model
from jaxlm.models.state import StatefulModel, split_variables
from jaxlm.parallel.mesh import AXES, mesh_shape, param_shardings, rules_for
from jaxlm.train.optim import build_optimizer
from jaxlm.train.precision import DTYPES

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
    inputs = _concrete(abstract_inputs(config.model_copy(update={"data": config.data.model_copy(
        update={"seq_len": min(8, config.data.seq_len)})}), head, 1))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs)["params"])
    boxed_opt = jax.eval_shape(tx.init, boxed)
    params = nn.meta.unbox(boxed)
    rules = rules_for(config.mesh)
    param_sh = param_shardings(nn.get_partition_spec(boxed), params, mesh, rules)
    opt = nn.meta.unbox(boxed_opt)
    opt_sh = param_shardings(nn.get_partition_spec(boxed_opt), opt, mesh, rules)
    param_bytes = per_device_bytes(params, param_sh)
    return {"parameters": sum(math.prod(a.shape) for a in jax.tree.leaves(params)),
            "params": param_bytes, "grads": param_bytes, "optimizer": per_device_bytes(opt, opt_sh)}


REMAT = ("none", "dots", "full")


def device_rows(config: Config, n_devices: int) -> int:
    """Rows of one micro-batch on one device: the batch over gradient accumulation and the
    data-parallel mesh axes (``mesh.data`` x ``mesh.fsdp``), rounded up."""
    sizes = dict(zip(AXES, mesh_shape(config.mesh, n_devices)))
    batch_axes = dict(rules_for(config.mesh))["batch"] or ()
    ways = math.prod(sizes[a] for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes))
    return -(-config.trainer.batch_size // config.trainer.grad_accum_steps // ways)


def activation_memory(config: Config, head: str, n_devices: int) -> dict[str, int]:
    """Bytes per device that the backward pass keeps from the forward pass of one micro-batch
    (``config.data.seq_len`` tokens a row, :func:`device_rows` rows), for each ``model.remat``
    setting: ``{"none": ..., "dots": ..., "full": ...}``. Counted in the compute dtype, with dropout
    masks when the model drops out; the inputs and params themselves are not counted. Tensor
    parallelism also splits activations along heads and MLP units, which this leaves out (an upper
    bound there); a task that runs the model more than once per example (contrastive views, a GAN's
    two models) is counted for one pass of its rows."""
    rows = device_rows(config, n_devices)
    out = {}
    for remat in REMAT:
        model = build_model(config.model.model_copy(update={"remat": remat}), head,
                            dtype=DTYPES[config.precision.compute])
        inputs = abstract_inputs(config, head, rows)
        variables = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **_concrete(inputs))))
        params, model_state = split_variables(variables)
        params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, DTYPES[config.precision.params]), params)
        dropout = config.model.uses_dropout

        def loss(p, state, x, rng):
            bound = StatefulModel(model, state, train=True)  # BatchNorm: the batch's statistics
            return _output_loss(bound.apply({"params": p}, **x, rngs={"dropout": rng} if dropout else None))

        saved = saved_residuals(loss, params, model_state, inputs, jax.random.PRNGKey(0))
        out[remat] = sum(math.prod(aval.shape) * aval.dtype.itemsize for aval, source in saved
                         if not source.startswith("from the argument"))
    layers = num_layers(config.model)
    for remat in REMAT[1:]:  # the backward pass rematerialises one layer at a time, on top of what was kept
        out[remat] += (out["none"] - out[remat]) // layers
    return out


def _output_loss(out) -> jax.Array:
    """A scalar of the model's output that keeps what a task's loss keeps: cross-entropy over ``logits``
    (token or class scores), else the squares of every float output (embeddings, regression values)."""
    logits = getattr(out, "logits", None)
    if logits is not None and logits.ndim >= 2:
        logits = logits.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(logits.shape[:-1], jnp.int32)).sum()
    leaves = [x for x in jax.tree.leaves(out) if jnp.issubdtype(x.dtype, jnp.floating)]
    return sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in leaves)


def num_layers(model_config) -> int:
    """The model's layers (encoder and decoder together), 1 for models without a layer stack."""
    names = ("n_layer", "num_hidden_layers", "n_layers", "num_layers")
    found = next((getattr(model_config, n) for n in names if hasattr(model_config, n)), None)
    return found or (getattr(model_config, "encoder_layers", 0) + getattr(model_config, "decoder_layers", 0)) or 1


def compiled_step_memory(config: Config):
    """XLA's memory analysis (``temp_size_in_bytes``, ``argument_size_in_bytes``, ...) of the train step
    as the trainer compiles it for this device set: builds the run's setup, so it reads the data."""
    from jaxlm.train.setup import setup
    from jaxlm.train.step import make_train_step

    s = setup(config)
    t = config.trainer
    step = make_train_step(s.model, s.task, None, None, t.grad_accum_steps, t.label_smoothing,
                           config.model.uses_dropout, s.assemble, s.groups)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in s.task.example_batch(t.batch_size).items()}
    with s.sharding_context():
        return jax.jit(step, donate_argnums=0).lower(s.abstract_state, batch, s.abstract_constants).compile(
        ).memory_analysis()


def abstract_inputs(config: Config, head: str, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The model's inputs for ``rows`` rows of ``config.data.seq_len`` tokens, as the tasks feed them:
    images as the model takes them, masked LMs with their scored positions, seq2seq with the shifted target."""
    length = config.data.seq_len
    ids = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    if head == "seq2seq":
        return {"input_ids": ids, "attention_mask": ids,
                "decoder_input_ids": jax.ShapeDtypeStruct((rows, length + 1), jnp.int32)}
    inputs = {k: jax.ShapeDtypeStruct((rows, *v.shape[1:]) if v.ndim != 2 else (rows, length), v.dtype)
              for k, v in config.model.dummy_inputs().items()}
    if "input_ids" in inputs and head != "causal_lm":  # language models train on unpadded blocks
        inputs["attention_mask"] = ids
    if head in ("masked_lm", "pretraining"):
        scored = min(length, math.ceil(getattr(config.task, "mask_probability", 0.15) * length))
        inputs["masked_positions"] = jax.ShapeDtypeStruct((rows, scored), jnp.int32)
    return inputs


def _concrete(inputs: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
    return {k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}


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
