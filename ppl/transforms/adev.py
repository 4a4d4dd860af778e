"""ADEV: compile an expectation into an unbiased estimator of its value and derivative.

The ADEV interpretation turns the staged program into a *surrogate*: one plain JAX scalar whose value is an unbiased
estimate of ``E[f](θ)`` and whose JAX derivative (``jax.jvp`` or ``jax.grad``) is an unbiased estimate of the
derivative. This is ADEV's dual-number semantics with the dual number represented as ``value + zero-valued terms``,
so JAX's own forward *and* reverse modes apply to it directly:

* a deterministic primitive is re-bound unchanged (its JVP/transpose are JAX's own);
* a one-call strategy (reparam, reinforce, baseline, implicit_reparam) is state passing: a running score
  ``S`` (value 0, derivative the sum of the score terms seen so far) rides along, a cost ``c`` met later adds
  ``c + sg(c)·S`` and the returned value ``l`` adds ``l + sg(l)·S`` — ADEV's CPS rule with causal
  Rao-Blackwellization (a site's score multiplies only what comes after it). It works inside ``lax.scan``: ``S``
  and the cost accumulator join the carry;
* a multi-call strategy (enum, mvd, leave_one_out) gets the continuation — the remaining equations — as a function
  and calls it (under ``vmap``) as many times as it needs. In a map lane or a loop body it samples and hands its
  coupling to the outermost enclosing map / loop, which re-runs itself and the rest of the program with the same
  keys and that one choice replaced (``docs/design.md``, "Multi-call strategies in map lanes and loop bodies").

>>> import jax, numpyro.distributions as dist, ppl
>>> @ppl.expectation
... def f(theta):
...     x = ppl.sample("x", dist.Normal(theta, 1.0), strategy=ppl.reinforce)
...     return x ** 2
>>> g = jax.vmap(f.grad_estimate, (0, None))(jax.random.split(jax.random.key(0), 20000), 1.5)
>>> bool(abs(g.mean() - 3.0) < 0.15)        # d/dθ (θ² + 1) = 2θ
True

Sharp edges:
    * A multi-call site inside a loop of length ``T`` or a map of ``N`` lanes costs ``T·|values|`` (``N·|values|``)
      re-runs of the whole loop (map) and the rest of the program: ``O(T²)`` work, program size flat in ``T``.
    * A ``cond`` whose branch holds a multi-call site gets the rest of the program traced into each branch.
    * Only first derivatives are estimated unbiasedly (``jax.hessian`` of the surrogate is not an ADEV estimator).
    * Addresses need not be unique inside an expectation (two ``sim`` calls of one family repeat its addresses; no
      trace is recorded). ``with_strategies`` patterns then apply to every site with a matching address.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp

from .._jax_internals import SCAN, Jaxpr, subjaxprs
from ..core.family import Program, Transform
from ..core.interpreter import (
    Interpretation,
    PPLError,
    RuleTable,
    State,
    addresses,
    control_flow_cps_rules,
    control_flow_rules,
    map_lanes_rule,
    map_rule,
    run,
    scan_rule,
    zero,
)
from ..core.params import parameter_mask, unwrap
from ..core.plates import plated_sites, site_plate
from ..core.primitives import Site, cost_p, factor_p, map_p, sample_p
from ..core.staging import Staged
from ..core.strategy import Strategy, default_strategy, sg, weighted

# ---------------------------------------------------------------------------------------------- rules


def _adev_sample(interp, state, eqn, invals):
    site = Site.of(invals, **eqn.params)
    key, state = state.next_key()
    d = site.dist(validate=False)  # the strategy scores only the site's own draws (in the support)
    s = site.strategy() or default_strategy(d)
    if s.calls != 1 and site.plates and not interp.value_only:
        raise _plated_error(
            interp, site, "is inside a lax.scan body, a cond branch or a map lane (such as iwae's particles)"
        )
    s.check(d, site.addr, lanes=bool(site.plates))
    dtype = eqn.outvars[0].aval.dtype
    state = _mark_scored(state, s, site.addr)
    if s.calls != 1:  # in a map lane or a loop body: sample, and ask the enclosing map / loop for the correction
        x, c0, values, coeffs = s.couple(key, d)
        sid = state.path + (id(eqn),)
        x = interp.replaced(sid, state.index, jnp.asarray(x, dtype))
        if not interp.value_only:
            if c0 is not None:
                values, coeffs = jnp.concatenate([x[None], values.astype(dtype)]), jnp.concatenate([c0[None], coeffs])
            state = state.request(sid, (values.astype(dtype), jnp.asarray(coeffs, zero().dtype)))
        return [x], state
    x, score = s.sample(key, d)
    if isinstance(score, float) and score == 0.0 and type(s).cost is Strategy.cost:  # pathwise, detach: no terms
        return [x], state
    score = jnp.asarray(score, zero().dtype)
    total = jnp.sum(score)
    state = state.add("acc", jnp.asarray(s.cost(total), zero().dtype))
    if interp.plated.get(eqn, "") is None:  # its score multiplies only its own lane's terms
        return [x], state.add(_S + site.plates[0].name, site.plates[0].per_lane(score))
    return [x], state.add("S", total)


def _adev_sample_cps(interp, state, eqn, invals, k):
    site = Site.of(invals, **eqn.params)
    key, state = state.next_key()
    d, s = site.dist(validate=False), site.strategy()
    dtype = eqn.outvars[0].aval.dtype
    acc, rest = state.carry["acc"], replace(_mark_scored(state, s, site.addr), carry={**state.carry, "acc": zero()})
    if site.plates:
        lanes, other = _plated_estimate(interp, eqn, site, key, d, s, rest, k)
        return (lanes, acc + other) if interp.collect else acc + other + jnp.sum(lanes)
    if interp.collect:
        raise PPLError(
            f"{s!r} at site {site.addr!r}: a multi-call site outside a plate after a plated multi-call site (of plate "
            f"{interp.collect!r}) is not supported; sample it before the plate, or use a one-call strategy there"
        )
    s.check(d, site.addr)
    return acc + s.surrogate(key, d, lambda x: k([jnp.asarray(x, dtype)], rest))


def _plated_estimate(interp, eqn, site, key, d, s, rest, k):
    """A multi-call strategy at a plated site: parallel over lanes. The rest of the program runs once per value
    ``v`` with *every* lane set to its ``v``, collecting the plate's per-lane terms ``C_v`` (each lane's term
    conditioned on its own lane); lane ``i`` combines ``C_v[i]`` over ``v`` — valid because nothing the site
    reaches leaves its lane (checked by :func:`ppl.core.plates.plated_sites`): ``|values|`` runs for all ``N``
    lanes. ``enum`` weighs the runs by ``p_i(v)`` (exact: the runs carry derivatives); the other strategies add
    their coupling's correction to the run at the sampled value."""
    plate = site.plates[0]
    reason = interp.plated.get(eqn, "is not at the top level of the expectation (inside a jit, cond or loop)")
    if reason is not None:
        raise _plated_error(interp, site, reason if reason.startswith("is ") else f"reaches {reason}")
    if interp.collect not in (None, plate.name):
        raise _plated_error(interp, site, f"comes after a multi-call site of plate {interp.collect!r}")
    if len(site.plates) > 1 or tuple(d.batch_shape) != (plate.lanes,):
        raise PPLError(
            f"{s!r} at plated site {site.addr!r} ({plate!r}): its batch shape is {tuple(d.batch_shape)}; a multi-call "
            f"strategy in a plate needs one value per lane, batch shape ({plate.lanes},) (one plate, no other batch "
            "dimensions). Use .to_event() for the others, or reinforce"
        )
    s.check(d, site.addr, lanes=True)
    dtype = site_dtype(eqn)
    collect = replace(interp, collect=plate.name)
    start = rest if interp.collect else replace(rest, carry={**rest.carry, _C + plate.name: zero_lanes(plate)})

    def run_at(v, how=collect):
        return k([jnp.asarray(v, dtype)], start, how)  # (per-lane terms, everything else)

    exact = s.exact(d)
    if exact is not None:  # Σ_v p_i(v) · C_v[i], the runs with their derivatives
        values, weights = exact
        terms, others = jax.vmap(run_at)(values)
        lanes, other = jnp.sum(weights * terms, axis=0), others[0]
    else:
        x, c0, values, coeffs = s.couple(key, d)
        if c0 is not None:
            values, coeffs = jnp.concatenate([jnp.asarray(x)[None], values]), jnp.concatenate([c0[None], coeffs])
        lanes, other = run_at(x)
        terms, _ = jax.vmap(lambda v: run_at(v, replace(collect, value_only=True)))(values)
        lanes = lanes + jnp.sum(coeffs * sg(terms), axis=0)
    return lanes, other


