"""Approximate marginalization and normalization (RAVI / GenSP): families whose density is *estimated*.

``ppl.marginal(q, select, inner=ppl.sir(m))`` is the family of the ``select``-ed choices ``z`` of ``q``, whose other
choices ``u`` (auxiliary variables) are marginalized by importance sampling with a proposal ``r(u | z)``
(``inner=ppl.sir(m, proposal=r)``; default: ``q``'s own program with ``z`` constrained, i.e. the prior over ``u``):

* ``density(marginal(q, ...), z)`` is ``log q̂(z)``, ``q̂(z) = (1/m) Σ_i q(z, u_i) / r(u_i | z)``, ``u_i ~ r``: an
  unbiased estimate of the density ``q(z)``;
* ``sim(marginal(q, ...))`` draws ``(z, u_1) ~ q`` and ``u_2..u_m ~ r(· | z)`` and returns ``z`` with the same
  ``log q̂(z)``: now ``1 / q̂(z)`` is an unbiased estimate of ``1 / q(z)`` (the SIR reciprocal estimator).

So the objectives apply unchanged: ``elbo(model, marginal(q, ["z"], sir(1)))`` is HVI, with ``sir(m)`` IWHVI,
``iwae(model, marginal(q, ["z"], sir(m)), data, K)`` DIWHVI. All proposal draws are random choices of the
objective, so ADEV differentiates through them with their strategies.

>>> import jax, numpyro.distributions as dist, ppl
>>> @ppl.gen
... def q(s):
...     u = ppl.sample("u", dist.Normal(0.0, 1.0))
...     return ppl.sample("z", dist.Normal(u, s))
>>> fam = ppl.marginal(q, ["z"], inner=ppl.sir(100))
>>> est = ppl.expectation(lambda s: jax.numpy.exp(ppl.density(fam, {"z": 0.0}, s)))
>>> exact = float(dist.Normal(0.0, 2.0 ** 0.5).log_prob(0.0))      # z ~ Normal(0, √(1 + s²)) at s = 1
>>> bool(abs(jax.numpy.log(est.estimate(jax.random.key(0), 1.0)) - exact) < 0.1)
True

Sharp edges:
    * With the default proposal, ``q̂`` uses ``q``'s weight for ``z`` given ``u``: ``q`` must sample ``u`` before
      ``z`` (ancestral order) for this to be ``q(z | u)``.
    * The estimated ``log q̂`` is biased as a log (Jensen); only ``q̂`` and ``1/q̂`` are unbiased.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ..core.family import Family, Transform
from ..core.lanes import vmap
from ..transforms.tracing import GenFn, density, gen, record, sim


@dataclass(frozen=True)
class SIR:
    """Importance sampling with ``n`` particles and proposal ``r(u | z, *args)`` (``None``: ``q``'s own prior)."""

    n: int
    proposal: GenFn | None = None


def sir(n: int, proposal: Any = None) -> SIR:
    """The inner inference of ``marginal``: ``n`` importance samples from ``proposal`` (a ``@ppl.gen`` taking the
    selected choices then the family's arguments; ``None`` uses the family's own program with ``z`` constrained)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"ppl.sir: n must be a positive int, got {n!r}")
    return SIR(n, None if proposal is None else gen(proposal))


class Marginal(Family):
    """A family over the ``select``-ed choices of ``q`` with an estimated density (see the module docstring)."""

    estimated_density = True

    def __init__(self, q: Any, select: Sequence[str], inner: SIR):
        self.q, self.select, self.inner = gen(q), tuple(select), inner
        self.__name__ = f"marginal({self.q.__name__})"

    def __repr__(self) -> str:
        return f"marginal({self.q.__name__}, {list(self.select)}, sir({self.inner.n}))"

    def _split(self, choices: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        z = {a: v for a, v in choices.items() if any(fnmatch.fnmatchcase(a, p) for p in self.select)}
        if not z:
            raise ValueError(f"{self!r}: select {list(self.select)} matches none of the choices {sorted(choices)}")
        return z, {a: v for a, v in choices.items() if a not in z}

    def _log_weight(self, z: Mapping[str, Any], args: tuple[Any, ...], u: Mapping[str, Any] | None) -> Any:
        """``log q(z, u) − log r(u | z)`` for given ``u``, or for ``u ~ r`` (kept as random choices) if ``None``."""
        r = self.inner.proposal
        if r is None:
            _, _, weight, _ = record(self.q, args, constraints=z, fixed=u)
            return weight
        if u is None:
            u, log_r = sim(r, z, *args)
        else:
            log_r = density(r, u, z, *args)
        return density(self.q, {**z, **u}, *args) - log_r

    def _estimate(self, z: Mapping[str, Any], args: tuple[Any, ...], first_u: Mapping[str, Any] | None) -> Any:
        n = self.inner.n - (first_u is not None)
        ws = []
        if first_u is not None:
            ws.append(self._log_weight(z, args, first_u)[None])
        if n > 0:
            ws.append(vmap(lambda: self._log_weight(z, args, None), axis_size=n)())
        return logsumexp(jnp.concatenate(ws)) - jnp.log(self.inner.n)

    def map_programs(self, transform: Transform) -> Marginal:
        """The marginal of ``q`` transformed, with the proposal (if any) transformed too."""
        q, r = self.q.map_programs(transform), self.inner.proposal
        return Marginal(q, self.select, SIR(self.inner.n, None if r is None else r.map_programs(transform)))

    def sim(self, *args: Any, cost: float = 0.0) -> tuple[dict[str, Any], Any]:
        choices, _ = sim(self.q, *args)
        z, u = self._split(choices)
        return z, self._estimate(z, args, u)

    def density(self, choices: Mapping[str, Any], *args: Any, cost: float = 0.0) -> Any:
        return self._estimate(dict(choices), args, None)


def marginal(q: Any, select: Sequence[str] | str, inner: SIR | None = None) -> Marginal:
    """The family of the choices of ``q`` matching ``select`` (addresses or globs), the rest marginalized by
    ``inner`` (default ``sir(1)``)."""
    select = [select] if isinstance(select, str) else list(select)
    return Marginal(q, select, inner or sir(1))
