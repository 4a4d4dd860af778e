"""``ppl.lang``: compiled programs behave exactly like the hand-written Python programs they stand for.

* every example program's models and guides: ``simulate`` (same key) and ``assess`` (same choices) equal a
  hand-written ``@ppl.gen`` equivalent — same choices, same score, same return value;
* objectives: the compiled objective's gradient estimates match the Python version's *in distribution* (a two-sample
  z test on independent keys), and agree exactly on the same keys;
* program size: a ``for`` loop is one ``lax.scan`` — the jaxpr of ``simulate`` and of the gradient estimator has the
  same size for n = 10 and n = 1000;
* the language: carries, stacked outputs, scanned slices, nested loops, if/else (``lax.cond``), model calls under
  an address prefix, ``by`` strategies and ``strategies`` blocks, data, defaults; the command line.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
import ppl.lang
from ppl.__main__ import main
from ppl._jax_internals import is_cond, is_scan, scan_parts, subjaxprs
from tests import stats

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "lang")


def read_json(name: str):
    with open(os.path.join(EXAMPLES, name + ".json")) as f:
        return json.load(f)


def load(name: str, data=None) -> ppl.lang.Program:
    path = os.path.join(EXAMPLES, name + ".ppl")
    if data is None and os.path.exists(path[:-4] + ".json"):
        data = read_json(name)
    return ppl.lang.load(path, data)


def assert_tree_close(a, b, rtol=1e-6, atol=1e-6):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, (ta, tb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------- Python equivalents


@ppl.gen
def coin_py(n=10):
    p = ppl.sample("p", dist.Beta(2.0, 2.0))

    def body(c, i):
        return c, ppl.sample("flip", dist.Bernoulli(p))

    lax.scan(body, None, jnp.arange(n))
    return p


@ppl.gen
def coin_q_py(a=0.0, b=0.0):
    conc1, conc0 = jax.nn.softplus(a) + 0.01, jax.nn.softplus(b) + 0.01
    ppl.sample("p", dist.Beta(conc1, conc0), strategy=ppl.implicit_reparam)


@ppl.gen
def regression_py(n=8):
    x = jnp.linspace(-1.0, 1.0, n)
    w = ppl.sample("w", dist.Normal(0.0, 1.0))
    b = ppl.sample("b", dist.Normal(0.0, 1.0))
    sigma = ppl.sample("sigma", dist.HalfNormal(1.0))

    def body(c, xi):
        return c, ppl.sample("y", dist.Normal(w * xi + b, sigma))

    lax.scan(body, None, x)


@ppl.gen
def regression_q_py(w_loc=0.0, w_log_scale=-1.0, b_loc=0.0, b_log_scale=-1.0, s_loc=-1.0, s_log_scale=-1.0):
    ppl.sample("w", dist.Normal(w_loc, jnp.exp(w_log_scale)))
    ppl.sample("b", dist.Normal(b_loc, jnp.exp(b_log_scale)))
    ppl.sample("sigma", dist.LogNormal(s_loc, jnp.exp(s_log_scale)))


@ppl.gen
def walk_py(T=6, rho=0.9):
    def body(h, _):
        z = ppl.sample("z", dist.Normal(rho * h, 1.0))
        ppl.sample("obs", dist.Normal(z, 0.5))
        return z, None

    h, _ = lax.scan(body, jnp.asarray(0.0), None, length=T)
    return h


@ppl.gen
def walk_q_py(locs=None, log_scales=None):
    locs = jnp.zeros(6) if locs is None else locs
    log_scales = jnp.zeros(6) - 1.0 if log_scales is None else log_scales

    def body(c, x):
        return c, ppl.sample("z", dist.Normal(x[0], jnp.exp(x[1])))

    lax.scan(body, None, (locs, log_scales))


@ppl.gen
def mixture_py(mu=1.0):
    z = ppl.sample("z", dist.Bernoulli(0.5))
    loc = lax.cond(z == 1, lambda: jnp.asarray(mu), lambda: -jnp.asarray(mu))
    ppl.sample("x", dist.Normal(loc, 1.0))
    return loc


@ppl.gen
def mixture_q_py(logit=0.0):
    ppl.sample("z", dist.Bernoulli(logits=logit), strategy=ppl.enum)


@ppl.gen
def gauss_py():
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("x", dist.Normal(z, 1.0))


@ppl.gen
def gauss_q_py(loc=0.0, log_scale=0.0):
    ppl.sample("z", dist.Normal(loc, jnp.exp(log_scale)))


@ppl.gen
def mixture_plate_py(n=1000):
    mu = ppl.sample("mu", dist.Normal(jnp.zeros(3), 10.0))
    with ppl.plate("data", n):
        z = ppl.sample("z", dist.Categorical(logits=jnp.zeros(3)))
        ppl.sample("x", dist.Normal(mu[z], 1.0))


@ppl.gen
def mixture_plate_q_py(m, rho, logits, n):
    ppl.sample("mu", dist.Normal(m, jax.nn.softplus(rho)))
    with ppl.plate("data", n):
        ppl.sample("z", dist.Categorical(logits=logits), strategy=ppl.enum)


@ppl.gen
def eight_schools_py():
    sigma = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    mu = ppl.sample("mu", dist.Normal(0.0, 5.0))
    tau = ppl.sample("tau", dist.HalfCauchy(5.0))
    with ppl.plate("schools", 8):
        theta_tilde = ppl.sample("theta_tilde", dist.Normal(0.0, 1.0))
        ppl.sample("y", dist.Normal(mu + tau * theta_tilde, sigma))


@ppl.gen
def eight_schools_q_py(mu_loc, mu_raw_scale, tau_loc, tau_raw_scale, theta_tilde_loc, theta_tilde_raw_scale):
    ppl.sample("mu", dist.Normal(mu_loc, jax.nn.softplus(mu_raw_scale)))
    ppl.sample("tau", dist.LogNormal(tau_loc, jax.nn.softplus(tau_raw_scale)))
    with ppl.plate("schools", 8):
        ppl.sample("theta_tilde", dist.Normal(theta_tilde_loc, jax.nn.softplus(theta_tilde_raw_scale)))


PAIRS = [
    ("coin", "coin", coin_py, ()),
    ("coin", "coin", coin_py, (7,)),
    ("coin", "coin_q", coin_q_py, (jnp.asarray(0.3), jnp.asarray(-0.2))),
    ("regression", "regression", regression_py, ()),
    ("regression", "regression_q", regression_q_py, ()),
    ("random_walk", "walk", walk_py, ()),
    ("random_walk", "walk", walk_py, (4, jnp.asarray(0.5))),
    ("random_walk", "walk_q", walk_q_py, (jnp.linspace(0.0, 1.0, 6), jnp.full(6, -0.5))),
    ("mixture", "mixture", mixture_py, ()),
    ("mixture", "mixture_q", mixture_q_py, (jnp.asarray(0.4),)),
    ("iwae_by_hand", "gauss", gauss_py, ()),
    ("iwae_by_hand", "gauss_q", gauss_q_py, (jnp.asarray(0.2), jnp.asarray(-0.3))),
    ("mixture_plate", "mixture", mixture_plate_py, (10,)),
    ("mixture_plate", "mixture_q", mixture_plate_q_py, (jnp.zeros(3), jnp.zeros(3), jnp.ones((10, 3)), 10)),
    ("eight_schools", "eight_schools", eight_schools_py, ()),
    ("eight_schools", "eight_schools_q", eight_schools_q_py,
     (jnp.asarray(1.0), jnp.asarray(0.5), jnp.asarray(1.2), jnp.asarray(-1.0), jnp.linspace(-1.0, 1.0, 8),
      jnp.full(8, -0.5))),
]


@pytest.mark.parametrize("example, name, python, args", PAIRS, ids=[f"{p[1]}{p[3] and '-args'}" for p in PAIRS])
def test_compiled_model_equals_python(example, name, python, args):
    compiled = load(example)[name]
    for seed in (0, 1):
        key = jax.random.key(seed)
        tr, tr_py = compiled.simulate(key, *args), python.simulate(key, *args)
        assert_tree_close(tr.choices, tr_py.choices)
        assert_tree_close(tr.score, tr_py.score)
        assert_tree_close(tr.retval, tr_py.retval)
        # assess on the same choices (the Python program's), and on choices of the compiled one
        assert_tree_close(compiled.assess(tr_py.choices, *args), python.assess(tr_py.choices, *args))
        assert_tree_close(compiled.assess(tr.choices, *args)[0], tr.score, rtol=1e-5, atol=1e-5)


def test_every_example_is_covered_and_compiles():
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(EXAMPLES, "*.ppl"))}
    assert names == {p[0] for p in PAIRS}
    for n in names:
        prog = load(n)
        assert prog.objectives, n
        for o in prog.objectives:
            assert isinstance(prog[o], ppl.Expectation)


# ---------------------------------------------------------------------------------------------- objectives

DATA = {k: jnp.asarray(v) for k, v in read_json("coin").items()}


@ppl.expectation
def my_elbo_py(model_args, guide_args):
    z, log_q = ppl.sim(coin_q_py, *guide_args)
    return ppl.density(coin_py, {**z, **DATA}, *model_args) - log_q


@ppl.expectation
def iwae_k_py(loc, log_scale):
    def body(c, _):
        z, log_q = ppl.sim(gauss_q_py, loc, log_scale)
        return c, ppl.density(gauss_py, {**z, "x": jnp.asarray(1.0)}) - log_q

    _, log_w = lax.scan(body, None, None, length=8)
    return jax.nn.logsumexp(log_w) - jnp.log(8)


OBJECTIVES = [
    ("coin", "my_elbo", lambda: my_elbo_py, ((10,), (jnp.asarray(0.5), jnp.asarray(-0.5)))),
    ("coin", "loss", lambda: ppl.elbo(coin_py, coin_q_py, DATA), ((), (jnp.asarray(0.5), jnp.asarray(-0.5)))),
    ("iwae_by_hand", "iwae_k", lambda: iwae_k_py, (jnp.asarray(0.3), jnp.asarray(-0.4))),
    (
        "mixture",
        "loss",
        lambda: ppl.elbo(mixture_py, mixture_q_py, {"x": 1.7}),
        ((jnp.asarray(1.2),), (jnp.asarray(0.4),)),
    ),
    (
        "random_walk",
        "iwae4",
        lambda: ppl.iwae(walk_py, walk_q_py, {"obs": jnp.asarray(read_json("random_walk")["obs"])}, 4),
        ((6, jnp.asarray(0.8)), (jnp.linspace(0.0, 1.0, 6), jnp.full(6, -0.5))),
    ),
]


def grads(objective, args):
    """``keys -> gradient estimates`` of shape (N, D), jitted once; ``args`` closed over (ints stay static)."""
    f = jax.jit(jax.vmap(lambda k: objective.grad_estimate(k, *args)))
    return lambda n, seed: np.asarray(stats.flat(f(stats.keys(n, seed))), np.float64)


@pytest.mark.parametrize("example, name, python, args", OBJECTIVES, ids=[f"{o[0]}-{o[1]}" for o in OBJECTIVES])
def test_objective_gradients_match_python_in_distribution(example, name, python, args):
    compiled, python = load(example)[name], python()
    n = 1000
    estimates, estimates_py = grads(compiled, args), grads(python, args)
    g0, g1 = estimates(n, 0), estimates_py(n, 1)
    finite = np.isfinite(g0).all(1) & np.isfinite(g1).all(1)
    g, g_py = g0[finite], g1[finite]
    assert len(g) > 0.99 * n
    se = np.sqrt(g.var(0, ddof=1) / len(g) + g_py.var(0, ddof=1) / len(g_py))
    diff = np.abs(g.mean(0) - g_py.mean(0))
    assert np.all(diff <= 4 * se + 1e-5 * (1 + np.abs(g_py.mean(0)))), (g.mean(0), g_py.mean(0), se)
    # the same keys give the same estimates: same program, same sites, same key derivation
    np.testing.assert_allclose(g0[:16], estimates_py(n, 0)[:16], rtol=2e-4, atol=2e-4)


def test_objective_value_is_unbiased_for_known_case():
    # gauss: log p(x=1) = log N(1; 0, 2); the IWAE bound at the exact posterior is exact (zero variance)
    prog = load("iwae_by_hand")
    loc, log_scale = jnp.asarray(0.5), jnp.asarray(0.5 * np.log(0.5))
    v = jax.vmap(prog["iwae_k"].estimate, (0, None, None))(stats.keys(16), loc, log_scale)
    exact = float(dist.Normal(0.0, np.sqrt(2.0)).log_prob(1.0))
    np.testing.assert_allclose(v, exact, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- program size


def _size(f, *args):
    jaxpr = jax.make_jaxpr(f)(*args)
    count = {"eqns": 0, "scan": 0}

    def walk(j):
        for e in j.eqns:
            count["eqns"] += 1
            count["scan"] += is_scan(e)
            for sub in subjaxprs(e):
                walk(sub)

    walk(jaxpr.jaxpr)
    return count


def test_loop_is_one_scan_and_size_is_independent_of_n():
    prog = load("coin")
    key = jax.random.key(0)
    staged = [_size(lambda n=n: prog["coin"].fn(n)) for n in (10, 1000)]
    assert staged[0] == staged[1] and staged[0]["scan"] == 1
    sim = [_size(lambda k, n=n: prog["coin"].simulate(k, n).score, key) for n in (10, 1000)]
    assert sim[0] == sim[1]
    grads = []
    for n in (10, 1000):
        p = prog.with_data({"flip": jnp.ones(n, jnp.int32)})
        grads.append(
            _size(
                lambda k, a, p=p, n=n: p["my_elbo"].grad_estimate(k, (n,), a), key, (jnp.asarray(0.0), jnp.asarray(0.0))
            )
        )
    assert grads[0] == grads[1]


def test_nested_loops_are_nested_scans():
    prog = ppl.lang.compile("""