def zero_lanes(plate):
    return jnp.zeros(plate.lanes, zero().dtype)


def site_dtype(eqn):
    return eqn.outvars[0].aval.dtype


def _plated_error(interp, site, where):
    plate = site.plates[0]
    return PPLError(
        f"{site.strategy()!r} at site {site.addr!r} in {plate!r}: the site {where}, so its lanes are not independent "
        "there and per-lane enumeration would be biased. Keep what a plated choice reaches inside its plate (ppl.elbo "
        "does: each site's log density is a per-lane term; in your own objective use ppl.sim/ppl.density with cost= "
        "or ppl.add_cost inside the plate), or use reinforce at this site"
    )


_S, _C = "S@", "C@"  # carry entries: a plate's per-lane scores; a re-run's per-lane terms


def _score(state, plate=None):
    """The score that multiplies a term: outside every plate ``S``; in lane ``i`` of ``plate`` (a ``(lanes,)``
    vector) ``S + S@plate[i]``. ``S@P`` holds only the scores of plated sites whose values stay in their lanes
    (:func:`ppl.core.plates.plated_sites`), so they reach no term outside their plate, nor another lane: leaving
    their scores out there drops only zero-mean terms (``TraceGraph_ELBO``'s "not downstream")."""
    own = None if plate is None else state.carry.get(_S + plate.name)
    return state.carry["S"] if own is None else state.carry["S"] + own


