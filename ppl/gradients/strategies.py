"""Gradient strategies: one small final class each (contract in :mod:`ppl.core.strategy`).

Each estimates ``d/dθ E_{x~p(·;θ)}[k(x)]`` where ``k`` is the rest of the program (the continuation). The
docstring of each says how many times it runs ``k`` (its ``calls``). Each is registered once, right below its class
(``register``), which makes it ``ppl.<name>``, a name of the language and one of the strategies error messages list:
adding a strategy touches this file only.

>>> import jax, numpyro.distributions as dist, ppl
>>> @ppl.expectation
... def f(theta):
...     z = ppl.sample("z", dist.Bernoulli(logits=theta), strategy=ppl.enum)
...     return 3.0 * z
>>> g = f.grad_estimate(jax.random.key(0), 0.0)          # exact: 3 · σ'(0) = 0.75
>>> round(float(g), 4)
0.75

Sharp edges:
    * ``enum`` over ``k`` sequential sites runs the continuation ``|support|^k`` times (the program stays linear in
      ``k``: each level is one ``vmap``).
    * The continuation calls of ``enum``, ``mvd`` and ``leave_one_out`` share the downstream randomness (common random
      numbers): each call is an unbiased estimate, so their combination is too.
    * In a ``lax.scan`` body or a map lane a multi-call site samples its value and each of its calls is a re-run of
      the loop / map and the rest of the program with that one value replaced (same keys): ``T × calls`` re-runs for
      a loop of length ``T``, ``N × calls`` for ``N`` lanes.
"""

from __future__ import annotations

from typing import Any, final

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from ..core.distributions import TFPDistribution, log_prob
from ..core.strategy import Strategy, StrategyError, register, sg, weighted, zero_valued


def _sum_log_prob(d, x):
    return jnp.sum(log_prob(d, x))


@final
class Reparam(Strategy):
    """Pathwise derivative through the distribution's reparameterized sampler. Calls: 1."""

    name = "reparam"
    pathwise = True

    def check(self, d, addr, lanes=False):
        if not d.has_rsample:
            raise StrategyError(
                f"reparam at {addr!r}: {type(d).__name__} has no reparameterized sampler; use reinforce, "
                "enum (finite support) or mvd"
            )

    def sample(self, key, d):
        return d.rsample(key), 0.0


reparam = register(Reparam())


@final
class Detach(Strategy):
    """No derivative through this choice: the value is drawn and its dependence on the parameters is dropped.

    A *biased* strategy on purpose, for objectives whose gradient is defined with the samples held fixed
    (reweighted wake-sleep's wake phases). Calls: 1.
    """

    name = "detach"
    unbiased = False

    def sample(self, key, d):
        return sg(d.sample(key)), 0.0


detach = register(Detach())

_IMPLICIT = (nd.Gamma, nd.Beta, nd.Dirichlet, nd.InverseGamma, nd.StudentT)


@final
class ImplicitReparam(Strategy):
    """Implicit reparameterization (Figurnov et al. 2018): the pathwise derivative of samplers with no explicit
    inverse (Gamma, Beta, Dirichlet, InverseGamma, StudentT), from ``∂x/∂θ = −(∂F/∂θ)/p(x)`` as NumPyro's samplers
    implement it. Calls: 1."""

    name = "implicit_reparam"
    pathwise = True

    def check(self, d, addr, lanes=False):
        if not isinstance(d, _IMPLICIT):
            raise StrategyError(
                f"implicit_reparam at {addr!r}: {type(d).__name__} is not one of the implicitly reparameterized "
                f"distributions ({', '.join(c.__name__ for c in _IMPLICIT)}); use reparam or reinforce"
            )

    def sample(self, key, d):
        return d.rsample(key), 0.0


implicit_reparam = register(ImplicitReparam())


@final
class Reinforce(Strategy):
    """Score function (REINFORCE / likelihood ratio): ``l' + (l − b) · ∂θ log p(x; θ)``. Calls: 1.

    ``reinforce(baseline=b)`` (or ``baseline(b)``) subtracts a control variate ``b`` that must not depend on ``x``
    (any traced value: a running average, a learned scalar, the mean of other particles...).
    """

    name = "reinforce"
    children = ("baseline",)

    def __init__(self, baseline: Any = None):
        self.baseline = baseline

    def __call__(self, baseline: Any = None) -> Reinforce:
        return Reinforce(baseline)

    def sample(self, key, d):
        x = sg(d.sample(key))
        return x, zero_valued(log_prob(d, x))

    def cost(self, score):
        return 0.0 * score if self.baseline is None else -sg(jnp.sum(self.baseline)) * score

    def __repr__(self):
        return "reinforce" if self.baseline is None else "reinforce(baseline=*)"


reinforce = register(Reinforce())


@register
def baseline(b: Any) -> Reinforce:
    """REINFORCE with control variate ``b``: ``ppl.baseline(b)`` is ``ppl.reinforce(baseline=b)``."""
    return Reinforce(b)


