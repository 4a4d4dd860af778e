"""Tracing and density accumulation: ``seed``, ``simulate``, ``assess``, ``generate``, and ``sim``/``density``.

Two interpretations of a staged model, each a rule table over :func:`ppl.core.interpreter.run`:

* :class:`Seed` — each site draws from its distribution with a key derived from the incoming key;
* :class:`Tracing` — importance: constrained sites read their value and add its log density to the weight, the
  others draw; every site adds to the score and is recorded. ``simulate`` (no constraints), ``assess`` (all
  constrained, no key) and ``generate`` are this one interpretation, and so is ``sim`` inside an expectation
  (``draw=False``): there the sites stay random choices of the program (ADEV gives them their strategies) while
  their values and log density become explicit outputs.

>>> import jax, numpyro.distributions as dist, ppl
>>> @ppl.gen
... def model():
...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
...     return ppl.sample("x", dist.Normal(mu, 1.0))
>>> tr = model.simulate(jax.random.key(0))
>>> bool(abs(model.assess(tr.choices)[0] - tr.score) < 1e-6)
True

Sharp edges:
    * ``assess``/``generate`` check the given choices when the program is staged: an address the program never
      uses, or a value of the wrong shape, is an error (so is a missing one in ``assess``, including addresses in the
      branch of a ``cond`` not taken).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._jax_internals import is_tracer, subjaxprs
from ..core.family import Family, Transform
from ..core.interpreter import (
    Interpretation,
    PPLError,
    RuleTable,
    State,
    control_flow_rules,
    run,
    site_avals,
    zero,
)
from ..core.plates import check_plate_sizes, site_plates
from ..core.primitives import Site, cost_p, factor_p, sample_p
from ..core.staging import ArgSplit, Staged

# ---------------------------------------------------------------------------------------------- interpretations


def _draw(site: Site, key: Any) -> Any:
    return site.dist().sample(key)


def _seed_sample(interp, state, eqn, invals):
    key, state = state.next_key()
    return [_draw(Site.of(invals, **eqn.params), key)], state


def _ignore(interp, state, eqn, invals):
    return [], state


class Seed(Interpretation):
    """Every site draws; factors and costs are ignored."""

    name = "seed"
    rules = RuleTable({sample_p: _seed_sample, factor_p: _ignore, cost_p: _ignore, **control_flow_rules()})


def _tracing_sample(interp, state, eqn, invals):
    site = Site.of(invals, **eqn.params)
    state = state.visit(site.addr)
    key, state = state.next_key()
    dtype = eqn.outvars[0].aval.dtype
    if site.addr in interp.constraints:
        observed = jnp.asarray(interp.constraints[site.addr])
        try:
            lp = site.log_prob(observed)  # scored as given (a Bernoulli observed at 0.7 is not rounded to 0)
        except (TypeError, ValueError) as e:
            raise PPLError(
                f"choice {site.addr!r}: the given value ({observed.dtype}{list(observed.shape)}) cannot be scored by "
                f"{site.spec.name}, whose values are {dtype}{list(eqn.outvars[0].aval.shape)}: "
                f"{str(e).splitlines()[0]}. Pass a value of that type (e.g. jnp.asarray(v, jnp.{dtype}))"
            ) from None
        x = observed.astype(dtype)  # the program continues with a value of the site's type
        state = state.add("weight", lp)
    else:
        drawn = site.addr not in interp.fixed  # the site's own draw: in the support, no check needed
        if not drawn:
            x = jnp.asarray(interp.fixed[site.addr], dtype)
        elif interp.draw:
            x = _draw(site, key)
        else:
            x = sample_p.bind(*invals, **eqn.params)
        lp = site.log_prob(x, drawn)
    if interp.cost:  # the site's log density, as a term of the enclosing expectation (per lane in a plate)
        own = site.addr if not interp.draw and site.addr not in interp.constraints else None  # a drawn guide site
        if site.plates:
            drawn = site.addr not in interp.constraints and site.addr not in interp.fixed
            cost_p.bind(interp.cost * site.lane_log_prob(x, drawn), plate=site.plates[0], own=own)
        else:
            cost_p.bind(interp.cost * lp, plate=None, own=own)
    return [x], state.add("score", lp).record(site.addr, x)


def _tracing_factor(interp, state, eqn, invals):
    if interp.cost:
        cost_p.bind(interp.cost * invals[0], **eqn.params)
    w = jnp.sum(invals[0])
    return [], state.add("score", w).add("weight", w)


def _tracing_cost(interp, state, eqn, invals):
    if interp.rewrites:
        cost_p.bind(*invals, **eqn.params)
    return [], state


@dataclass(frozen=True)
class Tracing(Interpretation):
    """Importance, with every site scored and recorded.

    ``constraints`` are read and their log density added to the weight; ``fixed`` choices are read but not weighted;
    the other sites are drawn with the key (``draw=True``: simulate/generate) or stay random choices of the
    enclosing program (``draw=False``: ``sim`` inside an expectation, where ADEV gives them their strategies).
    ``cost``: ``sim``/``density`` with ``cost=`` also add each site's log density to the expectation as a term
    (one per lane inside a plate), so the estimator conditions each term on the choices it depends on.
    """

    constraints: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    draw: bool = True
    cost: float = 0.0  # ≠ 0: also add cost·(each site's log density) to the enclosing expectation (sim/density)
    name = "simulate/assess/generate"
    records = True
    rules = RuleTable(
        {sample_p: _tracing_sample, factor_p: _tracing_factor, cost_p: _tracing_cost, **control_flow_rules()}
    )

    @property
    def rewrites(self) -> bool:  # type: ignore[override]
        return not self.draw or bool(self.cost)

    def loop_data(self, addrs):
        return tuple({a: v for a, v in m.items() if a in addrs} for m in (self.constraints, self.fixed))

    def for_iteration(self, data):
        return replace(self, constraints=data[0], fixed=data[1])


# ---------------------------------------------------------------------------------------------- traces


@jax.tree_util.register_pytree_node_class
class Arguments:
    """The arguments of a call, as a pytree whose leaves are the array arguments only (statics are aux data)."""

    def __init__(self, split: ArgSplit, dynamic: list[Any]):
        self.split, self.dynamic = split, list(dynamic)

    def tree_flatten(self):
        return self.dynamic, self.split

    @classmethod
    def tree_unflatten(cls, split, dynamic):
        return cls(split, list(dynamic))

    def value(self) -> tuple[Any, ...]:
        return self.split.merge(self.dynamic)


@jax.tree_util.register_pytree_node_class
class Trace:
    """The record of one execution: ``choices`` (address -> value), ``score`` (log density incl. factors),
    ``retval`` and ``args``. A pytree: ``jax.vmap`` of ``simulate`` returns one ``Trace`` with batched leaves."""

    def __init__(self, choices: dict[str, Any], score: Any, retval: Any, args: Arguments):
        self.choices, self.score, self.retval, self._args = choices, score, retval, args

    @property
    def args(self) -> tuple[Any, ...]:
        return self._args.value()

    def tree_flatten(self):
        return (self.choices, self.score, self.retval, self._args), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def __repr__(self) -> str:
        shapes = {a: tuple(jnp.shape(v)) for a, v in self.choices.items()}
        return f"Trace(choices={shapes}, score={self.score})"


def _check_constraints(jaxpr: Any, given: Mapping[str, Any], who: str, require_all: bool) -> None:
    avals = site_avals(jaxpr)
    unused = sorted(set(given) - set(avals))
    if unused:
        raise PPLError(f"{who}: choice(s) {unused} are not used by the program; its addresses are {sorted(avals)}")
    if require_all:
        missing = sorted(set(avals) - set(given))
        if missing:
            raise PPLError(f"{who}: missing choice(s) {missing}: the program samples them; pass a value for each")
    soft = [
        a
        for a, v in given.items()
        if jnp.issubdtype(avals[a].dtype, jnp.integer)
        and not is_tracer(v)
        and not np.array_equal(np.asarray(v), np.round(np.asarray(v)))
    ]
    used = sorted(set(soft) & _used_sites(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr)) if soft else []
    if used:
        raise PPLError(
            f"{who}: choice {used[0]!r} is given a non-integer value, which its distribution scores as given (a soft "
            f"value, as NumPyro does), but the program goes on with its integer part ({avals[used[0]].dtype}): pass "
            "an integer value; soft values are for observed sites whose value the program does not use"
        )
    for a, v in given.items():
        if not is_tracer(v) and np.asarray(v).dtype.kind not in "biuf":
            raise PPLError(
                f"{who}: choice {a!r} is given {type(v).__name__} {v!r}, not a number or numeric array; pass "
                f"jnp.asarray(value, jnp.{avals[a].dtype})"
            )
        if tuple(jnp.shape(v)) != tuple(avals[a].shape):
            plates = site_plates(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr).get(a)
            why = (
                f"it is inside {plates[0]!r}: its size along dim {plates[0].dim} is the plate's"
                if plates
                else "sites inside lax.scan / vmap record the loop / batch axis in front"
            )
            raise PPLError(
                f"{who}: choice {a!r} has shape {tuple(jnp.shape(v))} but the program's site expects "
                f"{tuple(avals[a].shape)} ({why})"
            )


def _used_sites(jaxpr: Any) -> set[str]:
    """Addresses whose value the program reads after the site (conservatively: any later use in its block)."""
    out: set[str] = set()
    uses = {id(v) for e in jaxpr.eqns for v in e.invars} | {id(v) for v in jaxpr.outvars}
    for e in jaxpr.eqns:
        if e.primitive is sample_p and id(e.outvars[0]) in uses:
            out.add(e.params["addr"])
        for sub in subjaxprs(e):
            out |= _used_sites(sub)
    return out


def _checked_key(key: Any, who: str) -> Any:
    if not (hasattr(key, "dtype") and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or jnp.shape(key) == (2,))):
        raise TypeError(f"{who}: the first argument is a JAX key (jax.random.key(0)), got {type(key).__name__}")
    return key


def _initial(key: Any) -> State:
    return State(key=key, carry={"score": zero(), "weight": zero()})


class GenFn(Family):
    """A generative function: a program with addressed random choices (``@ppl.gen``).

    Calling it inside another ``@ppl.gen`` function (or an expectation) inlines it. A :class:`~ppl.core.family.Family`:
    ``ppl.sim``/``ppl.density`` call its :meth:`sim`/:meth:`density`.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.staged = Staged(fn)
        self.__name__ = getattr(fn, "__name__", "genfn")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"GenFn({self.__name__})"

    def map_programs(self, transform: Transform) -> GenFn:
        """A copy (same class and attributes: a NumPyro program keeps ``init_params``, an automatic family its
        ``auxiliary``) running ``transform(self)``."""
        new = copy.copy(self)
        new.fn = transform(self)
        new.staged = Staged(new.fn)
        return new

    def sim(self, *args: Any, cost: float = 0.0) -> tuple[dict[str, Any], Any]:
        """Inside an expectation: ``(choices, log q(choices))`` (see :func:`ppl.sim`)."""
        return record(self, args, cost=cost)[0:2]

    def density(self, choices: Mapping[str, Any], *args: Any, cost: float = 0.0) -> Any:
        """``log p(choices)`` (see :func:`ppl.density`)."""
        if not cost:
            return self.assess(choices, *args)[0]
        jaxpr, _, dyn = self.staged.stage(args)
        _check_constraints(jaxpr, dict(choices), f"{self.__name__}.density", require_all=True)
        _, st = run(Tracing(dict(choices), cost=float(cost)), jaxpr, dyn, _initial(None))
        return st.carry["score"]

    def _trace(self, key, constraints, args, who, require_all=False):
        constraints = dict(constraints)
        jaxpr, out_tree, dyn = self.staged.stage(args)
        check_plate_sizes(jaxpr.jaxpr)
        _check_constraints(jaxpr, constraints, f"{self.__name__}.{who}", require_all)
        outs, st = run(Tracing(constraints), jaxpr, dyn, _initial(key))
        retval = jax.tree_util.tree_unflatten(out_tree, outs)
        split, _ = ArgSplit.of(args)
        return Trace(st.choices, st.carry["score"], retval, Arguments(split, dyn)), st.carry["weight"]

    def simulate(self, key: Any, *args: Any) -> Trace:
        """Run the program, drawing every choice: a :class:`Trace`."""
        return self._trace(_checked_key(key, f"{self.__name__}.simulate"), {}, args, "simulate")[0]

    def generate(self, key: Any, constraints: Mapping[str, Any], *args: Any) -> tuple[Trace, Any]:
        """Constrained choices fixed, the others drawn from the program: ``(trace, log_weight)`` where the weight
        is the log density of the constrained choices plus the factors."""
        return self._trace(_checked_key(key, f"{self.__name__}.generate"), constraints, args, "generate")

    def assess(self, choices: Mapping[str, Any], *args: Any) -> tuple[Any, Any]:
        """``(log_density, retval)`` of the given choices (all of them, and only them)."""
        tr, _ = self._trace(None, choices, args, "assess", require_all=True)
        return tr.score, tr.retval


