"""Distributions at a site: NumPyro's, and TFP's JAX substrate through a thin adapter.

``ppl`` never re-implements a distribution. A TFP distribution is wrapped in :class:`TFPDistribution`, a NumPyro
``Distribution`` that forwards ``sample``/``log_prob`` to TFP, so every transformation sees one interface. TFP is
imported lazily: NumPyro alone runs everything.

>>> import jax, ppl
>>> import tensorflow_probability.substrates.jax.distributions as tfd
>>> tr = ppl.gen(lambda: ppl.sample("x", tfd.Normal(0.0, 1.0))).simulate(jax.random.key(0))
>>> bool(abs(tr.score - tfd.Normal(0.0, 1.0).log_prob(tr.choices["x"])) < 1e-6)
True

Sharp edges:
    * TFP distributions are not enumerable here (``enum``/``mvd`` need NumPyro's Bernoulli, Categorical, ...).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax.scipy.special import gammaln
from numpyro.distributions import constraints


class TFPDistribution(nd.Distribution):
    """A TFP JAX-substrate distribution seen through NumPyro's interface."""

    pytree_data_fields = ("base",)

    def __init__(self, base: Any):
        self.base = base
        super().__init__(batch_shape=tuple(base.batch_shape), event_shape=tuple(base.event_shape))

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        tfd = sys.modules["tensorflow_probability.substrates.jax"].distributions
        return self.base.reparameterization_type == tfd.FULLY_REPARAMETERIZED

    def sample(self, key, sample_shape=()):
        return self.base.sample(sample_shape, seed=key)

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)

    def __repr__(self) -> str:
        return f"TFP:{type(self.base).__name__}"


def log_prob(d: nd.Distribution, x: Any) -> Any:
    """``d.log_prob(x)``, with known-wrong *gradients* of NumPyro log densities patched (same values).

    NumPyro's ``BernoulliLogits.log_prob`` goes through ``clip``/``abs``, whose derivative at ``logits == 0`` is off
    by 0.5 under current JAX; we use ``x·l − softplus(l)``, the same log mass function, smooth everywhere (with
    :func:`_softplus`, bit-identical to ``jax.nn.softplus`` in value and cheaper to differentiate).
    ``BinomialLogits.log_prob`` has the same kink (``n·clip(l, 0) + n·log1p(exp(−|l|))``: off by ``n/2`` at
    ``logits == 0``); we use ``log C(n, x) + x·l − n·softplus(l)``. Off the support both are ``-inf`` (when the
    distribution validates its arguments, NumPyro's default), as in NumPyro. ``Expanded``/``Independent``/``Masked``
    wrappers (what ``numpyro.plate`` and ``.to_event`` make) around them are looked through.
    """
    if not _patched(d):
        return d.log_prob(x)
    if isinstance(d, nd.ExpandedDistribution):  # what numpyro.plate makes: look through the wrappers
        return jnp.broadcast_to(log_prob(d.base_dist, x), jnp.shape(d.log_prob(x)))
    if isinstance(d, nd.Independent):
        lp = log_prob(d.base_dist, x)
        return jnp.sum(lp, axis=tuple(range(-d.reinterpreted_batch_ndims, 0)))
    if isinstance(d, nd.MaskedDistribution):
        return jnp.where(d._mask, log_prob(d.base_dist, x), 0.0)
    if isinstance(d, nd.BernoulliLogits):
        return _off_support(d, x, x * d.logits - _softplus(d.logits))
    if isinstance(d, nd.BinomialLogits):
        n = jnp.asarray(d.total_count, jnp.result_type(float))
        log_binom = gammaln(n + 1) - gammaln(x + 1) - gammaln(n - x + 1)
        return _off_support(d, x, log_binom + x * d.logits - n * _softplus(d.logits))
    return d.log_prob(x)


def checks_support(d: Any) -> bool:
    """Can NumPyro's support check in ``log_prob`` change a value? Not when the support is all of ℝⁿ (``real``,
    ``real_vector``, ...): there it would only turn NaN and ±inf values, whose density is not finite anyway, into
    ``-inf`` — five comparisons and a select per site that ``ppl`` leaves out of the program."""
    support = getattr(d, "support", None)
    while isinstance(support, nd.constraints.independent):
        support = support.base_constraint
    return not isinstance(support, type(nd.constraints.real))


def _off_support(d: nd.Distribution, x: Any, lp: Any) -> Any:
    """``-inf`` outside the support, as NumPyro's ``validate_sample`` does when the distribution validates."""
    return jnp.where(d._validate_sample(x), lp, -jnp.inf) if d._validate_args else lp


def _softplus(x: Any) -> Any:
    """``log(1 + e^x)`` as ``relu(x) + log1p(e^{-|x|})`` with ``relu(x) = (x + |x|)/2``: the same values as
    ``jax.nn.softplus`` (same formula) and the exact derivative ``σ(x)`` everywhere, ``1/2`` at 0 (``|x|'`` is 0 there).
    Its autodiff reuses ``e^{-|x|}``; ``jax.nn.softplus``'s custom JVP recomputes an ``exp``, which made the
    Bernoulli likelihood of a 784-pixel VAE ~40% slower to differentiate (``bench/vae.py``)."""
    a = jnp.abs(x)
    return jnp.where(x == -jnp.inf, 0.0, 0.5 * (x + a) + jnp.log1p(jnp.exp(-a)))  # x + |x| is nan at -inf


def _patched(d: nd.Distribution) -> bool:
    if isinstance(d, nd.ExpandedDistribution | nd.Independent | nd.MaskedDistribution):
        return _patched(d.base_dist)
    return isinstance(d, nd.BernoulliLogits | nd.BinomialLogits)


def _is_tfp(d: Any) -> bool:
    mod = sys.modules.get("tensorflow_probability.substrates.jax")
    return mod is not None and isinstance(d, mod.distributions.Distribution)


def as_numpyro(d: Any, addr: str) -> nd.Distribution:
    """``d`` as a NumPyro distribution, or a ``TypeError`` naming the address."""
    if isinstance(d, nd.Distribution):
        return d
    if _is_tfp(d):
        return TFPDistribution(d)
    raise TypeError(
        f"ppl.sample({addr!r}, ...): {type(d).__name__} is not a distribution; pass a "
        "numpyro.distributions.Distribution or a tensorflow_probability.substrates.jax distribution"
    )


class Subsample(nd.Distribution):
    """``subsample_size`` distinct indices of ``range(size)`` drawn uniformly, with log density 0.

    The distribution of a subsampled plate's indices (``ppl.plate``, ``numpyro.plate``). Its density is left out
    (taken as 0), as NumPyro's ``log_density`` leaves plates out: a constant that cancels between a guide and a
    model sharing the plate, and has no derivative.
    """

    pytree_aux_fields = ("size", "subsample_size")
    arg_constraints: dict[str, Any] = {}
    support = constraints.nonnegative_integer

    def __init__(self, size: int, subsample_size: int):
        self.size, self.subsample_size = int(size), int(subsample_size)
        super().__init__(batch_shape=(), event_shape=(self.subsample_size,))

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        def one(k):
            return jax.random.choice(k, self.size, (self.subsample_size,), replace=False)

        n = math.prod(sample_shape)
        out = jax.vmap(one)(jax.random.split(key, n))
        return out.reshape((*sample_shape, self.subsample_size))

    def log_prob(self, value: Any) -> jax.Array:
        return jnp.zeros(jnp.shape(value)[:-1])