def _batch_shape(d):
    """The batch shape, looking through ``.to_event(n)`` (NumPyro cannot enumerate an ``Independent``)."""
    return d.base_dist.batch_shape if isinstance(d, nd.Independent) else d.batch_shape


def _finite_support(d, addr, who, lanes):
    if isinstance(d, TFPDistribution):
        raise StrategyError(
            f"{who} at {addr!r}: TFP distributions are not enumerable here; use the NumPyro distribution of the same "
            "name (numpyro.distributions), or reinforce"
        )
    if not d.has_enumerate_support:
        raise StrategyError(
            f"{who} at {addr!r}: {type(d).__name__} has no finite support to enumerate (continuous or infinite "
            "support); use reparam, reinforce or mvd"
        )
    batch = _batch_shape(d)
    if batch != () and not lanes:
        raise StrategyError(
            f"{who} at {addr!r}: the distribution has batch shape {batch}; enumerating it jointly costs "
            "|support|^n continuation calls. Declare the components independent with ppl.plate (|support| calls), "
            "map one scalar site over them (jax.vmap or ppl.vmap), or use reinforce"
        )


@final
class Enum(Strategy):
    """Exact enumeration over a finite support: ``Σ_v p(v; θ) k(v)``, with ``k`` run under ``vmap`` over the
    support. Calls: |support|. In a map lane or a loop body: the value goes on sampled, and the derivative of the
    choice is ``Σ_v ∂p(v) · F(v)`` with ``F(v)`` a same-key re-run of the map / loop and the rest of the program:
    ``lanes × |support|`` re-runs (``T × |support|`` for a loop of length ``T``)."""

    name = "enum"
    calls = "|support|"

    def check(self, d, addr, lanes=False):
        _finite_support(d, addr, "enum", lanes)

    def surrogate(self, key, d, k):
        values = _support(d)
        return jnp.sum(jnp.exp(jax.vmap(lambda v: _sum_log_prob(d, v))(values)) * jax.vmap(k)(values))

    def exact(self, d):
        values = d.enumerate_support(expand=True)  # (|support|, *batch): each component enumerated on its own
        return values, jnp.exp(jax.vmap(lambda v: log_prob(d, v))(values))

    def couple(self, key, d):
        values, probs = self.exact(d)
        return sg(d.sample(key)), None, values, zero_valued(probs)


enum = register(Enum())


def _support(d):
    return d.enumerate_support(expand=False).reshape((-1, *d.event_shape))


_MVD = (nd.BernoulliProbs, nd.BernoulliLogits, nd.CategoricalProbs, nd.CategoricalLogits, nd.Poisson)
_GEOMETRIC = (nd.GeometricProbs, nd.GeometricLogits)


@final
class MVD(Strategy):
    """Measure-valued derivative (weak derivative coupling). Calls: 2 (Bernoulli, Poisson, Geometric),
    |support| (Categorical), 4 (Normal).

    * Bernoulli(p): ``k(x)`` + ``(k(1) − k(0)) · p'``;
    * Categorical(π): ``k(x)`` + ``Σ_j k(j) · π_j'``;
    * Poisson(λ): ``k(x)`` + ``(k(x + 1) − k(x)) · λ'``;
    * Geometric(p) (failures before the first success): ``k(x)`` + ``(k(x) − k(x + x₂ + 1)) · p'/p``, x₂ a fresh
      Geometric(p);
    * Normal(μ, σ) (Mohamed et al. 2020, §6): ``k(x)`` + ``(k(μ + σR) − k(μ − σR)) · μ'/(σ√(2π))`` with
      ``R ~ Rayleigh(1)`` (the Weibull coupling of the mean) + ``(k(μ + σM) − k(μ + σε)) · σ'/σ`` with ``M``
      double-sided Maxwell and ``ε ~ N(0, 1)``: 4 calls, no derivative of ``k`` needed (a step function is fine).
    The values in the correction are primal (no derivative flows through them). In a map lane or a loop body each
    ``k(v)`` is a same-key re-run of the map / loop and the rest of the program: ``lanes × 2`` re-runs for
    Bernoulli, Poisson, Geometric (``lanes × |support|`` for Categorical).
    """

    name = "mvd"
    calls = "2 (|support| for Categorical, 4 for Normal)"

    def check(self, d, addr, lanes=False):
        if (batch := _batch_shape(d)) != () and not lanes:
            raise StrategyError(
                f"mvd at {addr!r}: batch shape {batch}; declare the components independent with ppl.plate, map one "
                "scalar site over them (jax.vmap or ppl.vmap), or use reinforce"
            )
        if not isinstance(d, _MVD + _GEOMETRIC + (nd.Normal,)):
            raise StrategyError(
                f"mvd at {addr!r}: no measure-valued derivative for {type(d).__name__}; mvd covers Bernoulli, "
                "Categorical, Poisson, Geometric and Normal (use enum or reinforce)"
            )

    def couple(self, key, d):
        k1, k2 = jax.random.split(key)
        x = sg(d.sample(k1))
        if isinstance(d, nd.BernoulliProbs | nd.BernoulliLogits):  # (k(1) − k(0)) · p'
            c = jnp.where(x > 0, 1.0, -1.0) * zero_valued(d.probs)
            return x, c, (1 - x)[None].astype(x.dtype), -c[None]
        if isinstance(d, nd.CategoricalProbs | nd.CategoricalLogits):  # Σ_j k(j) · π_j'
            k = d.probs.shape[-1]
            values = jnp.broadcast_to(jnp.arange(k, dtype=x.dtype).reshape((k,) + (1,) * x.ndim), (k, *x.shape))
            return x, None, values, jnp.moveaxis(jnp.broadcast_to(zero_valued(d.probs), (*x.shape, k)), -1, 0)
        if isinstance(d, nd.Poisson):  # (k(x + 1) − k(x)) · λ'
            c = zero_valued(d.rate)
            return x, -c, (x + 1)[None], c[None]
        if isinstance(d, nd.Normal):
            return x, None, *_normal_coupling(k2, d)
        c = zero_valued(d.probs) / sg(d.probs)  # Geometric: (k(x) − k(x + x₂ + 1)) · p'/p
        return x, c, (x + sg(d.sample(k2)) + 1)[None], -c[None]


