"""The one quantized-leaf representation and its codecs: int8, NF4 and int4 weights.

A quantized parameter is a :class:`QuantizedArray` in the param tree where the float array was:

* ``int8``: symmetric, one float32 scale per output channel (``absmax / 127`` over the input
  axes; embeddings: one per row), values in [-127, 127]: ``x ~= values * scale``.
* ``nf4``: QLoRA's NormalFloat 4-bit (Dettmers et al. 2023, appendix E): the flattened array in
  blocks of ``block_size`` (64), each divided by its absmax and rounded to the nearest of 16
  code values; two codes per byte, the first in the high nibble: bitsandbytes'
  ``quantize_4bit(..., quant_type="nf4")`` byte for byte. With ``double_quant`` the block absmaxes
  are quantized again as QLoRA and bitsandbytes do (their mean subtracted, blocks of 256 rounded
  to the nearest value of the 8-bit dynamic map; bitsandbytes' CPU search takes the neighbour
  instead at about 1 in 200 near-ties).
* ``int4``: the same blocks, symmetric integers in [-7, 7] (``absmax / 7``), stored as ``q + 8``.

``dequantize`` undoes any of them; :func:`quantize_params` / :func:`dequantize_params` map whole
param trees, and :func:`quantized_model` makes a model whose ``apply`` takes quantized params and
dequantizes them inside the (jitted) call, so every command runs on a quantized run unchanged.
``int8-dynamic`` marks the kernels of dense layers: those stay int8 and the layer quantizes its
input per token at run time, multiplying int8 by int8 into int32 (``torch.ao``'s dynamic
quantization, with per-token instead of per-tensor activation scales).

In a checkpoint a quantized leaf is a dict of its arrays (:func:`storable`) and the static layout
(method, shape, dtype, block size) goes into the checkpoint's metadata, so the stored integers and
scales are all the params item holds.

Why not qwix (Google's JAX quantization library, 0.1.8, judged 2026-12): its PTQ intercepts every
op of a model and swaps the param tree for its own ``WithAux`` / ``QArray`` leaves (a second param
layout for every command to learn), and it emulates NF4 as one ``uint4`` per value with no double
quantization; jaxlm needs a checkpointable packed leaf decoded before ``apply``: a page of jnp.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxlm.errors import JaxlmError

METHODS = ("int8", "int8-dynamic", "nf4", "int4")

# QLoRA, appendix E: the 16 quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)
DOUBLE_QUANT_BLOCK = 256


class QuantizationError(JaxlmError):
    pass


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``; Dettmers 2015):
    256 sorted values in [-1, 1], dense near zero; QLoRA's double quantization rounds to it."""
    data = []
    for i in range(7):
        bounds = np.linspace(0.1, 1, 2**i + 1, dtype=np.float32)
        means = (bounds[:-1] + bounds[1:]) / 2
        data += (np.float32(10.0 ** (-6 + i)) * means).tolist() + (np.float32(-(10.0 ** (-6 + i))) * means).tolist()
    return np.sort(np.asarray(data + [0.0, 1.0], np.float32))


@flax.struct.dataclass
class QuantizedArray:
    """One quantized parameter (see the module docstring for the three layouts).

    ``values``: int8 shaped like the array (``int8``), or uint8 ``[ceil(n / 2)]`` holding two 4-bit
    codes a byte (``nf4`` / ``int4``). ``scale``: float32 with the array's rank and 1 on the
    reduced axes (``int8``), or one per block: float32, or uint8 codes of the dynamic map when
    double-quantized, decoded as ``code * scale_absmax[block // 256] + scale_offset``.
    """

    values: jax.Array
    scale: jax.Array
    scale_absmax: jax.Array | None = None
    scale_offset: jax.Array | None = None
    method: str = flax.struct.field(pytree_node=False, default="int8")
    shape: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    dtype: str = flax.struct.field(pytree_node=False, default="float32")
    block_size: int = flax.struct.field(pytree_node=False, default=0)
    dynamic: bool = flax.struct.field(pytree_node=False, default=False)
    """int8 kernels of dense layers that multiply in int8 with per-token activation scales."""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))

    def layout(self) -> dict:
        """The static fields, as JSON (the checkpoint's metadata keeps them)."""
        return {"method": self.method, "shape": list(self.shape), "dtype": self.dtype,
                "block_size": self.block_size, "dynamic": self.dynamic}


