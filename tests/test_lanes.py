"""Per-lane semantics under maps (``jax.vmap``, ``ppl.vmap``, library particles) and multi-call strategies in lanes
and loops, against exact oracles written in plain JAX (enumeration, closed forms).

Each regression case of the vectorization issue is here with its figure from the old behaviour in a comment.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax
from jax.scipy.special import logsumexp

import ppl

from .stats import assert_unbiased, keys

KEY = jax.random.key(0)
MAPS = {"ppl.vmap": lambda f, n: ppl.vmap(lambda: f(), axis_size=n), "jax.vmap": lambda f, n: lambda: jax.vmap(
    lambda _: f()
)(jnp.arange(n))}


def _norm_lp(x, m):
    return -0.5 * (x - m) ** 2 - 0.5 * np.log(2 * np.pi)


def _bern_lp(z, p):
    return np.log(p) if z else np.log1p(-p)


# ------------------------------------------------------------------------- tracing under maps


def _component():
    c = ppl.sample("c", dist.Bernoulli(0.3))
    a, b = lambda: ppl.sample("a", dist.Normal(0.0, 1.0)), lambda: ppl.sample("b", dist.Normal(5.0, 1.0))
    return lax.cond(c > 0, a, b)


@pytest.mark.parametrize("via", list(MAPS))
def test_batched_cond_scores_only_the_taken_branch(via):
    # was: simulate().score -15.39 where the recorded choices give -10.56 (every branch drawn and scored)
    model = ppl.gen(MAPS[via](_component, 4))
    for seed in range(3):
        tr = model.simulate(jax.random.key(seed))
        ch = {a: np.asarray(v) for a, v in tr.choices.items()}
        exact = sum(
            _bern_lp(ch["c"][i], 0.3) + (_norm_lp(ch["a"][i], 0.0) if ch["c"][i] else _norm_lp(ch["b"][i], 5.0))
            for i in range(4)
        )
        np.testing.assert_allclose(tr.score, exact, rtol=1e-5)
        np.testing.assert_allclose(model.assess(tr.choices)[0], exact, rtol=1e-5)
        untaken = np.where(ch["c"] > 0, ch["b"], ch["a"])
        assert np.all(untaken == 0.0)  # the branch not taken records zeros


@pytest.mark.parametrize("via", list(MAPS))
def test_mixture_idiom_reuses_the_address_in_exclusive_branches(via):
    # was: "duplicate address 'y'"
    def point():
        c = ppl.sample("c", dist.Bernoulli(0.3))
        y0, y5 = lambda: ppl.sample("y", dist.Normal(0.0, 1.0)), lambda: ppl.sample("y", dist.Normal(5.0, 1.0))
        return lax.cond(c > 0, y0, y5)

    model = ppl.gen(MAPS[via](point, 3))
    ys = jnp.array([0.5, 4.0, 6.0])
    lp, _ = model.assess({"c": jnp.array([1, 0, 1]), "y": ys})
    exact = _bern_lp(1, 0.3) * 2 + _bern_lp(0, 0.3) + _norm_lp(0.5, 0.0) + _norm_lp(4.0, 5.0) + _norm_lp(6.0, 0.0)
    np.testing.assert_allclose(lp, exact, rtol=1e-5)
    tr, w = model.generate(KEY, {"y": ys})  # c drawn per lane, each y scored under its lane's branch
    c = np.asarray(tr.choices["c"])
    exact_w = sum(_norm_lp(float(y), 0.0 if ci else 5.0) for y, ci in zip(ys, c, strict=True))
    np.testing.assert_allclose(w, exact_w, rtol=1e-5)


@pytest.mark.parametrize("via", list(MAPS))
def test_factor_counts_once_per_lane(via):
    # was: assess of three lanes of factor(2.0) counted it once
    model = ppl.gen(MAPS[via](lambda: ppl.factor(2.0), 3))
    np.testing.assert_allclose(model.assess({})[0], 6.0)
    nested = ppl.gen(MAPS[via](MAPS[via](lambda: ppl.factor(2.0), 3), 2))
    np.testing.assert_allclose(nested.assess({})[0], 12.0)


@pytest.mark.parametrize("via", list(MAPS))
def test_add_cost_counts_once_per_lane(via):
    # was: ppl.vmap(lambda: add_cost(t**2), axis_size=4) gave t² and 2t (exact 4t², 8t)
    @ppl.expectation
    def f(t):
        MAPS[via](lambda: ppl.add_cost(t**2), 4)()
        return 0.0

    v, g = f.value_and_grad_estimate(KEY, 0.4)
    np.testing.assert_allclose([v, g], [0.64, 3.2], rtol=1e-5)


def test_plain_vmap_draws_independently_per_lane():
    # was: five identical values, and assess of a (5,) observation an error
    f = lambda _: ppl.sample("obs", dist.Exponential(2.0))  # noqa: E731
    draws = ppl.seed(lambda: jax.vmap(f)(jnp.arange(5)))(KEY)
    assert len(set(np.asarray(draws).tolist())) == 5
    model = ppl.gen(lambda: jax.vmap(f)(jnp.arange(5)))
    obs = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(model.assess({"obs": obs})[0], np.sum(np.log(2.0) - 2.0 * obs), rtol=1e-6)
    # inside scan and jit too
    in_scan = ppl.seed(lambda: lax.scan(lambda c, _: (c, jax.vmap(f)(jnp.arange(3))), 0.0, None, length=2)[1])(KEY)
    assert len(set(np.asarray(in_scan).ravel().tolist())) == 6
    in_jit = ppl.seed(lambda: jax.vmap(jax.jit(lambda _: f(0)))(jnp.arange(4)))(KEY)
    assert len(set(np.asarray(in_jit).tolist())) == 4


def test_handwritten_iwae_with_jax_vmap_is_the_iwae_bound():
    # was: -1.754 (the ELBO) vs the IWAE bound -1.725, z = 12
    model = ppl.gen(lambda: ppl.sample("x", dist.Normal(ppl.sample("z", dist.Normal(0.0, 1.0)), 1.0)))
    guide = ppl.gen(lambda: ppl.sample("z", dist.Normal(0.0, 1.0)))
    K, x = 5, 1.0

    @ppl.expectation
    def iwae():
        def particle(_):
            z, lq = ppl.sim(guide)
            return ppl.density(model, {**z, "x": x}) - lq

        return logsumexp(jax.vmap(particle)(jnp.arange(K))) - jnp.log(K)

    est = jax.jit(jax.vmap(iwae.estimate))(keys(40000, seed=3))
    zs = np.random.default_rng(0).standard_normal((400000, K))  # independent Monte Carlo of the same bound
    exact = np.mean(logsumexp(_norm_lp(x, zs), axis=1) - np.log(K))
    elbo = -0.5 * ((x) ** 2 + 1) - 0.5 * np.log(2 * np.pi)
    assert_unbiased(est, exact, max_stderr=0.005)
    assert abs(np.mean(est) - elbo) > 10 * np.std(est) / np.sqrt(len(est))


# ------------------------------------------------------------------------- multi-call strategies in lanes and loops


def _iwae_exact(phi, K):
    def f(phi):
        q1 = jax.nn.sigmoid(phi)
        tot = 0.0
        for zs in itertools.product([0, 1], repeat=K):
            zs = jnp.array(zs, jnp.float32)
            lq = zs * jnp.log(q1) + (1 - zs) * jnp.log1p(-q1)
            lw = dist.Bernoulli(0.3).log_prob(zs) + dist.Normal(3.0 * zs, 1.0).log_prob(2.0) - lq
            tot += jnp.exp(jnp.sum(lq)) * (logsumexp(lw) - jnp.log(K))
        return tot

    return f(phi), jax.grad(f)(phi)


@ppl.gen
def _bern_model():
    z = ppl.sample("z", dist.Bernoulli(0.3))
    ppl.sample("x", dist.Normal(3.0 * z, 1.0))


@ppl.gen
def _bern_guide(phi):
    ppl.sample("z", dist.Bernoulli(logits=phi))


def test_iwae_particles_with_every_strategy():
    # was: "enum at 'z' needs the rest of the program" (the README quick start crashed)
    K, phi = 3, 0.3
    exact_v, exact_g = _iwae_exact(phi, K)
    sds = {}
    for name, s in [("reinforce", ppl.reinforce), ("enum", ppl.enum), ("mvd", ppl.mvd), ("loo", ppl.leave_one_out(3))]:
        obj = ppl.iwae(_bern_model, _bern_guide, {"x": 2.0}, K=K, strategies={"z": s})
        v, (_, (g,)) = jax.jit(jax.vmap(lambda k, obj=obj: obj.value_and_grad_estimate(k, (), (phi,))))(keys(20000, 5))
        assert_unbiased(v, exact_v, max_stderr=0.01)
        assert_unbiased(g, exact_g, max_stderr=0.02 if name == "reinforce" else 0.004)
        sds[name] = float(np.std(g))
    assert sds["enum"] < 0.3 * sds["reinforce"] and sds["mvd"] < 0.3 * sds["reinforce"]


T = 4


def _chain_exact(theta):
    tot = 0.0
    for zs in itertools.product([0, 1], repeat=T):
        lp, prev = 0.0, 0.0
        for z in zs:
            p = jax.nn.sigmoid(theta + 0.8 * prev)
            lp += jnp.log(p) if z else jnp.log1p(-p)
            prev = z
        tot += jnp.exp(lp) * (sum(zs) - 1.2) ** 2
    return tot


def _chain(strategy, length=T):
    @ppl.expectation
    def f(theta):
        def step(prev, _):
            z = ppl.sample("z", dist.Bernoulli(logits=theta + 0.8 * prev), strategy=strategy)
            return z.astype(jnp.float32), z

        _, zs = lax.scan(step, 0.0, None, length=length)
        return (jnp.sum(zs) - 1.2) ** 2

    return f


@pytest.mark.parametrize("strategy", [ppl.enum, ppl.mvd, ppl.leave_one_out(2)], ids=["enum", "mvd", "loo"])
def test_dependent_bernoulli_chain_in_scan(strategy):
    # was: "enum at 'z' ... not available inside scan"
    th = 0.2
    v, g = jax.jit(jax.vmap(lambda k: _chain(strategy).value_and_grad_estimate(k, th)))(keys(20000, 7))
    assert_unbiased(v, _chain_exact(th), max_stderr=0.02)
    assert_unbiased(g, jax.grad(_chain_exact)(th), max_stderr=0.015)


def test_fori_loop_and_jvp():
    th = -0.3

    @ppl.expectation
    def f(theta):
        def body(i, c):
            prev, tot = c
            z = ppl.sample("z", dist.Bernoulli(logits=theta + 0.8 * prev), strategy=ppl.mvd)
            return z.astype(jnp.float32), tot + z

        return (lax.fori_loop(0, T, body, (0.0, 0.0))[1] - 1.2) ** 2

    _, t = jax.jit(jax.vmap(lambda k: f.jvp_estimate(k, (th,), (1.0,))))(keys(20000, 8))
    assert_unbiased(t, jax.grad(_chain_exact)(th), max_stderr=0.015)


@pytest.mark.parametrize("strategy", [ppl.enum, ppl.mvd, ppl.leave_one_out(3)], ids=["enum", "mvd", "loo"])
def test_program_size_is_flat_in_the_loop_length(strategy):
    f = lambda n: jax.make_jaxpr(lambda k: _chain(strategy, n).grad_estimate(k, 0.1))(KEY)  # noqa: E731
    sizes = [len(f(n).eqns) for n in (10, 1000)]
    assert sizes[0] == sizes[1]


def _lanes_exact(theta, n):
    """E[Σ_i (z_i + w_i − 0.7)² ] per lane: z ~ B(σ(θ)), w | z ~ B(σ(θ − z)), lanes i.i.d. (n lanes)."""
    tot = 0.0
    for z, w in itertools.product([0, 1], repeat=2):
        p = jax.nn.sigmoid(theta)
        q = jax.nn.sigmoid(theta - z)
        prob = (p if z else 1 - p) * (q if w else 1 - q)
        tot += prob * (z + w - 0.7) ** 2
    return n * tot


@pytest.mark.parametrize("via", list(MAPS))
@pytest.mark.parametrize("strategy", [ppl.enum, ppl.mvd], ids=["enum", "mvd"])
def test_multi_call_in_a_map_with_a_cond_in_the_lane(via, strategy):
    def lane(theta):
        z = ppl.sample("z", dist.Bernoulli(logits=theta), strategy=strategy)
        w = lax.cond(
            z > 0,
            lambda: ppl.sample("w", dist.Bernoulli(logits=theta - 1.0), strategy=strategy),
            lambda: ppl.sample("w", dist.Bernoulli(logits=theta), strategy=strategy),
        )
        return (z + w - 0.7) ** 2

    @ppl.expectation
    def f(theta):
        return jnp.sum(MAPS[via](lambda: lane(theta), 3)())

    th = 0.4
    v, g = jax.jit(jax.vmap(lambda k: f.value_and_grad_estimate(k, th)))(keys(20000, 9))
    assert_unbiased(v, _lanes_exact(th, 3), max_stderr=0.01)
    assert_unbiased(g, jax.grad(_lanes_exact)(th, 3), max_stderr=0.01)


def test_nested_maps_and_maps_in_scan_with_multi_call():
    th = 0.1

    def site(theta):
        return ppl.sample("z", dist.Bernoulli(logits=theta), strategy=ppl.mvd).astype(jnp.float32)

    @ppl.expectation
    def f(theta):  # 2 scan steps × 2 outer lanes × 3 inner lanes, cost (Σ z − 5)²
        def step(c, _):
            zs = jax.vmap(lambda _: ppl.vmap(lambda: site(theta), axis_size=3)())(jnp.arange(2))
            return c + jnp.sum(zs), None

        return (lax.scan(step, 0.0, None, length=2)[0] - 5.0) ** 2

    def exact(theta):  # Σ z ~ Binomial(12, σ(θ))
        p, n = jax.nn.sigmoid(theta), 12
        return n * p * (1 - p) + (n * p - 5.0) ** 2

    v, g = jax.jit(jax.vmap(lambda k: f.value_and_grad_estimate(k, th)))(keys(10000, 10))
    assert_unbiased(v, exact(th), max_stderr=0.1)
    assert_unbiased(g, jax.grad(exact)(th), max_stderr=0.1)


def test_scan_inside_a_map_with_enum():
    th = 0.2

    @ppl.expectation
    def f(theta):
        return jnp.sum(jax.vmap(lambda _: _chain(ppl.enum).fn(theta))(jnp.arange(2)))

    g = jax.jit(jax.vmap(lambda k: f.grad_estimate(k, th)))(keys(10000, 11))
    assert_unbiased(g, 2 * jax.grad(_chain_exact)(th), max_stderr=0.03)


def test_elbo_over_cond_components():
    # was: an elbo over three such components -21.60 vs -13.51 (z = 195)
    ys = jnp.array([0.3, 5.2, -0.4])

    @ppl.gen
    def model():
        def point(_):
            c = ppl.sample("c", dist.Bernoulli(0.3))
            return lax.cond(
                c > 0, lambda: ppl.sample("y", dist.Normal(0.0, 1.0)), lambda: ppl.sample("y", dist.Normal(5.0, 1.0))
            )

        return jax.vmap(point)(jnp.arange(3))

    @ppl.gen
    def guide(phi):
        jax.vmap(lambda p: ppl.sample("c", dist.Bernoulli(logits=p)))(phi)

    def exact(phi):
        q = jax.nn.sigmoid(phi)
        tot = 0.0
        for cs in itertools.product([0, 1], repeat=3):
            c = jnp.array(cs)
            lq = jnp.sum(jnp.where(c > 0, jnp.log(q), jnp.log1p(-q)))
            lp = jnp.sum(jnp.where(c > 0, np.log(0.3), np.log(0.7)) + _norm_lp(ys, jnp.where(c > 0, 0.0, 5.0)))
            tot += jnp.exp(lq) * (lp - lq)
        return tot

    phi = jnp.array([0.5, -0.2, 1.0])
    for s in (ppl.reinforce, ppl.enum, ppl.mvd):
        obj = ppl.elbo(model, guide, {"y": ys}, strategies={"c": s})
        v, (_, (g,)) = jax.jit(jax.vmap(lambda k, obj=obj: obj.value_and_grad_estimate(k, (), (phi,))))(keys(20000, 12))
        assert_unbiased(v, exact(phi), max_stderr=0.15)
        assert_unbiased(g, jax.grad(exact)(phi), max_stderr=0.15 if s is ppl.reinforce else 0.02)


def test_readme_quick_start_iwae_with_mvd_is_unbiased():
    """The README's quick start (K = 5, mvd at ``z``, φ = 0) against IWAE enumerated over the 2⁵ particle values."""
    exact_v, exact_g = _iwae_exact(0.0, 5)
    obj = ppl.iwae(_bern_model, _bern_guide, {"x": 2.0}, K=5, strategies={"z": ppl.mvd})
    v, (_, (g,)) = jax.jit(jax.vmap(lambda k: obj.value_and_grad_estimate(k, (), (0.0,))))(keys(20000, 21))
    assert_unbiased(v, exact_v, max_stderr=0.01)
    assert_unbiased(g, exact_g, max_stderr=0.004)


