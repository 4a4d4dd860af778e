"""The family protocol (``ppl.core.family``): ``sim``/``density``/``map_programs`` on every kind of family.

Oracles are closed forms: the marginal density of a two-component mixture and its derivative; a user-written family
(one subclass of ``Family``) inside ``ppl.elbo`` against the Normal–Normal ELBO in closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl.core.family import Family, Program
from tests.stats import assert_unbiased, keys

Z0 = 0.7


@ppl.gen
def mixture(theta):
    u = ppl.sample("u", dist.Bernoulli(logits=theta))
    return ppl.sample("z", dist.Normal(2.0 * u, 1.0))


def exact_density_grad(theta):
    """d/dθ q(z0) for q(z) = σ(θ) N(z0; 2, 1) + (1 − σ(θ)) N(z0; 0, 1)."""
    s = jax.nn.sigmoid(theta)
    n1, n0 = (jnp.exp(dist.Normal(m, 1.0).log_prob(Z0)) for m in (2.0, 0.0))
    return s * (1 - s) * (n1 - n0)


def density_estimate(fam):
    return ppl.expectation(lambda theta: jnp.exp(ppl.density(fam, {"z": Z0}, theta)))


def test_every_kind_of_program_implements_the_protocol():
    q = ppl.marginal(mixture, ["z"])
    assert isinstance(mixture, Family) and isinstance(q, Family) and q.estimated_density
    assert isinstance(ppl.from_numpyro(lambda: None, params=False), Family)
    assert isinstance(density_estimate(q), Program) and not isinstance(density_estimate(q), Family)
    assert isinstance(ppl.sum_over(density_estimate(q), 0), Program)


def test_with_strategies_on_a_marginal_sets_the_strategy_of_its_auxiliary_choice():
    """Was ``TypeError: 'Marginal' object is not callable``. With ``enum`` at ``u`` the density estimate's gradient is
    exact (zero variance); with ``reinforce`` it is unbiased with variance."""
    q = ppl.marginal(mixture, ["z"])
    enum_q = ppl.with_strategies(q, {"u": ppl.enum})
    assert isinstance(enum_q, type(q)) and enum_q.select == q.select
    theta = 0.3
    exact = float(exact_density_grad(theta))
    g = jax.jit(jax.vmap(lambda k: density_estimate(enum_q).grad_estimate(k, theta)))(keys(64))
    np.testing.assert_allclose(np.asarray(g), exact, rtol=1e-5)  # exact for every key
    reinforce_q = ppl.with_strategies(q, {"u": ppl.reinforce})
    g = jax.jit(jax.vmap(lambda k: density_estimate(reinforce_q).grad_estimate(k, theta)))(keys(20_000, seed=1))
    assert float(jnp.std(g)) > 1e-3  # reinforce really is in use
    assert_unbiased(np.asarray(g), exact, max_stderr=0.003)


def test_patterns_are_checked_against_every_program_of_the_family():
    @ppl.gen
    def proposal(z, theta):
        return ppl.sample("v", dist.Bernoulli(0.5))

    @ppl.gen
    def q2(theta):
        v = ppl.sample("v", dist.Bernoulli(logits=theta))
        return ppl.sample("z", dist.Normal(2.0 * v, 1.0))

    fam = ppl.marginal(q2, ["z"], inner=ppl.sir(2, proposal=proposal))
    rewritten = ppl.with_strategies(fam, {"v": ppl.enum})  # matches both programs
    assert np.isfinite(float(density_estimate(rewritten).estimate(jax.random.key(0), 0.3)))
    bad = ppl.with_strategies(fam, {"nope*": ppl.enum})
    with pytest.raises(ppl.PPLError, match=r"\['nope\*'\] match no address of 'q2' and 'proposal'.*\['v', 'z'\]"):
        density_estimate(bad).estimate(jax.random.key(0), 0.3)


def test_rewritten_families_keep_their_attributes():
    model = ppl.gen(lambda: ppl.sample("x", dist.Normal(ppl.sample("mu", dist.Normal(0.0, 1.0)), 1.0)))
    guide, _ = ppl.auto_multivariate_normal(model, observed={"x": 0.5})
    assert ppl.with_strategies(guide, ppl.reparam).auxiliary == guide.auxiliary == {"_auto_latent"}
    expectation = ppl.elbo(model, guide, {"x": 0.5})
    assert type(ppl.with_strategies(expectation, ppl.reparam)) is type(expectation)


class ShiftedNormal(Family):
    """A family written by hand, not as a ``@ppl.gen`` program: ``z ~ Normal(m, 1)`` at address ``"z"``."""

    def __init__(self, strategy=None):
        self.strategy = strategy

    def map_programs(self, transform):
        return self  # no staged programs of its own

    def sim(self, m, cost=0.0):
        z = ppl.sample("z", dist.Normal(m, 1.0), strategy=self.strategy)
        lp = dist.Normal(m, 1.0).log_prob(z)
        if cost:
            ppl.add_cost(cost * lp)
        return {"z": z}, lp

    def density(self, choices, m, cost=0.0):
        return dist.Normal(m, 1.0).log_prob(choices["z"])


@pytest.mark.parametrize(
    ("strategy", "max_stderr"), [(None, 0.016), (ppl.reinforce, 0.032)], ids=["reparam", "reinforce"]
)  # measured stderr: 0.0141 (= 2/√20,000) and 0.0282
def test_a_user_written_family_works_in_the_library_objectives(strategy, max_stderr):
    """ELBO of p(z) = N(0, 1), p(x | z) = N(z, 1) at x = 1 with q = N(m, 1): E = −(m² + (m − 1)² + 2)/2 − log 2π
    + 1/2 (closed form); dE/dm = −(2m − 1)."""

    @ppl.gen
    def model():
        z = ppl.sample("z", dist.Normal(0.0, 1.0))
        ppl.sample("x", dist.Normal(z, 1.0))

    obj = ppl.elbo(model, ShiftedNormal(strategy), {"x": 1.0})
    m = 0.2
    g = jax.jit(jax.vmap(lambda k: obj.grad_estimate(k, (), (m,))[1][0]))(keys(20_000, seed=2))
    assert_unbiased(np.asarray(g), -(2 * m - 1), max_stderr=max_stderr)