def gen(fn: Callable[..., Any]) -> GenFn:
    """Decorate a program with addressed random choices as a generative function."""
    return fn if isinstance(fn, GenFn) else GenFn(fn)


_seed_cache: weakref.WeakKeyDictionary[Any, Staged] = weakref.WeakKeyDictionary()


def seed(f: Callable[..., Any]) -> Callable[..., Any]:
    """``seed(f)(key, *args)`` runs ``f(*args)``, drawing its random choices with keys derived from ``key``.

    >>> import jax, numpyro.distributions as dist, ppl
    >>> x = ppl.seed(lambda m: ppl.sample("x", dist.Normal(m, 1.0)))(jax.random.key(0), 3.0)
    >>> x.shape
    ()
    """
    fn = f.fn if isinstance(f, GenFn) else f
    staged = f.staged if isinstance(f, GenFn) else _seed_cache.setdefault(fn, Staged(fn))

    def seeded(key: Any, *args: Any) -> Any:
        jaxpr, out_tree, dyn = staged.stage(args)
        outs, _ = run(Seed(), jaxpr, dyn, State(key=key))
        return jax.tree_util.tree_unflatten(out_tree, outs)

    return seeded


def as_family(q: Any, who: str) -> Family:
    """``q`` as a :class:`~ppl.core.family.Family` (a plain function becomes a generative function)."""
    if isinstance(q, Family):
        return q
    if callable(q):
        return gen(q)
    raise TypeError(f"ppl.{who}: expected a generative function (@ppl.gen) or another family, got {type(q).__name__}")


