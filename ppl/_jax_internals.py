"""The one module of ``ppl`` that touches JAX internals.

Everything else imports from here, so a JAX upgrade that moves an internal name is a change to this file only.
What we use: defining primitives (``jax.extend.core``), their batching rules (``jax.interpreters.batching``),
re-binding a jaxpr equation exactly as ``jax.core.eval_jaxpr`` does, and the jaxpr data types.

Sharp edges:
    * ``bind_eqn`` relies on ``Primitive.get_bind_params``, which JAX uses in its own ``eval_jaxpr``; it has been
      stable since JAX 0.4 but is not public API.
    * ``scan``'s parameters changed in JAX 0.11 (``num_consts``/``num_carry`` became a flat tree ``ft_in``, and
      loop-invariant carries and forwarded ``ys`` are moved out of the equation): read them with ``scan_counts``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
from jax.extend import core as jex_core
from jax.interpreters import batching

Primitive = jex_core.Primitive
ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
Literal = jex_core.Literal
Var = jex_core.Var
JaxprEqn = jex_core.JaxprEqn
DropVar = jex_core.DropVar
jaxpr_as_fun = jex_core.jaxpr_as_fun

__all__ = [
    "Primitive",
    "ClosedJaxpr",
    "Jaxpr",
    "Literal",
    "Var",
    "JaxprEqn",
    "DropVar",
    "jaxpr_as_fun",
    "new_primitive",
    "bind_eqn",
    "subjaxprs",
    "closed",
    "ShapedArray",
    "scan_counts",
    "scan_body",
    "scan_options",
    "cond_branches",
    "call_body",
    "is_tracer",
    "SCAN",
    "COND",
    "WHILE",
    "INLINED",
    "register_batcher",
    "cond_primitive",
    "scan_primitive",
    "override_batcher",
    "stage_flat",
    "lane_aval",
    "bind_with_params",
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
    """Re-bind ``eqn`` on new inputs, exactly as ``jax.core.eval_jaxpr`` does."""
    res = eqn.primitive.get_bind_params(eqn.params)
    subfuns, bind_params = res if isinstance(res, tuple) else ((), res)  # JAX < 0.9 returned (subfuns, params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


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


# ---------------------------------------------------------------------------------------------- parameter layouts
# The interpreter reads JAX's higher-order primitives only through these names and accessors.

SCAN, COND, WHILE = "scan", "cond", "while"
INLINED = ("jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call", "remat2")  # bodies interpreted in place


def scan_body(params: dict[str, Any]) -> ClosedJaxpr:
    """A ``scan``'s body: ``consts + carry + xs -> carry + ys``."""
    return params["jaxpr"]


def scan_options(params: dict[str, Any]) -> dict[str, Any]:
    """``length``, ``reverse`` and ``unroll`` of a ``scan`` (as ``lax.scan`` keywords)."""
    return {"length": params["length"], "reverse": params["reverse"], "unroll": params["unroll"]}


def cond_branches(params: dict[str, Any]) -> tuple[ClosedJaxpr, ...]:
    """A ``cond``'s branches (index ``i`` runs ``branches[i]``)."""
    return tuple(params["branches"])


def call_body(params: dict[str, Any]) -> ClosedJaxpr | Jaxpr:
    """The body of a call-like primitive (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``)."""
    return params["call_jaxpr"] if "call_jaxpr" in params else params["jaxpr"]


def is_tracer(x: Any) -> bool:
    """Is ``x`` an abstract value being traced (no concrete value)?"""
    return isinstance(x, jax.core.Tracer)


def scan_counts(params: dict[str, Any]) -> tuple[int, int]:
    """``(num_consts, num_carry)`` of a ``scan`` equation: parameters up to JAX 0.10, the flat-tree ``ft_in``
    (``(consts, carry, xs)``) from JAX 0.11 on. The body's inputs are ``consts + carry + xs`` and its outputs
    ``carry + ys`` in both."""
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].unpack()
    return len(list(consts)), len(list(carry))
