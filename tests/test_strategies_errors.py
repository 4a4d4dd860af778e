"""Bad input to ADEV gets a clear error that names the address (or the offending value), raised when the estimator
is traced — in eager mode and under ``jax.jit`` alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
from ppl import PPLError, StrategyError

from .stats import assert_unbiased, vmap_grads

KEY = jax.random.key(0)


def _grad(f, *args, jit=False):
    g = ppl.expectation(f).grad_estimate
    return (jax.jit(g) if jit else g)(KEY, *args)


def _site(addr, d, strategy):
    return lambda th: ppl.sample(addr, d(th), strategy=strategy) * 1.0


def test_errors_are_value_errors():
    assert issubclass(StrategyError, ValueError) and issubclass(PPLError, ValueError)


# ------------------------------------------------------------------------- strategy does not apply to the distribution

CHECKS = [
    ("reparam", ppl.reparam, lambda t: dist.Bernoulli(logits=t), r"reparam at 'flip'.*Bernoulli.*reparameterized"),
    ("reparam-poisson", ppl.reparam, lambda t: dist.Poisson(jnp.exp(t)), r"reparam at 'flip'.*Poisson"),
    ("enum-normal", ppl.enum, lambda t: dist.Normal(t, 1.0), r"enum at 'flip'.*Normal.*finite support"),
    ("enum-poisson", ppl.enum, lambda t: dist.Poisson(jnp.exp(t)), r"enum at 'flip'.*Poisson.*(infinite|finite)"),
    ("mvd-gamma", ppl.mvd, lambda t: dist.Gamma(jnp.exp(t), 1.0), r"mvd at 'flip'.*Gamma.*Normal \(use enum"),
    ("implicit-bernoulli", ppl.implicit_reparam, lambda t: dist.Bernoulli(logits=t), r"implicit_reparam at 'flip'"),
    (
        "enum-batched",
        ppl.enum,
        lambda t: dist.Bernoulli(logits=jnp.full(3, t)),
        r"enum at 'flip'.*batch shape \(3,\).*jax\.vmap or ppl\.vmap",
    ),
    ("mvd-batched", ppl.mvd, lambda t: dist.Bernoulli(logits=jnp.full(3, t)), r"mvd at 'flip'.*batch shape"),
    (
        "enum-to-event",
        ppl.enum,
        lambda t: dist.Bernoulli(logits=jnp.full(3, t)).to_event(1),
        r"enum at 'flip'.*batch shape \(3,\).*jax\.vmap or ppl\.vmap",
    ),
    ("mvd-to-event", ppl.mvd, lambda t: dist.Bernoulli(logits=jnp.full(3, t)).to_event(1), r"mvd at 'flip'.*batch"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("strategy, make, match", [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS])
def test_strategy_does_not_apply(strategy, make, match, jit):
    def f(th):
        return jnp.sum(ppl.sample("flip", make(th), strategy=strategy) * 1.0)

    with pytest.raises(StrategyError, match=match):
        _grad(f, 0.3, jit=jit)


def test_one_call_check_inside_scan_and_scope_names_full_address():
    def f(th):
        def step(c, _):
            with ppl.scope("enc"):
                return c + ppl.sample("z", dist.Bernoulli(logits=th), strategy=ppl.reparam), None

        return lax.scan(step, 0.0, None, length=3)[0]

    with pytest.raises(StrategyError, match=r"reparam at 'enc/z'"):
        _grad(f, 0.3)


def test_reparam_error_in_cond_branch():
    def f(th):
        return lax.cond(
            th > 0, lambda: ppl.sample("b", dist.Bernoulli(logits=th), strategy=ppl.reparam) * 1.0, lambda: th
        )

    with pytest.raises(StrategyError, match=r"reparam at 'b'"):
        _grad(f, 0.3)


def test_estimate_checks_too():
    """The check is part of the estimator, not only of its gradient."""
    f = ppl.expectation(_site("flip", lambda t: dist.Normal(t, 1.0), ppl.enum))
    with pytest.raises(StrategyError, match="enum at 'flip'"):
        f.estimate(KEY, 0.3)


# ------------------------------------------------------------------------- multi-call strategies without a continuation


def test_one_call_at_vmapped_site_is_fine():
    """No error, and the right answer: d/dθᵢ E[Σ zᵢ] = σ'(θᵢ) with ``zᵢ ~ Bernoulli(σ(θᵢ))`` drawn per lane."""

    def f(th):
        zs = jax.vmap(lambda t: ppl.sample("z", dist.Bernoulli(logits=t), strategy=ppl.reinforce))(th)
        return jnp.sum(zs * 1.0)

    th = jnp.array([0.1, -0.8, 1.3])
    g = vmap_grads(ppl.expectation(f), 20000, th)
    sig = 1 / (1 + np.exp(-np.asarray(th)))
    assert_unbiased(g, sig * (1 - sig), max_stderr=0.01)