def _no_site_terms(q: Family, who: str, cost: float) -> None:
    if cost and q.estimated_density:
        raise PPLError(f"ppl.{who}(..., cost={cost}): {q!r} has an estimated density, with no per-site terms")


def sim(q: Any, *args: Any, cost: float = 0.0) -> tuple[dict[str, Any], Any]:
    """Inside an expectation: run family ``q`` with its strategies; ``(choices, log q(choices))``.

    The sites of ``q`` stay random choices of the expectation (ADEV estimates through them with their strategies).
    A family with an estimated density (``ppl.marginal``) returns an unbiased estimate of the reciprocal density.

    ``cost=c`` (a float) also adds ``c · log q`` to the expectation's value, one term per site (per lane inside a
    ``ppl.plate``) placed right after the site: each term is then multiplied only by the scores of the choices
    before it in its lane — lower variance than returning the same number. Do not also return ``log q``.
    """
    q = as_family(q, "sim")
    _no_site_terms(q, "sim", cost)
    return q.sim(*args, cost=cost)


def record(
    q: GenFn,
    args: tuple[Any, ...],
    constraints: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    cost: float = 0.0,
) -> tuple[dict[str, Any], Any, Any, Any]:
    """Stage ``q`` into the enclosing program with its unconstrained sites kept as random choices.

    Returns ``(choices, score, weight, retval)``: the building block of ``sim`` and of estimated-density families.
    """
    jaxpr, out_tree, dyn = q.staged.stage(args)
    interp = Tracing(dict(constraints or {}), dict(fixed or {}), draw=False, cost=float(cost))
    outs, st = run(interp, jaxpr, dyn, _initial(None))
    return st.choices, st.carry["score"], st.carry["weight"], jax.tree_util.tree_unflatten(out_tree, outs)