def _block_cps(rule):
    """A map or loop that holds multi-call sites, with the rest of the program ``k``.

    Run it once (the sites sample and return their couplings ``(values, coeffs)``, stacked over lanes / iterations),
    then, for each site, re-run *this block and the rest of the program* with the same keys and one lane's (or
    iteration's) choice replaced by one of its values — all of them under one ``vmap`` — and add
    ``Σ coeffs · sg(re-run)``. The re-runs are values only (``ADEV.value_only``). A map re-runs only the lane that
    holds the replaced choice (the others do not depend on it) and splices it into the main run's outputs.
    """

    def cps(interp, state, eqn, invals, k):
        if interp.collect:
            raise PPLError(
                f"a {eqn.primitive.name} block with multi-call sites (addresses {sorted(addresses(eqn))}) after a "
                f"plated multi-call site (of plate {interp.collect!r}) is not supported; move it before the plate, or "
                "use one-call strategies in it"
            )
        is_map = eqn.primitive is map_p
        if is_map:
            outs, after, carries, start, lane = map_lanes_rule(interp, replace(state, requests={}), eqn, invals)
        else:
            outs, after = rule(interp, replace(state, requests={}), eqn, invals)
        total = k(outs, replace(after, requests=state.requests))
        for sid, (values, coeffs) in after.requests.items():
            grid, m = coeffs.shape[:-1], coeffs.shape[-1]
            index = jnp.repeat(jnp.indices(grid).reshape(len(grid), -1).T, m, axis=0)
            flat_values = values.reshape((-1, *values.shape[len(grid) + 1 :]))

            def rerun(idx, v, sid=sid):
                other = replace(interp, value_only=True, replace_site=sid, replace_index=idx, replace_value=v)
                if not is_map:
                    o, st = rule(other, state, eqn, invals)
                    return k(o, replace(st, requests={}), other)
                i = idx[0]
                axes = eqn.params["in_axes"]
                args = [x if ax is None else jnp.take(x, i, axis=ax) for x, ax in zip(invals, axes, strict=True)]
                o_i, c_i, _, _ = lane(i, None, start, *args, interp=other)
                o = [x.at[i].set(y) for x, y in zip(outs, o_i, strict=True)]
                carry = {n: after.carry[n] + c_i[n] - carries[n][i] for n in after.carry}
                return k(o, replace(after, carry=carry, requests={}), other)

            total = total + jnp.sum(coeffs.reshape(-1) * sg(jax.vmap(rerun)(index, flat_values)))
        return total

    return cps


def _mark_scored(state, s, addr):
    return state if s.pathwise else replace(state, scored=state.scored | {addr})