model grid(n, m) {
  for i in range(n) {
    for j in range(m) { z[i, j] ~ Normal(0.0, 1.0) }
  }
  return z
}""")
    sizes = [_size(lambda n=n: prog["grid"].fn(n, 3)) for n in (2, 500)]
    assert sizes[0] == sizes[1] and sizes[0]["scan"] == 2
    tr = prog["grid"].simulate(jax.random.key(0), 4, 3)
    assert tr.choices["z"].shape == (4, 3)
    np.testing.assert_allclose(tr.retval, tr.choices["z"])


# ---------------------------------------------------------------------------------------------- language features


def test_carry_stacked_outputs_and_scanned_slices():
    prog = ppl.lang.compile("""
model m(xs, n = 4) {
  total = 0.0
  for i in range(n) {
    local = xs[i] * 2.0          # xs[i]: a scanned slice of xs
    total = total + local        # a carry
    doubled[i] = local           # a stacked output
  }
  return total, doubled
}""")
    xs = jnp.arange(4.0)
    total, doubled = prog["m"].simulate(jax.random.key(0), xs).retval
    np.testing.assert_allclose(total, 12.0)
    np.testing.assert_allclose(doubled, 2.0 * xs)
    jaxpr = prog["m"].staged.stage((xs, 4))[0]
    (scan,) = [e for e in jaxpr.jaxpr.eqns if is_scan(e)]
    assert not any(e.primitive.name in ("dynamic_slice", "gather") for e in scan_parts(scan).body.jaxpr.eqns)
    # range(start, stop) slices xs[start:stop]
    prog2 = ppl.lang.compile("model m(xs) {\n s = 0.0\n for i in range(1, 3) { s = s + xs[i] }\n return s\n}")
    np.testing.assert_allclose(prog2["m"].simulate(jax.random.key(0), xs).retval, 3.0)


def test_if_else_compiles_to_cond_with_sites_in_branches():
    prog = ppl.lang.compile("""
