"""Loop fusion (``ppl.core.fusion``): a scan that reads another's per-step outputs becomes one loop with it.

Plain JAX programs: the fused program computes the same values and gradients, and only legal pairs fuse (same
length and direction; the later loop reads the earlier one row by row and nothing else of it). Random programs: the
ELBO of a Gaussian random walk whose model and guide each loop (one loop after fusion) is unbiased against its closed
form, for reparam and reinforce at the guide's site, under ``jit``/``vmap`` and inside a ``lax.scan`` over keys; a
discrete chain with enum, mvd and reinforce inside the fused loop against the ELBO enumerated over its 2³ paths.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
from ppl._jax_internals import jaxpr_as_fun
from ppl.core.fusion import fuse_scans

from .stats import assert_unbiased, keys


def _scans(closed):
    return sum(e.primitive.name == "scan" for e in closed.jaxpr.eqns)


def _after_a(x):  # B reads A's ys row by row, with an iota made between them: fusable
    c, ys = lax.scan(lambda c, a: (c + a, jnp.sin(a) * c), 0.0, x)
    idx = jnp.arange(x.shape[0], dtype=jnp.float32)
    s, zs = lax.scan(lambda s, yi: (s + yi[0] * yi[1], s), 1.0, (ys, idx))
    return c + s + jnp.sum(zs)


def _three(x):  # a chain of three loops: one
    _, a = lax.scan(lambda c, v: (c, v * 2.0), 0.0, x)
    _, b = lax.scan(lambda c, v: (c, jnp.cos(v)), 0.0, a)
    return lax.scan(lambda c, v: (c * 0.5 + v, None), 0.0, b)[0]


def _reverse(x):  # both reversed: fusable
    _, a = lax.scan(lambda c, v: (c + v, c * v), 0.0, x, reverse=True)
    return lax.scan(lambda c, v: (c + v * v, None), 0.0, a, reverse=True)[0]


def _final_carry(x):  # B starts from A's final carry: not fusable
    c, a = lax.scan(lambda c, v: (c + v, v), 0.0, x)
    return lax.scan(lambda s, v: (s * v, None), c, a)[0]


def _shifted(x):  # B reads A's ys shifted by one row: not fusable
    _, a = lax.scan(lambda c, v: (c, v + 1.0), 0.0, x)
    return lax.scan(lambda s, v: (s + jnp.exp(v), None), 0.0, jnp.roll(a, 1))[0]


def _directions(x):  # one forward, one reversed: not fusable
    _, a = lax.scan(lambda c, v: (c + v, c), 0.0, x)
    return lax.scan(lambda s, v: (s * 0.9 + v, None), 0.0, a, reverse=True)[0]


def _lengths(x):  # different lengths: not fusable
    _, a = lax.scan(lambda c, v: (c, v), 0.0, x)
    return lax.scan(lambda s, v: (s + v, None), 0.0, a[:-1])[0]


def _effect_between(x):  # a side effect between the loops keeps its order: not fusable
    _, a = lax.scan(lambda c, v: (c, v + 1.0), 0.0, x)
    jax.debug.callback(lambda: None)
    return lax.scan(lambda s, v: (s + v, None), 0.0, a)[0]


@pytest.mark.parametrize(
    "fn, before, after",
    [(_after_a, 2, 1), (_three, 3, 1), (_reverse, 2, 1), (_final_carry, 2, 2), (_shifted, 2, 2),
     (_directions, 2, 2), (_lengths, 2, 2), (_effect_between, 2, 2)],  # fmt: skip
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_fused_programs_compute_the_same_values_and_gradients(fn, before, after):
    x = jnp.linspace(-1.0, 1.5, 7)
    j = jax.make_jaxpr(fn)(x)
    fused = fuse_scans(j)
    assert (_scans(j), _scans(fused)) == (before, after)
    f = jaxpr_as_fun(fused)
    np.testing.assert_allclose(f(x)[0], fn(x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: f(v)[0])(x), jax.grad(fn)(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- the random walk: closed-form ELBO

T = 4
YS = jnp.array([0.3, -0.8, 1.1, 0.4])


@ppl.gen
def walk():
    def step(x, _):
        x = ppl.sample("x", dist.Normal(x, 1.0))
        ppl.sample("y", dist.Normal(x, 1.0))
        return x, None

    lax.scan(step, 0.0, None, length=T)


def walk_guide(strategy):
    @ppl.gen
    def guide(mu, log_sig):
        def step(_, p):
            ppl.sample("x", dist.Normal(p[0], jnp.exp(p[1])), strategy=strategy)
            return None, None

        lax.scan(step, None, (mu, log_sig))

    return guide


def exact_walk_elbo(mu, log_sig):
    """E_q[log p(x, y) − log q(x)] for independent x_t ~ N(mu_t, s_t²), written out."""
    s2 = jnp.exp(2 * log_sig)
    mu_prev, s2_prev = jnp.concatenate([jnp.zeros(1), mu[:-1]]), jnp.concatenate([jnp.zeros(1), s2[:-1]])
    lp_x = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((mu - mu_prev) ** 2 + s2 + s2_prev)
    lp_y = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((YS - mu) ** 2 + s2)
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s2)
    return jnp.sum(lp_x + lp_y + entropy)


MU, LOG_SIG = jnp.array([0.2, -0.4, 0.9, 0.1]), jnp.array([-0.3, 0.1, -0.6, 0.0])


@pytest.mark.parametrize("strategy", [None, ppl.reinforce], ids=["reparam", "reinforce"])
def test_random_walk_elbo_is_one_loop_and_unbiased(strategy):
    obj = ppl.elbo(walk, walk_guide(strategy), {"y": YS})
    jaxpr = obj.staged.stage(((), (MU, LOG_SIG), {"y": YS}))[0]
    assert _scans(jaxpr) == 1  # the guide's loop and the model's, fused
    exact_v, exact_g = exact_walk_elbo(MU, LOG_SIG), jax.grad(exact_walk_elbo, argnums=(0, 1))(MU, LOG_SIG)

    def one(k):
        v, (_, g) = obj.value_and_grad_estimate(k, (), (MU, LOG_SIG))
        return v, jnp.concatenate(g)

    n = 20000 if strategy is None else 100000
    v, g = jax.jit(jax.vmap(one))(keys(n, 1))
    assert_unbiased(v, exact_v, max_stderr=0.03)
    assert_unbiased(g, jnp.concatenate(exact_g), max_stderr=0.05 if strategy is None else 0.08)
    if strategy is None:  # inside a lax.scan over keys: the same estimates as the vmap
        _, (v2, g2) = jax.jit(lambda ks: lax.scan(lambda c, k: (c, one(k)), 0.0, ks))(keys(n, 1)[:64])
        np.testing.assert_allclose(v2, v[:64], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(g2, g[:64], rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------- a discrete chain: enumerated ELBO

YD = jnp.array([1.7, -0.2, 2.4])


@ppl.gen
def chain():
    def step(_, y):
        z = ppl.sample("z", dist.Bernoulli(0.3))
        ppl.sample("y", dist.Normal(2.0 * z, 1.0))
        return None, None

    lax.scan(step, None, YD)


def chain_guide(strategy):
    @ppl.gen
    def guide(phi):
        def step(_, p):
            ppl.sample("z", dist.Bernoulli(logits=p), strategy=strategy)
            return None, None

        lax.scan(step, None, phi)

    return guide


def exact_chain_elbo(phi):
    q1 = jax.nn.sigmoid(phi)
    tot = 0.0
    for zs in itertools.product([0.0, 1.0], repeat=3):
        z = jnp.array(zs)
        lq = jnp.sum(z * jnp.log(q1) + (1 - z) * jnp.log1p(-q1))
        lp = jnp.sum(z * np.log(0.3) + (1 - z) * np.log(0.7) - 0.5 * (YD - 2 * z) ** 2 - 0.5 * np.log(2 * np.pi))
        tot += jnp.exp(lq) * (lp - lq)
    return tot


@pytest.mark.parametrize("name", ["enum", "mvd", "reinforce"])
def test_discrete_chain_in_one_loop_is_unbiased(name):
    strategy = getattr(ppl, name)
    phi = jnp.array([0.4, -0.7, 1.2])
    obj = ppl.elbo(chain, chain_guide(strategy), {"y": YD})
    assert _scans(obj.staged.stage(((), (phi,), {"y": YD}))[0]) == 1
    v, (_, (g,)) = jax.jit(jax.vmap(lambda k: obj.value_and_grad_estimate(k, (), (phi,))))(keys(20000, 2))
    assert_unbiased(v, exact_chain_elbo(phi), max_stderr=0.02)
    assert_unbiased(g, jax.grad(exact_chain_elbo)(phi), max_stderr=0.05 if name == "reinforce" else 0.01)
