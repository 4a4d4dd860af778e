"""Deterministic program-size budgets: the estimator of ``m`` sequential multi-call sites grows linearly in ``m``
(each site traces the rest of the program once, under one ``vmap`` over its evaluation points)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl
from ppl._jax_internals import subjaxprs


def _count(jaxpr) -> int:
    return sum(1 + sum(_count(s) for s in subjaxprs(e)) for e in jaxpr.eqns)


def _size(strategy, m: int) -> int:
    @ppl.expectation
    def f(th):
        tot = 0.0
        for i in range(m):
            d = dist.Categorical(logits=jnp.array([th, 0.0, 1.0]))
            tot = tot + ppl.sample(f"z{i}", d, strategy=strategy)
        return tot**2

    return _count(jax.make_jaxpr(lambda k: f.grad_estimate(k, 0.1))(jax.random.key(0)).jaxpr)


@pytest.mark.parametrize(
    "strategy", [ppl.mvd, ppl.enum, ppl.leave_one_out(2), ppl.reinforce], ids=["mvd", "enum", "loo", "reinforce"]
)
def test_estimator_size_is_linear_in_the_number_of_sites(strategy):
    sizes = {m: _size(strategy, m) for m in (1, 2, 4, 8)}
    per_site = sizes[2] - sizes[1]
    for m in (4, 8):  # no doubling per site (the mvd regression: 247,713 equations at m = 8)
        assert sizes[m] <= sizes[1] + 1.25 * per_site * (m - 1), sizes


def test_the_staging_cache_is_bounded():
    # a Python float argument is static: each new value stages anew, but the cache keeps the most recent signatures
    from ppl.core.staging import Staged

    st = Staged(lambda x, s: x * s)
    for i in range(Staged.MAX_CACHED + 20):
        st.stage((jnp.ones(2), float(i)))
    assert len(st._cache) == Staged.MAX_CACHED
    first = st.stage((jnp.ones(2), float(Staged.MAX_CACHED + 19)))[0]
    assert st.stage((jnp.ones(2), float(Staged.MAX_CACHED + 19)))[0] is first  # still a hit


def _plated_size(strategy, n: int) -> int:
    @ppl.gen
    def model():
        mu = ppl.sample("mu", dist.Normal(jnp.zeros(3), 5.0).to_event(1))
        with ppl.plate("data", n):
            z = ppl.sample("z", dist.Categorical(logits=jnp.zeros(3)))
            ppl.sample("x", dist.Normal(mu[z], 1.0))

    @ppl.gen
    def guide(logits):
        ppl.sample("mu", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        with ppl.plate("data", n):
            ppl.sample("z", dist.Categorical(logits=logits))

    obj = ppl.elbo(model, guide, {"x": jnp.zeros(n)}, strategies={"z": strategy})
    return _count(jax.make_jaxpr(lambda k: obj.grad_estimate(k, (), (jnp.zeros((n, 3)),)))(jax.random.key(0)).jaxpr)


@pytest.mark.parametrize("strategy", [ppl.enum, ppl.mvd, ppl.reinforce], ids=["enum", "mvd", "reinforce"])
def test_a_plated_estimator_does_not_grow_with_the_number_of_points(strategy):
    # one vectorized site for all points: the same program at N = 10 and N = 1,000 (unrolled sites: 3^N runs)
    assert _plated_size(strategy, 10) == _plated_size(strategy, 1000)
