"""ADEV: unbiasedness of every gradient strategy against exact gradients, as a statistical claim.

For each exact case (a distribution, a value function and the closed-form / fully enumerated gradient of its
expectation) and each strategy that applies, the program is placed in three contexts:

* ``straight`` — the site in straight-line code;
* ``scan``     — the same body run twice in a ``lax.scan`` (value = mean of the two iterations: the running score
  rides in the carry; the exact gradient is unchanged). Multi-call strategies (enum, mvd, leave_one_out) are an error
  there (``test_strategies_errors.py``), so they are not run in this context;
* ``cond``     — the body in the taken branch of a ``lax.cond`` whose other branch has a different gradient, so
  taking the wrong branch or dropping the branch's tangent fails the test.

Modes: ``vmap`` (``jax.jit(jax.vmap(grad_estimate))`` over N keys, then :func:`stats.assert_unbiased`) for every
case; ``jit`` (a single-key ``jax.jit(grad_estimate)``, which must reproduce the vmapped lanes of the same keys) and
``eager`` (no ``jit``: must reproduce the jitted estimate) for one representative case per strategy × context.

Stderr bounds: a discrete site has no pathwise derivative, so an estimator that loses the score / weak-derivative
term has bias equal to the whole gradient (as does a lost pathwise term for reparam / implicit_reparam). Every bound
below is at most ``max|g| / 14`` (so ``4·stderr`` is under 30 % of the gradient and a lost term is a > 14-sigma
failure); the Bernoulli bounds are about ``|g| / 22``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
from tests.stats import assert_unbiased, flat, keys

N = 10_000

# strategies: name -> factory(theta) -> Strategy (a baseline may depend on the traced parameters; it must not bias)
STRATEGIES: dict[str, Callable] = {
    "reparam": lambda th: ppl.reparam,
    "implicit_reparam": lambda th: ppl.implicit_reparam,
    "reinforce": lambda th: ppl.reinforce,
    "baseline": lambda th: ppl.baseline(2.0),
    "reinforce(baseline=traced)": lambda th: ppl.reinforce(baseline=1.5 + 0.5 * jnp.sum(th)),
    "enum": lambda th: ppl.enum,
    "mvd": lambda th: ppl.mvd,
    "leave_one_out(3)": lambda th: ppl.leave_one_out(3),
}
MULTI_CALL = {"enum", "mvd", "leave_one_out(3)"}
CONTEXTS = ("straight", "scan", "cond")


@dataclass(frozen=True)
class Case:
    """``body(theta, strategy) -> value``; ``exact(theta)`` the gradient of its expectation."""

    body: Callable
    theta: tuple
    exact: Callable
    strategies: tuple[str, ...]
    max_stderr: float
    contexts: tuple[str, ...] = ("straight", "scan", "cond")


def _bern_value(z):
    return jnp.where(z > 0, 3.0, 1.0)  # a = 3, c = 1: d/dθ E = (a − c)·σ'(θ)


def _dsigmoid(th):
    s = jax.nn.sigmoid(th)
    return s * (1 - s)


_BERN_STRATS = ("reinforce", "baseline", "reinforce(baseline=traced)", "enum", "mvd", "leave_one_out(3)")
_CAT_V = jnp.array([1.0, -2.0, 3.0, 0.5])


def _softmax_jt_v(th):
    p = jax.nn.softmax(th)
    return p * (_CAT_V - p @ _CAT_V)  # J_softmax(θ)ᵀ v


def _geom_exact(th):
    # E[min(k, 5)] = Σ_{j=1..5} P(k ≥ j) = Σ (1 − p)^j, k = failures before the first success
    return jax.grad(lambda t: sum((1 - jax.nn.sigmoid(t)) ** j for j in range(1, 6)))(th)


def _poisson_exact(th):
    lam = jnp.exp(th)  # E[k²] = λ + λ²
    return lam * (1 + 2 * lam)


CASES: dict[str, Case] = {
    # Bernoulli(logits): θ = 0 is exactly where NumPyro's abs-based log-density has a kink.
    "bernoulli_logits@0": Case(
        lambda th, s: _bern_value(ppl.sample("z", dist.Bernoulli(logits=th), strategy=s)),
        (0.0,),
        lambda th: 2.0 * _dsigmoid(th),
        _BERN_STRATS,
        0.02,
        ("straight",),  # the kink is a property of the log-density, not of the context
    ),
    "bernoulli_logits@0.7": Case(
        lambda th, s: _bern_value(ppl.sample("z", dist.Bernoulli(logits=th), strategy=s)),
        (0.7,),
        lambda th: 2.0 * _dsigmoid(th),
        _BERN_STRATS,
        0.02,
    ),
    "bernoulli_probs@0.7": Case(
        lambda th, s: _bern_value(ppl.sample("z", dist.Bernoulli(probs=jax.nn.sigmoid(th)), strategy=s)),
        (0.7,),
        lambda th: 2.0 * _dsigmoid(th),
        _BERN_STRATS,
        0.02,
    ),
    "categorical_logits": Case(
        lambda th, s: _CAT_V[ppl.sample("k", dist.Categorical(logits=th), strategy=s)],
        (jnp.array([0.2, -0.4, 0.9, 0.0]),),
        _softmax_jt_v,
        ("reinforce", "enum", "mvd", "leave_one_out(3)"),
        0.05,  # max|g| ≈ 0.71
    ),
    "poisson": Case(
        lambda th, s: ppl.sample("k", dist.Poisson(jnp.exp(th)), strategy=s).astype(jnp.float32) ** 2,
        (0.3,),
        _poisson_exact,
        ("reinforce", "mvd"),
        0.25,  # g ≈ 5.0 (reinforce: se ≈ 0.15; mvd ≈ 0.03)
    ),
    "geometric": Case(
        lambda th, s: jnp.minimum(ppl.sample("k", dist.Geometric(probs=jax.nn.sigmoid(th)), strategy=s), 5.0),
        (0.2,),
        _geom_exact,
        ("reinforce", "mvd"),
        0.05,  # g ≈ −0.76
    ),
    "normal": Case(
        lambda th, s: ppl.sample("x", dist.Normal(th, 1.0), strategy=s) ** 2,
        (0.8,),
        lambda th: 2.0 * th,
        ("reparam", "reinforce", "baseline", "reinforce(baseline=traced)"),
        0.07,  # g = 1.6 (reinforce: se ≈ 0.048)
    ),
    "gamma": Case(  # E[x²] = α(α + 1), α = e^θ
        lambda th, s: ppl.sample("x", dist.Gamma(jnp.exp(th), 1.0), strategy=s) ** 2,
        (0.3,),
        lambda th: jnp.exp(th) * (2 * jnp.exp(th) + 1),
        ("implicit_reparam", "reinforce"),
        0.2,  # g ≈ 5.0 (reinforce: se ≈ 0.15; implicit_reparam ≈ 0.06)
    ),
    "beta": Case(  # E[x] = a / (a + b)
        lambda th, s: ppl.sample("x", dist.Beta(jnp.exp(th[0]), jnp.exp(th[1])), strategy=s),
        (jnp.array([0.2, -0.3]),),
        jax.grad(lambda th: jnp.exp(th[0]) / (jnp.exp(th[0]) + jnp.exp(th[1]))),
        ("implicit_reparam", "reinforce"),
        0.012,  # |g| ≈ 0.24
        ("straight",),  # contexts are covered by gamma (same sampler, much cheaper to compile)
    ),
    "dirichlet": Case(  # E[x·w] = α·w / Σα
        lambda th, s: ppl.sample("x", dist.Dirichlet(jnp.exp(th)), strategy=s) @ jnp.array([1.0, -1.0, 2.0]),
        (jnp.array([0.1, 0.5, -0.2]),),
        jax.grad(lambda th: jnp.exp(th) @ jnp.array([1.0, -1.0, 2.0]) / jnp.sum(jnp.exp(th))),
        ("implicit_reparam", "reinforce"),
        0.04,  # max|g| ≈ 0.7
        ("straight",),
    ),
}


def in_context(body: Callable, ctx: str) -> Callable:
    """``theta -> value`` with the same gradient of the expectation, in the given control-flow context."""
    if ctx == "straight":
        return body
    if ctx == "scan":

        def scanned(theta):
            def step(acc, _):
                return acc + body(theta), None

            total, _ = lax.scan(step, jnp.zeros(()), None, length=2)
            return total / 2.0

        return scanned

    def branched(theta):
        pred = jnp.sum(theta) < 1e6  # traced, always true
        return lax.cond(pred, body, lambda t: 100.0 * jnp.sum(t), theta)

    return branched


@functools.cache
def objective(case: str, strat: str, ctx: str) -> ppl.Expectation:
    c, make = CASES[case], STRATEGIES[strat]
    return ppl.expectation(in_context(lambda th: c.body(th, make(th)), ctx))


@functools.cache
def _all_vmapped_grads(case: str, ctx: str) -> dict[str, np.ndarray]:
    """N gradient estimates for every strategy of ``case`` in ``ctx``: one compiled program (compiling the
    strategies together roughly halves the compile time of the suite)."""
    c = CASES[case]
    strats = [s for s in c.strategies if not (ctx == "scan" and s in MULTI_CALL)]

    def all_grads(ks, *theta):
        return {s: jax.vmap(objective(case, s, ctx).grad_estimate, (0, None))(ks, *theta) for s in strats}

    return {s: np.asarray(g) for s, g in jax.jit(all_grads)(keys(N, seed=1), *c.theta).items()}


def vmapped_grads(case: str, strat: str, ctx: str) -> np.ndarray:
    return _all_vmapped_grads(case, ctx)[strat]


def _grid():
    for case, c in CASES.items():
        for strat in c.strategies:
            for ctx in c.contexts:
                if ctx == "scan" and strat in MULTI_CALL:
                    continue
                yield pytest.param(case, strat, ctx, id=f"{case}-{strat}-{ctx}")


@pytest.mark.parametrize("case, strat, ctx", list(_grid()))
def test_unbiased_vmap(case, strat, ctx):
    c = CASES[case]
    samples = vmapped_grads(case, strat, ctx)
    assert_unbiased(samples, c.exact(*c.theta), c.max_stderr)


# ------------------------------------------------------------------------- jit and eager on the same keys

# One representative case per strategy (the modes are about the program transformation, not the distribution;
# cheap samplers keep the op-by-op eager runs short).
REPRESENTATIVE = {
    "reparam": "normal",
    "implicit_reparam": "gamma",
    "reinforce": "categorical_logits",
    "baseline": "bernoulli_logits@0.7",
    "reinforce(baseline=traced)": "bernoulli_probs@0.7",
    "enum": "bernoulli_logits@0.7",
    "mvd": "bernoulli_probs@0.7",
    "leave_one_out(3)": "bernoulli_logits@0.7",
}
MODE_GRID = [
    pytest.param(REPRESENTATIVE[s], s, ctx, id=f"{s}-{ctx}")
    for s in STRATEGIES
    for ctx in CONTEXTS
    if not (ctx == "scan" and s in MULTI_CALL)
]


@functools.cache
def jitted(ctx):
    """One single-key jitted program per context computing every representative (strategy, case)."""

    def all_grads(key):
        return {
            s: objective(REPRESENTATIVE[s], s, ctx).grad_estimate(key, *CASES[REPRESENTATIVE[s]].theta)
            for s in STRATEGIES
            if not (ctx == "scan" and s in MULTI_CALL)
        }

    return jax.jit(all_grads)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("case, strat, ctx", MODE_GRID)
def test_jit_matches_vmap_lanes(case, strat, ctx):
    """A single-key jitted estimate is the vmapped estimate of the same key: both modes compute one estimator."""
    ks = keys(N, seed=1)
    lanes = vmapped_grads(case, strat, ctx)
    for i in (0, 1, 2):
        _close(jitted(ctx)(ks[i])[strat], lanes[i])


@pytest.mark.parametrize("case, strat, ctx", MODE_GRID)
def test_eager_matches_jit(case, strat, ctx):
    ks, theta = keys(N, seed=1), CASES[case].theta
    obj = objective(case, strat, ctx)
    _close(obj.grad_estimate(ks[0], *theta), jitted(ctx)(ks[0])[strat])


def test_same_key_same_estimate_different_keys_differ():
    obj = objective("bernoulli_logits@0.7", "reinforce", "scan")
    ks = keys(32, seed=3)  # two flips: 3 possible estimates; 8 keys miss (0, 0) with probability 0.89^8 = 0.4
    eager = float(obj.grad_estimate(ks[0], 0.7))
    jit = jax.jit(obj.value_and_grad_estimate)
    assert eager == pytest.approx(float(jit(ks[0], 0.7)[1]), rel=1e-6)
    assert float(obj.grad_estimate(ks[0], 0.7)) == eager  # eager is a pure function of the key too
    vals = np.asarray(jax.vmap(lambda k: jit(k, 0.7)[1])(ks))
    assert len(set(np.round(vals, 6))) > 2, f"different keys should give different estimates: {vals}"
    # the value estimate also depends on the key (the flip differs across keys)
    v = np.asarray(jax.vmap(lambda k: jit(k, 0.7)[0])(keys(64, seed=4)))
    assert set(np.unique(v).tolist()) == {1.0, 2.0, 3.0}  # mean of two flips valued 3 or 1


def test_value_estimate_unbiased_and_consistent():
    """``estimate`` is unbiased for E[f]; ``value_and_grad_estimate`` returns the same value as ``estimate``."""
    obj = objective("categorical_logits", "leave_one_out(3)", "cond")
    th = CASES["categorical_logits"].theta
    ks = keys(N, seed=1)  # the keys of vmapped_grads
    v = jax.jit(jax.vmap(obj.estimate, (0, None)))(ks, *th)
    assert_unbiased(v, jax.nn.softmax(th[0]) @ _CAT_V, 0.02)  # E ≈ 1.49, sd ≈ 1.0
    vg = jax.jit(jax.vmap(obj.value_and_grad_estimate, (0, None)))(ks, *th)
    _close(vg[0], v)
    _close(vg[1], vmapped_grads("categorical_logits", "leave_one_out(3)", "cond"))


# ------------------------------------------------------------------------- linearity: grad = jvp along the basis


@ppl.expectation
def mixed(theta):
    """Four parameters, four strategies: reparam, reinforce, enum (multi-call) and mvd (multi-call)."""
    x = ppl.sample("x", dist.Normal(theta[0], 1.0), strategy=ppl.reparam)
    w = ppl.sample("w", dist.Normal(theta[1] * x, 1.0), strategy=ppl.reinforce)
    ppl.add_cost(0.3 * w * theta[2])
    z = ppl.sample("z", dist.Bernoulli(logits=theta[2] + 0.1 * x), strategy=ppl.enum)
    k = ppl.sample("k", dist.Geometric(probs=jax.nn.sigmoid(theta[3] + 0.2 * z)), strategy=ppl.mvd)
    return x * w + jnp.where(z > 0, 2.0, -1.0) * k + theta[3] ** 2


@ppl.expectation
def _forward(theta, c):
    x = ppl.sample("x", dist.Normal(theta[0], 1.0))
    z = ppl.sample("z", dist.Bernoulli(logits=theta[1]), strategy=ppl.reinforce)
    return x**2 + c * z + x * z


def test_jvp_estimate_is_unbiased_forward_mode():
    # E = θ0² + 1 + (c + θ0)·σ(θ1): d/dθ0 = 2θ0 + σ(θ1), d/dθ1 = (c + θ0)·σ'(θ1); c is fixed (no tangent used)
    theta, c = jnp.array([0.3, -0.4]), 3.0
    exact = np.array([2 * 0.3 + jax.nn.sigmoid(-0.4), (c + 0.3) * _dsigmoid(-0.4)])
    for j, e in enumerate(jnp.eye(2)):
        run = jax.jit(jax.vmap(lambda k, e=e: _forward.jvp_estimate(k, (theta, ppl.fixed(c)), (e, 123.0))[1]))
        assert_unbiased(run(keys(20000, seed=9 + j)), exact[j], max_stderr=0.02)


# ------------------------------------------------------------------------- pytree arguments


def _pytree_exact(mu, logit):
    # E[(x − 1)² + 3·z] with x ~ N(mu, 1), z ~ Bernoulli(logit): d/dmu = 2(mu − 1), d/dlogit = 3σ'(logit)
    return 2.0 * (mu - 1.0), 3.0 * _dsigmoid(logit)


@ppl.expectation
def dict_objective(params, scale):
    x = ppl.sample("x", dist.Normal(params["mu"], 1.0))
    z = ppl.sample("z", dist.Bernoulli(logits=params["inner"]["logit"]), strategy=ppl.mvd)
    return scale * ((x - 1.0) ** 2 + 3.0 * z)


def test_grad_wrt_dict_and_several_args():
    params = {"mu": jnp.array(0.4), "inner": {"logit": jnp.array(-0.3)}, "steps": jnp.array(3)}
    gp, gs = dict_objective.grad_estimate(jax.random.key(0), params, 1.0)
    assert set(gp) == {"mu", "inner", "steps"} and gp["steps"] is None  # integer leaves get no gradient
    assert jnp.shape(gs) == ()
    f = jax.jit(jax.vmap(lambda k: dict_objective.grad_estimate(k, params, 1.0)[0], 0))
    g = f(keys(N, seed=6))
    e_mu, e_logit = _pytree_exact(0.4, -0.3)
    samples = flat({"mu": g["mu"], "logit": g["inner"]["logit"]})
    assert_unbiased(samples, [e_logit, e_mu], 0.03)  # leaves in key order: "inner/logit" < "mu"


class Params(eqx.Module):
    mu: jax.Array
    logit: jax.Array
    label: str = eqx.field(static=True, default="p")


@ppl.expectation
def module_objective(p: Params):
    x = ppl.sample("x", dist.Normal(p.mu, 1.0))
    z = ppl.sample("z", dist.Bernoulli(logits=p.logit), strategy=ppl.reinforce(baseline=1.5))
    return (x - 1.0) ** 2 + 3.0 * z


def test_grad_wrt_equinox_module():
    p = Params(jnp.array(0.4), jnp.array(-0.3))
    g = module_objective.grad_estimate(jax.random.key(0), p)
    assert isinstance(g, Params) and g.label == "p"
    gs = jax.jit(jax.vmap(module_objective.grad_estimate, (0, None)))(keys(N, seed=7), p)
    e_mu, e_logit = _pytree_exact(0.4, -0.3)
    assert_unbiased(jnp.stack([gs.mu, gs.logit], 1), [e_mu, e_logit], 0.03)
