"""The objective library on a conjugate Gaussian model with closed forms, and estimated-density families."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from tests.stats import assert_unbiased, keys

XS = jnp.array([0.5, 1.2, -0.3])
N_OBS = 3
POST_MU, POST_SD = float(XS.sum() / (N_OBS + 1)), float(1 / np.sqrt(N_OBS + 1))
LOG_PX = float(dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3) + 1).log_prob(XS))


@ppl.gen
def model(m0):
    z = ppl.sample("z", dist.Normal(m0, 1.0))
    ppl.sample("x", dist.Normal(z, 1.0).expand([N_OBS]).to_event(1))


@ppl.gen
def guide(mu, sd):
    ppl.sample("z", dist.Normal(mu, sd))


DATA = {"x": XS}


def closed_form_elbo(m0, mu, sd):
    """E_q[log p(x, z) - log q(z)] for q = N(mu, sd), prior N(m0, 1), likelihood N(z, 1)."""
    e_prior = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((mu - m0) ** 2 + sd**2)
    e_lik = jnp.sum(-0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((XS - mu) ** 2 + sd**2))
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * sd**2)
    return e_prior + e_lik + entropy


def batch(obj, n, *args, seed=0):
    return jax.jit(jax.vmap(obj.value_and_grad_estimate, (0, *([None] * len(args)))))(keys(n, seed), *args)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ppl.elbo(model, guide, DATA),
        *[(lambda K=K: ppl.iwae(model, guide, DATA, K)) for K in (1, 2, 5, 10)],
        lambda: ppl.dreg_iwae(model, guide, DATA, 5),
        lambda: ppl.renyi(model, guide, DATA, 5, 0.5),
    ],
)
def test_exact_posterior_gives_log_marginal_with_zero_variance(make):
    v, _ = batch(make(), 500, (0.0,), (POST_MU, POST_SD))
    np.testing.assert_allclose(np.asarray(v), LOG_PX, rtol=2e-6)


def test_elbo_value_and_gradient_match_closed_form():
    m0, mu, sd = 0.2, -0.4, 0.8
    v, (gm, gq) = batch(ppl.elbo(model, guide, DATA), 20_000, (m0,), (mu, sd))
    exact_v = closed_form_elbo(m0, mu, sd)
    exact_gm = jax.grad(closed_form_elbo, 0)(m0, mu, sd)
    exact_gmu, exact_gsd = jax.grad(closed_form_elbo, (1, 2))(m0, mu, sd)
    assert_unbiased(v, exact_v, max_stderr=0.03)
    assert_unbiased(gm[0], exact_gm, max_stderr=0.01)
    assert_unbiased(gq[0], exact_gmu, max_stderr=0.03)
    assert_unbiased(gq[1], exact_gsd, max_stderr=0.04)


def _mean_se(x):
    x = np.asarray(x, np.float64)
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(len(x))


def test_iwae_reparam_and_reinforce_agree():
    """Far from the posterior (gradient ≈ 1.3 in the mean); reinforce with a baseline near the IWAE value."""
    args = ((0.0,), (-1.0, 0.9))
    _, (_, g_rep) = batch(ppl.iwae(model, guide, DATA, 3), 20_000, *args)
    rf = ppl.iwae(model, guide, DATA, 3, strategies={"z": ppl.baseline(LOG_PX - 0.5)})
    _, (_, g_rf) = batch(rf, 20_000, *args, seed=1)
    for a, b in zip(g_rep, g_rf, strict=True):
        (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
        assert sb < 0.06 and abs(ma - mb) < 4 * np.hypot(sa, sb), (ma, mb, sa, sb)
        assert np.var(np.asarray(b)) > np.var(np.asarray(a))  # reinforce is the noisier one here


def test_dreg_same_mean_lower_variance_than_iwae():
    args = ((0.0,), (0.3, 0.9))
    v1, (_, g1) = batch(ppl.iwae(model, guide, DATA, 5), 20_000, *args)
    v2, (_, g2) = batch(ppl.dreg_iwae(model, guide, DATA, 5), 20_000, *args)
    np.testing.assert_allclose(np.asarray(v1), np.asarray(v2), rtol=1e-5)  # same keys, same value
    for a, b in zip(g1, g2, strict=True):
        (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
        assert abs(ma - mb) < 4 * np.hypot(sa, sb), (ma, mb)
        assert np.var(np.asarray(b)) < 0.5 * np.var(np.asarray(a))


def test_wake_phases_train_only_their_side():
    args = ((0.1,), (0.3, 0.9))
    _, (gm, gq) = batch(ppl.p_wake(model, guide, DATA, 5), 100, *args)
    assert np.all(np.asarray(gq[0]) == 0) and np.all(np.asarray(gq[1]) == 0)
    assert np.any(np.asarray(gm[0]) != 0)
    _, (gm, gq) = batch(ppl.q_wake(model, guide, DATA, 5), 100, *args)
    assert np.all(np.asarray(gm[0]) == 0) and np.any(np.asarray(gq[0]) != 0)


def test_p_wake_gradient_approaches_grad_log_marginal():
    """With many particles the self-normalized wake gradient is close to d/dm0 log p(x) (closed form)."""
    m0 = 0.3
    exact = float(jnp.sum(XS - m0) / (N_OBS + 1))  # d/dm0 log N(x; m0·1, I + 11ᵀ)
    _, (gm, _) = batch(ppl.p_wake(model, guide, DATA, 2000), 200, (m0,), (POST_MU, POST_SD))
    m, se = _mean_se(gm[0])
    assert abs(m - exact) < 4 * se + 0.01, (m, exact, se)


def test_vimco_matches_exact_iwae_gradient_on_discrete_model():
    @ppl.gen
    def dmodel():
        z = ppl.sample("z", dist.Bernoulli(0.3))
        ppl.sample("x", dist.Normal(3.0 * z, 1.0))

    @ppl.gen
    def dguide(phi):
        ppl.sample("z", dist.Bernoulli(logits=phi))

    K, x = 3, 2.0

    def exact_iwae(phi):
        q1 = jax.nn.sigmoid(phi)
        logw = {
            z: jnp.log(0.3 if z else 0.7) + dist.Normal(3.0 * z, 1.0).log_prob(x) - jnp.log(q1 if z else 1 - q1)
            for z in (0, 1)
        }
        total = 0.0
        for cfg in np.ndindex(*(2,) * K):
            prob = jnp.prod(jnp.array([q1 if z else 1 - q1 for z in cfg]))
            total = total + prob * (jax.scipy.special.logsumexp(jnp.array([logw[z] for z in cfg])) - jnp.log(K))
        return total

    phi = 0.4
    exact = jax.grad(exact_iwae)(phi)
    _, (_, g_v) = batch(ppl.vimco(dmodel, dguide, {"x": x}, K), 20_000, (), (phi,))
    _, (_, g_r) = batch(ppl.iwae(dmodel, dguide, {"x": x}, K), 20_000, (), (phi,), seed=1)
    assert_unbiased(g_v[0], exact, max_stderr=0.01)
    assert_unbiased(g_r[0], exact, max_stderr=0.03)
    assert np.var(np.asarray(g_v[0])) < np.var(np.asarray(g_r[0]))


@ppl.gen
def aux_family(s):
    u = ppl.sample("u", dist.Normal(0.0, 1.0))
    ppl.sample("z", dist.Normal(u, s))


@ppl.gen
def discrete_aux(s):
    u = ppl.sample("u", dist.Bernoulli(0.3))
    ppl.sample("z", dist.Normal(2.0 * u - 1.0, s))


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize(
    "family,exact",
    [
        (aux_family, lambda z, s: jnp.exp(dist.Normal(0.0, jnp.sqrt(1 + s**2)).log_prob(z))),
        (
            discrete_aux,
            lambda z, s: 0.3 * jnp.exp(dist.Normal(1.0, s).log_prob(z))
            + 0.7 * jnp.exp(dist.Normal(-1.0, s).log_prob(z)),
        ),
    ],
)
def test_marginal_density_estimate_is_unbiased(family, exact, m):
    fam = ppl.marginal(family, ["z"], inner=ppl.sir(m))
    est = ppl.expectation(lambda s: jnp.exp(ppl.density(fam, {"z": 0.4}, s)))
    v = jax.jit(jax.vmap(est.estimate, (0, None)))(keys(20_000), 0.8)
    assert_unbiased(v, exact(0.4, 0.8), max_stderr=0.01)


def test_marginal_reciprocal_density_is_unbiased_with_custom_proposal():
    """E_{(z,u)~q}[g(z) / q̂(z)] = ∫ g = 1 for g a normalized density (narrow: 1/q(z|u) is heavy-tailed)."""

    @ppl.gen
    def proposal(zs, s):
        ppl.sample("u", dist.Normal(zs["z"] / (1 + s**2), s / jnp.sqrt(1 + s**2)))  # the exact conditional

    for inner in (ppl.sir(1), ppl.sir(4), ppl.sir(2, proposal=proposal)):
        fam = ppl.marginal(aux_family, ["z"], inner=inner)

        def ratio(s, fam=fam):
            z, log_q = ppl.sim(fam, s)
            return jnp.exp(dist.Normal(0.5, 0.5).log_prob(z["z"]) - log_q)  # g narrower than q(z|u): finite variance

        v = jax.jit(jax.vmap(ppl.expectation(ratio).estimate, (0, None)))(keys(20_000), 0.8)
        assert_unbiased(v, 1.0, max_stderr=0.02)


def test_hierarchical_bounds_are_ordered():
    fam1 = ppl.marginal(aux_family, ["z"], inner=ppl.sir(1))
    fam5 = ppl.marginal(aux_family, ["z"], inner=ppl.sir(5))
    hvi = batch(ppl.elbo(model, fam1, DATA), 5000, (0.0,), (0.5,))[0]
    iwhvi = batch(ppl.elbo(model, fam5, DATA), 5000, (0.0,), (0.5,))[0]
    diwhvi, grads = batch(ppl.iwae(model, fam5, DATA, 5), 5000, (0.0,), (0.5,))
    (h, hs), (i, is_), (d, ds) = _mean_se(hvi), _mean_se(iwhvi), _mean_se(diwhvi)
    assert np.all(np.isfinite(np.asarray(grads[1][0])))
    assert h < i + 4 * np.hypot(hs, is_) and i < d + 4 * np.hypot(is_, ds) and d < LOG_PX + 4 * ds


def test_objective_strategies_argument():
    with pytest.raises(ppl.PPLError, match="'nope'"):
        ppl.elbo(model, guide, DATA, strategies={"nope": ppl.reinforce}).estimate(jax.random.key(0), (0.0,), (0.1, 1.0))
    _, (_, a) = batch(ppl.elbo(model, guide, DATA), 2000, (0.0,), (0.3, 0.9))
    _, (_, b) = batch(ppl.elbo(model, guide, DATA, strategies={"z": ppl.reinforce}), 2000, (0.0,), (0.3, 0.9))
    assert np.var(np.asarray(b[0])) > 2 * np.var(np.asarray(a[0]))


def test_obs_argument_replaces_data():
    obj = ppl.elbo(model, guide, DATA)
    v1 = obj.estimate(jax.random.key(0), (0.0,), (POST_MU, POST_SD))
    v2 = obj.estimate(jax.random.key(0), (0.0,), (POST_MU, POST_SD), {"x": XS + 1.0})
    assert abs(float(v1) - LOG_PX) < 1e-4 and abs(float(v2) - float(v1)) > 0.1
