"""One generic jaxpr interpreter; each transformation is a rule table over it.

An :class:`Interpretation` owns a table ``rules: {primitive: rule}``. :func:`run` walks a jaxpr's equations with an
environment; an equation whose primitive is one of ``ppl``'s (or a higher-order primitive that contains one) is
handed to the table, every other equation is re-bound unchanged, so deterministic JAX code passes straight through
and the output of an interpretation is again plain JAX (it composes with ``jit``, ``vmap``, ``grad``).

State that an interpretation threads (base key, site counter, accumulated scores, recorded choices) is the value
:class:`State`, passed into each rule and returned by it, never a global.

A rule is ``rule(interp, state, eqn, invals) -> (outvals, state)``. An interpretation that needs the continuation
of an equation (ADEV's enumeration and measure-valued derivatives) says so with ``interp.wants_continuation(eqn)``;
its ``cps_rules`` entry is then called as ``rule(interp, state, eqn, invals, k)`` where
``k(outvals, state)`` runs the rest of the program and returns its final result. Over a jaxpr the continuation is
just the remaining equations, so it can be called more than once (or under ``vmap``).

The higher-order rules here (``scan``, ``cond``, inlining ``jit``/``custom_jvp_call``/``custom_vjp_call``/``remat``)
are written once against :class:`State` and registered in each interpretation's table (:func:`control_flow_rules`).

>>> import jax, numpyro.distributions as dist, ppl
>>> tr = ppl.gen(lambda: jax.jit(lambda: ppl.sample("x", dist.Normal(0.0, 1.0)))()).simulate(jax.random.key(1))
>>> list(tr.choices)
['x']

Sharp edges:
    * ``custom_jvp``/``custom_vjp`` functions and ``jax.checkpoint`` blocks that *contain a random choice* are
      inlined: their custom derivative / rematerialization policy is dropped (the choice needs the interpretation's
      own derivative). Those without random choices pass through untouched.
    * A site inside ``lax.while_loop`` (a data-dependent trip count) is an error: its choice has no static shape. Use
      ``lax.scan`` or ``lax.fori_loop`` with static bounds (which JAX lowers to ``scan``).
    * Choices of the branch of a ``cond`` that is not taken are recorded as zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from .._jax_internals import (
    COND,
    INLINED,
    SCAN,
    WHILE,
    ClosedJaxpr,
    Jaxpr,
    JaxprEqn,
    Literal,
    bind_eqn,
    call_body,
    closed,
    cond_branches,
    scan_body,
    scan_counts,
    scan_options,
    subjaxprs,
)
from .lanes import map_lanes
from .primitives import PPL_PRIMITIVES, PPLError, contains_ppl, map_p, sample_p

Rule = Callable[..., Any]
__all__ = ["PPLError"]  # defined with the primitives (staging raises it too), re-exported here


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class State:
    """What an interpretation threads through the walk.

    ``key`` (the block's base key; sites fold in ``counter``), ``counter`` and ``visited`` are static bookkeeping;
    ``carry`` holds running accumulators (log density, weight, ADEV score tangent...); ``choices`` the recorded
    values; ``where`` the enclosing higher-order primitives (for error messages).
    """

    key: Any = None
    counter: int = 0
    visited: frozenset[str] = frozenset()
    carry: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    where: tuple[str, ...] = ()
    path: tuple[int, ...] = ()  # static: the enclosing equations (and cond branches) down to here
    index: tuple[Any, ...] = ()  # traced: the lane / iteration index of each enclosing map / scan
    requests: dict[Any, Any] = field(default_factory=dict)  # per-site outputs stacked like choices (ADEV)
    scored: frozenset[str] = frozenset()  # static: addresses drawn by a score-type strategy in this block (ADEV)

    def next_key(self) -> tuple[Any, State]:
        """A fresh key for a site or block, and the state after it."""
        k = None if self.key is None else jax.random.fold_in(self.key, self.counter)
        return k, replace(self, counter=self.counter + 1)

    def visit(self, addr: str) -> State:
        if addr in self.visited:
            raise PPLError(
                f"duplicate address {addr!r}: two random choices in one execution share it; give each a unique "
                "address (ppl.scope('name') prefixes the addresses of a block)"
            )
        return replace(self, visited=self.visited | {addr})

    def add(self, name: str, value: Any) -> State:
        return replace(self, carry={**self.carry, name: self.carry[name] + value})

    def record(self, addr: str, value: Any) -> State:
        return replace(self, choices={**self.choices, addr: value})

    def request(self, site: Any, value: Any) -> State:
        return replace(self, requests={**self.requests, site: value})

    def enter(self, eqn: JaxprEqn, *more: int) -> State:
        """The state inside a block of ``eqn`` (its path extended; ``more``: e.g. the branch)."""
        return replace(self, path=self.path + (id(eqn), *more), where=self.where + (eqn.primitive.name,))


def zero() -> jax.Array:
    """A strongly typed scalar zero of the default float type (a stable carry type for scans)."""
    return jnp.zeros((), jnp.result_type(float))


# ---------------------------------------------------------------------------------------------- interpretation


class Interpretation:
    """A rule table and the per-interpretation data a loop body needs.

    Subclasses set ``rules`` (and ``cps_rules``), and override :meth:`loop_data`/:meth:`for_iteration` when they
    read per-site data (``assess`` reads the choices: a site inside a scan reads its row).
    """

    name: ClassVar[str] = "interpretation"
    rules: ClassVar[dict[Any, Rule]] = {}
    cps_rules: ClassVar[dict[Any, Rule]] = {}
    records: ClassVar[bool] = False  # do the choices get recorded (and so need unique addresses)?
    rewrites: ClassVar[bool] = False  # does the output still hold random choices (maps are re-bound as maps)?

    def inherits(self, name: str) -> bool:
        """Does a map lane start accumulator ``name`` from its current value (else from 0)?"""
        return False

    def may_request(self, eqn: JaxprEqn) -> bool:
        """Can a block of ``eqn`` produce ``State.requests`` (then ``cond`` unions them across branches)?"""
        return False

    def wants_continuation(self, eqn: JaxprEqn) -> bool:
        return False

    def loop_data(self, addrs: frozenset[str]) -> Any:
        """Per-site data for the sites ``addrs`` of a loop body, with the loop axis in front."""
        return None

    def for_iteration(self, data: Any) -> Interpretation:
        """This interpretation for one iteration of a loop body, given its slice of :meth:`loop_data`."""
        return self


def run(
    interp: Interpretation,
    jaxpr: ClosedJaxpr | Jaxpr,
    args: Sequence[Any],
    state: State,
    cont: Callable[..., Any] | None = None,
) -> Any:
    """Interpret ``jaxpr`` on ``args``. Returns ``(outvals, state)``, or ``cont(outvals, state, interp)`` if given
    (``interp``: the interpretation the walk ended in; a continuation may be run under another one)."""
    cj = closed(jaxpr)
    env: dict[Any, Any] = {}
    _write(env, cj.jaxpr.constvars, cj.consts)
    _write(env, cj.jaxpr.invars, args)
    return _walk(interp, cj.jaxpr, env, 0, state, cont)


def _walk(interp, jaxpr, env, start, state, cont):
    eqns = jaxpr.eqns
    for i in range(start, len(eqns)):
        eqn = eqns[i]
        invals = [_read(env, v) for v in eqn.invars]
        if not needs_rule(eqn):
            _write(env, eqn.outvars, bind_eqn(eqn, invals))
            continue
        if cont is not None and interp.wants_continuation(eqn):
            rule = _lookup(interp.cps_rules, interp, eqn)

            def k(outvals, st, other=None, i=i, eqn=eqn):
                env2 = dict(env)
                _write(env2, eqn.outvars, outvals)
                return _walk(interp if other is None else other, jaxpr, env2, i + 1, st, cont)

            return rule(interp, state, eqn, invals, k)
        outvals, state = _lookup(interp.rules, interp, eqn)(interp, state, eqn, invals)
        _write(env, eqn.outvars, outvals)
    outs = [_read(env, v) for v in jaxpr.outvars]
    return cont(outs, state, interp) if cont is not None else (outs, state)


def _lookup(table, interp, eqn):
    rule = table.get(eqn.primitive)
    if rule is None:
        raise PPLError(
            f"{interp.name}: the higher-order primitive {eqn.primitive.name!r} contains a random choice "
            f"(addresses {sorted(addresses(eqn))}) and has no rule in this interpretation. Supported: jit, scan "
            "(lax.scan / fori_loop with static bounds), cond/switch, custom_jvp_call, custom_vjp_call, remat."
        )
    return rule


def _read(env, v):
    return v.val if isinstance(v, Literal) else env[v]


def _write(env, vs, vals):
    for v, x in zip(vs, vals, strict=True):
        env[v] = x


def rebind(interp, state, eqn, invals):
    """Re-emit the equation unchanged: the rule of a rewriting interpretation for what it leaves alone."""
    return bind_eqn(eqn, invals), state


# ---------------------------------------------------------------------------------------------- static analysis


def needs_rule(eqn: JaxprEqn) -> bool:
    """Does the equation carry probabilistic meaning (a ``ppl`` primitive, or one nested inside it)?"""
    return eqn.primitive in PPL_PRIMITIVES or any(map(contains_ppl, subjaxprs(eqn)))


@functools.lru_cache(maxsize=8192)
def _site_avals(jaxpr: Jaxpr) -> tuple[tuple[str, Any], ...]:
    out: dict[str, Any] = {}
    for e in jaxpr.eqns:
        if e.primitive is sample_p:
            found = {e.params["addr"]: e.outvars[0].aval}
        elif e.primitive.name == SCAN or e.primitive is map_p:
            n = scan_options(e.params)["length"] if e.primitive is not map_p else e.params["size"]
            body = scan_body(e.params) if e.primitive is not map_p else e.params["body"]
            found = {a: aval.update(shape=(n, *aval.shape)) for a, aval in _site_avals(body.jaxpr)}
        else:
            found = {}
            for sub in subjaxprs(e):
                found.update(_site_avals(sub))
        out.update(found)
    return tuple(sorted(out.items()))


def site_avals(j: ClosedJaxpr | Jaxpr | JaxprEqn) -> dict[str, Any]:
    """Address -> abstract value of the recorded choice (loop axes in front), for every site in ``j``."""
    if isinstance(j, JaxprEqn):
        found: dict[str, Any] = {}
        for sub in subjaxprs(j):
            found.update(_site_avals(sub))
        return found
    return dict(_site_avals(j.jaxpr if isinstance(j, ClosedJaxpr) else j))


def addresses(j: Any) -> frozenset[str]:
    return frozenset(site_avals(j))


# ---------------------------------------------------------------------------------------------- control flow


def inline_rule(interp, state, eqn, invals):
    """``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``: interpret the body in place."""
    outs, st = run(interp, _body(eqn), invals, state.enter(eqn))
    return outs, replace(st, path=state.path, where=state.where)


def _leave(state, k):
    """The continuation ``k`` entered from inside a block: path and ``where`` back to those of ``state``."""
    return lambda outs, st, other=None: k(outs, replace(st, path=state.path, where=state.where), other)


def inline_cps_rule(interp, state, eqn, invals, k):
    return run(interp, _body(eqn), invals, state.enter(eqn), cont=_leave(state, k))


def _body(eqn):
    return call_body(eqn.params)


def _merge(state, eqn, body_addrs, carry, choices, requests):
    return replace(
        state,
        visited=state.visited | body_addrs,
        carry=carry,
        choices={**state.choices, **choices},
        requests={**state.requests, **requests},
    )


def _enter_block(interp, state, eqn, body):
    """Entering a loop or map: its addresses visited, its block key drawn, its per-iteration data; and
    ``at(i, carry)``, the state that starts iteration / lane ``i`` (key ``fold_in(block_key, i)``)."""
    body_addrs = addresses(body)
    if interp.records:
        for a in sorted(body_addrs):
            state.visit(a)
    block_key, state = state.next_key()
    inner = state.enter(eqn)

    def at(i, carry):
        key = None if block_key is None else jax.random.fold_in(block_key, i)
        return State(key=key, carry=carry, where=inner.where, path=inner.path, index=state.index + (i,))

    return state, body_addrs, interp.loop_data(body_addrs), at


def scan_rule(interp, state, eqn, invals):
    """Re-emit ``lax.scan`` with the interpretation's accumulators added to the carry and choices to the outputs.

    The body is interpreted once: a site in a loop of length 10,000 stays one site in the program. Its key is the
    block key folded with the iteration index; its recorded choice gets the loop axis in front.
    """
    p = eqn.params
    (nconst, ncarry), options = scan_counts(p), scan_options(p)
    consts, init, xs = invals[:nconst], invals[nconst : nconst + ncarry], invals[nconst + ncarry :]
    state, body_addrs, data, at = _enter_block(interp, state, eqn, scan_body(p))

    def body(carry_all, x_all):
        carry, acc = carry_all
        x, i, data_i = x_all
        outs, st = run(interp.for_iteration(data_i), scan_body(p), [*consts, *carry, *x], at(i, acc))
        return (outs[:ncarry], st.carry), (outs[ncarry:], st.choices, st.requests)

    (carry, acc), (ys, choices, requests) = lax.scan(
        body,
        (init, state.carry),
        (xs, jnp.arange(options["length"]), data),
        **options,
    )
    return [*carry, *ys], _merge(state, eqn, body_addrs, acc, choices, requests)


def map_rule(interp, state, eqn, invals):
    """A map (``map_p``): interpret the lane body for one lane, then map the interpreted lane.

    Lane ``i`` gets the block key folded with ``i``; its accumulators start at zero (those for which
    :meth:`Interpretation.inherits` holds start at the current value) and their increments are summed over lanes;
    its choices get the lane axis in front. A ``cond`` in the lane is interpreted per lane before ``jax.vmap`` sees it.
    """
    return map_lanes_rule(interp, state, eqn, invals)[:2]


def map_lanes_rule(interp, state, eqn, invals):
    """:func:`map_rule`, also returning the per-lane accumulators and ``lane(i, start, *args)``, which runs lane
    ``i`` alone (ADEV re-runs one lane of a map)."""
    p = eqn.params
    body, size, in_axes = p["body"], p["size"], p["in_axes"]
    state, body_addrs, data, at = _enter_block(interp, state, eqn, body)
    start = {n: v if interp.inherits(n) else jnp.zeros_like(v) for n, v in state.carry.items()}

    def lane(i, data_i, start, *args, interp=interp):
        outs, st = run(interp.for_iteration(data_i), body, args, at(i, start))
        return outs, st.carry, st.choices, st.requests

    outs, carries, choices, requests = map_lanes(
        lane, size, (0, 0, None, *in_axes), (jnp.arange(size), data, start, *invals), interp.rewrites
    )
    carry = {n: state.carry[n] + jnp.sum(carries[n] - start[n], axis=0) for n in state.carry}
    return list(outs), _merge(state, eqn, body_addrs, carry, choices, requests), carries, start, lane


def _zeros(shapes):
    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


def cond_rule(interp, state, eqn, invals):
    """Re-emit ``lax.switch``; each branch is interpreted with the accumulators as operands and results.

    Recorded choices are the union over branches (a branch fills the addresses it does not visit with zeros), and so
    are ``State.requests``.
    """
    index, ops = invals[0], invals[1:]
    branches = cond_branches(eqn.params)
    block_key, state = state.next_key()
    avals = site_avals(eqn) if interp.records else {}

    def branch(j, request_shapes):
        def f(ops, key, carry):
            st = replace(state.enter(eqn, j), key=key, counter=0, carry=carry, choices={}, requests={})
            outs, st = run(interp, branches[j], ops, st)
            ch = {a: st.choices[a] if a in st.choices else jnp.zeros(v.shape, v.dtype) for a, v in avals.items()}
            if request_shapes is None:
                return outs, st.carry, ch, st.requests
            rq = {r: st.requests[r] if r in st.requests else _zeros(v) for r, v in request_shapes.items()}
            return outs, st.carry, ch, rq

        return f

    shapes: dict[Any, Any] = {}
    if interp.may_request(eqn):
        for j in range(len(branches)):
            shapes.update(jax.eval_shape(branch(j, None), ops, block_key, state.carry)[3])
    fns = [branch(j, shapes) for j in range(len(branches))]
    outs, carry, choices, requests = lax.switch(index, fns, ops, block_key, state.carry)
    return outs, _merge(state, eqn, addresses(eqn), carry, choices, requests)


def cond_cps_rule(interp, state, eqn, invals, k):
    """``cond`` whose branches need the continuation: push the rest of the program into each branch."""
    index, ops = invals[0], invals[1:]
    branches = cond_branches(eqn.params)
    block_key, state = state.next_key()

    def branch(j):
        def f(ops, key, carry):
            st = replace(state.enter(eqn, j), key=key, counter=0, carry=carry)
            return run(interp, branches[j], ops, st, cont=_leave(state, k))

        return f

    return lax.switch(index, [branch(j) for j in range(len(branches))], ops, block_key, state.carry)


def while_rule(interp, state, eqn, invals):
    raise PPLError(
        f"{interp.name}: random choices {sorted(addresses(eqn))} inside lax.while_loop (a data-dependent trip "
        "count) have no static shape. Use lax.scan, or lax.fori_loop with static Python-int bounds (lowered to scan)."
    )


def control_flow_rules() -> dict[Any, Rule]:
    """The higher-order rules every interpretation registers (JAX's by primitive name)."""
    return {
        **dict.fromkeys(INLINED, inline_rule),
        SCAN: scan_rule,
        COND: cond_rule,
        WHILE: while_rule,
        map_p: map_rule,
    }


def control_flow_cps_rules() -> dict[str, Rule]:
    """The continuation-passing versions, for interpretations with multi-call rules (ADEV)."""
    return {**dict.fromkeys(INLINED, inline_cps_rule), COND: cond_cps_rule}


class RuleTable(dict):
    """A rule table keyed by primitive that also matches higher-order primitives by name (JAX renames them)."""

    def get(self, prim, default=None):
        r = super().get(prim)
        return r if r is not None else super().get(prim.name, default)
