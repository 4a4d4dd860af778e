"""``ppl.with_strategies``: strategies chosen by address glob, as a program transformation.

Checked two ways: structurally (the ``strategy`` parameter of every ``sample`` equation of the rewritten program,
recursively into scan bodies and cond branches) and behaviourally (the gradient estimator changes as the new
strategy says: enum gives the exact gradient with zero variance; reinforce instead of reparam is unbiased but
noisier; enum in a scan body becomes the multi-call-in-scan error).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
from ppl import PPLError, StrategyError
from ppl._jax_internals import ClosedJaxpr, Jaxpr
from tests.stats import assert_unbiased, keys

KEY = jax.random.key(0)
N = 10_000


def site_strategies(fn, *args) -> dict[str, str]:
    """Address -> repr of the strategy of every ``sample`` equation (recursively into sub-jaxprs)."""
    out: dict[str, str] = {}

    def walk(j):
        j = j.jaxpr if isinstance(j, ClosedJaxpr) else j
        for e in j.eqns:
            if e.primitive.name == "sample":
                out[e.params["addr"]] = repr(e.params["strategy"])
            for v in e.params.values():
                for item in v if isinstance(v, tuple | list) else (v,):
                    if isinstance(item, ClosedJaxpr | Jaxpr):
                        walk(item)

    walk(jax.make_jaxpr(fn)(*args))
    return out


def _dsigmoid(th):
    s = jax.nn.sigmoid(th)
    return s * (1 - s)


def program(theta):
    """Sites: top-level "mu" (reparam written at the site), "loop/z" and "loop/x" in a scan body, "br/a" and
    "br/b" in the two branches of a cond, "flag" (no strategy)."""
    mu = ppl.sample("mu", dist.Normal(theta, 1.0), strategy=ppl.reparam)

    def step(c, _):
        with ppl.scope("loop"):
            z = ppl.sample("z", dist.Bernoulli(logits=theta))
            x = ppl.sample("x", dist.Normal(mu, 1.0))
        return c + z * x, None

    s, _ = lax.scan(step, 0.0, None, length=3)
    flag = ppl.sample("flag", dist.Bernoulli(logits=theta))
    with ppl.scope("br"):
        y = lax.cond(
            flag > 0,
            lambda: ppl.sample("a", dist.Normal(s, 1.0)),
            lambda: ppl.sample("b", dist.Normal(-s, 1.0), strategy=ppl.reinforce),
        )
    return y**2


def test_original_strategies():
    assert site_strategies(program, 0.3) == {
        "mu": "reparam",
        "loop/z": "default",
        "loop/x": "default",
        "flag": "default",
        "br/a": "default",
        "br/b": "reinforce",
    }


def test_globs_reach_scan_bodies_and_cond_branches():
    f = ppl.with_strategies(program, {"loop/*": ppl.reinforce, "br/?": ppl.baseline(1.0), "flag": ppl.enum})
    assert site_strategies(f, 0.3) == {
        "mu": "reparam",
        "loop/z": "reinforce",
        "loop/x": "reinforce",
        "flag": "enum",
        "br/a": "reinforce(baseline=*)",
        "br/b": "reinforce(baseline=*)",  # a pattern overrides the strategy written at the site
    }


def test_first_matching_pattern_wins_and_default():
    f = ppl.with_strategies(
        program, {"loop/z": ppl.mvd, "loop/*": ppl.reinforce, "mu": ppl.reinforce}, default=ppl.enum
    )
    got = site_strategies(f, 0.3)
    assert got["loop/z"] == "mvd" and got["loop/x"] == "reinforce"
    assert got["mu"] == "reinforce"  # a pattern overrides the site's own reparam
    assert got["flag"] == "enum" and got["br/a"] == "enum"  # default: the sites with no strategy of their own
    assert got["br/b"] == "reinforce"  # default does not override a strategy written at the site


def test_default_alone_and_character_classes():
    f = ppl.with_strategies(program, {"br/[ab]": ppl.reinforce}, default=ppl.reinforce)
    assert set(site_strategies(f, 0.3).values()) == {"reparam", "reinforce"}


@pytest.mark.parametrize("kind", ["function", "genfn", "expectation"])
def test_unmatched_pattern_is_an_error_naming_it(kind):
    wrap = {"function": lambda f: f, "genfn": ppl.gen, "expectation": ppl.expectation}[kind]
    f = ppl.with_strategies(wrap(program), {"loop/*": ppl.reinforce, "enc/*": ppl.enum, "zz": ppl.mvd})
    with pytest.raises(PPLError, match=r"pattern\(s\) \['enc/\*', 'zz'\] match no address.*loop/z"):
        if kind == "expectation":
            f.grad_estimate(KEY, 0.3)
        elif kind == "genfn":
            f.simulate(KEY, 0.3)
        else:
            jax.make_jaxpr(f)(0.3)


def test_not_a_strategy_is_an_error_naming_the_pattern():
    with pytest.raises(TypeError, match=r"pattern 'z\*' is 'enum', not a gradient strategy"):
        ppl.with_strategies(program, {"z*": "enum"})
    with pytest.raises(TypeError, match=r"default=.*not a gradient strategy"):
        ppl.with_strategies(program, {}, default=dist.Normal(0.0, 1.0))


def test_returns_the_same_kind():
    assert isinstance(ppl.with_strategies(ppl.gen(program), {"mu": ppl.reinforce}), ppl.GenFn)
    assert isinstance(ppl.with_strategies(ppl.expectation(program), {"mu": ppl.reinforce}), ppl.Expectation)
    f = ppl.with_strategies(program, {"mu": ppl.reinforce})
    assert callable(f) and not isinstance(f, ppl.GenFn | ppl.Expectation)


# ------------------------------------------------------------------------- behaviour of the rewritten estimators


@ppl.expectation
def two_flips(theta):
    """E = 3σ(θ) + 2σ(2θ) (both sites default to reinforce)."""
    a = ppl.sample("flip/a", dist.Bernoulli(logits=theta))
    b = ppl.sample("flip/b", dist.Bernoulli(logits=2 * theta))
    return 3.0 * a + 2.0 * b


def test_enum_by_glob_is_exact_and_reinforce_is_not():
    theta = 0.4
    exact = 3 * _dsigmoid(theta) + 4 * _dsigmoid(2 * theta)
    enumd = ppl.with_strategies(two_flips, {"flip/*": ppl.enum})
    mixed = ppl.with_strategies(two_flips, {"flip/a": ppl.enum, "flip/b": ppl.mvd})

    def all_(ks):
        return [jax.vmap(f.grad_estimate, (0, None))(ks, theta) for f in (two_flips, enumd, mixed)]

    g_rf, g_enum, g_mixed = (np.asarray(g) for g in jax.jit(all_)(keys(N, seed=21)))
    assert np.ptp(g_enum) < 1e-5 and g_enum[0] == pytest.approx(float(exact), rel=1e-5)
    assert np.std(g_rf) > 0.5  # the original estimator is the noisy reinforce one
    assert_unbiased(g_rf, exact, 0.04)  # sd ≈ 3.1 → se ≈ 0.031; exact ≈ 1.58
    assert_unbiased(g_mixed, exact, 0.02)


@ppl.expectation
def scan_normals(theta):
    def step(c, _):
        with ppl.scope("step"):
            x = ppl.sample("x", dist.Normal(theta, 1.0))
        return c + x, None

    s, _ = lax.scan(step, 0.0, None, length=4)
    return s**2  # E = 16θ² + 4, d/dθ = 32θ


def test_rewrite_in_scan_body_changes_the_estimator():
    theta = 0.5
    rf = ppl.with_strategies(scan_normals, {"step/*": ppl.reinforce})
    bl = ppl.with_strategies(scan_normals, {"step/x": ppl.baseline(8.0)})  # b = E[s²] = 8

    def all_(ks):
        return [jax.vmap(f.grad_estimate, (0, None))(ks, theta) for f in (scan_normals, rf, bl)]

    g_rp, g_rf, g_bl = (np.asarray(g) for g in jax.jit(all_)(keys(N, seed=22)))
    # sd: reparam ≈ 16, reinforce ≈ 44, baseline ≈ 34; exact 16; losing the score terms would give 0
    assert_unbiased(g_rp, 32 * theta, 0.3)
    assert_unbiased(g_rf, 32 * theta, 0.8)
    assert_unbiased(g_bl, 32 * theta, 0.8)
    assert np.std(g_rf) > 1.5 * np.std(g_rp)
    assert np.std(g_bl) < np.std(g_rf)
    # a multi-call strategy in the body: the rewrite reached it, and ADEV checks it against the site
    with pytest.raises(StrategyError, match=r"(?s)enum at 'step/x'.*finite support"):
        ppl.with_strategies(scan_normals, {"step/x": ppl.enum}).grad_estimate(KEY, theta)


@ppl.expectation
def flip_branches(theta):
    z = ppl.sample("z", dist.Bernoulli(logits=theta))
    x = lax.cond(
        z > 0,
        lambda: ppl.sample("arm/a", dist.Normal(theta, 1.0)),
        lambda: ppl.sample("arm/b", dist.Normal(-theta, 1.0)),
    )
    return x**2 + x  # E = θ² + 1 + θ(2σ(θ) − 1)


def test_rewrite_in_cond_branches():
    theta = 0.7
    exact = jax.grad(lambda t: t**2 + 1 + t * (2 * jax.nn.sigmoid(t) - 1))(theta)
    variants = [
        ppl.with_strategies(flip_branches, {"z": ppl.enum}),
        ppl.with_strategies(flip_branches, {"z": ppl.enum, "arm/*": ppl.reinforce}),
        ppl.with_strategies(flip_branches, {"arm/*": ppl.reinforce}, default=ppl.mvd),
    ]
    assert site_strategies(variants[2].fn, theta) == {"z": "mvd", "arm/a": "reinforce", "arm/b": "reinforce"}

    def all_(ks):
        return [jax.vmap(f.grad_estimate, (0, None))(ks, theta) for f in variants]

    for g in jax.jit(all_)(keys(N, seed=23)):
        assert_unbiased(g, exact, 0.08)  # exact ≈ 2.05; largest sd (reinforce arms, mvd flip) ≈ 5.6


def test_with_strategies_on_a_family_used_through_sim():
    @ppl.gen
    def guide(theta):
        return ppl.sample("k", dist.Categorical(logits=theta))

    v = jnp.array([1.0, -2.0, 3.0])

    def objective(q):
        @ppl.expectation
        def f(theta):
            choices, _ = ppl.sim(q, theta)
            return v[choices["k"]]

        return f

    theta = jnp.array([0.2, -0.3, 0.5])
    p = jax.nn.softmax(theta)
    exact = p * (v - p @ v)
    g = objective(ppl.with_strategies(guide, {"k": ppl.enum})).grad_estimate(KEY, theta)
    np.testing.assert_allclose(np.asarray(g), np.asarray(exact), rtol=1e-5, atol=1e-6)