def test_straight_line_multi_call_site_before_a_map_of_multi_call_sites():
    th = 0.3

    @ppl.expectation
    def f(theta):
        z0 = ppl.sample("z0", dist.Bernoulli(logits=theta), strategy=ppl.enum).astype(jnp.float32)
        lanes = ppl.vmap(lambda: ppl.sample("z", dist.Bernoulli(logits=theta - z0), strategy=ppl.mvd), axis_size=2)
        return (z0 + jnp.sum(lanes()) - 1.3) ** 2

    def exact(theta):
        tot = 0.0
        for z0, a, b in itertools.product([0, 1], repeat=3):
            p0, p = jax.nn.sigmoid(theta), jax.nn.sigmoid(theta - z0)
            prob = (p0 if z0 else 1 - p0) * (p if a else 1 - p) * (p if b else 1 - p)
            tot += prob * (z0 + a + b - 1.3) ** 2
        return tot

    v, g = jax.jit(jax.vmap(lambda k: f.value_and_grad_estimate(k, th)))(keys(20000, 13))
    assert_unbiased(v, exact(th), max_stderr=0.01)
    assert_unbiased(g, jax.grad(exact)(th), max_stderr=0.01)


@pytest.mark.parametrize("via", list(MAPS))
def test_a_scan_inside_a_map_records_lane_major_choices(via):
    # was: under jax.vmap, JAX pushed the map inside the loop and the choices came out (length, lanes)
    def lane():
        step = lambda c, _: (ppl.sample("z", dist.Bernoulli(logits=c)).astype(jnp.float32), None)  # noqa: E731
        return lax.scan(step, 0.0, None, length=2)[0]

    model = ppl.gen(MAPS[via](lane, 3))
    assert model.simulate(KEY).choices["z"].shape == (3, 2)
    z = jnp.array([[1, 0], [0, 0], [1, 1]])
    exact = sum(_bern_lp(a, 0.5) + _bern_lp(b, float(jax.nn.sigmoid(float(a)))) for a, b in np.asarray(z))
    np.testing.assert_allclose(model.assess({"z": z})[0], exact, rtol=1e-5)
