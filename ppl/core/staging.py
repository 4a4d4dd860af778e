"""Staging a user function to a jaxpr once per abstract signature.

Arguments are split the way ``equinox.filter_jit`` splits them: array leaves (JAX and NumPy arrays, tracers) are
dynamic and enter the jaxpr as inputs; every other leaf (Python ints, floats, strings, functions...) is static and
part of the cache key, so ``model(data_len)`` can use ``data_len`` as a ``lax.scan`` length.

>>> import jax.numpy as jnp
>>> from ppl.core.staging import Staged
>>> st = Staged(lambda x, n: x * n)
>>> jaxpr, out_tree, dyn = st.stage((jnp.ones(3), 2))
>>> len(dyn), st.stage((jnp.zeros(3), 2))[0] is jaxpr   # cached per (structure, static values, avals)
(1, True)

Sharp edges:
    * A Python float argument is static: each distinct value stages (and compiles) anew, and the cache keeps the
      ``Staged.MAX_CACHED`` most recent signatures. Pass ``jnp.asarray(x)`` for a value that changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from .._jax_internals import ClosedJaxpr, subjaxprs
from .fusion import fuse_scans
from .params import unwrap
from .primitives import PPL_PRIMITIVES, contains_ppl


def prune(closed: ClosedJaxpr) -> ClosedJaxpr:
    """``closed`` without the top-level equations whose results nothing uses and that bind no ``ppl`` primitive and
    have no effect: dead code, such as the argument checks of every NumPyro constructor (NumPyro acts on them only
    eagerly). Every interpretation would otherwise re-emit them (~1/6 of a straight-line ELBO's equations)."""
    j = closed.jaxpr
    live = {id(v) for v in j.outvars}
    kept = []
    for e in reversed(j.eqns):
        if e.effects or any(id(v) in live for v in e.outvars) or e.primitive in PPL_PRIMITIVES or _binds_ppl(e):
            kept.append(e)
            live.update(id(v) for v in e.invars)
    return closed if len(kept) == len(j.eqns) else closed.replace(jaxpr=j.replace(eqns=kept[::-1]))


def _binds_ppl(eqn: Any) -> bool:
    return any(map(contains_ppl, subjaxprs(eqn)))


def is_dynamic(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


@dataclass(frozen=True)
class ArgSplit:
    """A pytree of arguments split into dynamic leaves and a hashable static remainder."""

    treedef: Any
    static: tuple[Any, ...]  # the static leaves, ``None`` where a dynamic leaf stands
    dynamic_index: tuple[int, ...]

    @staticmethod
    def of(args: Any) -> tuple[ArgSplit, list[Any]]:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        dyn_idx = tuple(i for i, x in enumerate(leaves) if is_dynamic(x))
        static = tuple(None if i in dyn_idx else x for i, x in enumerate(leaves))
        return ArgSplit(treedef, static, dyn_idx), [leaves[i] for i in dyn_idx]

    def merge(self, dynamic: list[Any]) -> Any:
        """The arguments again, as the program sees them (``ppl.fixed(x)`` is ``x``)."""
        leaves = list(self.static)
        for i, x in zip(self.dynamic_index, dynamic, strict=True):
            leaves[i] = x
        return unwrap(jax.tree_util.tree_unflatten(self.treedef, leaves))


class Staged:
    """A function staged to a ``ClosedJaxpr`` per abstract signature (cached, least recently used first out beyond
    ``MAX_CACHED`` signatures: a Python float argument that takes many values does not grow memory without bound)."""

    MAX_CACHED = 256

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._cache: OrderedDict[Any, tuple[ClosedJaxpr, Any, ArgSplit]] = OrderedDict()

    def stage(self, args: tuple[Any, ...]) -> tuple[ClosedJaxpr, Any, list[Any]]:
        """``(jaxpr, out_tree, dynamic_args)`` for a call ``fn(*args)``."""
        split, dyn = ArgSplit.of(args)
        avals = tuple((np.shape(x), jax.dtypes.canonicalize_dtype(x.dtype, allow_extended_dtype=True)) for x in dyn)
        try:
            key = (split, avals)
            hash(key)
        except TypeError:
            key = None
        hit = self._cache.get(key) if key is not None else None
        if hit is not None:
            self._cache.move_to_end(key)
        else:
            structs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in avals]
            jaxpr, shapes = jax.make_jaxpr(lambda *d: self.fn(*split.merge(list(d))), return_shape=True)(*structs)
            hit = (fuse_scans(prune(jaxpr)), jax.tree_util.tree_structure(shapes), split)
            if key is not None:
                self._cache[key] = hit
                if len(self._cache) > self.MAX_CACHED:
                    self._cache.popitem(last=False)
        return hit[0], hit[1], dyn
