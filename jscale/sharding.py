"""Device meshes and sharding rules, on JAX's own machinery (``jax.sharding``, GSPMD).

One 2-D mesh, axes ``("data", "fsdp")``:

* **Batches** are split along their batch dimension over both axes jointly
  (``P(("data", "fsdp"))``): every device sees ``batch_size / (data * fsdp)`` sequences.
* **Parameters** (FSDP rule): a parameter with ndim >= 2 is split along ``"fsdp"`` on its
  largest dimension that the fsdp size divides (ties: the first), else replicated; vectors
  (norm scales, int8 scales) and scalars are replicated.  The rule depends only on the shape,
  so the optimizer state (AdamW moments mirror the params) gets the same placement by applying
  it to every optimizer-state leaf (``tree_shardings``).
* **KV cache** ``[B, H, S, K]`` (inference): batch over ``"data"`` and heads over ``"fsdp"``
  where they divide, else replicated along that axis.

The jitted programs get these as ``in_shardings`` / ``out_shardings`` (or sharding constraints)
and XLA's SPMD partitioner inserts the collectives.  The mesh uses ``AxisType.Auto`` axes
(compiler-propagated sharding), so the model code carries no sharding annotations of its own.

Multi-host: call ``maybe_initialize_distributed()`` first (the CLI does); the mesh then spans
every process's devices, and ``put`` builds global arrays from host data that every process
holds in full (batches are a pure function of (seed, step), so each host makes the same global
batch and hands each of its devices its slice).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jscale.config import ConfigError

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both axes jointly


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ``Mesh`` of shape ``(data, fsdp)`` with axes ``("data", "fsdp")`` over ``devices``
    (default ``jax.devices()``: every device of every process).  One of the two sizes may be
    -1: all remaining devices.  Raises ``ConfigError`` (a ``ValueError``) naming the axis when
    a size is invalid or the product does not equal the number of devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {"data": data, "fsdp": fsdp}
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
            raise ConfigError(
                f"mesh.{name}: must be a positive integer or -1 (all remaining devices), got {v!r}"
            )
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError("mesh: at most one of data, fsdp may be -1 (all remaining devices)")
    if free:
        other = next(k for k in AXES if k != free[0])
        if n % sizes[other]:
            raise ConfigError(
                f"mesh.{other}: {sizes[other]} does not divide the {n} available device(s)"
            )
        sizes[free[0]] = n // sizes[other]
    if sizes["data"] * sizes["fsdp"] != n:
        raise ConfigError(
            f"mesh: data={sizes['data']} x fsdp={sizes['fsdp']} = {sizes['data'] * sizes['fsdp']} "
            f"devices, but there {'is' if n == 1 else 'are'} {n}; "
            f"the product must equal the device count "
            f"(use -1 for all remaining devices)"
        )
    return jax.make_mesh(
        (sizes["data"], sizes["fsdp"]),
        AXES,
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices,
    )


def parse_mesh(spec: str) -> dict[str, int]:
    """``"data=2,fsdp=2"`` -> ``{"data": 2, "fsdp": 2}`` (missing axes take make_mesh's
    defaults).  Raises ``ConfigError`` naming the bad part."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, eq, val = part.partition("=")
        key = key.strip()
        if not eq or key not in AXES:
            raise ConfigError(
                f"mesh: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(AXES)} "
                f"(e.g. data=2,fsdp=2)"
            )
        if key in out:
            raise ConfigError(f"mesh.{key}: given twice in {spec!r}")
        try:
            out[key] = int(val)
        except ValueError:
            raise ConfigError(f"mesh.{key}: not an integer: {val.strip()!r}") from None
        if out[key] < 1 and out[key] != -1:
            raise ConfigError(f"mesh.{key}: must be a positive integer or -1, got {out[key]}")
    if not out:
        raise ConfigError(f"mesh: empty spec {spec!r}; e.g. data=2,fsdp=2")
    return out