mvd = register(MVD())


def _normal_coupling(key, d):
    """Weak derivatives of N(μ, σ): ``∂μ = (N⁺ − N⁻)/(σ√(2π))`` with ``N^± = μ ± σ·Rayleigh(1)``, and
    ``∂σ = (DSMaxwell − N(0, 1))/σ`` scaled and shifted; values and zero-valued coefficients."""
    batch = tuple(d.batch_shape)
    n = jax.random.normal(key, (6, *batch))
    r = jnp.sqrt(n[0] ** 2 + n[1] ** 2)  # Rayleigh(1)
    m = jnp.sign(n[5]) * jnp.sqrt(n[2] ** 2 + n[3] ** 2 + n[4] ** 2)  # double-sided Maxwell
    loc, scale = jnp.broadcast_to(d.loc, batch), jnp.broadcast_to(d.scale, batch)
    mu, sigma = sg(loc), sg(scale)
    values = jnp.stack([mu + sigma * r, mu - sigma * r, mu + sigma * m, mu + sigma * n[5]])
    cm = zero_valued(loc) / (sigma * jnp.sqrt(2 * jnp.pi))
    cs = zero_valued(scale) / sigma
    return values, jnp.stack([cm, -cm, cs, -cs])


@final
class LeaveOneOut(Strategy):
    """REINFORCE over ``n`` samples with the leave-one-out baseline (RLOO, Kool et al. 2019):
    ``(1/n) Σ_i [k(x_i)' + (k(x_i) − mean_{j≠i} k(x_j)) · ∂ log p(x_i)]``. Calls: n.

    ``leave_one_out(n)`` sets the number of samples (default 4). Its value estimate is the mean of the n calls. In
    a map lane or a loop body the program goes on with the first sample (its pathwise derivative) and the score terms
    use ``n`` same-key re-runs of the map / loop and the rest of the program: ``lanes × n`` re-runs.
    """

    name = "leave_one_out"
    aux = ("n",)

    def __init__(self, n: int = 4):
        if not isinstance(n, int) or n < 2:
            raise StrategyError(f"leave_one_out needs n >= 2 samples, got {n!r}")
        self.n = n

    def __call__(self, n: int) -> LeaveOneOut:
        return LeaveOneOut(n)

    @property
    def calls(self) -> int:  # n continuation calls
        return self.n

    def check(self, d, addr, lanes=False):
        if d.batch_shape != () and not lanes:
            raise StrategyError(
                f"leave_one_out at {addr!r}: batch shape {d.batch_shape}; declare the components independent with "
                "ppl.plate, map one scalar site over them (jax.vmap or ppl.vmap), or use reinforce"
            )

    def surrogate(self, key, d, k):
        xs = sg(d.sample(key, (self.n,)))
        ls = jax.vmap(k)(xs)
        scores = zero_valued(jax.vmap(lambda x: _sum_log_prob(d, x))(xs))
        b = (jnp.sum(sg(ls)) - sg(ls)) / (self.n - 1)
        return jnp.mean(weighted(ls, scores) - b * scores)

    def couple(self, key, d):
        # (1/n) Σ_j (F_j − mean_{i≠j} F_i) s_j  =  Σ_j F_j · (n·s_j − Σ_i s_i) / (n(n−1))
        xs = sg(d.sample(key, (self.n,)))
        s = zero_valued(jax.vmap(lambda x: log_prob(d, x))(xs))  # (n, *batch): per component
        c = (self.n * s - jnp.sum(s, axis=0)) / (self.n * (self.n - 1))
        return xs[0], c[0], xs[1:], c[1:]

    def __repr__(self):
        return f"leave_one_out({self.n})"


leave_one_out = register(LeaveOneOut())