def _adev_cost(interp, state, eqn, invals):
    plate, c = eqn.params.get("plate"), invals[0]
    if eqn.params.get("own") in state.scored:  # log q of a site drawn without a pathwise derivative: its direct
        c = sg(c)  # derivative has mean zero given the draw (E[∇ log q] = 0); leaving it out lowers the variance
    score = _score(state, plate)
    term = c if score is interp.zero_score else weighted(c, score)  # no score yet (pathwise sites only): c itself
    if plate is not None and interp.collect == plate.name:
        return [], state.add(_C + plate.name, term)
    return [], state.add("acc", term if jnp.ndim(term) == 0 else jnp.sum(term))


def _factor_in_expectation(interp, state, eqn, invals):
    where = f" (inside {' / '.join(state.where)})" if state.where else ""
    raise PPLError(
        f"ppl.factor in an expectation{where}: an expectation has a value, not a density, so a factor would be "
        "dropped. Use ppl.add_cost(c) to add c to the value, or put the factor in a model and score it with "
        "ppl.density / ppl.sim."
    )


@functools.lru_cache(maxsize=8192)
def _has_multi_call(jaxpr: Jaxpr) -> bool:
    return any(_eqn_multi_call(e) for e in jaxpr.eqns)


def _eqn_multi_call(eqn) -> bool:
    if eqn.primitive is sample_p:
        return eqn.params["strategy"].calls != 1
    return any(map(_has_multi_call, subjaxprs(eqn)))


@dataclass(frozen=True)
class ADEV(Interpretation):
    """The ADEV interpretation (see the module docstring).

    ``value_only``: the re-runs of a multi-call correction, which need the value of the rest of the program and no
    derivative: every site samples (as in the main run, same keys), nothing is corrected. ``replace_*``: the one site
    (path, lane / iteration index) whose value a re-run replaces.
    """

    value_only: bool = False
    replace_site: Any = None
    replace_index: Any = None
    replace_value: Any = None
    plated: Mapping[Any, str | None] = field(default_factory=dict, hash=False, compare=False)
    collect: str | None = None  # a re-run that returns this plate's per-lane terms
    zero_score: Any = field(default=None, hash=False, compare=False)  # the initial ``S`` (no score term so far)
    name = "adev"
    rules = RuleTable(
        {sample_p: _adev_sample, factor_p: _factor_in_expectation, cost_p: _adev_cost, **control_flow_rules()}
    )
    cps_rules = RuleTable(
        {
            sample_p: _adev_sample_cps,
            **control_flow_cps_rules(),
            SCAN: _block_cps(scan_rule),
            map_p: _block_cps(map_rule),
        }
    )

    def inherits(self, name):  # a lane's costs are weighted by the scores before the map and its own
        return name == "S" or name.startswith(_S)

    def may_keep(self, name):  # a loop of pathwise sites leaves the scores as they are (zero_score stays itself)
        return name == "S" or name.startswith(_S)

    def wants_continuation(self, eqn):
        return not self.value_only and self.cps_rules.get(eqn.primitive) is not None and _eqn_multi_call(eqn)

    def may_request(self, eqn):
        return not self.value_only and _eqn_multi_call(eqn)

    def replaced(self, sid: Any, index: tuple[Any, ...], x: Any) -> Any:
        if self.replace_site != sid:
            return x
        hit = jnp.all(jnp.stack([jnp.asarray(i) for i in index]) == self.replace_index) if index else True
        return jnp.where(hit, jnp.asarray(self.replace_value, x.dtype), x)


def _finish(outs, state, interp=None):
    other = state.carry["acc"] + weighted(outs[0], _score(state))
    if interp is not None and interp.collect is not None:  # a plated site's run: its plate's terms apart
        return state.carry[_C + interp.collect], other
    return other


# ---------------------------------------------------------------------------------------------- expectations


