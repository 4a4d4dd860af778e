"""The closed set of primitives that carry probabilistic meaning: ``sample_p``, ``factor_p``, ``cost_p``.

``ppl.sample(addr, d, strategy)`` binds ``sample_p``. Its operands are the leaves of the distribution ``d`` (NumPyro
distributions are pytrees) followed by the leaves of the strategy (a baseline may be a traced value); its static
parameters are the address, a :class:`DistSpec` (the distribution's pytree structure, hashable and printable), a
:class:`StrategySpec` and the enclosing plates (``ppl.plate``: :class:`PlateSpec`). Nothing is sampled when the
primitive is bound: a transformation (``seed``, ``simulate``, ADEV, ...) interprets the staged jaxpr and gives the
site its meaning.

>>> import jax, numpyro.distributions as dist, ppl
>>> eqn = jax.make_jaxpr(lambda m: ppl.sample("x", dist.Normal(m, 1.0)))(0.0).eqns[-1]
>>> print(eqn.primitive, eqn.params)
sample {'addr': 'x', 'dist': Normal, 'strategy': default, 'plates': ()}

Sharp edges:
    * A site under ``jax.vmap`` becomes a map (``map_p``) whose lane body is the unbatched site: every lane draws
      with its own key, and its choice gets the lane axis in front (:mod:`ppl.core.lanes`).
    * Scopes (``ppl.scope``) are applied when the program is staged: the address in the jaxpr is the full path.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from .._jax_internals import Jaxpr, ShapedArray, new_primitive, subjaxprs
from . import distributions as _dists
from .strategy import STRATEGIES, Strategy


class PPLError(ValueError):
    """A program that ``ppl`` cannot interpret as written (the message names the address or primitive)."""


# ---------------------------------------------------------------------------------------------- static params


@dataclass(frozen=True)
class DistSpec:
    """Static description of a site's distribution: its pytree structure (and NumPyro's ``validate_args``)."""

    treedef: Any
    num_leaves: int
    validate: bool = False  # ``validate_args`` (dropped by NumPyro's unflattening), off when the support is all of ℝⁿ

    @property
    def name(self) -> str:
        return _dist_name(self.treedef)

    def unflatten(self, leaves: Sequence[Any], validate: bool = True) -> nd.Distribution:
        """The distribution; ``validate=False`` skips NumPyro's support check in ``log_prob`` (for a value known to
        be in the support: one the site drew itself)."""
        d = jax.tree_util.tree_unflatten(self.treedef, list(leaves))
        inner, on = d, self.validate and validate  # off-support values score -inf, as in NumPyro
        while isinstance(inner, nd.Distribution):
            inner._validate_args = on
            inner = getattr(inner, "base_dist", None)
        return d

    def __repr__(self) -> str:
        return self.name


def _dist_name(treedef: Any) -> str:
    s = str(treedef)
    start = s.find("CustomNode(")
    if start < 0:
        return s
    s = s[start + len("CustomNode(") :]
    return s[: min(i for i in (s.find("["), s.find("("), len(s)) if i >= 0)]


@dataclass(frozen=True)
class StrategySpec:
    """Static part of a site's strategy (``None``: the default, chosen by the distribution)."""

    treedef: Any

    def unflatten(self, leaves: Sequence[Any]) -> Strategy | None:
        return jax.tree_util.tree_unflatten(self.treedef, list(leaves))

    @property
    def calls(self) -> int | str:
        """The strategy's continuation calls (``Strategy.calls``; 1 for the default): not 1 means it needs the
        continuation (enum, mvd, leave_one_out)."""
        return getattr(self.unflatten([_Leaf()] * self.treedef.num_leaves), "calls", 1)

    def __repr__(self) -> str:
        if self.treedef.num_leaves == 0 and self.treedef.num_nodes == 1 and str(self.treedef) == "PyTreeDef(None)":
            return "default"
        return repr(self.unflatten([_Leaf()] * self.treedef.num_leaves))


