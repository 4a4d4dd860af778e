"""One plated mixture written three ways — the Python API (``ppl.plate``), NumPyro syntax through
``ppl.from_numpyro`` (``numpyro.plate``, ``infer={"enumerate": "parallel"}``) and the language (``plate`` block) —
gives the same estimates on the same key, and each is exact against enumeration of all ``2^N`` assignments."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

N, K = 5, 2
X = jnp.array([-2.0, -1.5, 0.3, 1.7, 2.2])
MU = jnp.array([-2.0, 2.0])
PHI = jnp.asarray(np.random.RandomState(0).randn(N, K), jnp.float32)


def exact_elbo(phi):
    """``Σ_z q(z) (log p(x, z) − log q(z))`` over all ``K^N`` assignments."""
    total = 0.0
    for zs in itertools.product(range(K), repeat=N):
        zs = jnp.array(zs)
        lq = jnp.sum(jax.nn.log_softmax(phi)[jnp.arange(N), zs])
        lp = jnp.sum(jnp.log(1.0 / K) + dist.Normal(MU[zs], 1.0).log_prob(X))
        total = total + jnp.exp(lq) * (lp - lq)
    return total


@ppl.gen
def model():
    with ppl.plate("data", N):
        z = ppl.sample("z", dist.Categorical(logits=jnp.zeros(K)))
        ppl.sample("x", dist.Normal(MU[z], 1.0), obs=X)


@ppl.gen
def guide(phi):
    with ppl.plate("data", N):
        ppl.sample("z", dist.Categorical(logits=phi), strategy=ppl.enum)


def numpyro_model(x):
    with numpyro.plate("data", N):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(K)))
        numpyro.sample("x", dist.Normal(MU[z], 1.0), obs=x)


def numpyro_guide(x):
    phi = numpyro.param("phi", jnp.zeros((N, K)))
    with numpyro.plate("data", N):
        numpyro.sample("z", dist.Categorical(logits=phi), infer={"enumerate": "parallel"})


SOURCE = """
model mixture(mu) {
  plate data(5) {
    z ~ Categorical(logits=zeros(2))
    x ~ Normal(mu[z], 1.0)
  }
}
guide mixture_q(phi) {
  plate data(5) { z ~ Categorical(logits=phi) by enum }
}
objective loss = elbo(mixture, mixture_q)
"""


def _three(key):
    """``(value, d/dphi)`` from each front end on ``key``."""
    out = [ppl.elbo(model, guide, {}).value_and_grad_estimate(key, (), (PHI,))]
    out[0] = (out[0][0], out[0][1][1][0])
    p, q = ppl.from_numpyro(numpyro_model), ppl.from_numpyro(numpyro_guide)
    v, g = ppl.elbo(p, q, {}).value_and_grad_estimate(key, ({}, X), ({"phi": PHI}, X))
    out.append((v, g[1][0]["phi"]))
    prog = ppl.lang.compile(SOURCE)
    v, g = ppl.elbo(prog["mixture"], prog["mixture_q"], {"x": X}).value_and_grad_estimate(key, (MU,), (PHI,))
    out.append((v, g[1][0]))
    return out


def test_three_front_ends_agree_and_are_exact():
    ev, eg = jax.value_and_grad(exact_elbo)(PHI)
    results = _three(jax.random.key(3))
    for v, g in results:
        np.testing.assert_allclose(v, ev, rtol=1e-5)
        np.testing.assert_allclose(g, eg, rtol=1e-4, atol=1e-5)
    for v, g in results[1:]:  # the same program: the same numbers, not only close to the oracle
        np.testing.assert_allclose(v, results[0][0], rtol=1e-6)
        np.testing.assert_allclose(g, results[0][1], rtol=1e-5, atol=1e-6)


def test_language_plate_errors():
    with pytest.raises(ppl.PPLError, match="static integer"):
        prog = ppl.lang.compile("model m(n) {\n plate data(n) { x ~ Normal(0.0, 1.0) }\n}")
        prog["m"].simulate(jax.random.key(0), jnp.asarray(3))
    with pytest.raises(ppl.PPLError, match="subsample_size"):
        ppl.lang.compile("model m() {\n plate data(3, batch=2) { x ~ Normal(0.0, 1.0) }\n}")
    bad = ppl.lang.compile("model m() {\n plate data(3) { x ~ Normal(zeros(4), 1.0) }\n}")
    with pytest.raises(ppl.PPLError, match="'x'.*plate 'data'"):
        bad["m"].simulate(jax.random.key(0))


def test_language_subsampled_plate_reads_its_indices():
    prog = ppl.lang.compile(
        "model m(y) {\n plate data(6, subsample_size=2) as idx { x ~ Normal(y[idx], 1.0) }\n return idx\n}"
    )
    tr = prog["m"].simulate(jax.random.key(0), jnp.arange(6.0))
    assert tr.choices["data"].shape == (2,) and tr.choices["x"].shape == (2,)
    lp = dist.Normal(jnp.arange(6.0)[tr.retval], 1.0).log_prob(tr.choices["x"]).sum() * 3.0
    np.testing.assert_allclose(tr.score, lp, rtol=1e-6)


def test_data_of_another_size_than_the_plate_names_the_plate():
    @ppl.gen
    def m():
        with ppl.plate("data", 100):
            ppl.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.PPLError, match=r"'x' has shape \(50,\).*\(100,\).*plate 'data'"):
        m.assess({"x": jnp.zeros(50)})
    with pytest.raises(ppl.PPLError, match=r"'x'.*plate 'data'"):
        ppl.elbo(m, ppl.gen(lambda: None), {"x": jnp.zeros(50)}).estimate(jax.random.key(0), (), ())
