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
from types import SimpleNamespace
from typing import Any

import jax

from ..core.family import Program
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
    """Re-binds each site with the strategy of the first matching pattern (``matched`` records which matched)."""

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


@dataclass
class _Rewrite:
    """The transformation ``with_strategies`` maps over a family's programs (a ``Transform``), with one record of the
    patterns matched and the addresses seen across all of them: a pattern is an error only if it matches no address
    of any program of the family, checked once every program has been staged."""

    patterns: tuple[tuple[str, Strategy], ...]
    default: Strategy | None
    programs: list[str] = field(default_factory=list)
    staged: set[int] = field(default_factory=set)
    matched: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)

    def __call__(self, program: Any) -> Any:
        index, name = len(self.programs), getattr(program, "__name__", "program")
        self.programs.append(name)

        def rewritten(*args: Any) -> Any:
            jaxpr, out_tree, dyn = program.staged.stage(args)
            outs, _ = run(SetStrategies(self.patterns, self.default, self.matched), jaxpr, dyn, State())
            self.seen |= addresses(jaxpr)
            self.staged.add(index)
            unmatched = [p for p, _ in self.patterns if p not in self.matched]
            if unmatched and len(self.staged) == len(self.programs):
                of = " and ".join(repr(n) for n in self.programs)
                raise PPLError(
                    f"with_strategies: pattern(s) {unmatched} match no address of {of}; its addresses are "
                    f"{sorted(self.seen)}"
                )
            return jax.tree_util.tree_unflatten(out_tree, outs)

        rewritten.__name__ = name
        return rewritten


def with_strategies(f: Any, strategies: Mapping[str, Strategy], default: Strategy | None = None) -> Any:
    """The same program with gradient strategies set by address glob (``{"z*": enum, "enc/w": reinforce}``).

    Works on every :class:`~ppl.core.family.Program` — generative functions (NumPyro-converted ones keep
    ``init_params``, automatic families their ``auxiliary``), ``ppl.marginal`` families (the family and its proposal),
    expectations, ``sum_over`` — and on plain functions, and returns the same kind. A bare strategy means
    ``{"*": strategy}``.
    """
    if isinstance(strategies, Strategy):  # one strategy for every address
        strategies = {"*": strategies}
    if not isinstance(strategies, Mapping):
        raise TypeError(f"with_strategies: strategies must map address globs to strategies, got {strategies!r}")
    for pat, s in strategies.items():
        if not isinstance(s, Strategy):
            raise TypeError(f"with_strategies: the strategy for pattern {pat!r} is {s!r}, not a gradient strategy")
    if default is not None and not isinstance(default, Strategy):
        raise TypeError(f"with_strategies: default={default!r} is not a gradient strategy")
    rewrite = _Rewrite(tuple(strategies.items()), default)
    if isinstance(f, Program):
        return f.map_programs(rewrite)
    if not callable(f):
        raise TypeError(f"with_strategies: expected a program (a function, @ppl.gen, an expectation), got {f!r}")
    program = SimpleNamespace(staged=Staged(f), __name__=getattr(f, "__name__", "program"))
    return rewrite(program)
