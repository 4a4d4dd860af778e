"""``fit``: maximize an objective with an optax optimizer, in jitted ``lax.scan`` chunks.

Each step draws an unbiased gradient estimate of the objective (``objective.value_and_grad_estimate``; with
``num_particles=K`` the mean of ``K`` independent estimates, vmapped), negates it and hands it to the optax
optimizer: objectives return the quantity to **maximize**. Steps run ``chunk_size`` at a time inside one jitted
loop (``lax.while_loop``), so the host sees nothing between two steps of a chunk; the progress bar, the checkpoint
and the value history are updated between chunks.

Compiled once: the number of steps of a chunk is an argument of the compiled program, not a constant, so a last,
shorter chunk runs the same program; and the jitted chunk is kept between calls (the last ``PROGRAM_CACHE_SIZE``,
``clear_cache()`` forgets them): a second ``fit`` with the same objective (the same object), an equivalent optimizer
(``optax.adam(1e-3)`` built again counts: same code and constants), the same static arguments, shapes and dtypes
compiles nothing — e.g. continuing from a result, ``fit(objective, res.args, ...)``. Trained Python floats become
float32 arrays before the first step (as the first chunk would return them), so ``res.args`` runs the same program.

>>> import jax, jax.numpy as jnp, optax, numpyro.distributions as dist, ppl
>>> from ppl.workflow import fit
>>> @ppl.expectation
... def objective(theta):                       # E[-(x - 3)^2], x ~ Normal(theta, 1): maximized at theta = 3
...     x = ppl.sample("x", dist.Normal(theta, 1.0))
...     return -((x - 3.0) ** 2)
>>> res = fit(objective, (jnp.array(0.0),), optimizer=optax.adam(0.1), num_steps=300, key=jax.random.key(0),
...           progress=False)
>>> bool(abs(res.args[0] - 3.0) < 0.2), res.values.shape, res.num_skipped
(True, (300,), 0)

What is trained: the parameters of ``args`` by the one rule of :mod:`ppl.core.params` — float arrays and Python
floats, outside ``ppl.fixed(...)`` (trained Python floats come back as arrays); every other leaf (ints, integer
arrays, strings, functions, fixed data) passes through unchanged. ``fit`` prints what it trains when it starts (and
``FitResult.trained`` says it). ``trainable=`` (a pytree prefix of booleans, like ``optax.masked``'s mask) freezes
parts of ``args``, e.g. ``trainable=(False, True)`` trains only the guide's arguments of ``(model_args,
guide_args)``. The optimizer sees the parameters in the structure of ``args`` with ``None`` in place of frozen
leaves (as with ``eqx.filter(model, eqx.is_inexact_array)``), so ``optax.multi_transform`` labels and masks can
follow ``args``.

Keys: step ``i`` uses ``jax.random.fold_in(key, i)`` (split ``num_particles`` ways), whatever the chunking, so a run
resumed from a checkpoint at step ``s`` is bit-identical to an uninterrupted one.

Data and devices: ``data=`` (arrays with a leading data-set axis) is passed to the objective as an extra last
argument, ``batch_size`` rows per step drawn with ``fold_in(fold_in(key, i), 2**32 - 1)`` (all rows without
``batch_size``); it is never trained. ``devices=`` shards the particles and the minibatch of each step over devices
with ``jax.jit`` shardings (``ppl.workflow.sharding``; docs/multi_device.md); estimates are those of one device for
the same keys. ``lower_fit`` gives the compiled step for inspection.

Sharp edges:
    * Float data passed in ``args`` would be a parameter: pass observations as the objective's data (or ``data=``),
      or wrap the argument in ``ppl.fixed(x)``. A run with nothing to train is an error.
    * A step is skipped — parameters and optimizer state kept — when its estimate is non-finite or its update would
      put a non-finite number in the parameters or the optimizer state (a non-finite gradient does, through any
      optimizer that uses it; one that discards it, e.g. ``optax.chain(optax.zero_nans(), ...)``, makes the step a
      finite one); ``FitResult.num_skipped`` counts them and ``FitResult.skipped`` says which. ``values`` keeps the
      (non-finite) estimate of a skipped step. The check costs nothing per step: one pass over the estimates, the
      parameters and the state per chunk; a chunk that meets a non-finite number is rerun from its start by a
      second, guarded program that checks every step (compiled the first time it is needed; ``fit_chunk``).
    * The optimizer is not saved in a checkpoint, only its state: resuming with a different learning rate continues
      with the new one; a different optimizer *structure*, other parameters or another key is an error (delete the
      checkpoint directory to start over). A checkpoint past ``num_steps`` is an error too.
    * ``optax`` transformations taking extra arguments receive ``value=`` (the loss, i.e. the negated estimate), so
      ``optax.contrib.reduce_on_plateau`` works (give it a large ``accumulation_size``: estimates are noisy).
      Line-search optimizers (``optax.lbfgs``) do not apply to noisy gradient estimates and are not supported.
    * The host only sees values between chunks: a long ``chunk_size`` means a coarse progress bar and checkpoints.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..core.params import argument_names, parameter_mask, trained_summary
from .checkpoints import _key_data, _load, _save, _signature
from .fingerprint import Id as _Id
from .fingerprint import cached
from .fingerprint import fingerprint as _fingerprint
from .fit_chunk import Chunk, make_chunk
from .sharding import Layout, check_data, make_layout, processes_agree, processes_sync

CHECKPOINT_FILE = "fit_checkpoint.npz"
_FORMAT = 1


# ---------------------------------------------------------------------------------------------- arguments


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


@dataclass(frozen=True)
class Partition:
    """``args`` split into trained leaves, frozen arrays (dynamic jit inputs) and static leaves (closed over)."""

    treedef: Any
    leaves: tuple[Any, ...]
    train: tuple[int, ...]
    frozen: tuple[int, ...]

    @staticmethod
    def of(args: tuple[Any, ...], trainable: Any = None) -> Partition:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        mask = [True] * len(leaves) if trainable is None else _broadcast_mask(trainable, args, treedef)
        train = tuple(i for i, p in enumerate(parameter_mask(args)) if mask[i] and p)
        frozen = tuple(i for i, x in enumerate(leaves) if i not in train and _is_array(x))
        return Partition(treedef, tuple(leaves), train, frozen)

    def params(self) -> Any:
        """The trained leaves in the structure of ``args``, ``None`` elsewhere (what the optimizer sees)."""
        return self.tree([jnp.asarray(self.leaves[i]) for i in self.train])

    def tree(self, train_leaves: Sequence[Any]) -> Any:
        out: list[Any] = [None] * len(self.leaves)
        for i, x in zip(self.train, train_leaves, strict=True):
            out[i] = x
        return jax.tree_util.tree_unflatten(self.treedef, out)

    def train_leaves(self, tree: Any) -> list[Any]:
        """The trained positions of a tree in the structure of ``args`` (``None`` leaves allowed elsewhere)."""
        flat = self.treedef.flatten_up_to(tree)
        return [flat[i] for i in self.train]

    def summary(self, names: list[str] | None = None) -> str:
        mask = [i in self.train for i in range(len(self.leaves))]
        return trained_summary(jax.tree_util.tree_unflatten(self.treedef, self.leaves), mask, names)

    @property
    def static(self) -> tuple[int, ...]:
        """Positions of the leaves closed over by the compiled step (neither trained nor frozen arrays)."""
        return tuple(i for i in range(len(self.leaves)) if i not in self.train and i not in self.frozen)

    def skeleton(self) -> Partition:
        """This partition without its arrays (what a cached program keeps): ``merge`` replaces them anyway."""
        keep = set(self.static)
        leaves = tuple(x if i in keep else None for i, x in enumerate(self.leaves))
        return Partition(self.treedef, leaves, self.train, self.frozen)

    def frozen_leaves(self) -> list[Any]:
        return [self.leaves[i] for i in self.frozen]

    def merge(self, params: Any, frozen: Sequence[Any]) -> Any:
        """The full ``args`` from the parameter tree and the frozen arrays."""
        leaves = list(self.leaves)
        for i, x in zip(self.train, self.train_leaves(params), strict=True):
            leaves[i] = x
        for i, x in zip(self.frozen, frozen, strict=True):
            leaves[i] = x
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _broadcast_mask(mask: Any, args: Any, treedef: Any) -> list[bool]:
    try:
        full = jax.tree_util.tree_map(lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), mask, args)
        return list(treedef.flatten_up_to(full))
    except (ValueError, TypeError) as e:
        raise ValueError(f"fit: trainable={mask!r} is not a pytree prefix of args (structure {treedef}): {e}") from None


def as_args(args: Any) -> tuple[tuple[Any, ...], bool]:
    """``(args as a tuple, whether it was given bare)``: a non-tuple is the objective's one argument."""
    return (args, False) if isinstance(args, tuple) else ((args,), True)