def mesh_shape_str(mesh: Mesh | None) -> str | None:
    """``"data=2,fsdp=2"`` (None without a mesh)."""
    return None if mesh is None else ",".join(f"{k}={v}" for k, v in mesh.shape.items())


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """The FSDP rule for one array: split its largest dimension divisible by ``fsdp`` along
    "fsdp" if ndim >= 2, else replicate."""
    if len(shape) < 2 or fsdp == 1:
        return P()
    dims = [i for i in sorted(range(len(shape)), key=lambda i: -shape[i]) if shape[i] % fsdp == 0]
    if not dims:
        return P()
    spec = [None] * len(shape)
    spec[dims[0]] = "fsdp"
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` of every leaf of ``tree`` (params, or optimizer state, or anything
    with array-like leaves: arrays or ``ShapeDtypeStruct``) under the FSDP rule."""
    f = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(np.shape(x)), f)), tree)


def batch_sharding(mesh: Mesh, ndim: int = 2, batch_axis: int = 0) -> NamedSharding:
    """Batch dimension ``batch_axis`` of an ``ndim``-D array split over ("data", "fsdp")."""
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_devices(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def cache_shardings(cache: Any, mesh: Mesh) -> Any:
    """KV cache ``{"layers": [{"k", "v": [B, H, S, K]}], "length"}``: batch over "data" and
    heads over "fsdp" where the sizes divide (else replicated along that axis)."""

    def one(x):
        shape = np.shape(x)
        if len(shape) != 4:
            return replicated(mesh)
        b = "data" if shape[0] % mesh.shape["data"] == 0 and mesh.shape["data"] > 1 else None
        h = "fsdp" if shape[1] % mesh.shape["fsdp"] == 0 and mesh.shape["fsdp"] > 1 else None
        return NamedSharding(mesh, P(b, h))

    return jax.tree.map(one, cache)


def tokens_sharding(mesh: Mesh, batch: int, ndim: int = 2) -> NamedSharding:
    """Inference tokens ``[B, ...]``: batch over "data" when it divides, else replicated."""
    spec = [None] * ndim
    if mesh.shape["data"] > 1 and batch % mesh.shape["data"] == 0:
        spec[0] = "data"
    return NamedSharding(mesh, P(*spec))


def put(tree: Any, shardings: Any) -> Any:
    """Place every leaf of ``tree`` with its sharding (a tree of the same structure, or one
    sharding for all).  Single process: ``jax.device_put``.  Several processes: global arrays
    built with ``jax.make_array_from_callback`` from host data every process holds in full
    (each process materialises only its own devices' slices)."""
    if not isinstance(shardings, jax.sharding.Sharding):
        leaves, treedef = jax.tree.flatten(tree)
        sh = treedef.flatten_up_to(shardings)
        return jax.tree.unflatten(treedef, [put(x, s) for x, s in zip(leaves, sh)])
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, shardings), tree)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, shardings)  # already global: reshard on device
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, shardings, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def gather(x):
    """``x`` itself, or a full host copy when it spans several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return to_host(x)
    return x


def check_batch(mesh: Mesh | None, batch_size: int, where: str) -> None:
    """A ``ConfigError`` naming ``where`` (the field or flag) unless the mesh's data x fsdp
    devices divide ``batch_size``: each device takes an equal share of every batch."""
    if mesh is not None and batch_size % batch_devices(mesh):
        raise ConfigError(
            f"{where} = {batch_size} must be divisible by the mesh's data x fsdp = "
            f"{batch_devices(mesh)} devices ({mesh_shape_str(mesh)}): each device takes an "
            f"equal share of every batch"
        )


def to_host(tree: Any) -> Any:
    """Every leaf as a full numpy array on this host (gathers across processes when needed)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def multihost_env() -> str | None:
    """Why this process looks like one of several hosts of one job, or None.

    * ``JSCALE_DISTRIBUTED=1``: explicitly (``=0`` turns detection off);
    * ``JAX_NUM_PROCESSES`` > 1: a job started by hand (see ``maybe_initialize_distributed``);
    * SLURM: a job step of several tasks (``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS`` > 1,
      i.e. ``srun -n N``; an array job's tasks are independent single-task jobs and stay out);
    * a multi-host TPU slice: ``TPU_WORKER_HOSTNAMES`` lists more than one host.
    """
    flag = os.environ.get("JSCALE_DISTRIBUTED", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return None
    if flag in ("1", "true", "yes", "on"):
        return "JSCALE_DISTRIBUTED=1"
    for var in ("JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 1:
            return f"{var}={v}"
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return f"TPU_WORKER_HOSTNAMES lists {len(hosts)} hosts"
    return None


def _env_int(var: str) -> int | None:
    """``$var`` as a non-negative integer (None when unset or empty); ``ConfigError`` naming the
    variable otherwise."""
    v = os.environ.get(var, "").strip()
    if not v:
        return None
    if not v.isdigit():
        raise ConfigError(f"{var}: must be a non-negative integer, got {v!r}")
    return int(v)


_initialized = False


def maybe_initialize_distributed() -> bool:
    """``jax.distributed.initialize`` when ``multihost_env()`` says this is one process of a
    multi-host job; a no-op on a plain single machine.  Must run before anything touches a
    device.  Returns whether it initialised.

    Where the job's shape comes from:

    * ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0, which listens there),
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (0 .. N-1): a job started by hand, e.g. two
      processes on one machine (``JAX_COORDINATOR_ADDRESS=127.0.0.1:12345 JAX_NUM_PROCESSES=2
      JAX_PROCESS_ID=0 jscale train --mesh data=-1 ...``, and the same with ``JAX_PROCESS_ID=1``).
      JAX itself reads only the address, so jscale passes the other two;
    * otherwise JAX's cluster auto-detection (SLURM, TPU pods, Open MPI) fills in what is unset.

    On CPU, cross-process collectives use JAX's default ``jax_cpu_collectives_implementation``
    (gloo over TCP in JAX 0.10)."""
    global _initialized
    if _initialized:
        return True
    if multihost_env() is None:
        return False
    num_processes, process_id = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ConfigError(
            f"JAX_PROCESS_ID: {process_id} is not below JAX_NUM_PROCESSES = {num_processes} "
            "(process ids are 0 .. N-1)"
        )
    jax.distributed.initialize(num_processes=num_processes, process_id=process_id)
    _initialized = True
    return True
