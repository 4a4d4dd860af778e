"""Tracing and density transformations: ``simulate``, ``assess``, ``generate``, ``seed``.

Every model here has a hand-written log density, so ``assess == score`` is checked against an independent
computation too (two interpretations agreeing with each other could both be wrong).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax
from jax.scipy.stats import norm

import ppl
from ppl._jax_internals import is_scan, scan_parts, subjaxprs

KEY = jax.random.key(0)
RTOL = 1e-5


def N(x, loc, scale):
    """Summed Normal log density, written out by hand (not through NumPyro)."""
    return jnp.sum(norm.logpdf(x, loc, scale))


def shifted(x, first):
    """``[first, x[0], ..., x[-2]]`` along axis 0: the previous state of a random walk."""
    return jnp.concatenate([jnp.reshape(first, (1,) + jnp.shape(x)[1:]), x[:-1]], axis=0)


# ---------------------------------------------------------------------------------------------- models


@ppl.gen
def scan_model(T):
    mu = ppl.sample("mu", dist.Normal(0.0, 1.0))

    def step(c, scale):
        x = ppl.sample("x", dist.Normal(c + mu, scale))
        return x, x * 2.0

    last, doubled = lax.scan(step, 0.0, jnp.linspace(0.5, 1.5, T))
    ppl.factor(-0.5 * last**2)
    return last, doubled


def scan_lp(ch, T):
    x = ch["x"]
    return N(ch["mu"], 0.0, 1.0) + N(x, shifted(x, 0.0) + ch["mu"], jnp.linspace(0.5, 1.5, T)) - 0.5 * x[-1] ** 2


@ppl.gen
def nested_scan_model(T1, T2):
    def outer(c, _):
        def inner(c2, _):
            z = ppl.sample("z", dist.Normal(c2, 0.5))
            return z, None

        c2, _ = lax.scan(inner, c, None, length=T2)
        w = ppl.sample("w", dist.Normal(c2, 1.0))
        return w, None

    last, _ = lax.scan(outer, 0.0, None, length=T1)
    return last


def nested_scan_lp(ch, T1, T2):
    z, w = ch["z"], ch["w"]
    starts = shifted(w, 0.0)  # row i of z starts from w[i-1]
    z_prev = jnp.concatenate([starts[:, None], z[:, :-1]], axis=1)
    return N(z, z_prev, 0.5) + N(w, z[:, -1], 1.0)


@ppl.gen
def cond_model():
    b = ppl.sample("b", dist.Bernoulli(probs=0.3))
    y = lax.cond(
        b > 0,
        lambda: ppl.sample("a", dist.Normal(0.0, 1.0)),
        lambda: ppl.sample("c", dist.Normal(5.0, 2.0)) * 1.0,
    )
    return ppl.sample("o", dist.Normal(y, 1.0))


def cond_lp(ch):
    b = ch["b"]
    branch = jnp.where(b > 0, N(ch["a"], 0.0, 1.0), N(ch["c"], 5.0, 2.0))
    y = jnp.where(b > 0, ch["a"], ch["c"])
    return jnp.where(b > 0, jnp.log(0.3), jnp.log(0.7)) + branch + N(ch["o"], y, 1.0)


@ppl.gen
def switch_model():
    k = ppl.sample("k", dist.Categorical(logits=jnp.array([0.0, 0.5, 1.0])))
    y = lax.switch(
        k,
        [
            lambda: ppl.sample("s0", dist.Normal(-3.0, 1.0)),
            lambda: ppl.sample("s1", dist.Normal(0.0, 0.5)),
            lambda: ppl.sample("s2", dist.Normal(3.0, 2.0)),
        ],
    )
    return ppl.sample("o", dist.Normal(y, 1.0))


def switch_lp(ch):
    k = ch["k"]
    logp = jax.nn.log_softmax(jnp.array([0.0, 0.5, 1.0]))[k]
    branch = jnp.array([N(ch["s0"], -3.0, 1.0), N(ch["s1"], 0.0, 0.5), N(ch["s2"], 3.0, 2.0)])[k]
    y = jnp.array([ch["s0"], ch["s1"], ch["s2"]])[k]
    return logp + branch + N(ch["o"], y, 1.0)


@ppl.gen
def fori_model(n):
    return lax.fori_loop(0, n, lambda i, c: ppl.sample("f", dist.Normal(c + i, 1.0)), 0.0)


def fori_lp(ch, n):
    f = ch["f"]
    return N(f, shifted(f, 0.0) + jnp.arange(n), 1.0)


@ppl.gen
def vmap_model():
    sig = ppl.sample("sig", dist.Gamma(2.0, 2.0))
    locs = jnp.arange(4.0)
    v = jax.vmap(lambda m, s: ppl.sample("v", dist.Normal(m, s)), in_axes=(0, None))(locs, sig)
    return ppl.sample("s", dist.Normal(jnp.sum(v), 1.0))


def vmap_lp(ch):
    sig = ch["sig"]
    gamma = 2.0 * jnp.log(2.0) - jax.scipy.special.gammaln(2.0) + jnp.log(sig) - 2.0 * sig
    return gamma + N(ch["v"], jnp.arange(4.0), sig) + N(ch["s"], jnp.sum(ch["v"]), 1.0)


@ppl.gen
def inner_gen(loc):
    z = ppl.sample("z", dist.Normal(loc, 1.0))
    ppl.factor(-0.25 * z**2)
    return z


@ppl.gen
def nested_gen_model():
    with ppl.scope("first"):
        a = inner_gen(0.0)
    with ppl.scope("second"):
        b = inner_gen(a)
    return b


def nested_gen_lp(ch):
    a, b = ch["first/z"], ch["second/z"]
    return N(a, 0.0, 1.0) - 0.25 * a**2 + N(b, a, 1.0) - 0.25 * b**2


@ppl.gen
def scope_model(T):
    with ppl.scope("outer"):
        g = ppl.sample("g", dist.Normal(0.0, 1.0))
        with ppl.scope("inner"):
            h = ppl.sample("g", dist.Normal(g, 1.0))  # same name, different scope: distinct address

            def step(c, _):
                return c, ppl.sample("x", dist.Normal(c, 2.0))

            _, xs = lax.scan(step, h, None, length=T)
    return xs


def scope_lp(ch, T):
    g, h = ch["outer/g"], ch["outer/inner/g"]
    return N(g, 0.0, 1.0) + N(h, g, 1.0) + N(ch["outer/inner/x"], h, 2.0)


@ppl.gen
def factor_model(T):
    x = ppl.sample("x", dist.Normal(0.0, 1.0))
    ppl.factor(-(x**2))
    ppl.factor(jnp.array([0.5, 0.25]) * x)  # an array factor is summed

    def step(c, _):
        y = ppl.sample("y", dist.Normal(x, 1.0))
        ppl.factor(-0.1 * y)
        return c, None

    lax.scan(step, 0.0, None, length=T)
    return x


def factor_lp(ch, T):
    x, y = ch["x"], ch["y"]
    return N(x, 0.0, 1.0) - x**2 + 0.75 * x + N(y, x, 1.0) - 0.1 * jnp.sum(y)


@ppl.gen
def jit_model():
    mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
    j = jax.jit(lambda m: ppl.sample("j", dist.Normal(m, 0.5)) + 1.0)(mu)

    @jax.jit
    def block(m):
        def step(c, _):
            return c, ppl.sample("js", dist.Normal(m, 1.0))

        return lax.scan(step, 0.0, None, length=3)[1]

    return j, block(j)


def jit_lp(ch):
    j = ch["j"]
    return N(ch["mu"], 0.0, 1.0) + N(j, ch["mu"], 0.5) + N(ch["js"], j + 1.0, 1.0)


@ppl.gen
def checkpoint_model():
    mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
    c = jax.checkpoint(lambda m: ppl.sample("ck", dist.Normal(jnp.sin(m), 1.0)) * 2.0)(mu)
    return ppl.sample("o", dist.Normal(c, 1.0))


def checkpoint_lp(ch):
    return N(ch["mu"], 0.0, 1.0) + N(ch["ck"], jnp.sin(ch["mu"]), 1.0) + N(ch["o"], 2.0 * ch["ck"], 1.0)


# name: (model, args, hand-written log density, expected choice shapes)
CASES = {
    "scan": (scan_model, (5,), scan_lp, {"mu": (), "x": (5,)}),
    "nested_scan": (nested_scan_model, (3, 4), nested_scan_lp, {"z": (3, 4), "w": (3,)}),
    "cond": (cond_model, (), cond_lp, {"b": (), "a": (), "c": (), "o": ()}),
    "switch": (switch_model, (), switch_lp, {"k": (), "s0": (), "s1": (), "s2": (), "o": ()}),
    "fori_loop": (fori_model, (6,), fori_lp, {"f": (6,)}),
    "vmap": (vmap_model, (), vmap_lp, {"sig": (), "v": (4,), "s": ()}),
    "nested_gen": (nested_gen_model, (), nested_gen_lp, {"first/z": (), "second/z": ()}),
    "scope": (scope_model, (4,), scope_lp, {"outer/g": (), "outer/inner/g": (), "outer/inner/x": (4,)}),
    "factor": (factor_model, (3,), factor_lp, {"x": (), "y": (3,)}),
    "jit": (jit_model, (), jit_lp, {"mu": (), "j": (), "js": (3,)}),
    "checkpoint": (checkpoint_model, (), checkpoint_lp, {"mu": (), "ck": (), "o": ()}),
}


def _shapes(choices):
    return {a: tuple(jnp.shape(v)) for a, v in choices.items()}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_assess_reproduces_score(name, jit):
    model, args, lp, shapes = CASES[name]
    sim = lambda k: model.simulate(k, *args)
    ass = lambda ch: model.assess(ch, *args)
    if jit:
        sim, ass = jax.jit(sim), jax.jit(ass)
    tr = sim(KEY)
    assert _shapes(tr.choices) == shapes
    assert np.isfinite(tr.score)
    logp, retval = ass(tr.choices)
    np.testing.assert_allclose(logp, tr.score, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(tr.score, lp(tr.choices, *args), rtol=RTOL, atol=1e-5)
    for r, s in zip(jax.tree_util.tree_leaves(retval), jax.tree_util.tree_leaves(tr.retval), strict=True):
        np.testing.assert_allclose(r, s, rtol=RTOL)


def test_scan_retval_and_args():
    tr = scan_model.simulate(KEY, 5)
    last, doubled = tr.retval
    np.testing.assert_allclose(doubled, 2.0 * tr.choices["x"], rtol=RTOL)
    np.testing.assert_allclose(last, tr.choices["x"][-1], rtol=RTOL)
    assert tr.args == (5,)


@pytest.mark.parametrize("b", [0, 1])
def test_cond_assess_takes_the_branch_of_the_choice(b):
    ch = {"b": jnp.asarray(b), "a": jnp.asarray(0.7), "c": jnp.asarray(4.0), "o": jnp.asarray(1.5)}
    logp, retval = cond_model.assess(ch)
    np.testing.assert_allclose(logp, cond_lp(ch), rtol=RTOL)
    np.testing.assert_allclose(retval, 1.5)
    # the value of the branch not taken does not matter
    other = "c" if b else "a"
    np.testing.assert_allclose(cond_model.assess({**ch, other: jnp.asarray(-9.0)})[0], logp, rtol=RTOL)


def test_cond_both_branches_are_reached_and_scored():
    keys = jax.random.split(KEY, 64)
    tr = jax.jit(jax.vmap(cond_model.simulate))(keys)
    b = np.asarray(tr.choices["b"])
    assert 0 < b.sum() < len(b), "both branches should occur in 64 draws with P(b=1)=0.3"
    # the branch not taken records zeros
    assert np.all(np.asarray(tr.choices["a"])[b == 0] == 0.0)
    assert np.all(np.asarray(tr.choices["c"])[b == 1] == 0.0)
    assert np.all(np.asarray(tr.choices["a"])[b == 1] != 0.0)
    np.testing.assert_allclose(tr.score, jax.vmap(cond_lp)(tr.choices), rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(lambda ch: cond_model.assess(ch)[0]))(tr.choices), tr.score, rtol=RTOL)


def test_same_address_in_two_cond_branches_is_one_choice():
    @ppl.gen
    def m():
        b = ppl.sample("b", dist.Bernoulli(probs=0.5))
        return lax.cond(
            b > 0, lambda: ppl.sample("a", dist.Normal(0.0, 1.0)), lambda: ppl.sample("a", dist.Normal(5.0, 1.0))
        )

    for b in (0, 1):
        ch = {"b": jnp.asarray(b), "a": jnp.asarray(1.0)}
        expected = np.log(0.5) + N(1.0, 0.0 if b else 5.0, 1.0)
        np.testing.assert_allclose(m.assess(ch)[0], expected, rtol=RTOL)


# ---------------------------------------------------------------------------------------------- generate


@ppl.gen
def gen_model():
    mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
    sigma = ppl.sample("sigma", dist.Gamma(2.0, 2.0))
    y = ppl.sample("y", dist.Normal(mu, sigma))
    ppl.factor(-0.5 * mu**2)
    return y


def test_generate_weight_is_constrained_log_density_plus_factors():
    constraints = {"sigma": jnp.asarray(0.7), "y": jnp.asarray(1.3)}
    tr, w = gen_model.generate(KEY, constraints)
    mu = tr.choices["mu"]
    expected = dist.Gamma(2.0, 2.0).log_prob(0.7) + dist.Normal(mu, 0.7).log_prob(1.3) - 0.5 * mu**2
    np.testing.assert_allclose(w, expected, rtol=RTOL)
    np.testing.assert_allclose(tr.score, expected + dist.Normal(0.0, 1.0).log_prob(mu), rtol=RTOL)
    np.testing.assert_allclose(tr.choices["sigma"], 0.7)
    np.testing.assert_allclose(tr.choices["y"], 1.3)
    np.testing.assert_allclose(tr.retval, 1.3)
    # the trace of generate is a valid trace: assess reproduces its score
    np.testing.assert_allclose(gen_model.assess(tr.choices)[0], tr.score, rtol=RTOL)


@pytest.mark.filterwarnings("ignore:Out-of-support values:UserWarning")  # 0.7 for a Bernoulli on purpose: NumPyro warns
def test_observed_value_is_scored_as_given_not_cast_to_the_sample_dtype():
    """A Bernoulli observed at 0.7 (soft pixels) is scored like NumPyro scores it, not rounded to the int 0 first
    (the program does not read the observed value; one that does is an error, below)."""

    @ppl.gen
    def soft(logit):
        ppl.sample("x", dist.Bernoulli(logits=logit))

    for obs in (0.7, jnp.asarray(0.7)):
        tr, w = soft.generate(KEY, {"x": obs}, 0.4)
        np.testing.assert_allclose(w, dist.Bernoulli(logits=0.4).log_prob(0.7), rtol=RTOL)
        assert tr.choices["x"].dtype == dist.Bernoulli(logits=0.4).sample(KEY).dtype
        np.testing.assert_allclose(soft.assess({"x": obs}, 0.4)[0], w, rtol=RTOL)
    assert not np.isclose(w, dist.Bernoulli(logits=0.4).log_prob(0))


def test_generate_draws_unconstrained_sites_from_the_program():
    constraints = {"sigma": jnp.asarray(0.7), "y": jnp.asarray(1.3)}
    keys = jax.random.split(KEY, 2000)
    tr, w = jax.jit(jax.vmap(lambda k: gen_model.generate(k, constraints)))(keys)
    mu = np.asarray(tr.choices["mu"], np.float64)
    assert w.shape == (2000,)
    assert len(np.unique(mu)) > 1990  # distinct draws (float32 normals collide rarely at this N)
    assert np.all(np.asarray(tr.choices["y"]) == np.float32(1.3))
    # mu ~ Normal(0, 1) (the prior), not conditioned on y
    se = 1.0 / np.sqrt(len(mu))
    assert abs(mu.mean()) < 4 * se
    assert abs(mu.var() - 1.0) < 4 * np.sqrt(2.0 / len(mu))


def test_generate_all_or_nothing_constrained():
    tr = gen_model.simulate(KEY)
    _, w_all = gen_model.generate(jax.random.key(5), tr.choices)
    np.testing.assert_allclose(w_all, tr.score, rtol=RTOL)
    tr0, w_none = gen_model.generate(KEY, {})
    np.testing.assert_allclose(w_none, -0.5 * tr0.choices["mu"] ** 2, rtol=RTOL)  # only the factor


@ppl.gen
def ssm(T):
    def step(x_prev, _):
        x = ppl.sample("x", dist.Normal(x_prev, 1.0))
        y = ppl.sample("y", dist.Normal(x, 0.5))
        return x, y

    _, ys = lax.scan(step, 0.0, None, length=T)
    return ys


def test_generate_with_a_constraint_inside_scan():
    T = 6
    ys = jnp.linspace(-1.0, 2.0, T)
    gen = jax.jit(lambda k: ssm.generate(k, {"y": ys}, T))
    tr, w = gen(KEY)
    xs = tr.choices["x"]
    assert _shapes(tr.choices) == {"x": (T,), "y": (T,)}
    np.testing.assert_allclose(tr.choices["y"], ys)
    np.testing.assert_allclose(tr.retval, ys)
    np.testing.assert_allclose(w, jnp.sum(dist.Normal(xs, 0.5).log_prob(ys)), rtol=RTOL)
    np.testing.assert_allclose(tr.score, w + jnp.sum(dist.Normal(shifted(xs, 0.0), 1.0).log_prob(xs)), rtol=RTOL)
    tr2, w2 = gen(jax.random.key(1))
    assert np.all(np.asarray(tr2.choices["x"]) != np.asarray(xs))
    assert w2 != w


# ---------------------------------------------------------------------------------------------- keys, jit, vmap


def _tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


def test_same_key_same_trace_different_key_different_draws():
    t1, t2 = scan_model.simulate(KEY, 5), scan_model.simulate(KEY, 5)
    assert _tree_equal(t1.choices, t2.choices) and t1.score == t2.score
    t3 = scan_model.simulate(jax.random.key(1), 5)
    assert t3.choices["mu"] != t1.choices["mu"]
    assert np.all(np.asarray(t3.choices["x"]) != np.asarray(t1.choices["x"]))


def test_vmap_simulate_over_keys_gives_batched_trace():
    keys = jax.random.split(KEY, 7)
    tr = jax.jit(jax.vmap(scan_model.simulate, in_axes=(0, None)), static_argnums=1)(keys, 5)
    assert isinstance(tr, ppl.Trace)
    assert _shapes(tr.choices) == {"mu": (7,), "x": (7, 5)}
    assert tr.score.shape == (7,)
    assert len(np.unique(np.asarray(tr.choices["mu"]))) == 7
    # lane i is the eager simulation with key i
    for i in (0, 6):
        ti = scan_model.simulate(keys[i], 5)
        np.testing.assert_allclose(tr.choices["x"][i], ti.choices["x"], rtol=RTOL)
        np.testing.assert_allclose(tr.score[i], ti.score, rtol=RTOL)
    batched_assess = jax.jit(jax.vmap(lambda ch: scan_model.assess(ch, 5)[0]))
    np.testing.assert_allclose(batched_assess(tr.choices), tr.score, rtol=RTOL)


def test_jit_simulate_equals_eager():
    eager = scan_model.simulate(KEY, 5)
    jitted = jax.jit(scan_model.simulate, static_argnums=1)(KEY, 5)
    for a in eager.choices:
        np.testing.assert_allclose(jitted.choices[a], eager.choices[a], rtol=RTOL)
    np.testing.assert_allclose(jitted.score, eager.score, rtol=RTOL)
    np.testing.assert_allclose(jitted.retval[0], eager.retval[0], rtol=RTOL)


def count_eqns(jaxpr):
    """Equations of a jaxpr, counting those nested in higher-order primitives too."""
    return sum(1 + sum(count_eqns(s) for s in subjaxprs(e)) for e in jaxpr.eqns)


def _scan_lengths(jaxpr):
    return [scan_parts(e).length for e in jaxpr.eqns if is_scan(e)]


@pytest.mark.parametrize(
    "make",
    [
        lambda T: lambda k: ssm.simulate(k, T),
        lambda T: lambda k: ssm.generate(k, {"y": jnp.zeros(T)}, T)[1],
        lambda T: lambda k: ssm.assess({"x": jnp.zeros(T), "y": jnp.zeros(T)}, T)[0],
        lambda T: lambda k: ppl.seed(ssm)(k, T),
    ],
    ids=["simulate", "generate", "assess", "seed"],
)
def test_program_size_does_not_grow_with_scan_length(make):
    j10 = jax.make_jaxpr(make(10))(KEY)
    j1000 = jax.make_jaxpr(make(1000))(KEY)
    assert count_eqns(j10.jaxpr) == count_eqns(j1000.jaxpr)
    assert len(j10.jaxpr.eqns) == len(j1000.jaxpr.eqns)
    # the loop stays a loop: one scan of length 1000 at the top level, not 1000 unrolled sites
    assert _scan_lengths(j1000.jaxpr) == [1000]
    assert count_eqns(j1000.jaxpr) < 500


def test_site_keys_differ_per_scan_iteration():
    T = 64
    tr = ssm.simulate(KEY, T)
    assert len(np.unique(np.asarray(tr.choices["x"]))) == T
    assert len(np.unique(np.asarray(tr.choices["y"]))) == T

    @ppl.gen
    def iid(T):
        return lax.scan(lambda c, _: (c, ppl.sample("e", dist.Normal(0.0, 1.0))), 0.0, None, length=T)[1]

    e = np.asarray(iid.simulate(KEY, T).choices["e"])
    assert len(np.unique(e)) == T
    nested = np.asarray(nested_scan_model.simulate(KEY, 8, 8).choices["z"])
    assert nested.shape == (8, 8) and len(np.unique(nested)) == 64


def test_site_keys_differ_per_vmap_lane():
    @ppl.gen
    def m(n):
        # lane-dependent parameters (zeros, but batched): a batched site, one key per lane
        v = jax.vmap(lambda z: ppl.sample("v", dist.Normal(z, 1.0)))(jnp.zeros(n))

        def step(c, _):
            return c, jax.vmap(lambda z: ppl.sample("w", dist.Normal(z, 1.0)))(jnp.zeros(n))

        return v, lax.scan(step, 0.0, None, length=3)[1]

    tr = m.simulate(KEY, 32)
    v, w = np.asarray(tr.choices["v"]), np.asarray(tr.choices["w"])
    assert v.shape == (32,) and len(np.unique(v)) == 32
    assert w.shape == (3, 32) and len(np.unique(w)) == 96
    np.testing.assert_allclose(m.assess(tr.choices, 32)[0], tr.score, rtol=RTOL)
    np.testing.assert_allclose(tr.score, N(v, 0.0, 1.0) + N(w, 0.0, 1.0), rtol=RTOL)


def test_ppl_vmap_lanes_are_independent_even_with_unbatched_parameters():
    @ppl.gen
    def m(n):
        return ppl.vmap(lambda: ppl.sample("u", dist.Normal(0.0, 1.0)), axis_size=n)()

    tr = m.simulate(KEY, 16)
    u = np.asarray(tr.choices["u"])
    assert u.shape == (16,) and len(np.unique(u)) == 16
    np.testing.assert_allclose(tr.retval, u)
    np.testing.assert_allclose(tr.score, N(u, 0.0, 1.0), rtol=RTOL)
    np.testing.assert_allclose(m.assess(tr.choices, 16)[0], tr.score, rtol=RTOL)


def test_two_sites_with_the_same_distribution_draw_differently():
    @ppl.gen
    def m():
        return ppl.sample("a", dist.Normal(0.0, 1.0)), ppl.sample("b", dist.Normal(0.0, 1.0))

    tr = m.simulate(KEY)
    assert tr.choices["a"] != tr.choices["b"]


# ---------------------------------------------------------------------------------------------- seed


def walk(n, loc):
    def step(c, _):
        x = c + ppl.sample("e", dist.Normal(loc, 1.0))
        return x, x

    return lax.scan(step, 0.0, None, length=n)[1]


def test_seed_plain_function_with_static_int_arg():
    f = ppl.seed(walk)
    loc = jnp.asarray(2.0)
    xs = f(KEY, 7, loc)  # 7 is a Python int: static, used as the scan length
    assert xs.shape == (7,)
    assert f(KEY, 9, loc).shape == (9,)
    np.testing.assert_array_equal(f(KEY, 7, loc), xs)
    assert np.all(np.asarray(f(jax.random.key(1), 7, loc)) != np.asarray(xs))
    np.testing.assert_allclose(jax.jit(f, static_argnums=1)(KEY, 7, loc), xs, rtol=RTOL)
    # the increments have the program's distribution: Normal(loc, 1)
    incs = jax.jit(jax.vmap(lambda k: jnp.diff(f(k, 2, loc))[0]))(jax.random.split(KEY, 2000))
    assert abs(float(jnp.mean(incs)) - 2.0) < 4.0 / np.sqrt(2000)


def test_seed_ignores_factors_and_returns_pytrees():
    def g():
        x = ppl.sample("x", dist.Normal(0.0, 1.0))
        ppl.factor(x)
        return {"x": x, "x2": x * 2}

    out = ppl.seed(g)(KEY)
    np.testing.assert_allclose(out["x2"], 2 * out["x"])


# ---------------------------------------------------------------------------------------------- gradients


@ppl.gen
def param_model(theta, T):
    mu = ppl.sample("mu", dist.Normal(theta, 1.0))

    def step(c, _):
        x = ppl.sample("x", dist.Normal(theta * c + mu, jnp.exp(0.3 * theta)))
        return x, None

    lax.scan(step, 0.0, None, length=T)
    ppl.factor(-0.5 * theta**2 * mu)
    return mu


def param_lp(theta, ch):
    x = ch["x"]
    return (
        N(ch["mu"], theta, 1.0)
        + N(x, theta * shifted(x, 0.0) + ch["mu"], jnp.exp(0.3 * theta))
        - 0.5 * theta**2 * ch["mu"]
    )


def test_grad_of_assess_matches_hand_written_log_density():
    ch = param_model.simulate(KEY, jnp.asarray(0.5), 4).choices
    f = lambda th: param_model.assess(ch, th, 4)[0]
    theta = jnp.asarray(0.0)
    np.testing.assert_allclose(f(theta), param_lp(theta, ch), rtol=RTOL)
    np.testing.assert_allclose(jax.grad(f)(theta), jax.grad(param_lp)(theta, ch), rtol=1e-4, atol=1e-5)
    jit_grad = jax.jit(jax.grad(f))
    for th in (0.0, 0.8, -1.1):
        th = jnp.asarray(th)
        np.testing.assert_allclose(jit_grad(th), jax.grad(param_lp)(th, ch), rtol=1e-4, atol=1e-5)
    # and with respect to the choices
    gc = jax.grad(lambda c: param_model.assess(c, theta, 4)[0])(ch)
    gh = jax.grad(lambda c: param_lp(theta, c))(ch)
    for a in ch:
        np.testing.assert_allclose(gc[a], gh[a], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- TFP


def test_tfp_distributions_at_sites():
    tfd = pytest.importorskip("tensorflow_probability.substrates.jax.distributions")

    @ppl.gen
    def m(T):
        mu = ppl.sample("mu", tfd.Normal(0.0, 1.0))
        s = ppl.sample("s", tfd.Gamma(2.0, 3.0))

        def step(c, _):
            return c, ppl.sample("x", tfd.Normal(mu, s))

        return lax.scan(step, 0.0, None, length=T)[1]

    tr = m.simulate(KEY, 5)
    ch = tr.choices
    assert _shapes(ch) == {"mu": (), "s": (), "x": (5,)}
    expected = (
        tfd.Normal(0.0, 1.0).log_prob(ch["mu"])
        + tfd.Gamma(2.0, 3.0).log_prob(ch["s"])
        + jnp.sum(tfd.Normal(ch["mu"], ch["s"]).log_prob(ch["x"]))
    )
    np.testing.assert_allclose(tr.score, expected, rtol=RTOL)
    np.testing.assert_allclose(m.assess(ch, 5)[0], expected, rtol=RTOL)
    np.testing.assert_allclose(jax.jit(lambda c: m.assess(c, 5)[0])(ch), expected, rtol=RTOL)
    assert len(np.unique(np.asarray(ch["x"]))) == 5
    tr2 = jax.jit(m.simulate, static_argnums=1)(KEY, 5)
    np.testing.assert_allclose(tr2.choices["x"], ch["x"], rtol=RTOL)


def test_a_soft_value_of_a_choice_the_program_uses_is_an_error():
    # validate_args=False: NumPyro scores Bernoulli(0.3) at 0.7; the program would go on with the int 0
    @ppl.gen
    def m():
        z = ppl.sample("z", dist.Bernoulli(0.3, validate_args=False))
        return 2 * z

    with pytest.raises(ppl.PPLError, match="'z' is given a non-integer value.*integer part.*pass an integer value"):
        m.assess({"z": jnp.asarray(0.7)})
    np.testing.assert_allclose(m.assess({"z": jnp.asarray(1.0)})[0], np.log(0.3), rtol=RTOL)  # integral: fine
