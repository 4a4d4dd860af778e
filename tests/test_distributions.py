"""Log-density gradients of every distribution family used at sites, at the points we initialise from.

``ppl.core.distributions.log_prob`` is what every transformation scores a site with. Its gradient with respect to
each parameter is checked against an analytic formula and a float64 central finite difference, at the
initialisation points (logit / location exactly 0, probability 0.5 = sigmoid(0), rate / concentration / scale 1 =
exp(0)) and at a generic point. NumPyro's ``BernoulliLogits`` and ``BinomialLogits`` log densities have a kink at
logit 0 (``clip``/``abs``) that makes their gradient there wrong; ``log_prob`` patches both, and the tests below
show the raw NumPyro gradient is indeed off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax.scipy.special import digamma

import ppl
from ppl.core.distributions import log_prob

sig = jax.nn.sigmoid


def onehot(k, n=3):
    return jnp.zeros(n).at[k].set(1.0)


# name: (distribution as a function of the scalar parameter p, value x, d/dp log p(x) analytic, points)
# Categorical / Dirichlet vary the first component of a 3-vector (the others fixed at 0 / 1).
FAMILIES = {
    "Normal.loc": (lambda p: dist.Normal(p, 1.0), 0.3, lambda p, x: x - p, [0.0, 0.7]),
    "Normal.scale": (lambda p: dist.Normal(0.2, p), 0.3, lambda p, x: -1 / p + (x - 0.2) ** 2 / p**3, [1.0, 0.7]),
    "Bernoulli.probs/x=1": (lambda p: dist.Bernoulli(probs=p), 1.0, lambda p, x: 1 / p, [0.5, 0.3]),
    "Bernoulli.logits/x=1": (lambda p: dist.Bernoulli(logits=p), 1.0, lambda p, x: x - sig(p), [0.0, 0.7]),
    "Bernoulli.logits/x=0": (lambda p: dist.Bernoulli(logits=p), 0.0, lambda p, x: x - sig(p), [0.0, -1.3]),
    "Categorical.logits/x=0": (
        lambda p: dist.Categorical(logits=jnp.array([p, 0.0, 0.0])),
        0,
        lambda p, x: (onehot(x) - jax.nn.softmax(jnp.array([p, 0.0, 0.0])))[0],
        [0.0, 0.7],
    ),
    # probs through softmax (how a probs parameter is optimised): the same gradient as the logits form
    "Categorical.probs": (
        lambda p: dist.Categorical(probs=jax.nn.softmax(jnp.array([p, 0.0, 0.0]))),
        1,
        lambda p, x: (onehot(x) - jax.nn.softmax(jnp.array([p, 0.0, 0.0])))[0],
        [0.0, 0.7],
    ),
    "Poisson.rate/x=2": (lambda p: dist.Poisson(p), 2.0, lambda p, x: x / p - 1, [1.0, 2.5]),
    "Geometric.probs": (lambda p: dist.Geometric(probs=p), 2.0, lambda p, x: 1 / p - x / (1 - p), [0.5, 0.3]),
    "Geometric.logits": (lambda p: dist.Geometric(logits=p), 2.0, lambda p, x: 1 - (x + 1) * sig(p), [0.0, 0.7]),
    "Gamma.concentration": (
        lambda p: dist.Gamma(p, 2.0),
        1.3,
        lambda p, x: jnp.log(2.0) - digamma(p) + jnp.log(x),
        [1.0, 2.5],
    ),
    "Gamma.rate": (lambda p: dist.Gamma(1.5, p), 1.3, lambda p, x: 1.5 / p - x, [1.0, 2.5]),
    "Beta.a": (lambda p: dist.Beta(p, 2.0), 0.3, lambda p, x: jnp.log(x) - digamma(p) + digamma(p + 2.0), [1.0, 2.5]),
    "Beta.b": (
        lambda p: dist.Beta(2.0, p),
        0.3,
        lambda p, x: jnp.log1p(-x) - digamma(p) + digamma(p + 2.0),
        [1.0, 2.5],
    ),
    "Dirichlet": (
        lambda p: dist.Dirichlet(jnp.array([p, 1.0, 1.0])),
        np.array([0.2, 0.3, 0.5]),
        lambda p, x: jnp.log(x[0]) - digamma(p) + digamma(p + 2.0),
        [1.0, 2.5],
    ),
    "Binomial.logits/x=2": (lambda p: dist.Binomial(5, logits=p), 2.0, lambda p, x: x - 5 * sig(p), [0.0, 0.7]),
    "Binomial.logits/x=5": (lambda p: dist.Binomial(5, logits=p), 5.0, lambda p, x: x - 5 * sig(p), [0.0, 0.7]),
}

CASES = [(name, p) for name, (_, _, _, points) in FAMILIES.items() for p in points]


def central_difference(f, p, eps=1e-6):
    return (f(p + eps) - f(p - eps)) / (2 * eps)


@pytest.mark.parametrize(("name", "p"), CASES, ids=[f"{n}@{p}" for n, p in CASES])
def test_log_prob_gradient(name, p):
    make, x, analytic, _ = FAMILIES[name]
    # float64: gradient == analytic formula, and the formula == a central finite difference
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64) if jnp.ndim(x) else x
        f = lambda q: jnp.sum(log_prob(make(q), x64))
        p64 = jnp.asarray(p, jnp.float64)
        g = jax.grad(f)(p64)
        assert g.dtype == jnp.float64
        exact = analytic(p64, x64)
        np.testing.assert_allclose(central_difference(f, p64), exact, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g, exact, rtol=1e-9, atol=1e-9)
    # default precision, as models run; and the (patched) value equals NumPyro's
    p32 = jnp.asarray(p, jnp.float32)
    g32 = jax.grad(lambda q: jnp.sum(log_prob(make(q), x)))(p32)
    np.testing.assert_allclose(g32, analytic(p32, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_prob(make(p32), x), make(p32).log_prob(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "n"),
    [(lambda lg: dist.Bernoulli(logits=lg), 1), (lambda lg: dist.Binomial(5, logits=lg), 5)],
    ids=["BernoulliLogits", "BinomialLogits"],
)
@pytest.mark.parametrize("x", [0.0, 1.0])
def test_numpyro_raw_logits_gradient_is_off_at_zero(make, n, x):
    """Why ``log_prob`` patches these families: NumPyro's own gradient at logit 0 is off by n/2."""
    d = make(jnp.asarray(0.0))
    exact = x - n * 0.5  # d/dl [x·l − n·softplus(l)] at l = 0
    raw = jax.grad(lambda lg: jnp.sum(make(lg).log_prob(x)))(jnp.asarray(0.0))
    patched = jax.grad(lambda lg: jnp.sum(log_prob(make(lg), x)))(jnp.asarray(0.0))
    np.testing.assert_allclose(patched, exact, atol=1e-6)
    assert abs(float(raw) - exact) == pytest.approx(n / 2, abs=1e-6), f"NumPyro's gradient is {raw}, exact {exact}"
    # away from 0 NumPyro is right (the patch changes only the gradient at the kink, never values)
    g = jax.grad(lambda lg: jnp.sum(make(lg).log_prob(x)))(jnp.asarray(0.4))
    np.testing.assert_allclose(g, x - n * sig(0.4), rtol=1e-5)
    np.testing.assert_allclose(log_prob(d, x), d.log_prob(x), rtol=1e-6)