class Expectation(Program):
    """``E[f](θ)`` for a program ``f`` whose random choices carry gradient strategies (``@ppl.expectation``).

    All methods take a key then the arguments of ``f``; gradients are with respect to the parameters — every
    floating-point leaf of the arguments outside ``ppl.fixed`` (the rule of :mod:`ppl.core.params`; other leaves get
    ``None``) — one gradient per argument (a bare gradient for one argument).
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.staged = Staged(fn)
        self.__name__ = getattr(fn, "__name__", "expectation")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self) -> str:
        return f"Expectation({self.__name__})"

    def map_programs(self, transform: Transform) -> Expectation:
        """The expectation of ``transform(self)`` (a :class:`~ppl.core.family.Program`)."""
        new = copy.copy(self)
        new.fn = transform(self)
        new.staged = Staged(new.fn)
        return new

    def surrogate(self, key: Any, *args: Any) -> jax.Array:
        """The ADEV surrogate: value = unbiased estimate; JAX derivative = unbiased derivative estimate."""
        jaxpr, out_tree, dyn = self.staged.stage(args)
        out = jaxpr.out_avals
        if out_tree.num_nodes != 1 or out_tree.num_leaves != 1 or out[0].shape != ():
            raise PPLError(
                f"expectation {self.__name__!r} must return one scalar; it returns {out_tree} with shapes "
                f"{[a.shape for a in out]}"
            )
        plated = plated_sites(jaxpr.jaxpr)
        lanes = {_S + site_plate(e).name: jnp.zeros(site_plate(e).lanes) for e, r in plated.items() if r is None}
        s0 = zero()
        state = State(key=key, carry={"S": s0, "acc": zero(), **lanes})
        return run(ADEV(plated=plated, zero_score=s0), jaxpr, dyn, state, cont=_finish)

    def estimate(self, key: Any, *args: Any) -> jax.Array:
        """An unbiased estimate of ``E[f](args)``."""
        return self.surrogate(key, *args)

    def _parameters(self, args: tuple[Any, ...]) -> tuple[list[Any], Any, list[int]]:
        """``(leaves, treedef, positions of the parameters)`` of ``args`` (the rule of :mod:`ppl.core.params`)."""
        leaves, tree = jax.tree_util.tree_flatten(args)
        idx = [i for i, m in enumerate(parameter_mask(args)) if m]
        if not idx:
            kinds = ", ".join(f"{type(x).__name__} {x!r}" if jnp.ndim(x) == 0 else type(x).__name__ for x in leaves)
            raise PPLError(
                f"{self.__name__}: no parameter to differentiate (got {kinds or 'no arguments'}); the parameters are "
                "the float leaves outside ppl.fixed(...) — write 1.0, not 1, or jnp.asarray(x, float)"
            )
        return leaves, tree, idx

    def _with(self, key: Any, leaves: list[Any], tree: Any, idx: list[int]) -> Callable[[list[Any]], jax.Array]:
        def f(diff):
            new = list(leaves)
            for i, x in zip(idx, diff, strict=True):
                new[i] = x
            return self.surrogate(key, *jax.tree_util.tree_unflatten(tree, new))

        return f

    def value_and_grads(self, key: Any, *args: Any) -> tuple[jax.Array, tuple[Any, ...]]:
        """``(estimate, gradients)`` with the gradients in the structure of ``args`` (``None`` leaves where no
        parameter stands, ``ppl.fixed`` nodes kept): what ``fit`` consumes."""
        leaves, tree, idx = self._parameters(args)
        value, g = jax.value_and_grad(self._with(key, leaves, tree, idx))([jnp.asarray(leaves[i]) for i in idx])
        grads: list[Any] = [None] * len(leaves)
        for i, gi in zip(idx, g, strict=True):
            grads[i] = gi
        return value, jax.tree_util.tree_unflatten(tree, grads)

    def value_and_grad_estimate(self, key: Any, *args: Any) -> tuple[jax.Array, Any]:
        """``(estimate, gradient estimate)`` from one run of the program (``None`` for every non-parameter)."""
        value, out = self.value_and_grads(key, *args)
        out = unwrap(out)
        return value, (out[0] if len(args) == 1 else out)

    def grad_estimate(self, key: Any, *args: Any) -> Any:
        """An unbiased estimate of the gradient of ``E[f]`` with respect to the arguments' parameters."""
        return self.value_and_grad_estimate(key, *args)[1]

    def jvp_estimate(self, key: Any, primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
        """``(estimate, directional derivative estimate)`` along ``tangents`` (forward mode; ``tangents`` has the
        structure of ``primals``, and only its entries at parameters are used)."""
        leaves, tree, idx = self._parameters(tuple(primals))
        if len(tangents) != len(primals):
            raise ValueError(f"{self.__name__}.jvp_estimate: {len(tangents)} tangents for {len(primals)} primals")
        t: list[Any] = []  # an argument without parameters may have any tangent (it is not used)
        for pos, (a, ta) in enumerate(zip(primals, tangents, strict=True)):
            n = len(jax.tree_util.tree_leaves(a))
            try:
                t += jax.tree_util.tree_structure(a).flatten_up_to(ta) if any(parameter_mask(a)) else [None] * n
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"{self.__name__}.jvp_estimate: tangents[{pos}] does not have the structure of primals[{pos}] "
                    f"({jax.tree_util.tree_structure(a)}): {str(e).splitlines()[0]}"
                ) from None
        for i in idx:
            if jnp.shape(t[i]) != jnp.shape(leaves[i]):
                raise ValueError(
                    f"{self.__name__}.jvp_estimate: a tangent has shape {jnp.shape(t[i])} where its parameter has "
                    f"shape {jnp.shape(leaves[i])}"
                )
        return jax.jvp(
            self._with(key, leaves, tree, idx),
            ([jnp.asarray(leaves[i]) for i in idx],),
            ([jnp.asarray(t[i], jnp.result_type(leaves[i])) for i in idx],),
        )


