"""``ppl.vmap``: ``jax.vmap`` in which every random choice is drawn independently per lane.

Under plain ``jax.vmap`` a site whose distribution does not depend on the mapped inputs is not batched at all (JAX
binds it once, outside the map, and broadcasts its value): every lane would share one draw. That is JAX's semantics
for any unbatched computation, and the wrong one for particles. ``ppl.vmap`` stages ``f`` and re-binds each of its
sites so that it depends on the lane index, then maps it with ``jax.vmap``: every site becomes a batched site, with its
own key per lane, wherever it is (straight line, ``scan`` body, ``cond`` branch).

>>> import jax, numpyro.distributions as dist, ppl
>>> draws = ppl.seed(ppl.vmap(lambda: ppl.sample("x", dist.Normal(0.0, 1.0)), axis_size=4))(jax.random.key(0))
>>> int(len(set(draws.tolist())))
4

Sharp edges:
    * Each lane's choices get the lane axis in front (as for any site under ``vmap``); a multi-call strategy
      (``enum``/``mvd``) at such a site is an error, as at any ``vmap``-ed site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from ..core.interpreter import Interpretation, RuleTable, State, control_flow_rules, rebind, run
from ..core.primitives import cost_p, factor_p, sample_p
from ..core.staging import Staged


def _lane_dependent(interp, state, eqn, invals):
    first = invals[0]
    tied = jnp.where(interp.lane >= 0, first, first)  # same value, but batched along the lane axis
    return [sample_p.bind(tied, *invals[1:], **eqn.params)], state


@dataclass(frozen=True)
class Independent(Interpretation):
    lane: Any
    name = "ppl.vmap"
    rules = RuleTable(
        {sample_p: _lane_dependent, factor_p: rebind, cost_p: rebind, **control_flow_rules()}
    )


def vmap(f: Callable[..., Any], in_axes: Any = 0, axis_size: int | None = None) -> Callable[..., Any]:
    """Like ``jax.vmap(f, in_axes, axis_size=...)``, with independent random choices in every lane."""
    staged = Staged(f)

    def lane_fn(lane, *args):
        jaxpr, out_tree, dyn = staged.stage(args)
        outs, _ = run(Independent(lane), jaxpr, dyn, State())
        return jax.tree_util.tree_unflatten(out_tree, outs)

    def mapped(*args: Any) -> Any:
        axes = in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * len(args)
        n = axis_size
        if n is None:
            sizes = [
                jnp.shape(leaf)[ax]
                for a, ax in zip(args, axes, strict=True)
                if ax is not None
                for leaf in jax.tree_util.tree_leaves(a)
            ]
            if not sizes:
                raise ValueError("ppl.vmap: no mapped argument; pass axis_size")
            n = sizes[0]
        return jax.vmap(lane_fn, in_axes=(0, *axes), axis_size=n)(jnp.arange(n), *args)

    return mapped