# ------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("bad", ["enum", dist.Normal(0.0, 1.0), ppl.enum.__class__, 3])
def test_strategy_that_is_not_a_strategy(bad):
    with pytest.raises(TypeError, match=r"ppl\.sample\('z', \.\.\.\): strategy=.* is not a gradient strategy"):
        _grad(lambda th: ppl.sample("z", dist.Bernoulli(logits=th), strategy=bad) * 1.0, 0.3)


def test_leave_one_out_needs_two_samples():
    with pytest.raises(StrategyError, match="leave_one_out needs n >= 2"):
        ppl.leave_one_out(1)


@pytest.mark.parametrize(
    "ret, shape",
    [
        (lambda x: jnp.stack([x, x]), r"\(2,\)"),
        (lambda x: (x, x), r"\(\), \(\)"),
        (lambda x: x[None, None], r"\(1, 1\)"),
    ],
    ids=["vector", "tuple", "matrix"],
)
def test_expectation_must_return_a_scalar(ret, shape):
    def f(th):
        return ret(ppl.sample("x", dist.Normal(th, 1.0)))

    obj = ppl.expectation(f)
    for call in (lambda: obj.grad_estimate(KEY, 0.3), lambda: obj.estimate(KEY, 0.3)):
        with pytest.raises(PPLError, match=rf"expectation 'f' must return one scalar.*{shape}"):
            call()


def test_not_a_distribution_names_the_address():
    with pytest.raises(TypeError, match=r"ppl\.sample\('x', \.\.\.\).*not a distribution"):
        _grad(lambda th: ppl.sample("x", (th, 1.0)), 0.3)


def test_site_in_while_loop():
    def f(th):
        return lax.while_loop(lambda c: c < 1.0, lambda c: c + jnp.abs(ppl.sample("w", dist.Normal(th, 1.0))), 0.0)

    with pytest.raises(PPLError, match=r"\['w'\].*while_loop"):
        _grad(f, 0.3)


def test_every_registered_strategy_is_exported_and_in_the_language():
    from ppl.core.strategy import STRATEGIES
    from ppl.lang.builtins import STRATEGY_NAMES

    assert set(STRATEGIES) <= set(ppl.__all__) and set(STRATEGIES) <= set(ppl.gradients.__all__)
    assert set(STRATEGIES) == set(STRATEGY_NAMES)
    assert all(getattr(ppl, n) is v for n, v in STRATEGIES.items())
    with pytest.raises(TypeError, match=r"use one of ppl\.baseline, ppl\.detach, ppl\.enum"):
        ppl.sample("z", dist.Normal(0.0, 1.0), strategy="enum")


def test_a_strategy_is_one_class_and_one_register_call():
    """The contract in core is all a new strategy needs: subclassing makes it a pytree (with equality from its
    fields), registering makes it ``ppl.<name>`` and ``ppl.gradients.<name>`` and lists it in the errors. This one is
    reinforce written again, so on the same key it gives reinforce's estimate exactly."""
    from ppl.core.distributions import log_prob
    from ppl.core.strategy import STRATEGIES, Strategy, register, sg, zero_valued

    class Score(Strategy):
        name = "score_for_test"

        def sample(self, key, d):
            x = sg(d.sample(key))
            return x, zero_valued(log_prob(d, x))

    score = register(Score())
    try:
        assert ppl.score_for_test is score and ppl.gradients.score_for_test is score and score == Score()
        with pytest.raises(ValueError, match="already registered"):
            register(Score())
        with pytest.raises(TypeError, match=r"ppl\.reparam, ppl\.score_for_test"):
            ppl.sample("z", dist.Normal(0.0, 1.0), strategy="score")
    finally:
        del STRATEGIES["score_for_test"]
    with pytest.raises(AttributeError, match="no attribute 'score_for_test'"):
        ppl.score_for_test  # noqa: B018

    def f(th, s):
        return (ppl.sample("z", dist.Bernoulli(logits=th), strategy=s) + 1.0) * th**2

    g = jax.jit(lambda s: ppl.expectation(f).grad_estimate(KEY, 0.3, s)[0])
    assert float(g(score)) == float(g(ppl.reinforce)) != 0.0