def expectation(fn: Callable[..., Any]) -> Expectation:
    """Mark ``fn(*args)`` as a program whose expectation is the objective; see :class:`Expectation`."""
    return fn if isinstance(fn, Expectation) else Expectation(fn)


class SumOver(Expectation):
    """``Σ_i E[f](args_i)``: independent copies of an expectation, one per row of the mapped arguments; see
    :func:`sum_over`."""

    def __init__(self, inner: Any, in_axes: Any):
        inner = expectation(inner)
        self.inner, self.in_axes = inner, in_axes
        self.fn, self.staged = inner.fn, inner.staged
        self.__name__ = f"sum_over({inner.__name__})"
        self.__doc__ = inner.__doc__

    def map_programs(self, transform: Transform) -> SumOver:
        return SumOver(self.inner.map_programs(transform), self.in_axes)

    def surrogate(self, key: Any, *args: Any) -> jax.Array:
        axes = self.in_axes if isinstance(self.in_axes, tuple) else (self.in_axes,) * len(args)
        if len(axes) != len(args):
            raise ValueError(f"{self.__name__}: in_axes {self.in_axes} has {len(axes)} entries, not {len(args)}")
        if any(ax not in (0, None) for ax in axes):
            raise ValueError(f"{self.__name__}: in_axes entries must be 0 or None (one per argument), got {axes}")
        sizes = set()
        for i, (ax, a) in enumerate(zip(axes, args, strict=True)):
            for leaf in jax.tree_util.tree_leaves(a) if ax == 0 else ():
                if jnp.ndim(leaf) == 0:
                    raise ValueError(f"{self.__name__}: argument {i} is mapped (in_axes 0) but has a scalar leaf")
                sizes.add(jnp.shape(leaf)[0])
        if len(sizes) != 1:
            raise ValueError(
                f"{self.__name__}: the mapped arguments must share one leading size (found {sorted(sizes) or 'none'})"
            )
        keys = jax.random.split(key, sizes.pop())
        return jnp.sum(jax.vmap(self.inner.surrogate, in_axes=(0, *axes))(keys, *args))


def sum_over(objective: Any, in_axes: Any = 0) -> Expectation:
    """``Σ_i E[objective](args_i)`` over a leading axis of the arguments whose ``in_axes`` entry is ``0``, each term
    estimated by its own copy of the objective's estimator (independent keys) — *per-datapoint* Rao-Blackwellization:
    datapoint ``i``'s discrete choices multiply only datapoint ``i``'s terms, and ``enum``/``mvd`` enumerate ``N·K``
    values, not ``K^N``. The conditional-independence assumption is the user's: the sum must be the objective (a
    sum of per-datapoint ELBOs with global parameters, not an IWAE over datapoints).

    ``in_axes``: ``0`` or ``None`` per argument of the objective (a tuple), or one for all; only leading axes.

    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
    >>> @ppl.expectation
    ... def one_point(logit, x):                # the ELBO-like term of one datapoint
    ...     c = ppl.sample("c", dist.Bernoulli(logits=logit), strategy=ppl.enum)
    ...     return -((x - c) ** 2)
    >>> total = ppl.sum_over(one_point, in_axes=(0, 0))    # Σ_i over rows of (logits, xs)
    >>> v = total.estimate(jax.random.key(0), jnp.zeros(3), jnp.array([0.0, 1.0, 1.0]))
    >>> round(float(v), 4)                                    # exact: each term is -1/2
    -1.5
    """
    return SumOver(objective, in_axes)
