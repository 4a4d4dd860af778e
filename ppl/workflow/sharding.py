"""Data-parallel gradient estimation for ``fit``: particles and minibatches sharded over devices with JAX's sharding.

``fit(..., devices=...)`` runs the same step function as on one device, compiled by ``jax.jit`` for a
:class:`jax.sharding.Mesh` with two axes:

* ``"particles"`` shards the ``num_particles`` independent estimates of a step (the ``vmap`` over particle keys);
* ``"data"`` shards the minibatch (the leading axis of every leaf of ``fit``'s ``data``).

Parameters, optimizer state, frozen arguments and keys are replicated. The partitioning is left to XLA's SPMD
partitioner (GSPMD): ``fit`` only states the shardings of the step's inputs and outputs and pins the particle keys
and the minibatch with ``jax.lax.with_sharding_constraint``. The objective is a user program (a log-sum-exp over
particles, a prior counted once per particle, a sum over data points...): only the compiler, which sees all of it,
can partition its inside correctly — a ``shard_map`` would hand each device a slice of the minibatch and silently
change what a non-additive objective computes. XLA then inserts the collectives itself: an all-reduce for the mean
over particles (the gradient) and for sums over the minibatch inside the objective. It is the code path of
multi-host JAX: with ``jax.distributed.initialize()``, ``jax.devices()`` lists every host's devices and the same
call shards over all of them.

Why two axes rather than one: a per-particle, per-data-point term (a log-likelihood of shape ``(K, B)``) cannot be
sharded along both ``K`` and ``B`` on one mesh axis; XLA would have to all-gather one of them onto every device.
With a ``particles × data`` mesh each device owns a ``K/p × B/d`` block and nothing is gathered. Given a device list,
:func:`make_layout` puts as many devices as possible on particles (``p = gcd(num_particles, n)``: particles need
only the final gradient all-reduce) and the rest on the minibatch (``d = n / p``, which must divide the batch size).

>>> import jax
>>> layout = make_layout([jax.devices()[0]], num_particles=4, batch_size=32)
>>> layout.shape, str(layout)
({'particles': 1, 'data': 1}, '1 cpu devices: particles × data = 1 × 1')

Sharp edges:
    * Same keys, same estimates, whatever the devices: particle ``j`` of step ``i`` always uses
      ``split(fold_in(key, i), K)[j]``. Parameters agree to float rounding only (not bit for bit) across layouts:
      a mean or a sum over a sharded axis is a per-device partial sum followed by an all-reduce, a different order
      of float additions. A checkpoint resumes bit-exactly on the same layout, and to float rounding on another.
    * With ``batch_size``, the whole ``data`` set is replicated on every device (the minibatch indices are random,
      so any device may need any row; the gather is then local). Without ``batch_size``, ``data`` itself is sharded
      along its leading axis and each device holds ``N / d`` rows.
    * Multi-host: every process calls ``fit`` with the same arguments (the same key and the same ``data``, which
      each process loads in full). Only process 0 writes the checkpoint and shows the progress bar; the checkpoint
      directory must be on a file system all processes share (they check that they resume from the same step).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PARTICLES, DATA = "particles", "data"
BATCH_KEY_SALT = np.uint32(0xFFFFFFFF)  # minibatch of step i: fold_in(fold_in(key, i), 2**32 - 1)


# ---------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """A ``particles × data`` mesh and the shardings of ``fit``'s step (see the module docstring)."""

    mesh: Mesh

    @property
    def shape(self) -> dict[str, int]:
        return {PARTICLES: self.mesh.shape.get(PARTICLES, 1), DATA: self.mesh.shape.get(DATA, 1)}

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _spec(self, axis: str) -> P:
        return P(axis) if axis in self.mesh.axis_names else P()

    @property
    def particles_spec(self) -> P:
        return self._spec(PARTICLES)

    @property
    def data_spec(self) -> P:
        return self._spec(DATA)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def particles(self) -> NamedSharding:
        """Leading axis over ``"particles"`` (the keys and per-particle estimates)."""
        return NamedSharding(self.mesh, self.particles_spec)

    @property
    def data(self) -> NamedSharding:
        """Leading axis over ``"data"`` (the minibatch)."""
        return NamedSharding(self.mesh, self.data_spec)

    def constrain(self, tree: Any, sharding: NamedSharding) -> Any:
        return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    def put(self, tree: Any, sharding: NamedSharding) -> Any:
        """Place host values (or arrays) with ``sharding``; in a multi-process run every process passes the same."""
        return jax.tree_util.tree_map(lambda x: _put(x, sharding), tree)

    def __str__(self) -> str:
        s = self.shape
        kind = self.mesh.devices.flat[0].platform
        return f"{self.num_devices} {kind} devices: particles × data = {s[PARTICLES]} × {s[DATA]}"


def _put(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=impl)
    if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
        return jax.device_put(x, sharding)  # also reshards a global array made by the caller
    if not isinstance(x, jax.Array | np.ndarray | np.generic):
        return x  # static leaves (Python numbers in frozen args) are closed over, not placed
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)  # multi-process: each process fills its own devices' shards from its (identical) copy
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _resolve_devices(devices: Any) -> list[Any]:
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"fit: devices={devices!r}; use None, 'all', a device count, a list of devices or a Mesh")
        return list(jax.devices())
    if isinstance(devices, int) and not isinstance(devices, bool):
        avail = jax.devices()
        if not 1 <= devices <= len(avail):
            raise ValueError(
                f"fit: devices={devices} but {len(avail)} device(s) are available ({avail[0].platform}); on CPU, "
                f"set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before importing jax"
            )
        return list(avail[:devices])
    if isinstance(devices, Sequence) and devices and all(isinstance(d, jax.Device) for d in devices):
        if len(set(devices)) != len(devices):
            raise ValueError(f"fit: devices lists a device twice: {list(devices)}")
        return list(devices)
    raise TypeError(
        f"fit: devices={devices!r}; use None (one device), 'all' (jax.devices()), a device count, a list of "
        "jax.Device or a jax.sharding.Mesh with axes 'particles' and/or 'data'"
    )


