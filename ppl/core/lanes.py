"""Lanes: every batching behaviour of ``ppl`` in one place.

A *map* is the higher-order primitive :data:`~ppl.core.primitives.map_p`: ``size`` lanes of an **unbatched** lane
body (a closed jaxpr), operands mapped along ``in_axes``. Each interpretation gives a lane its meaning first — its
own keys (row ``i`` of the block key, split once before the map), its own accumulators (score, weight, cost), its
own choices — and only then maps the *interpreted* lane with ``jax.vmap`` (:func:`map_lanes`, used by the map rule
in :mod:`ppl.core.interpreter`). JAX may still turn a ``cond`` inside the lane into a ``select``, but by then it
selects between plain values and per-lane accumulators, which is correct.

Maps come from two places, with one meaning:

* :func:`vmap` (``ppl.vmap``) stages its function as one lane body;
* plain ``jax.vmap``: the batching rules registered here run under *every* ``jax.vmap`` that reaches a ``ppl``
  primitive, also when no mapped value flows into it. A site becomes a map of that one site (each lane draws its own
  value), a ``cond``/``switch`` whose predicate is batched and whose branches hold random choices becomes a map of
  the unbatched ``cond`` (each lane runs only its branch), a ``scan`` whose body holds random choices becomes a map of
  the unbatched ``scan`` (each lane runs its own loop, so its choices are lane-major: ``(lanes, length, ...)``), a map
  under a map becomes a map of maps, and ``factor``/``add_cost`` count once per lane.

>>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
>>> draws = ppl.seed(jax.vmap(lambda _: ppl.sample("x", dist.Normal(0.0, 1.0))))(jax.random.key(0), jnp.arange(4))
>>> len(set(draws.tolist()))                           # four lanes, four independent draws
4

What ``ppl.vmap`` adds to ``jax.vmap``: it keeps the whole function as *one* lane body. Under ``jax.vmap`` only the
pieces that hold random choices become maps (JAX batches the deterministic code between them as usual), so ADEV sees
independent sites; under ``ppl.vmap`` it sees independent *lanes*, and conditions per lane: a lane's score terms
multiply only that lane's costs (plate-style Rao-Blackwellization), and a multi-call strategy re-runs one lane.
Both are unbiased; ``ppl.vmap`` is the lower-variance one when lanes add their own costs.

Sharp edges:
    * The batching rules of ``lax.cond`` and ``lax.scan`` are wrapped (once, at import) so that a ``cond`` with a
      batched predicate and random choices in its branches, or a ``scan`` with random choices in its body, becomes a
      map; every other ``cond`` and ``scan`` goes to JAX's own rule.
    * A lane body is staged with its inputs' per-lane shapes: a Python value inside ``ppl.vmap``'s arguments is
      static (as everywhere in ``ppl``); only array leaves are mapped or broadcast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._jax_internals import (
    bind_with_params,
    cond_branches,
    cond_primitive,
    jaxpr_as_fun,
    lane_aval,
    override_batcher,
    register_batcher,
    scan_parts,
    scan_primitive,
    stage_flat,
)
from .primitives import contains_ppl, cost_p, factor_p, map_p, sample_p
from .staging import ArgSplit

# ---------------------------------------------------------------------------------------------- batching rules


@functools.lru_cache(maxsize=4096)
def _lane_body(prim: Any, params: tuple[tuple[str, Any], ...], avals: tuple[tuple[Any, Any], ...]) -> Any:
    body, consts = stage_flat(
        lambda *a: bind_with_params(prim, dict(params), a), [jax.ShapeDtypeStruct(s, d) for s, d in avals]
    )
    assert not consts
    return body


def _as_map(prim: Any, size: int, vals: Sequence[Any], dims: Sequence[Any], params: dict[str, Any]) -> list[Any]:
    """Bind ``size`` lanes of one equation ``prim(*vals, **params)`` as a map (operands batched along ``dims``)."""
    lanes = tuple((a.shape, a.dtype) for a in (lane_aval(v, d) for v, d in zip(vals, dims, strict=True)))
    body = _lane_body(prim, tuple(params.items()), lanes)
    return map_p.bind(*vals, body=body, size=size, in_axes=tuple(dims))


def _sample_batcher(axis_size, vals, dims, /, **params):
    return _as_map(sample_p, axis_size, vals, dims, params)[0], 0


def _map_batcher(axis_size, vals, dims, /, **params):
    outs = _as_map(map_p, axis_size, vals, dims, params)
    return outs, [0] * len(outs)


def _weight_batcher(prim):
    def rule(axis_size, vals, dims, /, **params):
        (x,), (d,) = vals, dims
        prim.bind(x * axis_size if d is None else jnp.sum(x, axis=d), **params)  # once per lane
        return [], []

    return rule


def _cond_batcher(original, axis_size, vals, dims, /, **params):
    if dims[0] is None or not any(contains_ppl(b.jaxpr) for b in cond_branches(params)):
        return original(vals, dims, **params)
    outs = _as_map(cond_primitive(), axis_size, vals, dims, params)  # each lane runs only its branch
    return outs, [0] * len(outs)


def _scan_batcher(original, axis_size, vals, dims, /, **params):
    if not contains_ppl(scan_parts(params).body.jaxpr):
        return original(vals, dims, **params)
    outs = _as_map(scan_primitive(), axis_size, vals, dims, params)  # each lane runs its own loop: lane axis first
    return outs, [0] * len(outs)


register_batcher(sample_p, _sample_batcher)
register_batcher(map_p, _map_batcher)
register_batcher(factor_p, _weight_batcher(factor_p))
register_batcher(cost_p, _weight_batcher(cost_p))
override_batcher(cond_primitive(), _cond_batcher)
override_batcher(scan_primitive(), _scan_batcher)

# ---------------------------------------------------------------------------------------------- lanes


def map_lanes(fn: Callable[..., Any], size: int, in_axes: Sequence[Any], args: Sequence[Any], rewrites: bool) -> Any:
    """``size`` lanes of ``fn(*args)`` (``in_axes``: one entry per argument, applied to all its leaves).

    ``fn`` is an *interpreted* lane. When its output is plain JAX it is mapped with ``jax.vmap``; when it still holds
    random choices (``rewrites``: an interpretation that re-emits sites, such as ``with_strategies`` or ``sim``), it
    is staged and bound as a map again, so the lane stays one lane for the interpretations that come after.
    """
    if not rewrites:
        return jax.vmap(fn, in_axes=tuple(in_axes), axis_size=size)(*args)
    leaves, axes, tree = _flat_with_axes(args, in_axes)
    return _map_flat(lambda *flat: fn(*jax.tree_util.tree_unflatten(tree, list(flat))), leaves, axes, size)


def _map_flat(fn: Callable[..., Any], leaves: Sequence[Any], axes: Sequence[Any], size: int) -> Any:
    """``size`` lanes of ``fn(*leaves)``: staged once as a lane body, bound as a map if it holds random choices."""
    out_tree = []

    def flat_lane(*flat):
        out, t = jax.tree_util.tree_flatten(fn(*flat))
        out_tree.append(t)
        return out

    body, consts = stage_flat(flat_lane, [lane_aval(x, a) for x, a in zip(leaves, axes, strict=True)])
    all_axes = (None,) * len(consts) + tuple(axes)
    if contains_ppl(body.jaxpr):
        outs = map_p.bind(*consts, *leaves, body=body, size=size, in_axes=all_axes)
    else:
        outs = jax.vmap(jaxpr_as_fun(body), in_axes=all_axes, axis_size=size)(*consts, *leaves)
    return jax.tree_util.tree_unflatten(out_tree[-1], list(outs))


def _flat_with_axes(args: Sequence[Any], in_axes: Sequence[Any]) -> tuple[list[Any], list[Any], Any]:
    leaves, axes = [], []
    for a, ax in zip(args, in_axes, strict=True):
        ls = jax.tree_util.tree_leaves(a)
        leaves += ls
        axes += [ax] * len(ls)
    return leaves, axes, jax.tree_util.tree_structure(tuple(args))


def vmap(f: Callable[..., Any], in_axes: Any = 0, axis_size: int | None = None) -> Callable[..., Any]:
    """``jax.vmap(f, in_axes, axis_size=...)`` with ``f`` kept as one lane body (see the module docstring).

    Every lane is its own execution (its own draws, only its own branch of a ``cond``, its own factors and costs), as
    under plain ``jax.vmap``; in addition ADEV conditions per lane.

    >>> import jax, numpyro.distributions as dist, ppl
    >>> tr = ppl.gen(ppl.vmap(lambda: ppl.sample("x", dist.Normal(0.0, 1.0)), axis_size=3)).simulate(jax.random.key(0))
    >>> tr.choices["x"].shape
    (3,)
    """

    def mapped(*args: Any) -> Any:
        axes = tuple(in_axes) if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
        if len(axes) != len(args):
            raise ValueError(f"ppl.vmap: in_axes {in_axes} has {len(axes)} entries for {len(args)} arguments")
        split, dyn = ArgSplit.of(args)
        leaf_axes = _leaf_axes(args, axes, split)
        n = axis_size
        if n is None:
            sizes = {jnp.shape(x)[a] for x, a in zip(dyn, leaf_axes, strict=True) if a is not None}
            if not sizes:
                raise ValueError("ppl.vmap: no mapped array argument; pass axis_size")
            if len(sizes) > 1:
                raise ValueError(f"ppl.vmap: mapped arguments have different sizes {sorted(sizes)} along in_axes")
            n = sizes.pop()
        return _map_flat(lambda *flat: f(*split.merge(list(flat))), dyn, leaf_axes, n)

    return mapped


def _leaf_axes(args: Sequence[Any], axes: Sequence[Any], split: ArgSplit) -> list[Any]:
    """The ``in_axes`` entry of every dynamic leaf of ``args`` (in ``split``'s order)."""
    per_leaf = []
    for a, ax in zip(args, axes, strict=True):
        per_leaf += [ax] * len(jax.tree_util.tree_leaves(a))
    return [per_leaf[i] for i in split.dynamic_index]
