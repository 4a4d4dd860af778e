"""``with_strategies``: choose gradient strategies declaratively, by address, as a program transformation.

The transformation is one more interpretation: its ``sample_p`` rule re-binds the site with the strategy of the first
glob pattern (``fnmatch``, in the mapping's order) that matches the address; every other equation — ``scan`` and
``cond`` bodies included — is re-emitted unchanged.

>>> import jax, numpyro.distributions as dist, ppl
>>> @ppl.expectation
... def f(theta):
...     z = ppl.sample("z", dist.Bernoulli(logits=theta))     # default would be reinforce
...     return 2.0 * z
>>> g = ppl.with_strategies(f, {"z": ppl.enum}).grad_estimate(jax.random.key(0), 0.0)
>>> round(float(g), 4)                                         # exact: 2 · σ'(0)
0.5

Sharp edges:
    * A pattern that matches no address is an error raised when the program is first staged (a typo never silently
      leaves the default in place).
    * A pattern overrides a strategy written at the site; ``default`` applies to sites with neither.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax

from ..core.interpreter import Interpretation, PPLError, RuleTable, State, addresses, control_flow_rules, rebind, run
from ..core.primitives import Site, StrategySpec, cost_p, factor_p, sample_p
from ..core.staging import Staged
from ..core.strategy import Strategy


def _set_strategy(interp, state, eqn, invals):
    site = Site.of(invals, **eqn.params)
    new = interp.choose(site.addr, site.strategy_spec)
    if new is None:
        return [sample_p.bind(*invals, **eqn.params)], state
    sleaves, stree = jax.tree_util.tree_flatten(new)
    x = sample_p.bind(*site.dist_leaves, *sleaves, **{**eqn.params, "strategy": StrategySpec(stree)})
    return [x], state


def first_match(patterns: Any, addr: str) -> tuple[str, Strategy] | None:
    """``(pattern, strategy)`` of the first glob (in order) that matches ``addr``: the one rule for which pattern of a
    ``{glob: strategy}`` mapping (or its items) applies to a site."""
    items = patterns.items() if isinstance(patterns, Mapping) else patterns
    return next(((p, s) for p, s in items if fnmatch.fnmatchcase(addr, p)), None)


@dataclass(frozen=True)
class SetStrategies(Interpretation):
    patterns: tuple[tuple[str, Strategy], ...]
    default: Strategy | None
    matched: set[str] = field(default_factory=set)
    name = "with_strategies"
    rewrites = True
    rules = RuleTable({sample_p: _set_strategy, factor_p: rebind, cost_p: rebind, **control_flow_rules()})

    def choose(self, addr: str, current: StrategySpec) -> Strategy | None:
        hit = first_match(self.patterns, addr)
        if hit is not None:
            self.matched.add(hit[0])
            return hit[1]
        if self.default is not None and repr(current) == "default":
            return self.default
        return None


def with_strategies(f: Any, strategies: Mapping[str, Strategy], default: Strategy | None = None) -> Any:
    """The same program with gradient strategies set by address glob (``{"z*": enum, "enc/w": reinforce}``).

    Works on ``GenFn``s, ``Expectation``s and plain functions, and returns the same kind. A bare strategy means
    ``{"*": strategy}``.
    """
    from .adev import Expectation, SumOver
    from .tracing import GenFn

    if isinstance(strategies, Strategy):  # one strategy for every address
        strategies = {"*": strategies}
    if not isinstance(strategies, Mapping):
        raise TypeError(f"with_strategies: strategies must map address globs to strategies, got {strategies!r}")
    if isinstance(f, SumOver):
        return SumOver(with_strategies(f.inner, strategies, default), f.in_axes)

    for pat, s in strategies.items():
        if not isinstance(s, Strategy):
            raise TypeError(f"with_strategies: the strategy for pattern {pat!r} is {s!r}, not a gradient strategy")
    if default is not None and not isinstance(default, Strategy):
        raise TypeError(f"with_strategies: default={default!r} is not a gradient strategy")
    fn = f.fn if isinstance(f, GenFn | Expectation) else f
    staged = f.staged if isinstance(f, GenFn | Expectation) else Staged(fn)
    patterns = tuple(strategies.items())

    def rewritten(*args: Any) -> Any:
        jaxpr, out_tree, dyn = staged.stage(args)
        interp = SetStrategies(patterns, default)
        outs, _ = run(interp, jaxpr, dyn, State())
        unmatched = [p for p, _ in patterns if p not in interp.matched]
        if unmatched:
            raise PPLError(
                f"with_strategies: pattern(s) {unmatched} match no address of {getattr(fn, '__name__', fn)!r}; "
                f"its addresses are {sorted(addresses(jaxpr))}"
            )
        return jax.tree_util.tree_unflatten(out_tree, outs)

    rewritten.__name__ = getattr(fn, "__name__", "program")
    return type(f)(rewritten) if isinstance(f, GenFn | Expectation) else rewritten
