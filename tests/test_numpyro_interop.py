"""``ppl.from_numpyro``: NumPyro models and guides as generative functions.

* ``assess`` of a converted model equals NumPyro's ``log_density`` (subsampled linear regression, eight schools, a
  Gaussian mixture with discrete assignments);
* the ELBO of a reparameterized NumPyro model/guide pair under ppl has the same mean (value and gradient) as NumPyro's
  ``Trace_ELBO`` loss, negated;
* on the mixture, ppl's enum / reinforce gradients are unbiased against the exact gradient, NumPyro's ``Trace_ELBO``
  gradient is not.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan as npr_scan
from numpyro.distributions import constraints
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density

import ppl
from ppl.interop import NumPyroGenFn, from_numpyro
from ppl.transforms.tracing import sites
from tests.stats import assert_unbiased, keys

N_EST = 10_000

# ---------------------------------------------------------------------------------------------- example models

RNG = np.random.default_rng(0)
N_LR, D_LR, B_LR = 20, 3, 5
X_LR = jnp.asarray(RNG.normal(size=(N_LR, D_LR)), jnp.float32)
Y_LR = X_LR @ jnp.array([1.0, -2.0, 0.5]) + 0.3 + 0.5 * jnp.asarray(RNG.normal(size=N_LR), jnp.float32)


def linreg(x, y):
    """Bayesian linear regression with a subsampled plate."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=B_LR) as idx:
        numpyro.sample("y", dist.Normal(x[idx] @ w + b, sigma), obs=y[idx])


