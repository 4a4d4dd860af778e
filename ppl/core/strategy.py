"""The strategy contract.

A gradient strategy says how ADEV estimates the derivative of an expectation through one random choice. It is a
small immutable value (a pytree: a baseline may be a traced array) with

* ``check(d, addr, lanes=False)`` — raise a ``StrategyError`` naming ``addr`` if the strategy cannot apply to
  distribution ``d`` (``lanes``: ``d``'s batch components are independent plate lanes, each estimated on its own);
* ``calls``: how many times it runs the continuation (``"1"``, the default, or e.g. ``"|support|"``); ``multi_call``
  is ``calls != "1"``;
* for one-call strategies: ``sample(key, d) -> (x, score)`` where ``x`` is the value (carrying its pathwise
  derivative, if any) and ``score`` a *surrogate* whose value is exactly 0 and whose derivative is the score-function
  term ``∂θ log p(x; θ)`` (zero for pathwise strategies), per batch component of ``d`` (callers sum it, or keep one
  per plate lane); and ``cost(score)`` of the summed score, a zero-valued surrogate added to the objective (a
  baseline's ``-b · ∂ log p``);
* for multi-call strategies: ``couple(key, d) -> (x, c0, values, coeffs)``: the value ``x`` the program goes on with
  (no derivative), and the correction ``c0 · F(x) + Σ_j coeffs[j] · F(values[j])`` whose derivative, for *any*
  unbiased estimates ``F(v)`` of the rest of the program given the choice ``v`` (taken as constants), estimates
  ``Σ_v ∂θ p(v; θ) · E[rest | v]`` without bias (``c0`` and ``coeffs`` are zero-valued surrogates; ``c0`` may be
  ``None``). For a batched ``d`` all four are per component (``values``/``coeffs``: ``(m, *batch)``), each
  component's correction is about that component alone (plates use it). Straight-line sites evaluate ``F`` as the
  continuation ``k`` (:func:`coupled_estimate`, or the
  strategy's own ``jvp_estimate``); sites in map lanes and loop bodies re-run the program from the map or loop with
  that one value replaced (``ppl.transforms.adev``);
* ``unbiased`` (default ``True``; ``detach`` is the one biased strategy); ``pathwise`` (``True`` for reparam and
  implicit_reparam: the value carries the derivative; for the others, the site's own log density at the drawn value
  has a zero-mean derivative, which the ELBO's per-site terms leave out);
* registration: ``register(name, value)`` puts it in :data:`STRATEGIES`, which the language and error messages read.

A *surrogate* is a scalar whose value is the estimate and whose derivative (``jax.jvp`` / ``jax.grad``) is the
tangent estimate: ADEV's dual number, represented so that JAX's own forward and reverse modes apply to it.
``weighted(l, s) = l + sg(l)·s`` has value ``l`` and derivative ``l' + l·s'``: the REINFORCE rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


class StrategyError(ValueError):
    """A strategy that cannot apply at a site (the message names the address)."""


def weighted(value: Any, score: Any) -> Any:
    """Surrogate with the value of ``value`` and derivative ``value' + value · score'`` (``score`` is zero-valued)."""
    return value + sg(value) * score


def zero_valued(x: Any) -> Any:
    """``x - sg(x)``: value exactly 0, derivative ``x'``."""
    return x - sg(x)


class Strategy:
    """Base class of gradient strategies (see the module docstring for the contract)."""

    name: ClassVar[str] = "strategy"
    calls: ClassVar[str] = "1"  # continuation calls ("1": state passing; anything else: needs the continuation)
    unbiased: ClassVar[bool] = True  # does it estimate the derivative without bias (detach does not)?
    pathwise: ClassVar[bool] = False  # is the value's derivative the estimate (reparam), not a score term?

    @property
    def multi_call(self) -> bool:
        """Does the strategy call the continuation more than once (so it needs it: enum, mvd, leave_one_out)?"""
        return self.calls != "1"

    def check(self, d: Any, addr: str, lanes: bool = False) -> None:
        """Raise ``StrategyError`` naming ``addr`` if this strategy cannot estimate through ``d``."""

    def sample(self, key: Any, d: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def cost(self, score: Any) -> Any:
        return jnp.zeros_like(score)

    def couple(self, key: Any, d: Any) -> tuple[Any, Any, Any, Any]:
        raise NotImplementedError

    def exact(self, d: Any) -> tuple[Any, Any] | None:
        """``(values, weights)`` with ``E[F] = Σ_j weights[j] · F(values[j])`` exactly (weights carry their
        derivatives; per component for a batched ``d``), for strategies that enumerate (``enum``); else ``None``."""
        return None

    def jvp_estimate(self, key: Any, d: Any, k: Any) -> Any:
        """Surrogate of ``E[k(x)]``: the one-call form from ``sample``/``cost``, the multi-call one from ``couple``."""
        if self.multi_call:
            return coupled_estimate(self.couple(key, d), k)
        x, score = self.sample(key, d)
        score = jnp.sum(score)
        return weighted(k(x), score) + self.cost(score)

    def __repr__(self) -> str:
        return self.name


STRATEGIES: dict[str, Any] = {}
"""The registry: name -> strategy value (or factory, such as ``baseline``), as ``ppl.<name>``. The language's
builtins, the error messages that list strategies and ``ppl``'s exports (a test checks) read it."""


def register(name: str, value: Any) -> Any:
    """Register a strategy value or factory under ``name`` (returns it: ``mvd = register("mvd", MVD())``)."""
    STRATEGIES[name] = value
    return value


def coupled_estimate(coupling: tuple[Any, Any, Any, Any], k: Any) -> Any:
    """``k(x) + c0·sg(k(x)) + Σ_j coeffs[j]·sg(k(values[j]))`` with the continuation ``k`` traced once (one ``vmap``
    over ``x`` and the values; only ``k(x)`` carries its derivative)."""
    x, c0, values, coeffs = coupling
    ls = jax.vmap(k)(jnp.concatenate([jnp.asarray(x)[None], values.astype(jnp.result_type(x))]))
    out = ls[0] + jnp.sum(coeffs * sg(ls[1:]))
    return out if c0 is None else out + c0 * sg(ls[0])