model m(c) {
  if c > 0.0 {
    x ~ Normal(5.0, 1.0)
    y = 1.0
  } else {
    x ~ Normal(-5.0, 1.0)
    y = -1.0
  }
  return y
}""")
    jaxpr = prog["m"].staged.stage((jnp.asarray(1.0),))[0]
    assert sum(map(is_cond, jaxpr.jaxpr.eqns)) == 1
    for c, sign in ((1.0, 1.0), (-1.0, -1.0)):
        tr = prog["m"].simulate(jax.random.key(0), jnp.asarray(c))
        assert float(tr.retval) == sign and float(tr.choices["x"]) * sign > 2.0
        np.testing.assert_allclose(
            prog["m"].assess({"x": 5.0 * sign}, jnp.asarray(c))[0], dist.Normal(0.0, 1.0).log_prob(0.0), rtol=1e-6
        )


def test_if_inside_loop_and_loop_inside_if_equal_python():
    prog = ppl.lang.compile("""
model mix(n = 5) {
  for i in range(n) {
    z[i] ~ Bernoulli(0.3)
    if z[i] == 1 {
      x[i] ~ Normal(2.0, 1.0)
    } else {
      x[i] ~ Normal(-2.0, 0.5)
      x[i] = x[i] * 2.0
    }
  }
  if sum(z) > 2 {
    total = 0.0
    for j in range(n) { total = total + x[j] }
  } else {
    total = -1.0
  }
  return x, total
}""")

    @ppl.gen
    def mix_py(n=5):
        def body(c, i):
            z = ppl.sample("z", dist.Bernoulli(0.3))
            x = lax.cond(
                z == 1,
                lambda: ppl.sample("x", dist.Normal(2.0, 1.0)),
                lambda: ppl.sample("x", dist.Normal(-2.0, 0.5)) * 2.0,
            )
            return c, (z, x)

        _, (z, x) = lax.scan(body, None, jnp.arange(n))
        total = lax.cond(
            jnp.sum(z) > 2,
            lambda: lax.scan(lambda t, xj: (t + xj, None), jnp.asarray(0.0), x)[0],
            lambda: jnp.asarray(-1.0),
        )
        return x, total

    for seed in range(4):
        key = jax.random.key(seed)
        tr, tr_py = prog["mix"].simulate(key), mix_py.simulate(key)
        assert_tree_close(tr.choices, tr_py.choices)
        assert_tree_close(tr.score, tr_py.score)
        assert_tree_close(tr.retval, tr_py.retval)


def test_else_if_and_one_sided_if_update_outer_names():
    prog = ppl.lang.compile("""