class _Leaf:
    def __repr__(self) -> str:
        return "*"


# ---------------------------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    """A ``sample_p`` equation's operands and params, as the interpretations see it."""

    addr: str
    spec: DistSpec
    strategy_spec: StrategySpec
    dist_leaves: tuple[Any, ...]
    strategy_leaves: tuple[Any, ...]

    plates: tuple[PlateSpec, ...] = ()

    @staticmethod
    def of(
        invals: Sequence[Any], addr: str, dist: DistSpec, strategy: StrategySpec, plates: tuple[PlateSpec, ...] = ()
    ) -> Site:
        n = dist.num_leaves
        return Site(addr, dist, strategy, tuple(invals[:n]), tuple(invals[n:]), plates)

    @property
    def scale(self) -> float:
        """The subsampling scale (``size / subsample_size`` of each enclosing plate, multiplied)."""
        return math.prod(p.scale for p in self.plates)

    def log_prob(self, x: Any, drawn: bool = False) -> Any:
        """Total log density of value ``x`` (summed over event and batch axes; scaled by subsampling plates).
        ``drawn``: ``x`` is the site's own draw, in the support by construction (the support check is skipped)."""
        lp = _dists.log_prob(self.dist(validate=not drawn), x)
        lp = lp if jnp.ndim(lp) == 0 else jnp.sum(lp)
        return lp if self.scale == 1 else self.scale * lp

    def lane_log_prob(self, x: Any, drawn: bool = False) -> Any:
        """The log density of ``x`` per lane of the site's outermost plate (a ``(lanes,)`` vector, scaled)."""
        return self.scale * self.plates[0].per_lane(_dists.log_prob(self.dist(validate=not drawn), x))

    def dist(self, validate: bool = True) -> nd.Distribution:
        return self.spec.unflatten(self.dist_leaves, validate)

    def strategy(self) -> Strategy | None:
        return self.strategy_spec.unflatten(self.strategy_leaves)


# ---------------------------------------------------------------------------------------------- primitives


def _outside(name: str) -> Callable[..., Any]:
    def impl(*args, **params):
        what = f"ppl.sample({params['addr']!r}, ...)" if "addr" in params else f"ppl.{name}(...)"
        raise RuntimeError(
            f"{what} was run directly: random choices only have a meaning inside a ppl transformation. Run a "
            "@ppl.gen program with model.simulate(key, *args) (or assess / generate), any function with "
            "ppl.seed(f)(key, *args), or score it inside an @ppl.expectation."
        )

    return impl


@functools.lru_cache(maxsize=4096)
def _sample_aval(spec: DistSpec, strategy: StrategySpec, avals: tuple[Any, ...]) -> Any:
    n = spec.num_leaves
    out = jax.eval_shape(
        lambda dl: spec.unflatten(dl).sample(jax.random.key(0)),
        [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals[:n]],
    )
    return ShapedArray(out.shape, out.dtype)


def _sample_abstract_eval(*avals, addr, dist, strategy, plates=()):
    return _sample_aval(dist, strategy, tuple(ShapedArray(a.shape, a.dtype) for a in avals))


def _map_abstract_eval(*avals, body, size, in_axes):
    return [ShapedArray((size, *a.shape), a.dtype) for a in body.out_avals]


sample_p = new_primitive("sample", _sample_abstract_eval, _outside("sample"), multiple_results=False)
factor_p = new_primitive("factor", lambda w, plate=None: [], _outside("factor"))
cost_p = new_primitive("cost", lambda c, plate=None, own=None: [], _outside("add_cost"))
"""``factor_p``/``cost_p``: a log weight / a cost — a scalar, or with ``plate`` one value per lane of that plate.
``cost_p``'s ``own``: the address whose log density (at its drawn value) the cost is (``sim(..., cost=)``)."""
map_p = new_primitive("ppl_map", _map_abstract_eval, _outside("vmap"))
"""``map_p``: ``size`` lanes of the per-lane program ``body`` (a ``ClosedJaxpr``), operands mapped along ``in_axes``
(``None``: shared by all lanes); every output gets the lane axis in front. Each lane is its own execution: the
interpretations give it its own key, accumulators and choices (:mod:`ppl.core.lanes`)."""

