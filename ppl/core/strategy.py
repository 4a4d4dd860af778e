"""The strategy contract.

A gradient strategy says how ADEV estimates the derivative of an expectation through one random choice. It is a
small immutable value (a pytree: a baseline may be a traced array) with

* ``check(d, addr, lanes=False)`` — raise a ``StrategyError`` naming ``addr`` if the strategy cannot apply to
  distribution ``d`` (``lanes``: ``d``'s batch components are independent plate lanes, each estimated on its own);
* ``calls``: how many times it runs the continuation — ``1`` (the default: a *one-call* strategy, which ADEV runs by
  state passing) or more, as a number or a description such as ``"|support|"`` (a *multi-call* strategy, which ADEV
  hands the continuation); the one field that says it (``compare_estimators`` shows it);
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
  component's correction is about that component alone (plates use it). Sites in map lanes and loop bodies re-run
  the program from the map or loop with that one value replaced (``ppl.transforms.adev``);
* ``surrogate(key, d, k)``: a surrogate of ``E[k(x)]``, ``x ~ d``, for a straight-line site whose continuation is
  ``k`` (a surrogate-valued function) — derived from ``sample``/``cost`` or from ``couple``
  (:func:`coupled_estimate`); a strategy overrides it only to do better (``enum``'s exact sum, ``leave_one_out``'s
  mean over its samples);
* ``unbiased`` (default ``True``; ``detach`` is the one biased strategy); ``pathwise`` (``True`` for reparam and
  implicit_reparam: the value carries the derivative; for the others, the site's own log density at the drawn value
  has a zero-mean derivative, which the ELBO's per-site terms leave out);
* its fields: ``children`` (pytree leaves, which may be traced: a baseline) and ``aux`` (static, hashable) — every
  subclass is a pytree of them, with equality and hash from them;
* registration, once, next to the class: ``enum = register(Enum())`` puts the value (or a factory, such as
  ``baseline``) in :data:`STRATEGIES` under its public name, from which ``ppl.<name>``, ``ppl.gradients.<name>``,
  ``ppl.__all__``, the language's builtins and the error messages that list strategies read;
  :func:`default_strategy` (a site that names none) reads it too, so core imports nothing from ``ppl.gradients``.

A *surrogate* is a scalar whose value is the estimate and whose derivative (``jax.jvp`` / ``jax.grad``) is the
tangent estimate: ADEV's dual number, represented so that JAX's own forward and reverse modes apply to it.
``weighted(l, s) = l + sg(l)·s`` has value ``l`` and derivative ``l' + l·s'``: the REINFORCE rule.
"""

from __future__ import annotations

import functools
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
    calls: ClassVar[int | str] = 1  # continuation calls (1: state passing; more: it is handed the continuation)
    unbiased: ClassVar[bool] = True  # does it estimate the derivative without bias (detach does not)?
    pathwise: ClassVar[bool] = False  # is the value's derivative the estimate (reparam), not a score term?
    children: ClassVar[tuple[str, ...]] = ()  # fields that are pytree leaves (may be traced: a baseline)
    aux: ClassVar[tuple[str, ...]] = ()  # static fields (hashable: they are part of a site's static parameters)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, functools.partial(_unflatten, cls))

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

    def surrogate(self, key: Any, d: Any, k: Any) -> Any:
        """Surrogate of ``E[k(x)]``: the one-call form from ``sample``/``cost``, the multi-call one from ``couple``."""
        if self.calls != 1:
            return coupled_estimate(self.couple(key, d), k)
        x, score = self.sample(key, d)
        score = jnp.sum(score)
        return weighted(k(x), score) + self.cost(score)

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and all(getattr(self, f) is getattr(other, f) for f in self.children)
            and all(getattr(self, f) == getattr(other, f) for f in self.aux)
        )

    def __hash__(self) -> int:
        return hash((type(self), tuple(getattr(self, f) for f in self.aux)))

    def __repr__(self) -> str:
        return self.name


def _flatten(s: Strategy) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return tuple(getattr(s, f) for f in s.children), tuple(getattr(s, f) for f in s.aux)


def _unflatten(cls: type[Strategy], aux: tuple[Any, ...], children: tuple[Any, ...]) -> Strategy:
    obj = object.__new__(cls)
    for f, v in zip(cls.children, children, strict=True):
        object.__setattr__(obj, f, v)
    for f, v in zip(cls.aux, aux, strict=True):
        object.__setattr__(obj, f, v)
    return obj


STRATEGIES: dict[str, Any] = {}
"""The registry: public name -> strategy value (or factory, such as ``baseline``). ``ppl.<name>``,
``ppl.gradients.<name>``, ``ppl.__all__``, the language's builtins and the error messages that list strategies read
it (a test checks)."""


def register(value: Any) -> Any:
    """Register a strategy value (or factory) under its public name — a strategy's ``name``, a function's
    ``__name__`` — and return it: ``mvd = register(MVD())``; ``@register`` on a factory function."""
    name = value.name if isinstance(value, Strategy) else value.__name__
    if name in STRATEGIES:
        raise ValueError(f"a strategy named {name!r} is already registered: {STRATEGIES[name]!r}")
    STRATEGIES[name] = value
    return value


def default_strategy(d: Any) -> Strategy:
    """The strategy of a site that names none: ``reparam`` where ``d`` has a reparameterized sampler, ``reinforce``
    otherwise (looked up by name in the registry)."""
    return STRATEGIES["reparam" if d.has_rsample else "reinforce"]


def registry_getattr(module: str) -> Any:
    """A module ``__getattr__`` (PEP 562) that serves every registered strategy as ``<module>.<name>``: a strategy
    added in one file is public without an import line in each package face."""

    def __getattr__(name: str) -> Any:
        if name in STRATEGIES:
            return STRATEGIES[name]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def coupled_estimate(coupling: tuple[Any, Any, Any, Any], k: Any) -> Any:
    """``k(x) + c0·sg(k(x)) + Σ_j coeffs[j]·sg(k(values[j]))`` with the continuation ``k`` traced once (one ``vmap``
    over ``x`` and the values; only ``k(x)`` carries its derivative)."""
    x, c0, values, coeffs = coupling
    ls = jax.vmap(k)(jnp.concatenate([jnp.asarray(x)[None], values.astype(jnp.result_type(x))]))
    out = ls[0] + jnp.sum(coeffs * sg(ls[1:]))
    return out if c0 is None else out + c0 * sg(ls[0])
