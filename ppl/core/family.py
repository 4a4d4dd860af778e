"""The family protocol: what ``sim``, ``density`` and program transformations ask of a model or variational family.

Two small abstract classes, and nothing else depends on what a family is made of:

* :class:`Program` — something built from staged programs: ``map_programs(transform)`` returns the same kind of
  object with ``transform`` applied to each of its programs (``ppl.with_strategies`` is one such call). Implemented
  by ``GenFn`` (and so NumPyro-converted programs and automatic families, which keep their own attributes:
  ``init_params``, ``auxiliary``), ``Marginal`` (its family and its proposal), ``Expectation`` and ``SumOver``.
* :class:`Family` — a :class:`Program` that an expectation can draw from and score: ``sim(*args, cost=)`` returns
  ``(choices, log q)`` with the choices kept as random choices of the enclosing expectation, and
  ``density(choices, *args, cost=)`` returns ``log p(choices)``. ``estimated_density`` says the log density is an
  estimate (``ppl.marginal``: unbiased for ``q`` and ``1/q``, not for ``log q``), with no per-site terms to add with
  ``cost``; ``auxiliary`` names choices the family draws that no model has (the objectives drop them).

>>> import jax, numpyro.distributions as dist, ppl
>>> from ppl.core.family import Family
>>> q = ppl.gen(lambda: ppl.sample("z", dist.Normal(0.0, 1.0)))
>>> isinstance(q, Family), isinstance(ppl.marginal(q, ["z"]), Family)
(True, True)

A new family (an SMC sampler, an MCMC kernel as a family) is one subclass of :class:`Family`: the three methods, and
every objective, strategy and ``with_strategies`` then applies to it (recipe in ``docs/design.md``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, Protocol


class StagedProgram(Protocol):
    """What a transformation reads of one program: its staging cache and its name."""

    staged: Any
    __name__: str


Transform = Callable[[StagedProgram], Callable[..., Any]]
"""A program transformation: given one program (``.staged``, ``.__name__``), the function of the new program."""


class Program(abc.ABC):
    """An object built from staged programs, over which a program transformation can be mapped."""

    @abc.abstractmethod
    def map_programs(self, transform: Transform) -> Program:
        """The same kind of object (same attributes) with each of its programs replaced by ``transform(program)``."""


class Family(Program):
    """A model or variational family: ``sim`` and ``density`` inside an expectation (see the module docstring)."""

    estimated_density: bool = False
    auxiliary: frozenset[str] = frozenset()

    @abc.abstractmethod
    def sim(self, *args: Any, cost: float = 0.0) -> tuple[dict[str, Any], Any]:
        """``(choices, log q(choices))``, the choices staying random choices of the enclosing expectation."""

    @abc.abstractmethod
    def density(self, choices: Mapping[str, Any], *args: Any, cost: float = 0.0) -> Any:
        """``log p(choices)`` (an unbiased estimate of ``p`` where ``estimated_density``)."""