PPL_PRIMITIVES = frozenset({sample_p, factor_p, cost_p, map_p})


@functools.lru_cache(maxsize=8192)
def contains_ppl(jaxpr: Jaxpr) -> bool:
    """Does ``jaxpr`` (or a jaxpr nested in it) bind a ``ppl`` primitive?"""
    return any(e.primitive in PPL_PRIMITIVES or any(map(contains_ppl, subjaxprs(e))) for e in jaxpr.eqns)


# ---------------------------------------------------------------------------------------------- plates


@dataclass(frozen=True)
class PlateSpec:
    """A plate as its sites see it: ``lanes`` conditionally independent lanes along batch dimension ``dim``
    (negative, from the right), ``size`` the full size and ``scale = size / lanes`` (subsampling)."""

    name: str
    size: int
    lanes: int
    dim: int

    @property
    def scale(self) -> float:
        return self.size / self.lanes

    def per_lane(self, x: Any) -> Any:
        """``x`` (with the plate's dimension at ``dim``) summed over every other axis: a ``(lanes,)`` vector."""
        x = jnp.asarray(x)
        x = jnp.moveaxis(jnp.broadcast_to(x, _with_dim(x.shape, self.dim, self.lanes)), self.dim, 0)
        return jnp.sum(x.reshape(self.lanes, -1), axis=1)

    def __repr__(self) -> str:
        sub = f", subsample {self.lanes}" if self.lanes != self.size else ""
        return f"plate {self.name!r} (size {self.size}{sub}, dim {self.dim})"


def _with_dim(shape: tuple[int, ...], dim: int, n: int) -> tuple[int, ...]:
    s = [1] * max(0, -dim - len(shape)) + list(shape)
    s[dim] = n
    return tuple(s)


_plates = threading.local()


def active_plates() -> tuple[PlateSpec, ...]:
    """The plates enclosing the code being staged, outermost first."""
    return getattr(_plates, "stack", ())


@contextlib.contextmanager
def _push_plate(spec: PlateSpec) -> Iterator[None]:
    _plates.stack = (*active_plates(), spec)
    try:
        yield
    finally:
        _plates.stack = _plates.stack[:-1]


# ---------------------------------------------------------------------------------------------- user functions

_scopes = threading.local()


def _prefix() -> str:
    stack = getattr(_scopes, "stack", ())
    return "".join(s + "/" for s in stack)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix the addresses of the sites sampled inside the block with ``name/``.

    >>> import numpyro.distributions as dist, ppl, jax
    >>> @ppl.gen
    ... def m():
    ...     with ppl.scope("enc"):
    ...         return ppl.sample("z", dist.Normal(0.0, 1.0))
    >>> list(m.simulate(jax.random.key(0)).choices)
    ['enc/z']
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"ppl.scope name must be a non-empty string without '/', got {name!r}")
    _scopes.stack = (*getattr(_scopes, "stack", ()), name)
    try:
        yield
    finally:
        _scopes.stack = _scopes.stack[:-1]