model m(v) {
  a = 0.0
  if v > 1.0 { a = 10.0 }
  if v > 2.0 { b = 1.0 } else if v > 0.0 { b = 2.0 } else { b = 3.0 }
  return a + b
}""")
    f = prog["m"]
    assert [float(f.simulate(jax.random.key(0), jnp.asarray(v)).retval) for v in (3.0, 1.5, 0.5, -1.0)] == [
        11.0,
        12.0,
        2.0,
        3.0,
    ]


def test_model_calls_inline_or_under_a_prefix():
    prog = ppl.lang.compile("""
model sub(mu) {
  z ~ Normal(mu, 1.0)
  return z
}
model top() {
  a ~ sub(0.0)
  b ~ sub(a)
  c = sub(b)
  return c
}""")
    tr = prog["top"].simulate(jax.random.key(0))
    assert set(tr.choices) == {"a/z", "b/z", "z"}
    np.testing.assert_allclose(tr.retval, tr.choices["z"])
    np.testing.assert_allclose(prog["top"].assess(tr.choices)[0], tr.score, rtol=1e-6)


def test_strategies_by_site_and_by_block():
    prog = ppl.lang.compile("""
guide q(t) {
  z ~ Bernoulli(logits=t) by enum
  w ~ Bernoulli(logits=t)
  v ~ Normal(t, 1.0)
}
strategies q { "w": mvd, v: reinforce }
""")
    jaxpr = prog["q"].staged.stage((jnp.asarray(0.0),))[0]
    got = {e.params["addr"]: repr(e.params["strategy"]) for e in jaxpr.jaxpr.eqns if e.primitive.name == "sample"}
    assert got == {"z": "enum", "w": "mvd", "v": "reinforce"}


def test_baseline_strategy_with_traced_value_and_cost():
    prog = ppl.lang.compile("""