@functools.partial(jax.jit, static_argnames=("reduce_axes", "dynamic"))
def quantize_int8(x: jax.Array, reduce_axes: tuple[int, ...], dynamic: bool = False) -> QuantizedArray:
    """Symmetric int8 with one scale per slice over ``reduce_axes`` (the input axes of a kernel)."""
    x32 = jnp.asarray(x, jnp.float32)
    absmax = jnp.max(jnp.abs(x32), axis=reduce_axes, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    values = jnp.clip(jnp.round(x32 / scale), -127, 127).astype(jnp.int8)
    return QuantizedArray(values, scale, method="int8", shape=tuple(x.shape), dtype=jnp.dtype(x.dtype).name,
                          dynamic=dynamic)


def _blocks(x: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array]:
    """The flattened array scaled into [-1, 1] per block of ``block_size`` (the last block may be
    shorter, as bitsandbytes allows) and the blocks' absmax."""
    flat = jnp.asarray(x, jnp.float32).reshape(-1)
    n = flat.size
    n_blocks = -(-n // block_size)
    padded = jnp.pad(flat, (0, n_blocks * block_size - n))
    absmax = jnp.abs(padded.reshape(n_blocks, block_size)).max(-1)
    safe = jnp.maximum(absmax, 1e-38)
    scaled = jnp.clip(padded.reshape(n_blocks, block_size) * (1.0 / safe)[:, None], -1, 1).reshape(-1)[:n]
    return scaled, absmax


def _pack(codes: jax.Array) -> jax.Array:
    """An even number of 4-bit codes -> bytes, two a byte, the first in the high nibble."""
    codes = codes.astype(jnp.uint8)
    return (codes[0::2] << 4) | codes[1::2]


def _unpack(values: jax.Array, n: int) -> jax.Array:
    return jnp.stack([values >> 4, values & 0xF], axis=-1).reshape(-1)[:n]


def _double_quantize(absmax: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Block absmaxes -> uint8 codes of the dynamic map, their per-256 absmax and the mean offset."""
    offset = absmax.mean()
    centred = absmax - offset
    scaled, absmax2 = _blocks(centred, DOUBLE_QUANT_BLOCK)
    code = jnp.asarray(dynamic_map())
    index = jnp.argmin(jnp.abs(scaled[:, None] - code[None, :]), axis=-1)  # nearest; ties to the lower
    return index.astype(jnp.uint8), absmax2, offset


def _block_scales(q: QuantizedArray) -> jax.Array:
    if q.scale_absmax is None:
        return q.scale
    code = jnp.asarray(dynamic_map())
    block = jnp.arange(q.scale.size) // DOUBLE_QUANT_BLOCK
    return code[q.scale.astype(jnp.int32)] * q.scale_absmax[block] + q.scale_offset


@functools.partial(jax.jit, static_argnames=("method", "block_size", "double_quant"))
def quantize_blockwise(x: jax.Array, method: str = "nf4", block_size: int = 64,
                       double_quant: bool = True) -> QuantizedArray:
    """NF4 (QLoRA) or symmetric int4 codes in blocks of ``block_size``, two a byte; ``double_quant``
    quantizes the block scales again (QLoRA's double quantization)."""
    if method not in ("nf4", "int4"):
        raise QuantizationError(f"block-wise quantization is nf4 or int4, not {method!r}")
    scaled, absmax = _blocks(x, block_size)
    if method == "nf4":
        bounds = jnp.asarray((NF4_CODE[1:] + NF4_CODE[:-1]) / 2)
        codes = jnp.searchsorted(bounds, scaled, side="left")  # nearest value, as bitsandbytes' bucketize
    else:
        codes = jnp.round(scaled * 7).astype(jnp.int32) + 8
    pad_code = 7 if method == "nf4" else 8  # the code of 0.0
    if codes.size % 2:
        codes = jnp.concatenate([codes, jnp.full((1,), pad_code, codes.dtype)])
    values = _pack(codes)
    extra = {}
    if double_quant:
        absmax, extra["scale_absmax"], extra["scale_offset"] = _double_quantize(absmax)
    return QuantizedArray(values, absmax, **extra, method=method, shape=tuple(x.shape),
                          dtype=jnp.dtype(x.dtype).name, block_size=block_size)


@jax.jit
def dequantize(q: QuantizedArray) -> jax.Array:
    """The float array (``q.dtype``, ``q.shape``) that ``q`` stands for."""
    if q.method == "int8":
        return (q.values.astype(jnp.float32) * q.scale).astype(q.dtype)
    codes = _unpack(q.values, q.size)
    if q.method == "nf4":
        unit = jnp.asarray(NF4_CODE)[codes]
    else:
        unit = (codes.astype(jnp.float32) - 8) / 7
    scales = jnp.repeat(_block_scales(q), q.block_size, total_repeat_length=-(-q.size // q.block_size) * q.block_size)
    return (unit * scales[:q.size]).reshape(q.shape).astype(q.dtype)


def is_quantized_leaf(x) -> bool:
    return isinstance(x, QuantizedArray)


def is_quantized(params) -> bool:
    return any(is_quantized_leaf(x) for x in jax.tree.leaves(params, is_leaf=is_quantized_leaf))


def kernel_reduce_axes(name: str, shape: tuple[int, ...], bias_ndim: int | None) -> tuple[int, ...]:
    """The input axes of a weight: a kernel's leading axes (its sibling bias's rank says how many
    trailing axes are outputs; one without a bias, as Conv's ``HWIO``); an embedding's feature axis
    (one scale per row, which is per output channel of a tied output projection too)."""
    if name == "embedding":
        return (len(shape) - 1,)
    n_out = bias_ndim if (name == "kernel" and bias_ndim) else 1
    return tuple(range(len(shape) - n_out))


def quantize_params(params, method: str, *, block_size: int = 64, double_quant: bool = True,
                    dense_kernels: frozenset[tuple[str, ...]] = frozenset()) -> Any:
    """Every floating weight with two or more axes quantized by ``method`` (biases and norm scales
    stay float: they are a sliver of the bytes and sensitive). ``dense_kernels``: for
    ``int8-dynamic``, the paths of the dense layers' kernels (see :func:`dense_kernel_paths`)."""
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization method {method!r}; choose one of: {', '.join(METHODS)}")
    if is_quantized(params):
        raise QuantizationError("these params are already quantized; quantize the float run they came from")
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    out = {}
    for path, x in flat.items():
        if not (jnp.issubdtype(x.dtype, jnp.floating) and x.ndim >= 2):
            out[path] = x
        elif method in ("int8", "int8-dynamic"):
            bias = flat.get((*path[:-1], "bias"))
            axes = kernel_reduce_axes(path[-1], x.shape, None if bias is None else bias.ndim)
            out[path] = quantize_int8(x, axes, dynamic=method == "int8-dynamic" and path in dense_kernels)
        else:
            out[path] = quantize_blockwise(x, method, block_size, double_quant)
    return traverse_util.unflatten_dict(out)


def dequantize_params(params, keep_dynamic: bool = False) -> Any:
    """Float params from quantized ones (``keep_dynamic``: leave int8-dynamic kernels for the layers)."""
    def undo(x):
        if is_quantized_leaf(x) and not (keep_dynamic and x.dynamic):
            return dequantize(x)
        return x

    return jax.tree.map(undo, params, is_leaf=is_quantized_leaf)


def quantized_bytes(params) -> int:
    """Bytes of the arrays of a param tree, as stored (integers and scales for quantized leaves)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# Checkpoints: the arrays in the params item, the layout in the metadata


def storable(params) -> tuple[Any, dict[str, dict]]:
    """``(tree, layout)``: each quantized leaf as a dict of its arrays, and ``"a/b/kernel" -> its
    static fields`` (JSON) to rebuild it with :func:`from_storable`."""
    layout = {}

    def to_dict(path, x):
        if not is_quantized_leaf(x):
            return x
        layout["/".join(str(getattr(k, "key", k)) for k in path)] = x.layout()
        return {k: v for k, v in (("values", x.values), ("scale", x.scale), ("scale_absmax", x.scale_absmax),
                                  ("scale_offset", x.scale_offset)) if v is not None}

    return jax.tree_util.tree_map_with_path(to_dict, params, is_leaf=is_quantized_leaf), layout


def from_storable(tree, layout: dict[str, dict]) -> Any:
    """The param tree :func:`storable` took apart (``tree`` as orbax restored it)."""
    flat = traverse_util.flatten_dict(tree)
    out = {p: v for p, v in flat.items() if "/".join(p[:-1]) not in layout}
    for name, fields in layout.items():
        path = tuple(name.split("/"))
        arrays = {k[-1]: v for k, v in flat.items() if k[:-1] == path}
        if "values" not in arrays:
            raise QuantizationError(f"the checkpoint's params have no quantized {name}; the checkpoint is damaged")
        out[path] = QuantizedArray(**arrays, method=fields["method"], shape=tuple(fields["shape"]),
                                   dtype=fields["dtype"], block_size=fields["block_size"], dynamic=fields["dynamic"])
    return traverse_util.unflatten_dict(out)


# ---------------------------------------------------------------------------------------------
# Running a model on quantized params


def dense_axes(module, x) -> tuple[tuple[int, ...], int]:
    """The input axes a Dense / DenseGeneral contracts and how many kernel axes they are."""
    axis = module.axis if isinstance(module, nn.DenseGeneral) else -1
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    if isinstance(module, nn.DenseGeneral) and module.batch_dims:
        raise QuantizationError("int8-dynamic does not handle DenseGeneral batch_dims")
    return tuple(a % x.ndim for a in axis), len(axis)


def int8_dense(module, x, kernel: QuantizedArray, bias):
    """A Dense / DenseGeneral on an int8 kernel: ``x`` quantized per token (symmetric, the absmax
    over the contracted axes), an int8 x int8 product accumulated in int32, then both scales."""
    contract, n_in = dense_axes(module, x)
    x32 = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x32), axis=contract, keepdims=True)
    x_scale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    xq = jnp.clip(jnp.round(x32 / x_scale), -127, 127).astype(jnp.int8)
    acc = jax.lax.dot_general(xq, kernel.values, ((contract, tuple(range(n_in))), ((), ())),
                              preferred_element_type=jnp.int32)
    w_scale = kernel.scale.reshape(kernel.scale.shape[n_in:])
    x_scale = jnp.squeeze(x_scale, contract).reshape(acc.shape[:acc.ndim - w_scale.ndim] + (1,) * w_scale.ndim)
    out = acc.astype(jnp.float32) * x_scale * w_scale
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    return out.astype(module.dtype or x.dtype)


def _intercept_int8_dense(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.DenseGeneral)) \
            and module.has_variable("params", "kernel"):
        kernel = module.get_variable("params", "kernel")
        if is_quantized_leaf(kernel):
            bias = module.get_variable("params", "bias") if module.use_bias else None
            return int8_dense(module, args[0], kernel, bias)
    return next_fun(*args, **kwargs)


class _QuantizedApply:
    """Mixed into a model class by :func:`quantized_model`: ``apply`` dequantizes quantized params
    (inside the caller's jit, if any) and runs int8-dynamic dense layers in int8."""

    def apply(self, variables, *args, **kwargs):
        params = variables.get("params")
        if params is None or not is_quantized(params):
            return super().apply(variables, *args, **kwargs)
        variables = {**variables, "params": dequantize_params(params, keep_dynamic=True)}
        with nn.intercept_methods(_intercept_int8_dense):
            return super().apply(variables, *args, **kwargs)


@functools.cache
def _subclass(cls: type, mixin: type, tag: str, attrs: tuple) -> type:
    return type(cls.__name__, (mixin, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                             "variant": tag, **dict(attrs)})


def model_subclass(model: nn.Module, mixin: type, tag: str = "", **class_attrs) -> nn.Module:
    """``model`` as an instance of a subclass of its class with ``mixin`` first (which overrides
    ``apply``): same name, fields, params and ``isinstance`` as the original. ``class_attrs`` (and
    ``tag``, which names them) are class attributes, so the instance stays a plain linen module."""
    if isinstance(model, mixin) and getattr(model, "variant", "") == tag:
        return model
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return _subclass(type(model), mixin, tag, tuple(sorted(class_attrs.items())))(**fields)


def quantized_model(model: nn.Module) -> nn.Module:
    """``model``, taking quantized params in ``apply`` (float params work as before)."""
    return model_subclass(model, _QuantizedApply)


def dense_kernel_paths(model: nn.Module, inputs: dict) -> frozenset[tuple[str, ...]]:
    """The param paths of every Dense / DenseGeneral kernel ``model`` uses (traced, nothing computed)."""
    found = set()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Dense, nn.DenseGeneral)):
            found.add((*module.path, "kernel"))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs))
    return frozenset(found)


# ---------------------------------------------------------------------------------------------
# jaxlm quantize RUN --method ... --out RUN2


def quantize_run(source: str, out: str, method: str, *, block_size: int = 64, double_quant: bool = True,
                 step: int | None = None, best: bool = False) -> str:
    """Write the quantized copy of a run; returns a line saying what was written."""
    from jaxlm.compress.runs import check_out, read_run, write_run

    if method not in METHODS:
        raise QuantizationError(f"--method {method} is unknown; choose one of: {', '.join(METHODS)}")
    if block_size < 2 or block_size % 2:
        raise QuantizationError(f"--block-size {block_size} must be an even number of at least 2 (QLoRA uses 64)")
    check_out(out)
    src = read_run(source, step, best)
    if is_quantized(src.params):
        raise QuantizationError(f"{source} is already quantized; quantize the float run it was made from")
    dense = frozenset()
    if method == "int8-dynamic":
        if src.config.model.scan_layers:
            raise QuantizationError("int8-dynamic runs each dense layer in int8, which jaxlm does not do inside "
                                    "scanned layers; use --method int8 or a run with model.scan_layers=false")
        dense = dense_kernel_paths(src.model, src.model.config.dummy_inputs())
    params = quantize_params(src.params, method, block_size=block_size, double_quant=double_quant,
                             dense_kernels=dense)
    settings = {"method": method}
    if method in ("nf4", "int4"):
        settings.update(block_size=block_size, double_quant=double_quant)
    write_run(src, out, params, quantization=settings)
    n = sum(1 for x in jax.tree.leaves(params, is_leaf=is_quantized_leaf) if is_quantized_leaf(x))
    return (f"quantized {n} weights of {source} (step {src.step}) with {method}: params "
            f"{quantized_bytes(src.params) / 2**20:.2f} MB -> {quantized_bytes(params) / 2**20:.2f} MB; wrote {out}")
