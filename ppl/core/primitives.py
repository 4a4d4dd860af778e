"""The closed set of primitives that carry probabilistic meaning: ``sample_p``, ``factor_p``, ``cost_p``.

``ppl.sample(addr, d, strategy)`` binds ``sample_p``. Its operands are the leaves of the distribution ``d`` (NumPyro
distributions are pytrees) followed by the leaves of the strategy (a baseline may be a traced value); its static
parameters are the address, a :class:`DistSpec` (the distribution's pytree structure, hashable and printable) and a
:class:`StrategySpec`. Nothing is sampled when the primitive is bound: a transformation (``seed``, ``simulate``,
ADEV, ...) interprets the staged jaxpr and gives the site its meaning.

>>> import jax, numpyro.distributions as dist, ppl
>>> eqn = jax.make_jaxpr(lambda m: ppl.sample("x", dist.Normal(m, 1.0)))(0.0).eqns[-1]
>>> print(eqn.primitive, eqn.params)
sample {'addr': 'x', 'dist': Normal, 'strategy': default}

Sharp edges:
    * A site under ``jax.vmap`` becomes a map (``map_p``) whose lane body is the unbatched site: every lane draws
      with its own key, and its choice gets the lane axis in front (:mod:`ppl.core.lanes`).
    * Scopes (``ppl.scope``) are applied when the program is staged: the address in the jaxpr is the full path.
"""

from __future__ import annotations

import contextlib
import functools
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

# ---------------------------------------------------------------------------------------------- static params


@dataclass(frozen=True)
class DistSpec:
    """Static description of a site's distribution: its pytree structure (and NumPyro's ``validate_args``)."""

    treedef: Any
    num_leaves: int
    validate: bool = False  # the distribution's ``validate_args`` (NumPyro's pytree unflattening drops it)

    @property
    def name(self) -> str:
        return _dist_name(self.treedef)

    def unflatten(self, leaves: Sequence[Any]) -> nd.Distribution:
        d = jax.tree_util.tree_unflatten(self.treedef, list(leaves))
        if self.validate:  # off-support values score -inf, as in NumPyro
            inner = d
            while isinstance(inner, nd.Distribution):
                inner._validate_args = True
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
    def multi_call(self) -> bool:
        """Does the strategy need the continuation (enum, mvd, leave_one_out)?"""
        return bool(getattr(self.unflatten([_Leaf()] * self.treedef.num_leaves), "multi_call", False))

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

    @staticmethod
    def of(invals: Sequence[Any], addr: str, dist: DistSpec, strategy: StrategySpec) -> Site:
        return Site(addr, dist, strategy, tuple(invals[: dist.num_leaves]), tuple(invals[dist.num_leaves :]))

    def log_prob(self, x: Any) -> Any:
        """Total log density of value ``x`` (summed over event and batch axes)."""
        return jnp.sum(_dists.log_prob(self.dist(), x))

    def dist(self) -> nd.Distribution:
        return self.spec.unflatten(self.dist_leaves)

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


def _sample_abstract_eval(*avals, addr, dist, strategy):
    return _sample_aval(dist, strategy, tuple(ShapedArray(a.shape, a.dtype) for a in avals))


def _map_abstract_eval(*avals, body, size, in_axes):
    return [ShapedArray((size, *a.shape), a.dtype) for a in body.out_avals]


sample_p = new_primitive("sample", _sample_abstract_eval, _outside("sample"), multiple_results=False)
factor_p = new_primitive("factor", lambda w: [], _outside("factor"))
cost_p = new_primitive("cost", lambda c: [], _outside("add_cost"))
map_p = new_primitive("ppl_map", _map_abstract_eval, _outside("vmap"))
"""``map_p``: ``size`` lanes of the per-lane program ``body`` (a ``ClosedJaxpr``), operands mapped along ``in_axes``
(``None``: shared by all lanes); every output gets the lane axis in front. Each lane is its own execution: the
interpretations give it its own key, accumulators and choices (:mod:`ppl.core.lanes`)."""

PPL_PRIMITIVES = frozenset({sample_p, factor_p, cost_p, map_p})


@functools.lru_cache(maxsize=8192)
def contains_ppl(jaxpr: Jaxpr) -> bool:
    """Does ``jaxpr`` (or a jaxpr nested in it) bind a ``ppl`` primitive?"""
    return any(e.primitive in PPL_PRIMITIVES or any(map(contains_ppl, subjaxprs(e))) for e in jaxpr.eqns)

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


def sample(addr: str, d: Any, strategy: Strategy | None = None) -> jax.Array:
    """A random choice at address ``addr`` from distribution ``d`` (NumPyro, or TFP's JAX substrate).

    ``strategy`` says how ADEV estimates the derivative through this choice (``None``: reparam where ``d`` has a
    reparameterized sampler, reinforce otherwise).

    >>> import jax, numpyro.distributions as dist, ppl
    >>> float(ppl.seed(lambda: ppl.sample("x", dist.Normal(0.0, 1.0)))(jax.random.key(0))) != 0.0
    True
    """
    if not isinstance(addr, str) or not addr:
        raise TypeError(f"ppl.sample: the address must be a non-empty string, got {addr!r}")
    d = _dists.as_numpyro(d, addr)
    if strategy is not None and not isinstance(strategy, Strategy):
        raise TypeError(
            f"ppl.sample({addr!r}, ...): strategy={strategy!r} is not a gradient strategy; use one of "
            + ", ".join(f"ppl.{n}" for n in sorted(STRATEGIES))
        )
    dleaves, dtree = jax.tree_util.tree_flatten(d)
    sleaves, stree = jax.tree_util.tree_flatten(strategy)
    spec = DistSpec(dtree, len(dleaves), validate=bool(getattr(d, "_validate_args", False)))
    return sample_p.bind(*dleaves, *sleaves, addr=_prefix() + addr, dist=spec, strategy=StrategySpec(stree))


def factor(log_weight: Any) -> None:
    """Add ``log_weight`` (summed if it is an array) to the log density of the enclosing program."""
    factor_p.bind(jnp.sum(jnp.asarray(log_weight)))


def add_cost(c: Any) -> None:
    """Inside an expectation, add ``c`` (summed if it is an array) to the value whose expectation is taken."""
    cost_p.bind(jnp.sum(jnp.asarray(c)))
