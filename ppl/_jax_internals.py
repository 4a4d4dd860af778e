"""The one module of ``ppl`` that touches JAX internals.

Everything else imports from here, so a JAX upgrade that moves an internal name is a change to this file only.
What we use: defining primitives (``jax.extend.core``), their batching rules (``jax.interpreters.batching``),
re-binding a jaxpr equation exactly as ``jax.core.eval_jaxpr`` does, and the jaxpr data types.

Sharp edges:
    * ``bind_eqn`` relies on ``Primitive.get_bind_params``, which JAX uses in its own ``eval_jaxpr``; it has been
      stable since JAX 0.4 but is not public API.
    * ``scan``'s parameters changed in JAX 0.11 (``num_consts``/``num_carry`` became a flat tree ``ft_in``, the body
      an open ``Jaxpr``, and loop-invariant carries and forwarded ``ys`` are moved out of the equation): read them
      with :func:`scan_parts` only.
    * Higher-order primitives are recognized by name (:func:`control_kind`): JAX renames them (``pjit`` became
      ``jit``) and does not export most of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
from jax.extend import core as jex_core
from jax.interpreters import batching

try:  # JAX's linearize machinery (private): used by bind_eqn only to pick the cheaper way to re-bind; optional
    from jax._src.interpreters import ad as _ad

    _LINEARIZE_TRACER = _ad.LinearizeTracer
    _JVPS, _LINEARIZATIONS = _ad.primitive_jvps, _ad.primitive_linearizations
except (ImportError, AttributeError):  # another layout: every equation is bound plainly
    _LINEARIZE_TRACER, _JVPS, _LINEARIZATIONS = (), {}, {}

Primitive = jex_core.Primitive
ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
Literal = jex_core.Literal
JaxprEqn = jex_core.JaxprEqn
jaxpr_as_fun = jex_core.jaxpr_as_fun

__all__ = [
    "ClosedJaxpr",
    "Jaxpr",
    "JaxprEqn",
    "Literal",
    "ShapedArray",
    "jaxpr_as_fun",
    "new_primitive",
    "register_batcher",
    "override_batcher",
    "cond_primitive",
    "scan_primitive",
    "bind_eqn",
    "bind_with_params",
    "stage_flat",
    "lane_aval",
    "closed",
    "subjaxprs",
    "is_tracer",
    "SCAN",
    "COND",
    "WHILE",
    "CALL",
    "control_kind",
    "is_scan",
    "is_cond",
    "is_call",
    "ScanParts",
    "scan_parts",
    "cond_branches",
    "call_body",
]

ShapedArray = jax.core.ShapedArray


def register_batcher(prim: Primitive, rule: Callable[..., Any]) -> None:
    """Register ``rule(axis_size, vals, dims, **params) -> (outs, out_dims)`` as ``prim``'s batching rule.

    It is JAX's "fancy" batcher table: the rule runs under *every* ``jax.vmap`` that binds ``prim``, also when no
    operand is batched (JAX's plain table would bind such a primitive once for all lanes).
    """
    batching.fancy_primitive_batchers[prim] = lambda axis_data, vals, dims, **params: rule(
        axis_data.size, vals, dims, **params
    )


def override_batcher(prim: Primitive, rule: Callable[..., Any]) -> None:
    """Wrap JAX's batching rule of ``prim``: ``rule(original, axis_size, vals, dims, **params)``, where
    ``original(vals, dims, **params)`` is JAX's own rule (applied once; idempotent on re-import)."""
    table = batching.fancy_primitive_batchers
    original = table[prim]
    original = getattr(original, "_ppl_original", original)

    def wrapped(axis_data, vals, dims, **params):
        return rule(lambda v, d, **p: original(axis_data, v, d, **p), axis_data.size, vals, dims, **params)

    wrapped._ppl_original = original  # type: ignore[attr-defined]
    table[prim] = wrapped


@functools.cache
def cond_primitive() -> Primitive:
    """``lax.cond``'s primitive (not exported by JAX; read off a staged ``cond``)."""
    return jax.make_jaxpr(lambda p: jax.lax.cond(p, lambda: 0, lambda: 1))(True).eqns[-1].primitive


@functools.cache
def scan_primitive() -> Primitive:
    """``lax.scan``'s primitive (read off a staged ``scan``)."""
    return jax.make_jaxpr(lambda: jax.lax.scan(lambda c, _: (c, None), 0, None, length=1))().eqns[-1].primitive


def bind_with_params(prim: Primitive, params: dict[str, Any], invals: Sequence[Any]) -> list[Any]:
    """Bind ``prim`` with the parameters of one of its equations (as ``bind_eqn``)."""
    res = prim.get_bind_params(params)
    subfuns, bind_params = res if isinstance(res, tuple) else ((), res)
    out = prim.bind(*subfuns, *invals, **bind_params)
    return list(out) if prim.multiple_results else [out]


def lane_aval(x: Any, axis: int | None) -> jax.ShapeDtypeStruct:
    """The abstract value of one lane of ``x`` mapped along ``axis`` (all of ``x`` when ``axis`` is ``None``)."""
    shape, dtype = jax.numpy.shape(x), jax.dtypes.canonicalize_dtype(x.dtype, allow_extended_dtype=True)
    if axis is not None:
        shape = shape[:axis] + shape[axis + 1 :]
    return jax.ShapeDtypeStruct(shape, dtype)


def stage_flat(fn: Callable[..., Sequence[Any]], avals: Sequence[Any]) -> tuple[ClosedJaxpr, list[Any]]:
    """Stage ``fn(*flat_args) -> flat_outs`` to a ``ClosedJaxpr`` taking ``(*consts, *flat_args)``, and ``consts``.

    Values ``fn`` closes over (tracers of an enclosing trace included) become leading inputs, so the jaxpr can sit
    in a primitive's static parameters.
    """
    cj = jax.make_jaxpr(lambda *a: list(fn(*a)))(*avals)
    j = cj.jaxpr
    if not j.constvars:
        return cj, []
    return ClosedJaxpr(j.replace(constvars=[], invars=[*j.constvars, *j.invars]), []), list(cj.consts)


def new_primitive(
    name: str,
    abstract_eval: Callable[..., Any],
    impl: Callable[..., Any],
    multiple_results: bool = True,
) -> Primitive:
    """A primitive with an impl and an abstract evaluation rule (batching: :func:`register_batcher`)."""
    p = Primitive(name)
    p.multiple_results = multiple_results
    p.def_impl(impl)
    p.def_abstract_eval(abstract_eval)
    return p


def bind_eqn(eqn: JaxprEqn, invals: Sequence[Any]) -> list[Any]:
    """Re-bind ``eqn`` on new inputs, exactly as ``jax.core.eval_jaxpr`` does — under ``jax.linearize`` (reverse
    mode) a first-order primitive without a linearization rule of its own goes through :func:`_linearized`."""
    prim = eqn.primitive
    res = prim.get_bind_params(eqn.params)
    subfuns, bind_params = res if isinstance(res, tuple) else ((), res)  # JAX < 0.9 returned (subfuns, params)
    with eqn.ctx.manager:
        fn = None
        if not subfuns and not eqn.effects and prim in _JVPS and prim not in _LINEARIZATIONS:
            if any(isinstance(x, _LINEARIZE_TRACER) for x in invals):
                fn = _linearized(prim, bind_params)
        out = prim.bind(*invals, **bind_params) if fn is None else fn(*invals)
    return list(out) if prim.multiple_results else [out]


def _linearized(prim: Primitive, params: dict[str, Any]) -> Callable[..., Any] | None:
    """``prim.bind(*args, **params)`` as an inlined ``jax.jit`` kept per primitive and parameters; ``None`` when
    the parameters are not hashable or this JAX does not inline such calls while tracing.

    Why: JAX linearizes a primitive that has only a JVP rule by tracing that rule and partially evaluating it, anew
    at every equation (~0.5 ms each); a jitted function is linearized once per jaxpr (cached), which is how
    ``jax.numpy``'s own functions (``jit(inline=True)``) get linearized when code is traced directly. Inlined, it
    leaves the same equations in the program. Measured (JAX 0.10.2): the trace of the gradient of 100 straight-line
    sites (``bench/scaling.py``) 1.32 s → 1.00 s (hand-coded JAX: 0.89 s)."""
    if not _inline_jit_is_inlined():
        return None
    try:
        key = (prim, tuple(sorted(params.items())))
        hash(key)
    except TypeError:
        return None
    return _linearized_cached(key)


@functools.cache
def _inline_jit_is_inlined() -> bool:
    """Whether ``jax.jit(f, inline=_INLINE_EARLY)`` leaves ``f``'s equations in the jaxpr it is traced into. Where it
    would keep the call (inlined only at lowering) the jaxpr would grow by one equation per wrapper and tracing would
    be no faster, so :func:`_linearized` stays out of the way."""
    jaxpr = jax.make_jaxpr(jax.jit(lambda x: x + 1.0, inline=_INLINE_EARLY))(1.0).jaxpr
    return [str(e.primitive) for e in jaxpr.eqns] == ["add"]


@functools.lru_cache(maxsize=4096)
def _linearized_cached(key: tuple[Primitive, tuple[tuple[str, Any], ...]]) -> Callable[..., Any]:
    prim, items = key
    params = dict(items)
    return jax.jit(lambda *args: prim.bind(*args, **params), inline=_INLINE_EARLY)


# how ``jax.numpy`` asks for a call inlined while tracing: ``inline=True`` until JAX 0.11, ``jax.Inline.JAX_EARLY``
# since (where ``inline=True`` means inlining at lowering, ``JAX_LATE``)
_INLINE_EARLY: Any = getattr(getattr(jax, "Inline", None), "JAX_EARLY", True)


def closed(j: Jaxpr | ClosedJaxpr) -> ClosedJaxpr:
    """A ``ClosedJaxpr`` for an open or closed jaxpr (``remat`` carries open ones)."""
    return j if isinstance(j, ClosedJaxpr) else ClosedJaxpr(j, [])


def subjaxprs(eqn: JaxprEqn) -> Iterator[Jaxpr]:
    """The (open) jaxprs nested in an equation's parameters."""
    for v in eqn.params.values():
        vs = v if isinstance(v, tuple | list) else (v,)
        for item in vs:
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


# ---------------------------------------------------------------------------------------------- higher-order primitives
# The interpreter reads JAX's higher-order primitives only through these: their kind (by name: JAX renames them
# across versions, ``pjit`` -> ``jit``), and their parameters (``scan``'s layout changed in JAX 0.11).

SCAN, COND, WHILE, CALL = "scan", "cond", "while", "call"  # the kinds of higher-order primitive ``ppl`` interprets
_KINDS = {
    "scan": SCAN,
    "cond": COND,
    "while": WHILE,
    **dict.fromkeys(
        ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat2", "checkpoint"), CALL
    ),
}


def control_kind(prim: Primitive) -> str | None:
    """:data:`SCAN`, :data:`COND`, :data:`WHILE` or :data:`CALL` (a call-like primitive whose body is interpreted in
    place: ``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``), or ``None`` for any other primitive."""
    return _KINDS.get(prim.name)


def is_scan(eqn: JaxprEqn) -> bool:
    return control_kind(eqn.primitive) == SCAN


def is_cond(eqn: JaxprEqn) -> bool:
    return control_kind(eqn.primitive) == COND


def is_call(eqn: JaxprEqn) -> bool:
    return control_kind(eqn.primitive) == CALL


def _params(eqn_or_params: JaxprEqn | dict[str, Any]) -> dict[str, Any]:
    return eqn_or_params if isinstance(eqn_or_params, dict) else eqn_or_params.params


@dataclass(frozen=True)
class ScanParts:
    """A ``scan`` equation, read: its body takes ``consts + carry + xs`` and returns ``carry + ys`` (the equation's
    inputs and outputs in the same order)."""

    body: ClosedJaxpr
    num_consts: int
    num_carry: int
    length: int
    reverse: bool
    unroll: int | bool

    def split(self, invals: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        """The equation's inputs as ``(consts, carry, xs)``."""
        c, n = self.num_consts, self.num_consts + self.num_carry
        return list(invals[:c]), list(invals[c:n]), list(invals[n:])

    @property
    def options(self) -> dict[str, Any]:
        """``length``, ``reverse`` and ``unroll``, as ``lax.scan`` keywords."""
        return {"length": self.length, "reverse": self.reverse, "unroll": self.unroll}


def scan_parts(eqn: JaxprEqn | dict[str, Any]) -> ScanParts:
    """A ``scan`` equation's (or its parameters') body, counts and options.

    Up to JAX 0.10 the counts are ``num_consts``/``num_carry`` and the body a ``ClosedJaxpr``; from 0.11 on they are
    the flat tree ``ft_in`` (``(consts, carry, xs)``) and the body an open ``Jaxpr`` (loop-invariant carries and
    forwarded ``ys`` are already moved out of the equation, so inputs and outputs still line up with the body).
    """
    p = _params(eqn)
    if "num_consts" in p:
        nconst, ncarry = p["num_consts"], p["num_carry"]
    else:
        consts, carry, _ = p["ft_in"].unpack()
        nconst, ncarry = len(list(consts)), len(list(carry))
    return ScanParts(closed(p["jaxpr"]), nconst, ncarry, p["length"], p["reverse"], p["unroll"])


def cond_branches(eqn: JaxprEqn | dict[str, Any]) -> tuple[ClosedJaxpr, ...]:
    """A ``cond``'s branches (index ``i`` runs ``branches[i]``; its inputs are ``index, *operands``)."""
    return tuple(closed(b) for b in _params(eqn)["branches"])


def call_body(eqn: JaxprEqn | dict[str, Any]) -> ClosedJaxpr:
    """The body of a call-like primitive (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``)."""
    p = _params(eqn)
    return closed(p["call_jaxpr"] if "call_jaxpr" in p else p["jaxpr"])


def is_tracer(x: Any) -> bool:
    """Is ``x`` an abstract value being traced (no concrete value)?"""
    return isinstance(x, jax.core.Tracer)
