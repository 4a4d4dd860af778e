"""The measure-valued derivative of the Normal (Weibull/Rayleigh coupling for the mean, double-sided Maxwell for the
scale): unbiased for a step function (no pathwise derivative exists), straight line, in map lanes, in a loop and in
a cond."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax
from jax.scipy.stats import norm

import ppl

from .stats import assert_unbiased, keys


def _exact(mu, s):  # E[1{x > 0.5}], x ~ N(mu, s)
    return 1.0 - norm.cdf((0.5 - mu) / s)


def _step(mu, s):
    return (ppl.sample("x", dist.Normal(mu, s), strategy=ppl.mvd) > 0.5) * 1.0


def test_straight_line():
    f = ppl.expectation(_step)
    g = jax.jit(jax.vmap(lambda k: f.grad_estimate(k, 0.3, 1.2)))(keys(20000, 1))
    exact = jax.grad(_exact, argnums=(0, 1))(0.3, 1.2)
    assert_unbiased(g[0], exact[0], max_stderr=0.001)
    assert_unbiased(g[1], exact[1], max_stderr=0.003)


def test_in_map_lanes_in_a_loop_and_in_a_cond():
    @ppl.expectation
    def f(mu, s):
        lanes = jnp.sum(jax.vmap(lambda _: _step(mu, s))(jnp.arange(3)))
        loop = lax.scan(lambda c, _: (c + _step(mu, s), None), 0.0, None, length=2)[0]
        flip = ppl.sample("b", dist.Bernoulli(0.5))  # a cond on a choice, per lane: only the taken branch's site
        in_cond = jnp.sum(jax.vmap(lambda _: lax.cond(flip > 0, lambda: _step(mu, s), lambda: 0.0))(jnp.arange(2)))
        return lanes + loop + in_cond

    g = jax.jit(jax.vmap(lambda k: f.grad_estimate(k, -0.2, 0.8)))(keys(20000, 2))
    exact = jax.grad(lambda m, s: 6 * _exact(m, s), argnums=(0, 1))(-0.2, 0.8)  # 3 + 2 + 0.5 · 2
    assert_unbiased(g[0], exact[0], max_stderr=0.01)
    assert_unbiased(g[1], exact[1], max_stderr=0.02)