def sample(addr: str, d: Any, strategy: Strategy | None = None, *, obs: Any = None) -> jax.Array:
    """A random choice at address ``addr`` from distribution ``d`` (NumPyro, or TFP's JAX substrate).

    ``strategy`` says how ADEV estimates the derivative through this choice (``None``: reparam where ``d`` has a
    reparameterized sampler, reinforce otherwise).

    ``obs=value`` (NumPyro's form): an observation *in the program*, not a choice — its log density is added as a
    factor (one per lane inside a plate) and ``value`` is returned; use it for data that depends on the program,
    such as ``x[idx]`` in a subsampled plate. Observations passed as ``data`` to an objective are choices instead.

    >>> import jax, numpyro.distributions as dist, ppl
    >>> float(ppl.seed(lambda: ppl.sample("x", dist.Normal(0.0, 1.0)))(jax.random.key(0))) != 0.0
    True
    """
    if not isinstance(addr, str) or not addr:
        raise TypeError(f"ppl.sample: the address must be a non-empty string, got {addr!r}")
    d = _dists.as_numpyro(d, addr)
    if obs is not None:
        d = _in_plates(d, addr, active_plates())
        obs = jnp.asarray(obs)
        factor(_dists.log_prob(d, obs))
        return obs
    if strategy is not None and not isinstance(strategy, Strategy):
        raise TypeError(
            f"ppl.sample({addr!r}, ...): strategy={strategy!r} is not a gradient strategy; use one of "
            + ", ".join(f"ppl.{n}" for n in sorted(STRATEGIES))
        )
    return bind_sample(_prefix() + addr, d, strategy, active_plates())


def bind_sample(addr: str, d: Any, strategy: Strategy | None, plates: tuple[PlateSpec, ...]) -> jax.Array:
    """Bind ``sample_p`` for ``d`` (broadcast to the batch shape the ``plates`` require)."""
    d = _in_plates(d, addr, plates)
    dleaves, dtree = jax.tree_util.tree_flatten(d)
    sleaves, stree = jax.tree_util.tree_flatten(strategy)
    validate = bool(getattr(d, "_validate_args", False)) and _dists.checks_support(d)
    spec = DistSpec(dtree, len(dleaves), validate=validate)
    return sample_p.bind(*dleaves, *sleaves, addr=addr, dist=spec, strategy=StrategySpec(stree), plates=plates)


def _in_plates(d: Any, addr: str, plates: tuple[PlateSpec, ...]) -> Any:
    """``d`` expanded to the batch shape its plates give it (NumPyro's broadcasting); a clash is an error."""
    batch = tuple(d.batch_shape)
    want = list(batch)
    for p in plates:
        want = list(_with_dim(tuple(want), p.dim, p.lanes))
        have = batch[p.dim] if len(batch) >= -p.dim else 1
        if have not in (1, p.lanes):
            raise PPLError(
                f"site {addr!r} inside {p!r}: its distribution has batch shape {batch}, whose dimension {p.dim} is "
                f"{have}, not the plate's {p.lanes}. Give it one value per lane along dim {p.dim} (or size 1 to "
                "broadcast)"
            )
    return d if tuple(want) == batch else d.expand(tuple(want))


def factor(log_weight: Any) -> None:
    """Add ``log_weight`` (summed if it is an array) to the log density of the enclosing program.

    Inside ``ppl.plate`` an array ``log_weight`` with the plate's dimension is one weight per lane (so estimators
    condition per lane, as for the plate's sites); inside a subsampled plate it is scaled by ``size / subsample``."""
    _weight(factor_p, log_weight)


def add_cost(c: Any) -> None:
    """Inside an expectation, add ``c`` (summed if it is an array) to the value whose expectation is taken.

    Inside ``ppl.plate`` an array ``c`` with the plate's dimension is one cost per lane: only the scores of that
    lane's choices (and of choices outside the plate) multiply it; a subsampled plate scales it."""
    _weight(cost_p, c)


def _weight(prim: Any, x: Any) -> None:
    plates = active_plates()
    scale = math.prod(p.scale for p in plates)
    bind_weight(prim, x if scale == 1 else scale * jnp.asarray(x), plates)  # subsampled: estimates the full sum


def bind_weight(prim: Any, x: Any, plates: tuple[PlateSpec, ...]) -> None:
    """Bind ``factor_p``/``cost_p`` for ``x``: one value per lane of the outermost of ``plates`` if ``x`` has that
    plate's dimension, else its sum."""
    x = jnp.asarray(x)
    if plates and x.ndim >= -plates[0].dim and x.shape[plates[0].dim] == plates[0].lanes:
        prim.bind(plates[0].per_lane(x), plate=plates[0])
    else:
        prim.bind(jnp.sum(x), plate=None)