def make_layout(devices: Any, num_particles: int, batch_size: int | None) -> Layout | None:
    """The layout of ``fit``'s step over ``devices`` (``None``: unsharded), for ``num_particles`` and the number of
    rows each step's objective sees (``batch_size``, or ``None`` without data)."""
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        return _check_mesh(devices, num_particles, batch_size)
    devs = _resolve_devices(devices)
    n = len(devs)
    p = math.gcd(num_particles, n)
    d = math.gcd(batch_size, n // p) if batch_size else 1
    if p * d != n:
        rows = f"{batch_size} rows per step" if batch_size else "no data"
        raise ValueError(
            f"fit: cannot split the work evenly over {n} devices: num_particles={num_particles} gives {p} particle "
            f"group(s) and {rows} gives {d} minibatch shard(s), {p * d} devices in all. Use a num_particles that is "
            f"a multiple of {n}, or (with data) a batch_size that is a multiple of {n // p}, or fewer devices "
            "(devices=<count>), or a Mesh with axes 'particles'/'data' of your choice"
        )
    return Layout(Mesh(np.asarray(devs, dtype=object).reshape(p, d), (PARTICLES, DATA)))


def _check_mesh(mesh: Mesh, num_particles: int, batch_size: int | None) -> Layout:
    names = tuple(mesh.axis_names)
    unknown = [a for a in names if a not in (PARTICLES, DATA)]
    if unknown:
        raise ValueError(
            f"fit: the Mesh has axes {names}; fit shards over axes named {PARTICLES!r} (particles) and {DATA!r} "
            "(the minibatch): rename them, e.g. Mesh(devices, ('data',))"
        )
    layout = Layout(mesh)
    p, d = layout.shape[PARTICLES], layout.shape[DATA]
    if num_particles % p:
        raise ValueError(f"fit: num_particles={num_particles} is not a multiple of the mesh's {PARTICLES!r} axis ({p})")
    if d > 1 and batch_size is None:
        raise ValueError(f"fit: the mesh's {DATA!r} axis has {d} devices but there is no data= to shard over it")
    if batch_size is not None and batch_size % d:
        raise ValueError(f"fit: {batch_size} rows per step is not a multiple of the mesh's {DATA!r} axis ({d})")
    return layout


def processes_sync(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def processes_agree(value: int, message: str) -> None:
    """An error unless every process of a multi-host run has the same ``value`` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.assert_equal(np.int64(value), message)


# ---------------------------------------------------------------------------------------------- data


def check_data(data: Any, batch_size: Any) -> int | None:
    """The number of rows of ``data`` (``None`` without data); errors for a bad ``data`` / ``batch_size``."""
    if data is None:
        if batch_size is not None:
            raise ValueError("fit: batch_size= needs data= (a mapping of arrays with a leading data-set axis)")
        return None
    leaves, _ = jax.tree_util.tree_flatten_with_path(data)
    if not leaves:
        raise ValueError("fit: data= has no arrays")
    rows = set()
    for path, x in leaves:
        if not hasattr(x, "shape") or len(x.shape) == 0:
            raise ValueError(
                f"fit: data{jax.tree_util.keystr(path)} is {type(x).__name__} of shape {np.shape(x)}; every leaf of "
                "data= must be an array with a leading data-set axis"
            )
        rows.add(x.shape[0])
    if len(rows) != 1:
        shapes = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves}
        raise ValueError(f"fit: the leaves of data= have different leading lengths: {shapes}")
    n = rows.pop()
    if n == 0:
        raise ValueError("fit: data= has no rows (its leaves have leading length 0): pass at least one data point")
    if batch_size is not None and not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise ValueError(f"fit: batch_size must be an int in 1..{n} (the number of rows of data), got {batch_size!r}")
    return n


def minibatch(step_key: jax.Array, data: Any, batch_size: int | None, layout: Layout | None) -> Any:
    """The rows the objective sees at a step: ``batch_size`` rows drawn uniformly with replacement with the key
    ``fold_in(step_key, 2**32 - 1)`` (all of ``data`` when ``batch_size`` is ``None``), sharded over ``"data"``."""
    if batch_size is not None:
        num_rows = jax.tree_util.tree_leaves(data)[0].shape[0]
        idx = jax.random.randint(jax.random.fold_in(step_key, BATCH_KEY_SALT), (batch_size,), 0, num_rows)
        if layout is not None:
            idx = jax.lax.with_sharding_constraint(idx, layout.data)
        data = jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)
    return data if layout is None else layout.constrain(data, layout.data)


# ---------------------------------------------------------------------------------------------- inspecting HLO


class Collective(NamedTuple):
    """A cross-device operation in compiled HLO: its kind (``"all-gather"``...) and result shapes."""

    kind: str
    shapes: tuple[tuple[int, ...], ...]
    line: str


_COLLECTIVE = re.compile(
    r"=\s*(?P<type>\(.*?\)|\S+)\s+(?P<kind>all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"
    r"|collective-broadcast|ragged-all-to-all)(?:-start)?\("
)
_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of a compiled program (``jax.jit(f).lower(...).compile().as_text()``), in order."""
    out = []
    for line in hlo_text.splitlines():
        m = _COLLECTIVE.search(line)
        if m:
            shapes = tuple(tuple(int(d) for d in s.split(",") if d) for s in _SHAPE.findall(m["type"]))
            out.append(Collective(m["kind"], shapes, line.strip()))
    return out
