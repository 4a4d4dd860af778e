"""``ppl.marginal`` / ``ppl.sir``: estimated densities as statistical claims, and the hierarchical bounds built on them.

Two families with an auxiliary variable ``u`` and a closed-form marginal ``q(z)``:

* ``coin``:  ``u ~ Bernoulli(0.3)``, ``z ~ N(2u − 1, s)`` — ``q(z) = 0.3·N(z; 1, s) + 0.7·N(z; −1, s)``;
* ``gauss``: ``u ~ N(0, 1)``,        ``z ~ N(u, s)``      — ``q(z) = N(z; 0, √(1 + s²))``.

Claims (``N = 20 000`` independent estimates, ``jax.jit(jax.vmap(...))`` over keys, ``tests.stats.assert_unbiased``):

* ``exp(density(marginal(q, ["z"], sir(m, proposal)), {"z": z0}, s))`` is unbiased for ``q(z0)``, and (ADEV through
  the proposal draws) its gradient for ``∇(s, z0) q(z0)``; with the exact conditional ``q(u | z)`` as proposal every
  estimate *is* ``q(z0)``;
* the SIR reciprocal: ``(z, log q̂) = sim(marginal(...))`` gives ``E[g(z) / q̂(z)] = ∫ g = 1`` for a normalized
  density ``g``, so its gradient in ``s`` is unbiased for 0; with the exact proposal ``log q̂(z) = log q(z)``;
* HVI (``elbo`` with ``sir(1)``) in closed form on the conjugate Gaussian model, in value and in the gradient for the
  model's prior mean and the family's three parameters; with the exact proposal, the ELBO of the marginal; and the
  ordering HVI < IWHVI ≤ DIWHVI ≤ ``log p(x)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from tests.stats import assert_unbiased, keys

N = 20_000


def normal_pdf(z, m, s):
    return jnp.exp(dist.Normal(m, s).log_prob(z))


# ---------------------------------------------------------------------------------------------- families


@ppl.gen
def coin(s):
    u = ppl.sample("u", dist.Bernoulli(0.3))
    ppl.sample("z", dist.Normal(2.0 * u - 1.0, s))


@ppl.gen
def gauss(s):
    u = ppl.sample("u", dist.Normal(0.0, 1.0))
    ppl.sample("z", dist.Normal(u, s))


def coin_q(z, s):
    return 0.3 * normal_pdf(z, 1.0, s) + 0.7 * normal_pdf(z, -1.0, s)


def gauss_q(z, s):
    return normal_pdf(z, 0.0, jnp.sqrt(1.0 + s**2))


EXACT = {"coin": coin_q, "gauss": gauss_q}
FAMILY = {"coin": coin, "gauss": gauss}


# proposals r(u | z, s): a @ppl.gen taking the selected choices, then the family's arguments


@ppl.gen
def coin_exact(zs, s):
    """The exact conditional ``q(u = 1 | z)``."""
    ppl.sample("u", dist.Bernoulli(probs=0.3 * normal_pdf(zs["z"], 1.0, s) / coin_q(zs["z"], s)))


@ppl.gen
def coin_rough(zs, s):
    ppl.sample("u", dist.Bernoulli(probs=0.5))


@ppl.gen
def gauss_exact(zs, s):
    """The exact conditional ``q(u | z) = N(z / (1 + s²), s / √(1 + s²))``."""
    ppl.sample("u", dist.Normal(zs["z"] / (1 + s**2), s / jnp.sqrt(1 + s**2)))


@ppl.gen
def gauss_rough(zs, s):
    ppl.sample("u", dist.Normal(0.5 * zs["z"], 0.9))


PROPOSAL = {"coin_exact": coin_exact, "coin_rough": coin_rough, "gauss_exact": gauss_exact, "gauss_rough": gauss_rough}


def make_family(family, m, proposal):
    return ppl.marginal(FAMILY[family], ["z"], inner=ppl.sir(m, PROPOSAL.get(f"{family}_{proposal}")))


_COMPILED: dict = {}


def compiled(kind, family, m, proposal):
    """One ``jit(vmap(value_and_grad_estimate))`` per case, shared between tests."""
    case = (kind, family, m, proposal)
    if case not in _COMPILED:
        fam = make_family(family, m, proposal)
        if kind == "density":  # q̂(z0), as a function of (s, z0)
            obj = ppl.expectation(lambda s, z0: jnp.exp(ppl.density(fam, {"z": z0}, s)))
        elif kind == "reciprocal":  # g(z) / q̂(z), z ~ q; g = N(0, 1)
            obj = ppl.expectation(lambda s: _reciprocal(fam, s))
        else:  # log q̂(z) − log q(z), z ~ q
            exact = EXACT[family]
            obj = ppl.expectation(lambda s: _log_ratio(fam, exact, s))
        in_axes = (0, None, None) if kind == "density" else (0, None)
        _COMPILED[case] = (obj, jax.jit(jax.vmap(obj.value_and_grad_estimate, in_axes)))
    return _COMPILED[case]


def _reciprocal(fam, s):
    z, log_q = ppl.sim(fam, s)
    return jnp.exp(dist.Normal(0.0, 1.0).log_prob(z["z"]) - log_q)


def _log_ratio(fam, exact, s):
    z, log_q = ppl.sim(fam, s)
    return log_q - jnp.log(exact(z["z"], s))


S = 0.8
Z0S = (-0.7, 0.4, 1.5)

DENSITY_CASES = [
    (family, m, proposal)
    for family in ("coin", "gauss")
    for m, proposal in ((1, "prior"), (3, "prior"), (3, "rough"), (2, "exact"))
]


# ---------------------------------------------------------------------------------------------- density


@pytest.mark.parametrize("family,m,proposal", DENSITY_CASES)
def test_density_estimate_and_its_gradient_are_unbiased(family, m, proposal):
    """``E[q̂(z0)] = q(z0)`` and ``E[∇(s, z0) q̂(z0)] = ∇(s, z0) q(z0)`` at three points; with the exact proposal
    every estimate equals ``q(z0)``."""
    _, f = compiled("density", family, m, proposal)
    exact = EXACT[family]
    for i, z0 in enumerate(Z0S):
        v, (gs, gz) = f(keys(N, seed=i), S, z0)
        v, gs, gz = (np.asarray(x, np.float64) for x in (v, gs, gz))
        exact_gs, exact_gz = jax.grad(exact, (1, 0))(z0, S)
        if proposal == "exact":
            np.testing.assert_allclose(v, exact(z0, S), rtol=1e-5)
        assert_unbiased(v, exact(z0, S), max_stderr=0.002)  # q(z0) ∈ [0.12, 0.35]
        assert_unbiased(gs, exact_gs, max_stderr=0.005)  # |gradients| ∈ [0.03, 0.29]
        assert_unbiased(gz, exact_gz, max_stderr=0.005)


def test_density_estimate_of_log_is_biased_low():
    """Only ``q̂`` is unbiased: ``E[log q̂] < log q`` (Jensen), visibly so for the mixture with ``sir(1)``."""
    fam = make_family("coin", 1, "prior")
    est = ppl.expectation(lambda s: ppl.density(fam, {"z": 0.5}, s))
    v = np.asarray(jax.jit(jax.vmap(est.estimate, (0, None)))(keys(N), S), np.float64)
    se = v.std(ddof=1) / np.sqrt(N)
    assert se > 0 and v.mean() + 4 * se < np.log(coin_q(0.5, S))


# ---------------------------------------------------------------------------------------------- reciprocal

S_R = 1.2  # g(z)/q(z|u) has a finite variance under z ~ q(z|u), g = N(0, 1), iff s² > 1/2
RECIPROCAL_CASES = [
    (family, m, proposal)
    for family in ("coin", "gauss")
    for m, proposal in ((1, "prior"), (4, "prior"), (2, "rough"), (2, "exact"))
]


@pytest.mark.parametrize("family,m,proposal", RECIPROCAL_CASES)
def test_reciprocal_density_estimate_is_unbiased(family, m, proposal):
    """``E_{(z, u_1) ~ q, u_2.. ~ r}[g(z) / q̂(z)] = ∫ g = 1``, independent of ``s``: gradient unbiased for 0."""
    _, f = compiled("reciprocal", family, m, proposal)
    v, gs = f(keys(N, seed=7), S_R)
    assert_unbiased(v, 1.0, max_stderr=0.01)
    assert_unbiased(gs, 0.0, max_stderr=0.03)


@pytest.mark.parametrize("family", ["coin", "gauss"])
@pytest.mark.parametrize("m", [1, 3])
def test_sim_with_exact_proposal_returns_the_exact_log_density(family, m):
    _, f = compiled("log_ratio", family, m, "exact")
    v, _ = f(keys(N, seed=8), S_R)
    np.testing.assert_allclose(np.asarray(v), 0.0, atol=2e-5)


def test_sim_under_seed_draws_z_from_the_marginal():
    """Outside an expectation, ``ppl.seed(sim)`` draws ``z``; its mean and variance are those of ``q(z)``."""
    fam = make_family("gauss", 3, "prior")
    z, log_q = jax.jit(jax.vmap(ppl.seed(lambda s: ppl.sim(fam, s)), (0, None)))(keys(N, seed=9), S)
    z = np.asarray(z["z"], np.float64)
    assert_unbiased(z, 0.0, max_stderr=0.01)
    assert_unbiased(z**2, 1 + S**2, max_stderr=0.02)
    assert np.all(np.isfinite(np.asarray(log_q)))


def test_marginal_errors():
    with pytest.raises(ValueError, match="positive int"):
        ppl.sir(0)
    fam = ppl.marginal(gauss, ["w*"])
    obj = ppl.expectation(lambda s: ppl.sim(fam, s)[1])
    with pytest.raises(ValueError, match=r"w\*"):
        obj.estimate(jax.random.key(0), S)


# ---------------------------------------------------------------------------------------------- HVI / IWHVI / DIWHVI

XS = jnp.array([0.5, 1.2, -0.3, 0.9])
N_OBS = 4
DATA = {"x": XS}
M0 = 0.2


@ppl.gen
def model(m0):
    z = ppl.sample("z", dist.Normal(m0, 1.0))
    ppl.sample("x", dist.Normal(z, 1.0).expand([N_OBS]).to_event(1))


@ppl.gen
def hier(a, b, s):
    """``q(z) = N(b, √(a² + s²))`` through ``u ~ N(0, 1)``, ``z ~ N(a·u + b, s)``."""
    u = ppl.sample("u", dist.Normal(0.0, 1.0))
    ppl.sample("z", dist.Normal(a * u + b, s))


@ppl.gen
def hier_exact(zs, a, b, s):
    """The exact conditional ``q(u | z)``."""
    prec = 1.0 + a**2 / s**2
    ppl.sample("u", dist.Normal(a * (zs["z"] - b) / s**2 / prec, 1.0 / jnp.sqrt(prec)))


POST_MU, POST_SD = (M0 + float(jnp.sum(XS))) / (1 + N_OBS), 1 / np.sqrt(1 + N_OBS)
LOG_PX = float(dist.MultivariateNormal(M0 * jnp.ones(N_OBS), jnp.eye(N_OBS) + 1.0).log_prob(XS))
OFF = (0.5, 0.1, 0.4)  # (a, b, s): q(z) = N(0.1, 0.64) — off the posterior N(0.5, 0.447)
EXACT_MARGINAL = (0.4, POST_MU, 0.2)  # a² + s² = 0.2 = posterior variance: q(z) is the posterior


def e_log_joint(m0, mean, var):
    """``E_{z ~ N(mean, var)}[log p(x, z)]``."""
    e_prior = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((mean - m0) ** 2 + var)
    return e_prior + jnp.sum(-0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((XS - mean) ** 2 + var))


def closed_form_hvi(m0, a, b, s):
    """``E_{q(z,u)}[log p(x, z) − log q(z | u)]``: the ELBO with ``log q(z)`` replaced by ``log q(z | u)``."""
    return e_log_joint(m0, b, a**2 + s**2) + 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)


def closed_form_marginal_elbo(m0, a, b, s):
    return e_log_joint(m0, b, a**2 + s**2) + 0.5 * jnp.log(2 * jnp.pi * jnp.e * (a**2 + s**2))


HIER = {
    "hvi": ppl.elbo(model, ppl.marginal(hier, ["z"], ppl.sir(1)), DATA),
    "hvi_reinforce": ppl.elbo(model, ppl.marginal(hier, ["z"], ppl.sir(1)), DATA, strategies={"z": ppl.reinforce}),
    "exact_proposal": ppl.elbo(model, ppl.marginal(hier, ["z"], ppl.sir(2, proposal=hier_exact)), DATA),
    "iwhvi": ppl.elbo(model, ppl.marginal(hier, ["z"], ppl.sir(5)), DATA),
    "diwhvi": ppl.iwae(model, ppl.marginal(hier, ["z"], ppl.sir(5)), DATA, 5),
}
_HIER_COMPILED: dict = {}


def hier_batch(name, args, seed=0):
    if name not in _HIER_COMPILED:
        _HIER_COMPILED[name] = jax.jit(jax.vmap(HIER[name].value_and_grad_estimate, (0, None, None)))
    v, (gm, gq) = _HIER_COMPILED[name](keys(N, seed), (M0,), args)
    return np.asarray(v, np.float64), [np.asarray(g, np.float64) for g in (*gm, *gq)]


@pytest.mark.parametrize(
    "name,closed_form",
    [("hvi", closed_form_hvi), ("hvi_reinforce", closed_form_hvi), ("exact_proposal", closed_form_marginal_elbo)],
)
def test_hvi_value_and_gradient_match_closed_form(name, closed_form):
    """HVI (``sir(1)``, default proposal) and the ELBO of a family whose density is estimated exactly, against closed
    forms: value and the gradient in ``(m0; a, b, s)``; with ``strategies={"z": reinforce}`` still unbiased."""
    v, grads = hier_batch(name, OFF, seed=1)
    exact_grads = jax.grad(closed_form, (0, 1, 2, 3))(M0, *OFF)  # HVI: (−0.1, −2.4, 2.0, 0.6); ELBO: s −1.0
    bounds = (0.006, 0.2, 0.2, 0.25) if name == "hvi_reinforce" else (0.006, 0.04, 0.03, 0.04)
    assert_unbiased(v, closed_form(M0, *OFF), max_stderr=0.02)
    for g, eg, bound in zip(grads, exact_grads, bounds, strict=True):
        assert_unbiased(g, eg, max_stderr=bound)


def test_strategies_change_the_hvi_estimator():
    """A matched pattern changes the estimator (same mean, checked above; far larger variance); an unmatched one is
    an error naming it."""
    _, rep = hier_batch("hvi", OFF, seed=1)
    _, rf = hier_batch("hvi_reinforce", OFF, seed=1)
    for a, b in zip(rep[1:], rf[1:], strict=True):
        assert np.var(b) > 4 * np.var(a), (np.var(a), np.var(b))
    bad = ppl.elbo(model, ppl.marginal(hier, ["z"], ppl.sir(2)), DATA, strategies={"u": ppl.reparam, "v": ppl.enum})
    with pytest.raises(ppl.PPLError, match="'v'"):
        bad.estimate(jax.random.key(0), (M0,), OFF)


def test_hierarchical_bounds_are_ordered_and_have_finite_gradients():
    """With ``q(z)`` the exact posterior, HVI = log p(x) − I(u; z) = log p(x) − ½ log(1 + a²/s²) exactly; importance
    sampling of ``u`` (IWHVI, ``sir(5)``) tightens it, and K = 5 outer particles (DIWHVI) again, below log p(x)."""
    vals = {}
    for seed, name in enumerate(("hvi", "iwhvi", "diwhvi")):
        v, grads = hier_batch(name, EXACT_MARGINAL, seed=10 + seed)
        assert np.all(np.isfinite(v)) and all(np.all(np.isfinite(g)) for g in grads), name
        vals[name] = (v.mean(), v.std(ddof=1) / np.sqrt(N))
    (h, hs), (i, is_), (d, ds) = vals["hvi"], vals["iwhvi"], vals["diwhvi"]
    a, _, s = EXACT_MARGINAL
    mutual_info = 0.5 * np.log(1 + a**2 / s**2)
    assert abs(h - (LOG_PX - mutual_info)) < 4 * hs, (h, LOG_PX - mutual_info, hs)
    assert h + 4 * np.hypot(hs, is_) < i, (h, i)  # strictly tighter (the gap is > 0.3 here)
    assert i < d + 4 * np.hypot(is_, ds), (i, d)
    assert d < LOG_PX + 4 * ds, (d, LOG_PX)
    assert LOG_PX - d < 0.5 * (LOG_PX - h)  # and DIWHVI recovers most of HVI's gap


# ---------------------------------------------------------------------------------------------- eager / jit / vmap


@pytest.mark.parametrize("name", ["hvi", "diwhvi"])
def test_hierarchical_eager_matches_jit_vmap(name):
    v, grads = hier_batch(name, OFF, seed=1)
    i = 3
    ve, (gme, gqe) = HIER[name].value_and_grad_estimate(keys(N, 1)[i], (M0,), OFF)
    tol = dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(float(ve), v[i], **tol)
    np.testing.assert_allclose(np.asarray([*gme, *gqe], np.float64), [g[i] for g in grads], **tol)


def test_density_eager_matches_jit_vmap():
    obj, f = compiled("density", "coin", 3, "rough")
    v, (gs, gz) = f(keys(N, seed=0), S, Z0S[0])
    ve, (gse, gze) = obj.value_and_grad_estimate(keys(N, seed=0)[5], S, Z0S[0])
    np.testing.assert_allclose([float(ve), float(gse), float(gze)], [v[5], gs[5], gz[5]], rtol=2e-5, atol=2e-6)
