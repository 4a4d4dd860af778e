"""ADEV through control flow: scans, conds on random flips, costs inside loops, causal Rao-Blackwellization, and
the size of the compiled program.

Exact gradients are closed forms; unbiasedness is tested with :func:`stats.assert_unbiased` over ``N`` estimates
drawn with ``jax.vmap`` over keys. Strategies compiled together share one ``jax.jit`` (compile time dominates).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
from ppl._jax_internals import ClosedJaxpr, Jaxpr
from tests.stats import assert_unbiased, keys

N = 10_000


def _dsigmoid(th):
    s = jax.nn.sigmoid(th)
    return s * (1 - s)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------- random walk in lax.scan
#
# x_0 = 0, x_t = x_{t−1} + ε_t, ε_t ~ Normal(θ, 1); value x_T²; E = T²θ² + T, d/dθ E = 2T²θ.
#
# Choices (sd per estimate, N = 10⁴):
#   T = 3,   θ = 0.5: exact 9.   reparam (2T·x_T) sd ≈ 10 → se ≈ 0.10; reinforce (x_T²·Σ(ε_t − θ)) sd ≈ 27 → se ≈ 0.27.
#   T = 100, θ = 0.1: exact 2000. reparam sd ≈ 2000 → se ≈ 20. reinforce: x_T ~ N(10, 100), var = b²σ² + 4bσ⁴ +
#     8μ²σ⁴ + 10σ⁶ ≈ 3.0e7 (b = E[x_T²] = 200) → se ≈ 55; with baseline(200) the first two terms vanish: var ≈ 1.8e7,
#     se ≈ 42.
# Bias guards: losing the score terms gives 0 (bias = all of it); counting only the last iteration's score gives
# 2·E[x_T] = 2Tθ (bias 6 at T = 3, 1980 at T = 100). The bounds below keep 4·se well under both.

RW = {
    3: dict(theta=0.5, bound={"reparam": 0.15, "reinforce": 0.35, "baseline": 0.35}),
    100: dict(theta=0.1, bound={"reparam": 25.0, "reinforce": 80.0, "baseline": 60.0}),
}
RW_STRATS = {"reparam": ppl.reparam, "reinforce": ppl.reinforce}


def _rw_strategy(name, T):
    if name == "baseline":
        return ppl.baseline(T + (T * RW[T]["theta"]) ** 2)
    return RW_STRATS[name]


def random_walk(T, strategy, ctx):
    def walk(theta):
        def eps(addr="eps"):
            return ppl.sample(addr, dist.Normal(theta, 1.0), strategy=strategy)

        if ctx == "unrolled":
            x = 0.0
            for t in range(T):
                x = x + eps(f"eps{t}")
        elif ctx == "fori":  # static bounds: JAX lowers it to a scan
            x = lax.fori_loop(0, T, lambda i, x: x + eps(), 0.0)
        else:
            x, _ = lax.scan(lambda x, _: (x + eps(), None), 0.0, None, length=T)
        return x**2

    if ctx == "cond":  # the scan inside the taken branch of a cond
        return ppl.expectation(lambda th: lax.cond(th < 1e6, walk, lambda t: 100.0 * t, th))
    return ppl.expectation(walk)


RW_GRID = [
    (T, ctx, s)
    for T in (3, 100)
    for ctx in ("scan", "fori", "cond", "unrolled")
    if not (ctx == "unrolled" and T == 100)
    for s in ("reparam", "reinforce", "baseline")
    if not (s == "baseline" and T == 3)
]


@functools.cache
def _rw_samples(T, ctx):
    strats = [s for (t, c, s) in RW_GRID if (t, c) == (T, ctx)]
    objs = {s: random_walk(T, _rw_strategy(s, T), ctx) for s in strats}

    def all_grads(ks, theta):
        return {s: jax.vmap(o.grad_estimate, (0, None))(ks, theta) for s, o in objs.items()}

    return objs, jax.jit(all_grads)(keys(N, seed=11), RW[T]["theta"])


@pytest.mark.parametrize("T, ctx, strat", RW_GRID)
def test_random_walk(T, ctx, strat):
    theta = RW[T]["theta"]
    objs, samples = _rw_samples(T, ctx)
    assert_unbiased(samples[strat], 2 * T**2 * theta, RW[T]["bound"][strat])
    if T == 3:  # jit and eager on single keys reproduce the vmapped lanes
        ks = keys(N, seed=11)
        _close(jax.jit(objs[strat].grad_estimate)(ks[0], theta), samples[strat][0])
        if ctx == "scan":
            _close(objs[strat].grad_estimate(ks[1], theta), samples[strat][1])


# ------------------------------------------------------------------------- cond on a flip, a normal in each branch
#
# z ~ Bernoulli(logits θ); x ~ Normal(θ, 1) if z else Normal(−θ, 1); value x² + x.
# E = σ(θ)(θ² + θ + 1) + (1 − σ(θ))(θ² − θ + 1) = θ² + 1 + θ(2σ(θ) − 1).

THETA_FLIP, N_FLIP = 0.7, 40_000


def _flip_exact(th):
    return jax.grad(lambda t: t**2 + 1 + t * (2 * jax.nn.sigmoid(t) - 1))(th)


def flip_program(flip_strategy, inner_strategy, in_scan):
    def once(theta):
        z = ppl.sample("z", dist.Bernoulli(logits=theta), strategy=flip_strategy)
        x = lax.cond(
            z > 0,
            lambda t: ppl.sample("a", dist.Normal(t, 1.0), strategy=inner_strategy),
            lambda t: ppl.sample("b", dist.Normal(-t, 1.0), strategy=inner_strategy),
            theta,
        )
        return x**2 + x

    if not in_scan:
        return ppl.expectation(once)

    def scanned(theta):  # two iterations, mean value: the same expectation, the cond inside the scan body
        total, _ = lax.scan(lambda acc, _: (acc + once(theta), None), 0.0, None, length=2)
        return total / 2

    return ppl.expectation(scanned)


FLIP_GRID = [
    (flip, inner, in_scan)
    for flip in ("enum", "reinforce", "mvd")
    for inner in ("reparam", "reinforce")
    for in_scan in (False, True)
    if not (in_scan and flip != "reinforce")  # enum/mvd inside scan: an error (test_strategies_errors.py)
]
_S = {"enum": ppl.enum, "reinforce": ppl.reinforce, "mvd": ppl.mvd, "reparam": ppl.reparam}


@functools.cache
def _flip_samples():
    objs = {c: flip_program(_S[c[0]], _S[c[1]], c[2]) for c in FLIP_GRID}

    def all_grads(ks, theta):
        return {c: jax.vmap(o.grad_estimate, (0, None))(ks, theta) for c, o in objs.items()}

    return objs, jax.jit(all_grads)(keys(N_FLIP, seed=12), THETA_FLIP)


@pytest.mark.parametrize("flip, inner, in_scan", FLIP_GRID)
def test_cond_on_flip(flip, inner, in_scan):
    objs, samples = _flip_samples()
    # exact ≈ 2.05; losing the flip's derivative loses σ'(θ)·(E[x² + x | a] − E[x² + x | b]) = σ'(θ)·2θ ≈ 0.31.
    # Largest sd (reinforce flip, reinforce inside) ≈ 6.1 → se ≈ 0.03 with N_FLIP = 4·10⁴; 4·0.045 = 0.18 < 0.31.
    assert_unbiased(samples[(flip, inner, in_scan)], _flip_exact(THETA_FLIP), 0.045)


@pytest.mark.parametrize("inner", ["reparam", "reinforce"])
def test_cond_on_flip_unbatched_jit_and_eager(inner):
    """Under ``vmap`` over keys the flip's cond becomes a select; a single-key ``jit`` (and eager) run takes a real
    ``cond`` on the sampled flip, and must give the same estimate as the lane of the same key."""
    objs, samples = _flip_samples()
    ks = keys(N_FLIP, seed=12)
    obj = objs[("reinforce", inner, False)]
    f = jax.jit(obj.grad_estimate)
    for i in range(4):
        _close(f(ks[i], THETA_FLIP), samples[("reinforce", inner, False)][i])
    _close(obj.grad_estimate(ks[0], THETA_FLIP), samples[("reinforce", inner, False)][0])
    enum_obj = objs[("enum", inner, False)]
    _close(enum_obj.grad_estimate(ks[0], THETA_FLIP), samples[("enum", inner, False)][0])


# ------------------------------------------------------------------------- flips in a scan, costs in the body
#
# T = 5 flips z_t ~ Bernoulli(logits θ) (reinforce, one call per iteration); each iteration adds the cost w_t·z_t
# (w = 1..5) and counts; value count². E = Σw·p + T p(1 − p) + T² p², d/dθ E = σ'(θ)(Σw + T(1 − 2p) + 2T²p).

T_FLIPS, THETA_FLIPS = 5, 0.3


def flips_with_costs(strategy):
    @ppl.expectation
    def f(theta):
        def step(count, w):
            z = ppl.sample("z", dist.Bernoulli(logits=theta), strategy=strategy)
            ppl.add_cost(w * z)
            return count + z, None

        count, _ = lax.scan(step, 0.0, jnp.arange(1.0, T_FLIPS + 1))
        return count**2

    return f


def test_flips_in_scan_with_costs():
    p, T, sw = jax.nn.sigmoid(THETA_FLIPS), T_FLIPS, T_FLIPS * (T_FLIPS + 1) / 2
    exact = _dsigmoid(THETA_FLIPS) * (sw + T * (1 - 2 * p) + 2 * T**2 * p)  # ≈ 10.5
    value = sw * p + T * p * (1 - p) + T**2 * p**2
    objs = [flips_with_costs(ppl.reinforce), flips_with_costs(ppl.baseline(value))]

    def all_(ks):
        return [jax.vmap(o.value_and_grad_estimate, (0, None))(ks, THETA_FLIPS) for o in objs]

    (v0, g0), (v1, g1) = jax.jit(all_)(keys(N, seed=13))
    # sd ≈ 21 (reinforce) / 12 (baseline) → se ≈ 0.21 / 0.12; dropping the costs' scores would give bias
    # σ'·Σw ≈ 3.7, dropping all scores the whole 10.5
    assert_unbiased(g0, exact, 0.3)
    assert_unbiased(g1, exact, 0.2)
    assert_unbiased(v0, value, 0.15)  # E ≈ 18.1, se ≈ 0.1
    _close(v0, v1)  # the baseline changes the gradient, not the value


# ------------------------------------------------------------------------- causal Rao-Blackwellization
#
# A cost met *before* a reinforce site is not multiplied by that site's score; one met after it is.
# With f(z) = 3z + 1 the value estimate identifies z (value = c + 3z + 1), so each gradient estimate can be checked
# against the causal formula exactly, sample by sample, and the non-causal estimator can be computed by hand.

THETA_RB, C0 = 0.4, 5.0


def _cost(th):
    return C0 + th**2  # c'(θ) = 2θ


def rb_program(where):
    @ppl.expectation
    def f(theta):
        if where == "before":
            ppl.add_cost(_cost(theta))
        z = ppl.sample("z", dist.Bernoulli(logits=theta), strategy=ppl.reinforce)
        if where == "after":
            ppl.add_cost(_cost(theta))
        return 3.0 * z + 1.0

    return f


def test_causal_rao_blackwellization_straight_line():
    objs = {w: rb_program(w) for w in ("none", "before", "after")}

    def all_(ks):
        return {w: jax.vmap(o.value_and_grad_estimate, (0, None))(ks, THETA_RB) for w, o in objs.items()}

    out = {
        w: (np.asarray(v, np.float64), np.asarray(g, np.float64)) for w, (v, g) in jax.jit(all_)(keys(N, 14)).items()
    }
    s, c, dc = float(jax.nn.sigmoid(THETA_RB)), float(_cost(THETA_RB)), 2 * THETA_RB
    z = (out["none"][0] - 1.0) / 3.0
    assert set(np.unique(z)) == {0.0, 1.0}
    score = z - s
    f = 3 * z + 1
    # same key, same flip: the cost shifts the value by c in both orders
    np.testing.assert_allclose(out["before"][0], out["none"][0] + c, rtol=1e-6)
    np.testing.assert_allclose(out["after"][0], out["none"][0] + c, rtol=1e-6)
    # sample by sample: causal estimator
    np.testing.assert_allclose(out["none"][1], f * score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["before"][1], dc + f * score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["after"][1], dc + (c + f) * score, rtol=1e-5, atol=1e-5)
    # hence a cost before the site leaves the variance unchanged, while the non-causal estimator is much noisier
    non_causal = dc + (c + f) * score
    assert np.var(out["before"][1]) == pytest.approx(np.var(out["none"][1]), rel=1e-4)
    assert np.var(out["before"][1]) < 0.25 * np.var(non_causal)
    exact = dc + 3 * _dsigmoid(THETA_RB)
    for w in ("before", "after"):  # both are unbiased (the non-causal form is unbiased too, only noisier)
        assert_unbiased(out[w][1], exact, 0.05 if w == "before" else 0.1)


def test_causal_rao_blackwellization_in_scan():
    """Costs z_t·2^t in a scan of reinforce flips: cost t is multiplied by the scores of sites 0..t only. The value
    (Σ z_t 2^t) encodes every flip, so the estimator is checked against the causal formula sample by sample."""
    T, theta = 4, 0.2

    @ppl.expectation
    def f(theta):
        def step(_, w):
            z = ppl.sample("z", dist.Bernoulli(logits=theta), strategy=ppl.reinforce)
            ppl.add_cost(w * z)
            return None, None

        lax.scan(step, None, 2.0 ** jnp.arange(T))
        return 0.0

    v, g = jax.jit(jax.vmap(f.value_and_grad_estimate, (0, None)))(keys(N, 15), theta)
    v = np.asarray(v).astype(np.int64)
    z = np.stack([(v >> t) & 1 for t in range(T)], 1).astype(np.float64)  # (N, T)
    s = float(jax.nn.sigmoid(theta))
    costs, cum_scores = z * 2.0 ** np.arange(T), np.cumsum(z - s, axis=1)
    causal = np.sum(costs * cum_scores, axis=1)
    non_causal = np.sum(costs, axis=1) * cum_scores[:, -1]
    np.testing.assert_allclose(np.asarray(g), causal, rtol=1e-5, atol=1e-4)
    assert np.var(causal) < 0.7 * np.var(non_causal)
    assert_unbiased(g, (2.0**T - 1) * _dsigmoid(theta), 0.12)  # exact ≈ 3.7, sd ≈ 7.6


# ------------------------------------------------------------------------- program size


def count_eqns(j) -> int:
    """Equations of a jaxpr, counted recursively into every sub-jaxpr (scan/cond/pjit/custom_jvp bodies)."""
    j = j.jaxpr if isinstance(j, ClosedJaxpr) else j
    n = 0
    for e in j.eqns:
        n += 1
        for v in e.params.values():
            for item in v if isinstance(v, tuple | list) else (v,):
                if isinstance(item, ClosedJaxpr | Jaxpr):
                    n += count_eqns(item)
    return n


def scan_model(T):
    @ppl.expectation
    def f(theta):
        def step(x, w):
            e = ppl.sample("e", dist.Normal(theta[0], 1.0))  # reparam
            z = ppl.sample("z", dist.Bernoulli(logits=theta[1] + 0.1 * x), strategy=ppl.reinforce)
            y = lax.cond(z > 0, lambda: ppl.sample("y", dist.Normal(x, 1.0), strategy=ppl.reinforce), lambda: x)
            ppl.add_cost(w * y)
            return 0.9 * y + e, None

        x, _ = lax.scan(step, 0.0, jnp.linspace(0.0, 1.0, T))
        return x**2

    return f


def test_program_size_independent_of_scan_length():
    theta, key = jnp.array([0.1, -0.2]), jax.random.key(0)
    sizes = {}
    for T in (10, 1000):
        f = scan_model(T)
        sizes[T] = count_eqns(jax.make_jaxpr(lambda k, th, f=f: f.grad_estimate(k, th))(key, theta))
    assert sizes[10] == sizes[1000], sizes


def test_enum_program_size_linear_in_sequential_sites():
    """``k`` sequential enum sites run the continuation 2^k times, but each level is one ``vmap``: the program
    grows linearly in ``k``."""

    def chain(k):
        @ppl.expectation
        def f(theta):
            s = 0.0
            for i in range(k):
                s = s + ppl.sample(f"z{i}", dist.Bernoulli(logits=theta + 0.1 * s), strategy=ppl.enum)
            return s**2

        return f

    sizes = [count_eqns(jax.make_jaxpr(chain(k).grad_estimate)(jax.random.key(0), 0.3)) for k in (1, 2, 3, 4, 5)]
    steps = np.diff(sizes)
    assert steps.max() <= 2 * steps.min(), sizes
    # and it is exact: with 3 sites E[s²] and its gradient come out with zero variance, equal for every key
    f = chain(3)
    g = jax.jit(jax.vmap(f.grad_estimate, (0, None)))(keys(8, 16), 0.3)
    assert np.ptp(np.asarray(g)) < 1e-5


# ------------------------------------------------------------------------- more nesting: jit, nested cond, switch,
# sequential multi-call sites, a cost before an enum, custom_jvp around a site

TH = 0.4


def _s(t):
    return jax.nn.sigmoid(t)


@jax.custom_jvp
def _custom(u):
    return ppl.sample("c", dist.Normal(u, 1.0))


_custom.defjvp(lambda p, t: (_custom(*p), t[0]))


def _pjit_enum(t):
    z = jax.jit(lambda u: ppl.sample("z", dist.Bernoulli(logits=u), strategy=ppl.enum))(t)
    return 3.0 * z + t


def _nested_cond_enum(t):
    def inner(u):
        return lax.cond(
            u > -5, lambda v: 3.0 * ppl.sample("z", dist.Bernoulli(logits=v), strategy=ppl.enum), lambda v: v, u
        )

    return lax.cond(t < 5, inner, lambda v: 2 * v, t) ** 2


def _enum_then_mvd_in_branch(t):
    a = ppl.sample("a", dist.Bernoulli(logits=t), strategy=ppl.enum)
    b = lax.cond(a > 0, lambda: ppl.sample("b", dist.Bernoulli(logits=2 * t), strategy=ppl.mvd), lambda: jnp.int32(0))
    return (a + 2.0 * b) ** 2


def _reinforce_cost_then_enum(t):
    x = ppl.sample("x", dist.Normal(t, 1.0), strategy=ppl.reinforce)
    ppl.add_cost(x)
    z = ppl.sample("z", dist.Bernoulli(logits=t), strategy=ppl.enum)
    return x * z


def _switch_on_enum(t):
    k = ppl.sample("k", dist.Categorical(logits=jnp.array([t, 0.0, -t])), strategy=ppl.enum)
    return lax.switch(k, [lambda: 1.0, lambda: ppl.sample("n", dist.Normal(t, 1.0)) ** 2, lambda: 5.0 * t])


NESTED = {  # name: (program, E as a function of θ, max_stderr)
    "pjit_enum": (_pjit_enum, lambda t: 3 * _s(t) + t, 1e-3),
    "nested_cond_enum": (_nested_cond_enum, lambda t: 9 * _s(t), 1e-3),
    "enum_then_mvd_in_branch": (_enum_then_mvd_in_branch, lambda t: _s(t) * (8 * _s(2 * t) + 1), 0.04),
    "reinforce_cost_then_enum": (_reinforce_cost_then_enum, lambda t: t + t * _s(t), 0.04),
    "switch_on_enum": (
        _switch_on_enum,
        lambda t: jax.nn.softmax(jnp.array([t, 0.0, -t])) @ jnp.array([1, t * t + 1, 5 * t]),
        0.02,
    ),
    "custom_jvp_site": (lambda t: _custom(t) ** 2, lambda t: t**2 + 1, 0.03),
}


@functools.cache
def _nested_samples():
    objs = {k: ppl.expectation(p) for k, (p, _, _) in NESTED.items()}

    def all_grads(ks):
        return {k: jax.vmap(o.grad_estimate, (0, None))(ks, TH) for k, o in objs.items()}

    return objs, jax.jit(all_grads)(keys(N, seed=17))


@pytest.mark.parametrize("name", list(NESTED))
def test_nested_control_flow(name):
    _, exact_value, bound = NESTED[name]
    objs, samples = _nested_samples()
    assert_unbiased(samples[name], jax.grad(exact_value)(TH), bound)
    _close(objs[name].grad_estimate(keys(N, seed=17)[0], TH), samples[name][0])  # eager, same key
