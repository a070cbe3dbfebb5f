"""The device mesh and the logical-axis -> mesh-axis rule table.

Layers name logical axes only; this table decides where they live. With the defaults, the
batch is split over ``data`` x ``fsdp``, weights over ``fsdp`` (their ``embed`` axis) and
``tensor`` (heads, MLP and vocabulary), so changing parallelism is a config edit.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.config import MeshConfig
from jaxlm.errors import ConfigError

log = logging.getLogger("jaxlm")

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query key/value heads; replicated when too few to split
    ("kv", None),
    ("layers", None),  # the stacked axis of scanned layers (model.scan_layers)
)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ConfigError("only one of mesh.data / mesh.fsdp / mesh.tensor may be -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes must be positive or -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
    if -1 in sizes:
        if n_devices % fixed:
            raise ConfigError(f"{n_devices} devices cannot be split with fixed mesh axes of product {fixed}")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
                          f"but there are {n_devices} devices; make the product {n_devices} or use -1")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg, len(devices))
    if cfg.dcn_data == 1:
        return Mesh(np.asarray(devices).reshape(shape), AXES)
    if shape[0] % cfg.dcn_data:
        raise ConfigError(f"mesh.dcn_data={cfg.dcn_data} must divide the data axis ({shape[0]})")
    by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1  # TPU multislice; else hosts
    groups = len({d.slice_index if by_slice else d.process_index for d in devices})
    if groups != cfg.dcn_data:
        unit = "slices" if by_slice else "processes"
        raise ConfigError(f"mesh.dcn_data={cfg.dcn_data} but the devices span {groups} {unit}; set it to {groups}")
    inner = (shape[0] // cfg.dcn_data, shape[1], shape[2])
    grid = mesh_utils.create_hybrid_device_mesh(inner, (cfg.dcn_data, 1, 1), devices, process_is_granule=not by_slice)
    return Mesh(grid, AXES)


def rules_for(cfg: MeshConfig) -> tuple:
    """The default rule table with ``mesh.rules`` laid over it."""
    table = {**dict(DEFAULT_RULES), **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.rules.items()}}
    return tuple(table.items())


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, P(dict(rules)["batch"]))


def data_parallel_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways each batch is split (the mesh axes of the ``batch`` rule)."""
    axes = dict(rules)["batch"] or ()
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


# Axes that must split evenly (attention computes per head); any other axis that does not
# divide its mesh axes is replicated instead (e.g. GPT-2's odd 50257-token vocabulary).
MUST_DIVIDE = {"heads"}


FALLBACK_MIN_SIZE = 2**12  # smaller unannotated arrays (counters, RNG keys) stay replicated


def param_shardings(logical_specs, shapes, mesh, rules=DEFAULT_RULES):
    """Logical ``PartitionSpec``s -> ``NamedSharding``s on ``mesh`` (a Mesh or AbstractMesh).

    An array with no logical axis names at all gets big_vision's generic FSDP rule: its
    largest dimension that ``mesh.fsdp`` divides is split over ``fsdp``.
    """
    table = dict(rules)
    replicated: set[str] = set()

    def resolve(path, spec, shape):
        out = []
        for size, logical in zip(shape.shape, spec):
            axes = table.get(logical) if logical else None
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                if logical in MUST_DIVIDE:
                    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
                    sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
                    raise ConfigError(f"{name}: its {logical!r} axis of size {size} cannot be split {ways} ways "
                                      f"({sizes}); choose mesh sizes that divide it")
                replicated.add(f"{logical}={size}")
                axes = ()
            out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        if not any(spec) and math.prod(shape.shape) >= FALLBACK_MIN_SIZE:
            out = fsdp_fallback(shape.shape, mesh.shape["fsdp"])
        return NamedSharding(mesh, P(*out))

    shardings = jax.tree_util.tree_map_with_path(resolve, logical_specs, shapes,
                                                 is_leaf=lambda x: isinstance(x, P))
    if replicated:
        log.info("not sharded (size does not divide the mesh): %s", ", ".join(sorted(replicated)))
    return shardings


def fsdp_fallback(shape: tuple[int, ...], fsdp: int) -> list[str | None]:
    divisible = [i for i, n in enumerate(shape) if fsdp > 1 and n % fsdp == 0]
    out: list[str | None] = [None] * len(shape)
    if divisible:
        out[max(divisible, key=lambda i: shape[i])] = "fsdp"
    return out
