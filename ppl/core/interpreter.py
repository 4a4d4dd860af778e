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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from .._jax_internals import (
    CALL,
    COND,
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
    control_kind,
    is_call,
    is_cond,
    is_scan,
    scan_parts,
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

    ``key`` (the block's base key; sites fold in ``counter``) or ``keys`` (the block's keys, split in advance: site
    ``counter`` takes ``keys[counter]``), ``counter`` and ``visited`` are static bookkeeping; ``carry`` holds running
    accumulators (log density, weight, ADEV score tangent...); ``choices`` the recorded values; ``where`` the
    enclosing higher-order primitives (for error messages).
    """

    key: Any = None
    keys: Any = None  # a loop iteration's / map lane's keys, one per key use of its body (see ``key_uses``)
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
        if self.keys is not None:  # split in advance: no hash here (this may run once per loop iteration)
            if self.counter >= self.keys.shape[0]:
                raise AssertionError(f"ppl: key use {self.counter} of a block split into {self.keys.shape[0]} keys")
            k = self.keys[self.counter]
        else:
            k = None if self.key is None else jax.random.fold_in(self.key, self.counter)
        return k, replace(self, counter=self.counter + 1)

    def block_keys(self, m: int) -> tuple[tuple[Any, Any], State]:
        """What a ``cond`` branch that draws up to ``m`` keys starts from, ``(key, keys)``, and the state after it:
        inside a loop iteration or map lane, the next ``m`` of its pre-split keys (no hash); elsewhere a fresh key."""
        if self.keys is None:
            k, st = self.next_key()
            return (k, None), st
        c = self.counter
        if c + m > self.keys.shape[0]:
            raise AssertionError(f"ppl: key uses {c}..{c + m} of a block split into {self.keys.shape[0]} keys")
        return (None, self.keys[c : c + m]), replace(self, counter=c + m)

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

    def may_keep(self, name: str) -> bool:
        """Might a loop body leave accumulator ``name`` unchanged? Then the body is traced with it as a constant —
        the value itself, not a loop carry (a rule may test it with ``is``) — and traced again with it in the carry
        if the body does change it."""
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
        elif is_scan(e) or e.primitive is map_p:
            n, body = (e.params["size"], e.params["body"]) if e.primitive is map_p else _scan_length_body(e)
            found = {a: aval.update(shape=(n, *aval.shape)) for a, aval in _site_avals(body.jaxpr)}
        else:
            found = {}
            for sub in subjaxprs(e):
                found.update(_site_avals(sub))
        out.update(found)
    return tuple(sorted(out.items()))


def _scan_length_body(eqn: JaxprEqn) -> tuple[int, ClosedJaxpr]:
    parts = scan_parts(eqn)
    return parts.length, parts.body


@functools.lru_cache(maxsize=8192)
def key_uses(jaxpr: Jaxpr) -> int:
    """How many keys a walk of ``jaxpr`` draws with :meth:`State.next_key` (an upper bound): one per site and one per
    block (``scan``, ``cond``, map) that holds ``ppl`` primitives; a call-like block draws its body's (it is walked in
    place). A loop iteration or map lane gets exactly these keys, split from the block key before the loop."""
    n = 0
    for e in jaxpr.eqns:
        if e.primitive is sample_p:
            n += 1
        elif not needs_rule(e) or e.primitive in PPL_PRIMITIVES and e.primitive is not map_p:
            continue
        elif is_call(e):
            n += key_uses(call_body(e).jaxpr)
        elif is_cond(e):
            n += cond_key_uses(e)
        else:
            n += 1
    return n


def cond_key_uses(eqn: JaxprEqn) -> int:
    """The keys a ``cond`` takes from a loop iteration's or map lane's keys: as many as its greediest branch."""
    return max([1, *(key_uses(b.jaxpr) for b in cond_branches(eqn))])


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
    return call_body(eqn)


def _merge(state, eqn, body_addrs, carry, choices, requests):
    return replace(
        state,
        visited=state.visited | body_addrs,
        carry=carry,
        choices={**state.choices, **choices},
        requests={**state.requests, **requests},
    )


def _enter_block(interp, state, eqn, body, size):
    """Entering a loop or map of ``size`` iterations / lanes: its addresses visited, its block key drawn, its
    per-iteration data, its keys; and ``at(i, keys_i, carry)``, the state that starts iteration / lane ``i``.

    The keys: the block key is split once, before the loop, into ``(size, key_uses(body))`` keys; iteration / lane
    ``i`` takes row ``i`` and its ``j``-th site (or block) ``keys[i, j]``: no hash inside the loop body, distinct keys
    for every (iteration, site), and the same keys whenever the block is run again from the same state (the re-runs
    of a multi-call correction rely on it). ``keys`` is ``None`` when the interpretation has no key."""
    body_addrs = addresses(body)
    if interp.records:
        for a in sorted(body_addrs):
            state.visit(a)
    block_key, state = state.next_key()
    n = key_uses(closed(body).jaxpr)
    keys = None if block_key is None else jax.random.split(block_key, (size, n))
    inner = state.enter(eqn)

    def at(i, keys_i, carry):
        return State(keys=keys_i, carry=carry, where=inner.where, path=inner.path, index=state.index + (i,))

    return state, body_addrs, interp.loop_data(body_addrs), keys, at


def scan_rule(interp, state, eqn, invals):
    """Re-emit ``lax.scan`` with the interpretation's accumulators added to the carry and choices to the outputs.

    The body is interpreted once: a site in a loop of length 10,000 stays one site in the program. Its key is a
    row of the block key split before the loop (passed in as part of ``xs``: no key derivation inside the loop); its
    recorded choice gets the loop axis in front.
    """
    parts = scan_parts(eqn)
    consts, init, xs = parts.split(invals)
    ncarry = parts.num_carry
    before = state
    state, body_addrs, data, keys, at = _enter_block(interp, state, eqn, parts.body, parts.length)
    kept = {} if parts.body in _VARIANT_BODIES else {n: v for n, v in state.carry.items() if interp.may_keep(n)}

    def body(carry_all, x_all):
        carry, acc = carry_all
        x, i, keys_i, data_i = x_all
        start = at(i, keys_i, {n: kept[n] if n in kept else acc[n] for n in state.carry})
        outs, st = run(interp.for_iteration(data_i), parts.body, [*consts, *carry, *x], start)
        if any(st.carry[n] is not v for n, v in kept.items()):
            raise _Varies
        return (outs[:ncarry], {n: v for n, v in st.carry.items() if n not in kept}), (
            outs[ncarry:],
            st.choices,
            st.requests,
        )

    looped = {n: v for n, v in state.carry.items() if n not in kept}
    try:
        (carry, acc), (ys, choices, requests) = lax.scan(
            body, (init, looped), (xs, jnp.arange(parts.length), keys, data), **parts.options
        )
    except _Varies:  # an accumulator the interpretation hoped to keep out of the loop changes in it: loop it
        _VARIANT_BODIES.add(parts.body)
        return scan_rule(interp, before, eqn, invals)
    acc = {n: kept[n] if n in kept else acc[n] for n in state.carry}
    return [*carry, *ys], _merge(state, eqn, body_addrs, acc, choices, requests)


class _Varies(Exception):
    """A scan body changed an accumulator passed into it as a constant (:meth:`Interpretation.may_keep`)."""


_VARIANT_BODIES: weakref.WeakSet[Any] = weakref.WeakSet()  # scan bodies where that happened: loop them directly


def map_rule(interp, state, eqn, invals):
    """A map (``map_p``): interpret the lane body for one lane, then map the interpreted lane.

    Lane ``i`` gets row ``i`` of the block key split before the map (:func:`_enter_block`); its accumulators start
    at zero (those for which :meth:`Interpretation.inherits` holds start at the current value) and their increments
    are summed over lanes; its choices get the lane axis in front. A ``cond`` in the lane is interpreted per lane
    before ``jax.vmap`` sees it.
    """
    return map_lanes_rule(interp, state, eqn, invals)[:2]


def map_lanes_rule(interp, state, eqn, invals):
    """:func:`map_rule`, also returning the per-lane accumulators and ``lane(i, data_i, start, *args)``, which runs
    lane ``i`` alone with the keys of the main run (ADEV re-runs one lane of a map)."""
    p = eqn.params
    body, size, in_axes = p["body"], p["size"], p["in_axes"]
    state, body_addrs, data, keys, at = _enter_block(interp, state, eqn, body, size)
    start = {n: v if interp.inherits(n) else jnp.zeros_like(v) for n, v in state.carry.items()}

    def run_lane(i, keys_i, data_i, start, *args, interp=interp):
        outs, st = run(interp.for_iteration(data_i), body, args, at(i, keys_i, start))
        return outs, st.carry, st.choices, st.requests

    def lane(i, data_i, start, *args, interp=interp):
        return run_lane(i, None if keys is None else keys[i], data_i, start, *args, interp=interp)

    outs, carries, choices, requests = map_lanes(
        run_lane, size, (0, 0, 0, None, *in_axes), (jnp.arange(size), keys, data, start, *invals), interp.rewrites
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
    branches = cond_branches(eqn)
    block_key, state = state.block_keys(cond_key_uses(eqn))
    avals = site_avals(eqn) if interp.records else {}

    def branch(j, request_shapes):
        def f(ops, kk, carry):
            st = replace(state.enter(eqn, j), key=kk[0], keys=kk[1], counter=0, carry=carry, choices={}, requests={})
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
    branches = cond_branches(eqn)
    block_key, state = state.next_key()  # a continuation is only passed outside loops and maps: no pre-split keys

    def branch(j):
        def f(ops, key, carry):
            st = replace(state.enter(eqn, j), key=key, keys=None, counter=0, carry=carry)
            return run(interp, branches[j], ops, st, cont=_leave(state, k))

        return f

    return lax.switch(index, [branch(j) for j in range(len(branches))], ops, block_key, state.carry)


def while_rule(interp, state, eqn, invals):
    raise PPLError(
        f"{interp.name}: random choices {sorted(addresses(eqn))} inside lax.while_loop (a data-dependent trip "
        "count) have no static shape. Use lax.scan, or lax.fori_loop with static Python-int bounds (lowered to scan)."
    )


def control_flow_rules() -> dict[Any, Rule]:
    """The higher-order rules every interpretation registers (JAX's by kind: ``_jax_internals.control_kind``)."""
    return {
        CALL: inline_rule,
        SCAN: scan_rule,
        COND: cond_rule,
        WHILE: while_rule,
        map_p: map_rule,
    }


def control_flow_cps_rules() -> dict[str, Rule]:
    """The continuation-passing versions, for interpretations with multi-call rules (ADEV)."""
    return {CALL: inline_cps_rule, COND: cond_cps_rule}


class RuleTable(dict):
    """A rule table keyed by primitive; JAX's higher-order primitives are keyed by their kind (:data:`SCAN`,
    :data:`COND`, :data:`WHILE`, :data:`CALL`), which names them across JAX versions."""

    def get(self, prim, default=None):
        r = super().get(prim)
        if r is not None:
            return r
        kind = control_kind(prim)
        return default if kind is None else super().get(kind, default)
