"""The device mesh and the logical-axis -> mesh-axis rule table.

Layers name logical axes only; this table decides where they live. With the defaults, the
batch is split over ``data`` x ``fsdp``, weights over ``fsdp`` (their ``embed`` axis) and
``tensor`` (heads, MLP and vocabulary), so changing parallelism is a config edit.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.config import MeshConfig
from jaxlm.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
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
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def logical_to_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
    """A tree of logical ``PartitionSpec``s -> a tree of ``NamedSharding``s on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def check_divisible(logical_specs, shapes, mesh: Mesh, rules=DEFAULT_RULES) -> None:
    """Every sharded dimension must split evenly over its mesh axes; name the first that does not."""
    mesh_axes = dict(rules)
    specs = jax.tree_util.tree_flatten_with_path(logical_specs, is_leaf=lambda x: isinstance(x, P))[0]
    for (path, spec), shape in zip(specs, jax.tree.leaves(shapes), strict=True):
        for size, logical in zip(shape.shape, spec):
            axes = mesh_axes.get(logical) if logical else None
            axes = (axes,) if isinstance(axes, str) else axes or ()
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
                sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
                raise ConfigError(f"{name}: its {logical!r} axis of size {size} cannot be split {ways} ways "
                                  f"({sizes}); choose mesh sizes that divide it")