objective f(theta) {
  x ~ Normal(theta, 1.0) by baseline(theta ** 2 + 1.0)
  cost(0.5 * x)
  return x ** 2
}""")
    g = stats.vmap_grads(prog["f"], 20000, jnp.asarray(1.5))
    stats.assert_unbiased(g, 2 * 1.5 + 0.5, max_stderr=0.05)


def test_data_defaults_and_init_args():
    prog = load("coin")
    assert prog.init_args("loss") == ((10,), (0.0, 0.0))
    assert all(isinstance(x, jax.Array) for x in prog.init_args("loss")[1])
    assert prog.init_args("loss", {"coin_q.a": 1.0})[1][0] == 1.0
    assert prog.param_names("loss") == (("coin.n",), ("coin_q.a", "coin_q.b"))
    other = prog.with_data({"flip": [0] * 10})
    args = prog.init_args("my_elbo")
    v1 = prog["my_elbo"].estimate(jax.random.key(0), *args)
    v2 = other["my_elbo"].estimate(jax.random.key(0), *args)
    assert float(v1) != float(v2)
    with pytest.raises(ppl.lang.LangError, match="unknown parameter"):
        prog.init_args("loss", {"coin_q.c": 1.0})


def test_expressions():
    prog = ppl.lang.compile("""