def as_key(key: Any) -> jax.Array:
    """A JAX key from a key or an int seed (anything else is an error naming ``key``)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if not (hasattr(key, "dtype") and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,))):
        raise TypeError(f"key must be a JAX key (jax.random.key(0)) or an int seed, got {type(key).__name__} {key!r}")
    return key


# ---------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns.

    ``args``: the trained arguments (same structure as given); ``values``: the estimate at each step (shape
    ``(steps,)``); ``skipped``: which steps were skipped as non-finite; ``num_skipped``; ``opt_state``: the final
    optimizer state; ``steps``: the number of steps taken in all (including steps resumed from a checkpoint);
    ``resumed_from``: the step a checkpoint resumed from (0 for a fresh run); ``wall_time``: seconds in this call;
    ``trained``: which leaves were trained (paths and shapes, as printed at the start).
    """

    args: Any
    values: np.ndarray
    skipped: np.ndarray
    num_skipped: int
    opt_state: Any
    steps: int
    resumed_from: int = 0
    wall_time: float = field(default=0.0, compare=False)
    trained: str = field(default="", compare=False)

    def running_value(self, window: int = 100) -> float:
        """Mean of the finite estimates over the last ``window`` steps (a less noisy final objective value)."""
        v = self.values[-window:]
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write this result to ``path`` (one ``.npz``; ``metadata``: your own JSON object) — see
        :mod:`ppl.workflow.results`."""
        from .results import save

        save(self, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], like: Any = None) -> FitResult:
        """Read a result written by :meth:`save` (``like``: a template of ``args``, or a ``FitResult``, for
        structures the file cannot describe) — see :mod:`ppl.workflow.results`."""
        from .results import load

        return load(path, like=like)

    def __repr__(self) -> str:
        resumed = f", resumed_from={self.resumed_from}" if self.resumed_from else ""
        return (
            f"FitResult(steps={self.steps}, running_value={self.running_value():.6g}, "
            f"num_skipped={self.num_skipped}{resumed}, wall_time={self.wall_time:.2f}s)"
        )


# ---------------------------------------------------------------------------------------------- the step


# ---------------------------------------------------------------------------------------------- compiled programs

_PROGRAMS: collections.OrderedDict[Any, Callable] = collections.OrderedDict()
PROGRAM_CACHE_SIZE = 8  # jitted chunks kept (least recently used dropped first); clear_cache() empties it


_INITS: collections.OrderedDict[Any, Callable] = collections.OrderedDict()  # jitted optimizer.init per fingerprint


def clear_cache() -> None:
    """Forget the compiled chunks kept between ``fit`` calls (and what they hold: objectives, optimizers)."""
    _PROGRAMS.clear()
    _INITS.clear()


def _init_state(optimizer: Any, params: Any) -> Any:
    """``optimizer.init(params)``, strongly typed, as one compiled call, kept per optimizer fingerprint (eagerly it
    is one dispatch per leaf and moment: ~1 ms of a VAE's ``fit`` call)."""
    try:
        key = _fingerprint(optimizer)
    except (TypeError, ValueError):  # no fingerprint: eagerly
        return _strong(optimizer.init(params))
    return cached(_INITS, key, lambda: jax.jit(lambda p: _strong(optimizer.init(p))), PROGRAM_CACHE_SIZE)(params)


def _chunk_program(
    objective: Any,
    part: Partition,
    optimizer: Any,
    num_particles: int,
    layout: Layout | None,
    with_data: bool,
    batch_size: int | None,
    size: int,
) -> Chunk:
    """The jitted chunk, from the cache when an earlier call had the same objective (the same object), an
    equivalent optimizer (:func:`_fingerprint`), the same static arguments, trained/frozen positions, particles,
    devices, data and chunk size; ``jax.jit``'s own cache then reuses the compiled program for the same shapes."""
    static = tuple((i, _fingerprint(part.leaves[i])) for i in part.static)
    key = (_Id(objective), _fingerprint(optimizer), part.treedef, part.train, part.frozen, static, num_particles,
           layout, with_data, batch_size, size, str(jnp.result_type(float)))  # fmt: skip

    def make() -> Chunk:
        return make_chunk(objective, part.skeleton(), optimizer, num_particles, layout, with_data, batch_size, size)

    return cached(_PROGRAMS, key, make, PROGRAM_CACHE_SIZE)


# ---------------------------------------------------------------------------------------------- fit


@dataclass
class _Setup:
    """What a run needs before its first chunk: the partition, the initial state (placed), the jitted chunk."""

    part: Partition
    params: Any
    opt_state: Any
    frozen: list[Any]
    key: jax.Array
    data: Any
    layout: Layout | None
    chunk: Chunk
    meta: dict[str, Any]


def _strong(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.lax.convert_element_type(x, x.dtype) if getattr(x, "weak_type", False) else x, tree
    )


def _setup(
    objective, args_t, optimizer, key, num_particles, trainable, devices, data, batch_size, chunk_size
) -> _Setup:
    if not (isinstance(num_particles, int) and num_particles >= 1):
        raise ValueError(f"fit: num_particles must be a positive int, got {num_particles!r}")
    if not hasattr(objective, "value_and_grad_estimate"):
        raise TypeError(
            f"fit: {objective!r} is not an expectation (use @ppl.expectation or an objective like ppl.elbo)"
        )
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"fit: optimizer={optimizer!r} is not an optax gradient transformation")
    key = as_key(key)
    part = Partition.of(args_t, trainable)
    if not part.train:
        raise ValueError(
            "fit: nothing to train: args has no parameter (a float leaf outside ppl.fixed; ints and integer arrays "
            "are constants) left by trainable= — write 0.0 or jnp.asarray(0.0), not 0"
        )
    num_rows = check_data(data, batch_size)
    layout = make_layout(devices, num_particles, batch_size or num_rows)
    params, frozen = part.params(), part.frozen_leaves()
    # weakly typed leaves (trained Python floats) become strongly typed, as the first chunk returns them: every chunk
    # and every later call (continuing from FitResult.args) then runs the same compiled program
    params = _strong(params)
    opt_state = _init_state(optimizer, params)
    meta = {
        "format": _FORMAT,
        "params": _signature(params),
        "opt_state": _signature(opt_state),
        "key": _key_data(key),
        "num_particles": num_particles,
        "data": None if data is None else _signature(data),
        "batch_size": batch_size,
    }
    if layout is not None:
        params, opt_state, frozen, key = layout.put((params, opt_state, frozen, key), layout.replicated)
        data = layout.put(data, layout.data if batch_size is None else layout.replicated)
    chunk = _chunk_program(objective, part, optimizer, num_particles, layout, data is not None, batch_size, chunk_size)
    return _Setup(part, params, opt_state, frozen, key, data, layout, chunk, meta)


