"""Loop fusion: a ``lax.scan`` that reads another one's per-step outputs becomes one loop with it.

``ppl.elbo`` of a model and a guide that each loop over ``T`` steps stages two loops: the guide's (its draws come
out stacked) and the model's (which reads row ``t`` of them at step ``t``). Written by hand it would be one loop; on
a CPU each loop has its own per-step cost (slicing its inputs, writing its outputs, branching), and reverse-mode
differentiation doubles the count. :func:`fuse_scans` merges such pairs in a staged program, before any
interpretation sees it, so ADEV, the tracing transformations and JAX's own AD all see one loop.

Two scans ``A`` (earlier) and ``B`` fuse when they have the same length and direction and ``B`` depends on ``A`` only
through ``A``'s per-step outputs read row by row (as ``B``'s ``xs``) — so step ``t`` of ``B`` needs nothing of ``A``
but its step ``t``. The deterministic equations between them that ``B`` needs (an ``iota``) and that do not depend on
``A`` run before the fused loop; everything else keeps its order (no loop fuses across an equation with a side
effect). Step ``t`` of the fused loop runs ``A``'s body, then ``B``'s; its outputs are both loops' (what nothing
reads is dropped later, by XLA).

Sharp edges: in a random program ``A`` and ``B`` become one block, so its sites' keys are derived from one block
key (other draws, the same distribution), and a cost of ``B`` at step ``t`` is weighted by the scores of ``A``'s
choices up to step ``t`` only — the ones it can depend on (ADEV's causal rule; before fusion it was also weighted by
later steps' scores, whose terms have mean zero). Nested loops are not fused.

>>> import jax, jax.numpy as jnp
>>> def two_loops(x):
...     _, ys = jax.lax.scan(lambda c, a: (c, jnp.sin(a)), 0.0, x)
...     return jax.lax.scan(lambda c, y: (c + y * y, None), 0.0, ys)[0]
>>> j = jax.make_jaxpr(two_loops)(jnp.ones(4))
>>> fused = fuse_scans(j)
>>> sum(e.primitive.name == "scan" for e in j.eqns), sum(e.primitive.name == "scan" for e in fused.eqns)
(2, 1)
>>> from ppl._jax_internals import jaxpr_as_fun
>>> bool(jnp.allclose(jaxpr_as_fun(fused)(jnp.ones(4))[0], two_loops(jnp.ones(4))))
True
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from .._jax_internals import ClosedJaxpr, Literal, bind_eqn, is_scan, jaxpr_as_fun, scan_parts, subjaxprs
from .primitives import PPL_PRIMITIVES, contains_ppl

MAX_ROUNDS = 8  # pairs fused per program (each round re-stages it)


def fuse_scans(closed: ClosedJaxpr) -> ClosedJaxpr:
    """``closed`` with every fusable pair of top-level scans fused (the result computes the same function)."""
    for _ in range(MAX_ROUNDS):
        plan = _find_pair(closed.jaxpr)
        if plan is None:
            return closed
        closed = _restage(closed, *plan)
    return closed


def _movable(eqn: Any) -> bool:
    return not eqn.effects and eqn.primitive not in PPL_PRIMITIVES and not any(map(contains_ppl, subjaxprs(eqn)))


def _find_pair(j: Any) -> tuple[int, int, list[int]] | None:
    """``(a, b, hoisted)``: the first fusable pair of top-level scan equations, and the equations between them to
    run before the fused loop; ``None`` when there is none."""
    eqns = j.eqns
    for a, ea in enumerate(eqns):
        if not is_scan(ea):
            continue
        pa = scan_parts(ea)
        ys_a = set(map(id, ea.outvars[pa.num_carry :]))
        tainted = set(map(id, ea.outvars))  # what depends on A's results
        made_by: dict[int, int] = {}  # var id -> index of the equation that makes it (between A and B)
        for b in range(a + 1, len(eqns)):
            eb = eqns[b]
            if eb.effects:  # B would run before it: side effects keep their order
                break
            ins = [id(v) for v in eb.invars if not isinstance(v, Literal)]
            if is_scan(eb):
                pb = scan_parts(eb)
                if (pb.length, pb.reverse) == (pa.length, pa.reverse):
                    n = pb.num_consts + pb.num_carry
                    head = [id(v) for v in eb.invars[:n] if not isinstance(v, Literal)]
                    xs = [id(v) for v in eb.invars[n:] if not isinstance(v, Literal)]
                    if not any(v in tainted for v in head) and all(v in ys_a or v not in tainted for v in xs):
                        hoisted = _needed(eqns, made_by, [v for v in head + xs if v not in ys_a])
                        if hoisted is not None:
                            return a, b, hoisted
            if any(v in tainted for v in ins):
                tainted.update(id(v) for v in eb.outvars)
            for v in eb.outvars:
                made_by[id(v)] = b
    return None


def _needed(eqns: list[Any], made_by: dict[int, int], wanted: list[int]) -> list[int] | None:
    """Indices (in order) of the equations between the two loops that ``wanted`` needs; ``None`` if one of them
    cannot move before the first loop (it binds a ``ppl`` primitive or has an effect)."""
    need: set[int] = set()
    stack = [made_by[v] for v in wanted if v in made_by]
    while stack:
        i = stack.pop()
        if i in need:
            continue
        if not _movable(eqns[i]):
            return None
        need.add(i)
        stack.extend(made_by[id(v)] for v in eqns[i].invars if not isinstance(v, Literal) and id(v) in made_by)
    return sorted(need)


def _restage(closed: ClosedJaxpr, a: int, b: int, hoisted: list[int]) -> ClosedJaxpr:
    j = closed.jaxpr
    eqns = j.eqns
    skip = {b, *hoisted}

    def run(*args: Any) -> list[Any]:
        env: dict[int, Any] = {}

        def read(v: Any) -> Any:
            return v.val if isinstance(v, Literal) else env[id(v)]

        def write(vs: Any, xs: Any) -> None:
            for v, x in zip(vs, xs, strict=True):
                env[id(v)] = x

        write(j.constvars, closed.consts)
        write(j.invars, args)
        for i, e in enumerate(eqns):
            if i in skip:
                continue
            if i == a:
                for h in hoisted:
                    write(eqns[h].outvars, bind_eqn(eqns[h], [read(v) for v in eqns[h].invars]))
                outs_a, outs_b = _fused(eqns[a], eqns[b], read)
                write(eqns[a].outvars, outs_a)
                write(eqns[b].outvars, outs_b)
            else:
                write(e.outvars, bind_eqn(e, [read(v) for v in e.invars]))
        return [read(v) for v in j.outvars]

    return jax.make_jaxpr(run)(*(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in j.invars))


def _fused(ea: Any, eb: Any, read: Any) -> tuple[list[Any], list[Any]]:
    """One ``lax.scan`` running ``ea``'s body then ``eb``'s at every step: ``(ea's outputs, eb's outputs)``."""
    pa, pb = scan_parts(ea), scan_parts(eb)
    ca, inita, xsa = pa.split([read(v) for v in ea.invars])
    nb = pb.num_consts + pb.num_carry
    cb = [read(v) for v in eb.invars[: pb.num_consts]]
    initb = [read(v) for v in eb.invars[pb.num_consts : nb]]
    ys_a = {id(v): k for k, v in enumerate(ea.outvars[pa.num_carry :])}
    xs_b = [
        ("y", ys_a[id(v)]) if not isinstance(v, Literal) and id(v) in ys_a else ("x", read(v)) for v in eb.invars[nb:]
    ]
    own_xs_b = [x for kind, x in xs_b if kind == "x"]
    body_a, body_b = jaxpr_as_fun(pa.body), jaxpr_as_fun(pb.body)

    def step(carry: Any, xs: Any) -> Any:
        (car_a, car_b), (x_a, x_b) = carry, xs
        out_a = body_a(*ca, *car_a, *x_a)
        y_a = out_a[pa.num_carry :]
        own = iter(x_b)
        row_b = [y_a[k] if kind == "y" else next(own) for kind, k in xs_b]
        out_b = body_b(*cb, *car_b, *row_b)
        return (list(out_a[: pa.num_carry]), list(out_b[: pb.num_carry])), (list(y_a), list(out_b[pb.num_carry :]))

    (fin_a, fin_b), (ys_a_out, ys_b_out) = lax.scan(step, (inita, initb), (xsa, own_xs_b), **pa.options)
    return [*fin_a, *ys_a_out], [*fin_b, *ys_b_out]
