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
    "NOT_MAPPED",
    "bind_eqn",
    "subjaxprs",
    "closed",
    "ShapedArray",
    "scan_counts",
]

ShapedArray = jax.core.ShapedArray


NOT_MAPPED = None  # what a batching rule sees as the batch dimension of an unbatched operand


def new_primitive(
    name: str,
    abstract_eval: Callable[..., Any],
    batch_rule: Callable[[Primitive], Callable[..., Any]],
    impl: Callable[..., Any],
    multiple_results: bool = True,
) -> Primitive:
    """A primitive with an impl, an abstract evaluation rule and a batching rule (``batch_rule(prim)``)."""
    p = Primitive(name)
    p.multiple_results = multiple_results
    p.def_impl(impl)
    p.def_abstract_eval(abstract_eval)
    batching.primitive_batchers[p] = batch_rule(p)
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


def scan_counts(params: dict[str, Any]) -> tuple[int, int]:
    """``(num_consts, num_carry)`` of a ``scan`` equation: parameters up to JAX 0.10, the flat-tree ``ft_in``
    (``(consts, carry, xs)``) from JAX 0.11 on. The body's inputs are ``consts + carry + xs`` and its outputs
    ``carry + ys`` in both."""
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].unpack()
    return len(list(consts)), len(list(carry))