def _run_chunk(st: _Setup, params, opt_state, step: int, end: int, values: np.ndarray, skipped: np.ndarray):
    """Steps ``step .. end - 1``, values and skipped written in place: ``(params, opt_state)``. The fast program runs
    them; when it reports a non-finite number, the guarded one reruns them from the same state and keys."""
    args = (params, opt_state, st.frozen, st.key, jnp.int32(step), jnp.int32(end - step), st.data)
    (new_params, new_state), (v, ok) = st.chunk.fast(*args)
    s = np.zeros(end - step, bool)
    if not bool(ok):
        (new_params, new_state), (v, s) = st.chunk.guarded(*args)
    values[step:end], skipped[step:end] = np.asarray(v)[: end - step], np.asarray(s)[: end - step]
    return new_params, new_state


def fit(
    objective: Any,
    args: Any,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    key: Any,
    num_particles: int = 1,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    chunk_size: int = 100,
    trainable: Any = None,
    data: Any = None,
    batch_size: int | None = None,
    devices: Any = None,
) -> FitResult:
    """Maximize ``E[objective](*args)`` by stochastic gradient ascent with an optax ``optimizer``.

    Args:
        objective: an :class:`~ppl.Expectation` (anything with ``value_and_grad_estimate(key, *args)``).
        args: the tuple of the objective's positional arguments, e.g. ``(model_args, guide_args)`` (a non-tuple is
            its one argument, and ``FitResult.args`` is then bare too). Its parameters (:mod:`ppl.core.params`) are
            trained.
        optimizer: an optax gradient transformation (``optax.adam(1e-2)``); it minimizes the negated objective.
        num_steps: total number of steps (a resumed run continues up to it).
        key: a JAX key (or an int seed); step ``i`` uses ``fold_in(key, i)``.
        num_particles: average this many independent gradient estimates per step (vmapped).
        progress: show a tqdm progress bar with the running value (never when the ``CI`` environment variable is
            set).
        checkpoint: a directory; the state is saved there after every chunk and a rerun resumes from it exactly.
        chunk_size: steps per call of the compiled loop (chunk boundaries are multiples of it, counted from step 0).
        trainable: optional pytree prefix of ``args`` of booleans; ``False`` freezes that part.
        data: optional pytree (a mapping of observed addresses, for the library objectives) of arrays with a
            leading data-set axis; each step passes a minibatch of it as the objective's extra last argument
            (``objective(*args, batch)``; ``ppl.elbo`` & co. take it as ``obs``). Never trained or differentiated.
        batch_size: rows per step, drawn uniformly with replacement with ``fold_in(fold_in(key, i), 2**32 - 1)``;
            ``None`` passes all of ``data`` every step.
        devices: shard each step over devices (``ppl.workflow.sharding``): ``None`` (one device), ``"all"``
            (``jax.devices()``, every host's in a multi-host run), a device count, a list of devices, or a
            ``jax.sharding.Mesh`` with axes ``"particles"`` and/or ``"data"``. Same keys, same estimates.
    """
    t0 = time.perf_counter()
    args_t, bare = as_args(args)
    if isinstance(num_steps, bool) or not (isinstance(num_steps, int) and num_steps >= 0):
        raise ValueError(f"fit: num_steps must be a non-negative int, got {num_steps!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"fit: chunk_size must be a positive int, got {chunk_size!r}")
    st = _setup(objective, args_t, optimizer, key, num_particles, trainable, devices, data, batch_size, chunk_size)
    params, opt_state, meta = st.params, st.opt_state, st.meta
    values = np.full(num_steps, np.nan)  # float64 holds float32 estimates exactly
    skipped = np.zeros(num_steps, dtype=bool)

    path, start = None, 0
    writer = jax.process_index() == 0  # multi-host: one process writes, every process reads
    if checkpoint is not None:
        os.makedirs(checkpoint, exist_ok=True)
        path = os.path.join(os.fspath(checkpoint), CHECKPOINT_FILE)
        processes_sync("ppl.fit: before reading the checkpoint")  # multi-host: the writer has finished
        if os.path.exists(path):
            start, params, opt_state, v, s = _load(path, meta, params, opt_state)
            if start > num_steps:
                raise ValueError(
                    f"fit: the checkpoint {path} is at step {start}, past num_steps={num_steps}; ask for at least "
                    f"{start} steps or delete it"
                )
            values[:start], skipped[:start] = v, s
            if st.layout is not None:
                params, opt_state = st.layout.put((params, opt_state), st.layout.replicated)
        processes_agree(start, f"fit: the processes found the checkpoint {path} at different steps (not shared?)")

    quiet = not progress or bool(os.environ.get("CI")) or not writer
    trained = st.part.summary(argument_names(objective, len(args_t)))
    if not quiet:
        print(f"fit: training {trained}", flush=True)
    bar = _progress(num_steps, start, getattr(objective, "__name__", "fit"), quiet)
    step = start
    try:
        while step < num_steps:
            end = min((step // chunk_size + 1) * chunk_size, num_steps)
            params, opt_state = _run_chunk(st, params, opt_state, step, end, values, skipped)
            step = end
            if path is not None and writer:
                _save(path, {**meta, "step": step}, params, opt_state, values[:step], skipped[:step])
            if bar is not None:
                recent = values[max(start, step - chunk_size) : step]
                recent = recent[np.isfinite(recent)]
                post = {"value": f"{recent.mean():.5g}" if recent.size else "nan"}
                if skipped[:step].any():
                    post["skipped"] = int(skipped[:step].sum())
                bar.set_postfix(post, refresh=False)
                bar.update(end - bar.n)
    finally:
        if bar is not None:
            bar.close()

    out = st.part.merge(params, st.frozen)
    return FitResult(
        args=out[0] if bare else out,
        values=values,
        skipped=skipped,
        num_skipped=int(skipped.sum()),
        opt_state=opt_state,
        steps=num_steps,
        resumed_from=start,
        wall_time=time.perf_counter() - t0,
        trained=trained,
    )


def lower_fit(
    objective: Any,
    args: Any,
    *,
    optimizer: optax.GradientTransformation,
    key: Any,
    num_particles: int = 1,
    trainable: Any = None,
    data: Any = None,
    batch_size: int | None = None,
    devices: Any = None,
    chunk_size: int = 1,
) -> jax.stages.Lowered:
    """The jitted chunk of ``chunk_size`` steps that ``fit`` would run, lowered (not run), for inspection:
    ``lower_fit(...).compile().as_text()`` is the compiled program, with its cross-device collectives
    (``ppl.workflow.sharding.collectives``)."""
    args_t = as_args(args)[0]
    st = _setup(objective, args_t, optimizer, key, num_particles, trainable, devices, data, batch_size, chunk_size)
    return st.chunk.fast.lower(st.params, st.opt_state, st.frozen, st.key, jnp.int32(0), jnp.int32(chunk_size), st.data)


def _progress(total: int, initial: int, desc: str, quiet: bool) -> Any:
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