def test_patched_values_match_numpyro_over_the_support_and_batches():
    logits = jnp.array([-30.0, -2.0, 0.0, 0.5, 30.0])
    for k in range(6):
        d = dist.Binomial(5, logits=logits)
        np.testing.assert_allclose(log_prob(d, float(k)), d.log_prob(float(k)), rtol=1e-5, atol=1e-5)
    for k in (0.0, 1.0):
        d = dist.Bernoulli(logits=logits)
        np.testing.assert_allclose(log_prob(d, k), d.log_prob(k), rtol=1e-5, atol=1e-5)


def test_sites_are_scored_with_the_patched_log_prob():
    """Through a model: grad of ``assess`` w.r.t. a logit at exactly 0 is the right one, inside scan too."""

    @ppl.gen
    def m(logit):
        b = ppl.sample("b", dist.Bernoulli(logits=logit))
        c = ppl.sample("c", dist.Binomial(4, logits=logit))
        ys = jax.lax.scan(lambda k, _: (k, ppl.sample("y", dist.Bernoulli(logits=logit))), 0, None, length=3)[1]
        return b, c, ys

    ch = {"b": jnp.asarray(1.0), "c": jnp.asarray(1.0), "y": jnp.array([1.0, 0.0, 0.0])}
    g = jax.grad(lambda lg: m.assess(ch, lg)[0])(jnp.asarray(0.0))
    # d/dl at 0: (b − 1/2) + (c − 4/2) + Σ (y − 1/2)
    np.testing.assert_allclose(g, 0.5 + (1.0 - 2.0) + (1.0 - 1.5), atol=1e-6)