def linreg_local(x, y):
    """... with a per-datapoint latent inside the subsampled plate (its log density is scaled too)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=B_LR) as idx:
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x[idx] @ w + 0.5 * u, 1.0), obs=y[idx])


def linreg_local_guide(x, y):
    w_loc = numpyro.param("w_loc", jnp.zeros(x.shape[1]))
    w_scale = numpyro.param("w_scale", 0.5 * jnp.ones(x.shape[1]), constraint=constraints.positive)
    numpyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=B_LR):
        u_loc = numpyro.param("u_loc", jnp.zeros(x.shape[0]), event_dim=0)  # subsampled with the plate
        numpyro.sample("u", dist.Normal(u_loc, 0.8))


J = 8
Y_8 = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA_8 = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)
    numpyro.deterministic("shrinkage", tau / (tau + sigma))


def eight_schools_guide(sigma, y):
    mu_loc = numpyro.param("mu_loc", 1.0)
    mu_scale = numpyro.param("mu_scale", 2.0, constraint=constraints.positive)
    tau_loc = numpyro.param("tau_loc", 0.5)
    theta_loc = numpyro.param("theta_loc", jnp.linspace(-1.0, 1.0, sigma.shape[0]))
    theta_scale = numpyro.param("theta_scale", 3.0 * jnp.ones(sigma.shape[0]), constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    numpyro.sample("tau", dist.LogNormal(tau_loc, 0.5))
    with numpyro.plate("J", sigma.shape[0]):
        numpyro.sample("theta", dist.Normal(theta_loc, theta_scale))


X_MIX = jnp.array([-2.1, 0.3, 1.9, 2.4])
LOCS = jnp.array([-2.0, 0.0, 2.0])
PI = jnp.array([0.3, 0.3, 0.4])


def gmm(x):
    """Gaussian mixture: weights and locations latent, one discrete assignment per point."""
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(3)))
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(weights))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def mix(x):
    """The assignments only (fixed weights and locations): an exact ELBO by enumeration."""
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(PI))
        numpyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=x)


def mix_guide(x):
    phi = numpyro.param("phi", jnp.zeros((x.shape[0], 3)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=phi))


def mix_seq(x):
    """``mix`` with one site per point (enum needs un-batched sites)."""
    for i in range(x.shape[0]):
        z = numpyro.sample(f"z{i}", dist.Categorical(PI))
        numpyro.sample(f"x{i}", dist.Normal(LOCS[z], 1.0), obs=x[i])


def mix_seq_guide(x):
    phi = numpyro.param("phi", jnp.zeros((x.shape[0], 3)))
    for i in range(x.shape[0]):
        numpyro.sample(f"z{i}", dist.Categorical(logits=phi[i]), infer={"strategy": ppl.enum})


PHI = jnp.array([[1.0, -0.5, 0.0], [0.2, 0.4, -1.0], [-1.0, 0.0, 0.8], [0.0, 0.3, 0.5]])


def exact_mix_elbo(phi):
    logq = jax.nn.log_softmax(phi, -1)
    logp = jnp.log(PI) + dist.Normal(LOCS, 1.0).log_prob(X_MIX[:, None])
    return jnp.sum(jnp.exp(logq) * (logp - logq))


def _elbo(model, guide):
    """``ppl.elbo`` with model and guide arguments as tuples and the observations inside the NumPyro model."""
    return ppl.elbo(model, guide, {})


def _assert_same_mean(a, b, max_stderr, z=4.0):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    assert np.all(se <= max_stderr), f"stderr {se} above {max_stderr}"
    err = np.abs(a.mean(0) - b.mean(0))
    assert np.all(err < z * se + 1e-5), f"means differ: {a.mean(0)} vs {b.mean(0)}, stderr {se}"


def _flat(tree):
    return jnp.concatenate([jnp.reshape(v, (v.shape[0], -1)) for v in jax.tree_util.tree_leaves(tree)], axis=1)


# ---------------------------------------------------------------------------------------------- assess = log_density


@pytest.mark.parametrize(
    "fn, args",
    [
        (linreg, (X_LR, Y_LR)),
        (linreg_local, (X_LR, Y_LR)),
        (eight_schools, (SIGMA_8, Y_8)),
        (gmm, (X_MIX,)),
    ],
    ids=["linreg-subsample", "linreg-local-latent", "eight-schools", "gmm"],
)
def test_assess_equals_numpyro_log_density(fn, args):
    gf = from_numpyro(fn)

    @jax.jit
    def both(key):
        tr = gf.simulate(key, {}, *args)
        lp, _ = gf.assess(tr.choices, {}, *args)
        ref, _ = log_density(fn, args, {}, dict(tr.choices))
        return tr.score, lp, ref

    for k in keys(5):
        score, lp, ref = both(k)
        np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(score, lp, rtol=1e-6, atol=1e-5)


def test_choices_are_the_latent_sites_and_plate_indices():
    tr = from_numpyro(linreg_local).simulate(jax.random.key(0), {}, X_LR, Y_LR)
    assert {a: v.shape for a, v in tr.choices.items()} == {"w": (3,), "data": (B_LR,), "u": (B_LR,)}
    idx = np.asarray(tr.choices["data"])
    assert len(set(idx.tolist())) == B_LR and idx.min() >= 0 and idx.max() < N_LR
    # a latent site in the scaled plate contributes scale * log_prob
    u, w = tr.choices["u"], tr.choices["w"]
    y_lp = dist.Normal(X_LR[idx] @ w + 0.5 * u, 1.0).log_prob(Y_LR[idx]).sum()
    expect = dist.Normal(0.0, 1.0).log_prob(w).sum() + (N_LR / B_LR) * (dist.Normal(0.0, 1.0).log_prob(u).sum() + y_lp)
    np.testing.assert_allclose(tr.score, expect, rtol=1e-5)


def test_deterministic_factor_params_and_subsampled_param():
    def m(y):
        s = numpyro.param("s", 2.0, constraint=constraints.positive)
        mu = numpyro.sample("mu", dist.Normal(0.0, s))
        numpyro.factor("pen", -0.5 * mu**2)
        with numpyro.plate("d", 4, subsample_size=2):
            loc = numpyro.param("loc", jnp.arange(4.0), event_dim=0)  # subsampled by the plate
            numpyro.sample("y", dist.Normal(mu + loc, 1.0), obs=y)
        return numpyro.deterministic("twice", 2 * mu)

    gf = from_numpyro(m)
    y = jnp.array([0.1, -0.3])
    params = gf.init_params(jax.random.key(0), y)
    np.testing.assert_allclose(params["s"], jnp.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(params["loc"], jnp.arange(4.0))  # not subsampled by init_params
    assert gf.constrain_params(params)["s"] == pytest.approx(2.0)
    tr = gf.simulate(jax.random.key(1), params, y)
    np.testing.assert_allclose(tr.retval, 2 * tr.choices["mu"])
    ref, _ = log_density(m, (y,), {}, {**gf.constrain_params(params), **tr.choices})
    np.testing.assert_allclose(gf.assess(tr.choices, params, y)[0], ref, rtol=1e-5)
    dets = gf.deterministics(tr.choices, params, y)
    np.testing.assert_allclose(dets["twice"], 2 * tr.choices["mu"])
    ret, dets2 = from_numpyro(m, return_deterministic=True).simulate(jax.random.key(1), params, y).retval
    np.testing.assert_allclose(dets2["twice"], ret)


def test_masks_scales_obs_mask_and_lax_scan():
    def flat(y, ymask):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.handlers.scale(scale=3.0):
            b = numpyro.sample("b", dist.Normal(a, 1.0))
        with numpyro.handlers.mask(mask=jnp.array([True, False, True])):
            c = numpyro.sample("c", dist.Normal(b, 1.0).expand([3]))
        numpyro.sample("y", dist.Normal(c, 1.0), obs=y, obs_mask=ymask)
        return a

    def m(y, ymask):
        def step(carry, _):
            x = numpyro.sample("x", dist.Normal(carry, 1.0))
            return x, x

        jax.lax.scan(step, flat(y, ymask), None, length=4)

    args = (jnp.array([0.5, 1.0, -1.0]), jnp.array([True, False, True]))
    tr = from_numpyro(m).simulate(jax.random.key(0), {}, *args)
    assert tr.choices["x"].shape == (4,) and tr.choices["y_unobserved"].shape == (3,)
    ch = dict(tr.choices)
    xs = ch.pop("x")  # NumPyro itself cannot run numpyro.sample inside lax.scan: the loop's density by hand
    loop = dist.Normal(jnp.concatenate([ch["a"][None], xs[:-1]]), 1.0).log_prob(xs).sum()
    ref, _ = log_density(flat, args, {}, ch)
    np.testing.assert_allclose(tr.score, ref + loop, rtol=1e-5)


def test_composes_with_jit_vmap_inlining_and_with_strategies():
    gf = from_numpyro(eight_schools)
    trs = jax.jit(jax.vmap(lambda k: gf.simulate(k, {}, SIGMA_8, Y_8)))(keys(3))
    assert trs.choices["theta"].shape == (3, J)

    @ppl.gen
    def outer():
        with ppl.scope("m"):
            gf({}, SIGMA_8, Y_8)
        return ppl.sample("extra", dist.Normal(0.0, 1.0))

    assert sorted(outer.simulate(jax.random.key(0)).choices) == ["extra", "m/mu", "m/tau", "m/theta"]
    rewritten = ppl.with_strategies(gf, {"tau": ppl.reinforce})
    assert isinstance(rewritten, NumPyroGenFn)
    tr = rewritten.simulate(jax.random.key(0), {}, SIGMA_8, Y_8)
    np.testing.assert_allclose(gf.assess(tr.choices, {}, SIGMA_8, Y_8)[0], tr.score, rtol=1e-6)
    # the rewritten program keeps its NumPyro source (issue #15: it lost init_params): same parameters, same map
    init, init0 = (g.init_params(jax.random.key(0), SIGMA_8, Y_8) for g in (rewritten, gf))
    assert sorted(init) == sorted(init0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, init, init0)


# ---------------------------------------------------------------------------------------------- ELBO = Trace_ELBO


def _numpyro_elbo(model, guide, unconstrained, constrain, args):
    """Negated ``Trace_ELBO`` loss and its gradient with respect to the unconstrained params."""

    def neg_loss(key, u):
        return -Trace_ELBO().loss(key, constrain(u), model, guide, *args)

    return jax.jit(jax.vmap(jax.value_and_grad(neg_loss, argnums=1), (0, None)))(keys(N_EST, 7), unconstrained)


def _ppl_elbo(model, guide, params, args):
    obj = _elbo(from_numpyro(model), guide)
    f = jax.jit(jax.vmap(obj.value_and_grad_estimate, (0, None, None)))
    v, (_, (g, *_)) = f(keys(N_EST, 3), ({}, *args), (params, *args))
    return v, g


@pytest.mark.parametrize(
    "model, guide, args, max_se",
    [
        (eight_schools, eight_schools_guide, (SIGMA_8, Y_8), (1.0, 2.5)),  # |ELBO| ~ 60: 1.5% relative
        (linreg_local, linreg_local_guide, (X_LR, Y_LR), (0.7, 0.5)),
    ],
    ids=["eight-schools", "linreg-subsampled-local"],
)
def test_elbo_mean_equals_numpyro_trace_elbo(model, guide, args, max_se):
    q = from_numpyro(guide)
    params = q.init_params(jax.random.key(0), *args)
    v, g = _ppl_elbo(model, q, params, args)
    nv, ng = _numpyro_elbo(model, guide, params, lambda u: q.constrain_params(u), args)
    _assert_same_mean(v[:, None], nv[:, None], max_se[0])
    _assert_same_mean(_flat(g), _flat(ng), max_se[1])


# ---------------------------------------------------------------------------------------------- mixture gradients


def test_mixture_enum_gradient_is_exact():
    q = from_numpyro(mix_seq_guide)
    obj = _elbo(from_numpyro(mix_seq), q)
    exact = jax.grad(exact_mix_elbo)(PHI)
    g = jax.jit(lambda k: obj.grad_estimate(k, ({}, X_MIX), ({"phi": PHI}, X_MIX))[1][0]["phi"])
    for k in keys(3):
        np.testing.assert_allclose(g(k), exact, rtol=1e-4, atol=1e-5)


def test_mixture_reinforce_unbiased_numpyro_trace_elbo_biased():
    exact = jax.grad(exact_mix_elbo)(PHI)
    _, g = _ppl_elbo(mix, from_numpyro(mix_guide), {"phi": PHI}, (X_MIX,))
    assert_unbiased(g["phi"].reshape(N_EST, -1), exact.reshape(-1), max_stderr=0.1)  # measured 0.085

    _, ng = _numpyro_elbo(mix, mix_guide, {"phi": PHI}, lambda u: u, (X_MIX,))
    s = np.asarray(ng["phi"]).reshape(N_EST, -1)
    z = np.abs(s.mean(0) - np.asarray(exact).reshape(-1)) / (s.std(0, ddof=1) / np.sqrt(N_EST))
    assert z.max() > 20, f"NumPyro's Trace_ELBO gradient should be biased here: |z| = {z}"
    np.testing.assert_allclose(s.mean(0), 0.0, atol=0.05)  # it estimates E[-d log q] = 0 instead


# ---------------------------------------------------------------------------------------------- errors


def _err(fn, *args, params=None):
    return from_numpyro(fn).simulate(jax.random.key(0), {} if params is None else params, *args)


def test_unsupported_primitives_raise_clear_errors():
    def with_scan():
        def step(c, _):
            return c + numpyro.sample("x", dist.Normal(c, 1.0)), None

        npr_scan(step, 0.0, None, length=3)

    with pytest.raises(ppl.PPLError, match="control_flow.*jax.lax.scan"):
        _err(with_scan)
    with pytest.raises(ppl.PPLError, match="'state'.*mutable"):
        _err(lambda: numpyro.primitives.mutable("state", {"n": 0}))
    with pytest.raises(ppl.PPLError, match="prng_key"):
        _err(lambda: numpyro.prng_key())
    odd = functools.partial(numpyro.sample, "z", dist.Bernoulli(0.5), infer={"enumerate": "flat"})
    with pytest.raises(ppl.PPLError, match="'z'.*enumerate.*'flat'.*parallel"):
        _err(odd)


def test_enumerate_parallel_is_the_enum_strategy():
    site = functools.partial(numpyro.sample, "z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
    ((_, _, strategy),) = sites(from_numpyro(site), {})
    assert strategy == ppl.enum


def test_param_errors():
    def g():
        numpyro.sample("z", dist.Normal(numpyro.param("loc", 0.0), 1.0))

    with pytest.raises(ppl.PPLError, match=r"param\('loc'\) has no value"):
        _err(g)
    with pytest.raises(TypeError, match="first argument is the params dict"):
        from_numpyro(g).simulate(jax.random.key(0), jnp.ones(3))
    with pytest.raises(ppl.PPLError, match="params=False"):
        from_numpyro(g, params=False).simulate(jax.random.key(0))
    tr = from_numpyro(lambda: numpyro.sample("z", dist.Normal(0.0, 1.0)), params=False).simulate(jax.random.key(0))
    assert list(tr.choices) == ["z"]
    with pytest.raises(TypeError, match="already a ppl generative function"):
        from_numpyro(from_numpyro(g))