model m(x) {
  a = [1.0, 2.0, 3.0]
  b = (a[0] + a[1:] @ a[1:]) // 2 % 5
  c = where(x > 0.0 and not x > 10.0, exp(0.0), -1.0)
  d = sum(a ** 2, axis=0) - -1 + shape(a)[0] + len(a) + pi * 0
  t = (1, 2)
  e = maximum(*t)
  f = logsumexp(stack([a, a]), axis=1)
  return b, c, d, e, f, True, false
}""")
    b, c, d, e, f, t, fa = prog["m"].simulate(jax.random.key(0), jnp.asarray(1.0)).retval
    assert (float(b), float(c), float(d), int(e), bool(t), bool(fa)) == (2.0, 1.0, 21.0, 2, True, False)
    np.testing.assert_allclose(f, jax.nn.logsumexp(jnp.arange(1.0, 4.0)) * jnp.ones(2), rtol=1e-6)


def test_comments_semicolons_and_line_continuations():
    prog = ppl.lang.compile("""
# a comment
model m() { x ~ Normal(0.0, \\
   1.0); y ~ Normal(x,
                    1.0)   # inside parentheses a newline continues the statement
}
""")
    assert set(prog["m"].simulate(jax.random.key(0)).choices) == {"x", "y"}


# ---------------------------------------------------------------------------------------------- command line


def test_cli_fit_json(capsys):
    path = os.path.join(EXAMPLES, "coin.ppl")
    rc = main(
        [
            "fit",
            path,
            "--data",
            os.path.join(EXAMPLES, "coin.json"),
            "--steps",
            "100",
            "--objective",
            "my_elbo",
            "--lr",
            "0.1",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "my_elbo" and out["fixed"] == ["my_elbo.model_args"]
    a, b = out["params"]["my_elbo.guide_args"]
    assert a > 0.5 and out["value_last"] > out["value_first"]  # the posterior Beta(10, 4) pulls a up


def test_cli_fit_text_and_set(capsys):
    path = os.path.join(EXAMPLES, "mixture.ppl")
    rc = main(
        [
            "fit",
            path,
            "--data",
            os.path.join(EXAMPLES, "mixture.json"),
            "--steps",
            "20",
            "--set",
            "mixture.mu=2.0",
            "--freeze",
            "mixture",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "mixture.mu      = 2  (fixed)" in out and "mixture_q.logit = " in out


def test_run_examples_script(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_examples", os.path.join(EXAMPLES, "run_examples.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--steps", "3"]) == 0
    assert "7/7 examples ok" in capsys.readouterr().out


def test_cli_usage_errors(capsys, tmp_path):
    path = os.path.join(EXAMPLES, "coin.ppl")
    assert main(["fit", path, "--steps", "1"]) == 2
    assert "choose one with --objective" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.ppl")]) == 2
    assert "missing.ppl" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert main(["fit", path, "--data", str(bad), "--objective", "loss"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