def sites(q: GenFn, *args: Any) -> list[tuple[str, Any, Any]]:
    """``(address, distribution, strategy written at the site or None)`` of every site of ``q`` called on ``args``
    (distributions rebuilt with zeros of their parameters' shapes: for inspecting types, not values)."""
    jaxpr, _, _ = q.staged.stage(args)
    out = []

    def walk(j):
        for e in j.eqns:
            if e.primitive is sample_p:
                zeros = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in e.invars]
                site = Site.of(zeros, **e.params)
                out.append((site.addr, site.dist(), site.strategy()))
            for sub in subjaxprs(e):
                walk(sub)

    walk(jaxpr.jaxpr)
    return out


def density(p: Any, choices: Mapping[str, Any], *args: Any, cost: float = 0.0) -> Any:
    """Inside an expectation (or anywhere): ``log p(choices)``, a deterministic differentiable function.

    Choices not sampled by ``p`` are an error, as in ``assess``; for the usual ``{**z, **data}`` pattern pass only
    the addresses ``p`` samples. ``cost=c``: inside an expectation, also add ``c · log p`` as one term per site (per
    lane inside a ``ppl.plate``), as :func:`sim` does; do not also return it.
    """
    p = as_family(p, "density")
    _no_site_terms(p, "density", cost)
    return p.density(choices, *args, cost=cost)
