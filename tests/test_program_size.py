"""Deterministic program-size budgets: the estimator of ``m`` sequential multi-call sites grows linearly in ``m``
(each site traces the rest of the program once, under one ``vmap`` over its evaluation points)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import pytest

import ppl
from ppl._jax_internals import subjaxprs


def _count(jaxpr) -> int:
    return sum(1 + sum(_count(s) for s in subjaxprs(e)) for e in jaxpr.eqns)


def _size(strategy, m: int) -> int:
    @ppl.expectation
    def f(th):
        tot = 0.0
        for i in range(m):
            d = dist.Categorical(logits=jnp.array([th, 0.0, 1.0]))
            tot = tot + ppl.sample(f"z{i}", d, strategy=strategy)
        return tot**2

    return _count(jax.make_jaxpr(lambda k: f.grad_estimate(k, 0.1))(jax.random.key(0)).jaxpr)


@pytest.mark.parametrize(
    "strategy", [ppl.mvd, ppl.enum, ppl.leave_one_out(2), ppl.reinforce], ids=["mvd", "enum", "loo", "reinforce"]
)
def test_estimator_size_is_linear_in_the_number_of_sites(strategy):
    sizes = {m: _size(strategy, m) for m in (1, 2, 4, 8)}
    per_site = sizes[2] - sizes[1]
    for m in (4, 8):  # no doubling per site (the mvd regression: 247,713 equations at m = 8)
        assert sizes[m] <= sizes[1] + 1.25 * per_site * (m - 1), sizes


def test_the_staging_cache_is_bounded():
    # a Python float argument is static: each new value stages anew, but the cache keeps the most recent signatures
    from ppl.core.staging import Staged

    st = Staged(lambda x, s: x * s)
    for i in range(Staged.MAX_CACHED + 20):
        st.stage((jnp.ones(2), float(i)))
    assert len(st._cache) == Staged.MAX_CACHED
    first = st.stage((jnp.ones(2), float(Staged.MAX_CACHED + 19)))[0]
    assert st.stage((jnp.ones(2), float(Staged.MAX_CACHED + 19)))[0] is first  # still a hit


def _plated_size(strategy, n: int) -> int:
    @ppl.gen
    def model():
        mu = ppl.sample("mu", dist.Normal(jnp.zeros(3), 5.0).to_event(1))
        with ppl.plate("data", n):
            z = ppl.sample("z", dist.Categorical(logits=jnp.zeros(3)))
            ppl.sample("x", dist.Normal(mu[z], 1.0))

    @ppl.gen
    def guide(logits):
        ppl.sample("mu", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        with ppl.plate("data", n):
            ppl.sample("z", dist.Categorical(logits=logits))

    obj = ppl.elbo(model, guide, {"x": jnp.zeros(n)}, strategies={"z": strategy})
    return _count(jax.make_jaxpr(lambda k: obj.grad_estimate(k, (), (jnp.zeros((n, 3)),)))(jax.random.key(0)).jaxpr)


@pytest.mark.parametrize("strategy", [ppl.enum, ppl.mvd, ppl.reinforce], ids=["enum", "mvd", "reinforce"])
def test_a_plated_estimator_does_not_grow_with_the_number_of_points(strategy):
    # one vectorized site for all points: the same program at N = 10 and N = 1,000 (unrolled sites: 3^N runs)
    assert _plated_size(strategy, 10) == _plated_size(strategy, 1000)


# ---------------------------------------------------------------------------------------------- the programs of
# docs/benchmarks.md (bench/scaling.py, bench/vae.py): equation and op counts under budgets, a bit above the counts
# measured on 2026-12-01 (jax 0.10.2; in the comments). A change that grows a program past its budget fails here, not
# months later in a benchmark table; one that shrinks it should lower the budget.


def _bench(name: str):
    from tests.test_bench_quick import bench_module

    return bench_module(name)


def _eqns(make, *args) -> int:
    return _count(jax.make_jaxpr(make)(*args).jaxpr)


def _walk(T: int):
    z = jnp.zeros(T)
    return jax.random.key(0), z, z, z


def test_scan_program_is_flat_and_within_budget():
    scaling = _bench("scaling")
    ppl_sizes = {T: _eqns(scaling.ppl_scan(T), *_walk(T)) for T in (10, 1000)}
    hand = _eqns(scaling.hand_scan(10), *_walk(10))
    assert ppl_sizes[10] == ppl_sizes[1000], ppl_sizes  # does not grow with the number of steps
    assert ppl_sizes[10] <= 110, ppl_sizes  # measured 105 (one loop: the guide's and the model's fused; was 141)
    assert hand == 84, hand  # the hand-coded scan: 84 (a change here is jax's or the bench's, not ppl's)
    loops = [sum(e.primitive.name == "scan" for e in jax.make_jaxpr(f(10))(*_walk(10)).jaxpr.eqns)
             for f in (scaling.ppl_scan, scaling.hand_scan)]  # fmt: skip
    assert loops == [2, 2], loops  # one loop forward and one back, as by hand (guide and model loops fused)


# Straight-line code: each of the T steps is the same code, so the equation count is affine in T (checked exactly on
# three sizes); T = 100 and 1,000 follow from it (tracing 1,000 sites takes over a minute on 2 cores: set
# PPL_SLOW_TESTS=1 to trace them too).
STRAIGHT_BUDGET_PER_SITE = 100  # measured 97·T (970 / 9,700 / 97,000 at T = 10 / 100 / 1,000; issue #13: 1,487 at 10)
HAND_STRAIGHT = (97, -4)  # the hand-coded program: 97·T − 4 (966 / 9,696 / 96,996)


def test_straight_line_program_is_linear_and_within_budget():
    import os

    scaling = _bench("scaling")
    sizes = (10, 20, 40) + ((100, 1000) if os.environ.get("PPL_SLOW_TESTS") else ())
    ppl_sizes = {T: _eqns(scaling.ppl_straight(T), *_walk(T)) for T in sizes}
    per_site = (ppl_sizes[20] - ppl_sizes[10]) / 10
    offset = ppl_sizes[10] - 10 * per_site
    for T, n in ppl_sizes.items():
        assert n == per_site * T + offset, f"not affine in T: {ppl_sizes}"
    for T in (10, 100, 1000):
        predicted = per_site * T + offset
        assert predicted <= STRAIGHT_BUDGET_PER_SITE * T, f"T = {T}: {predicted:,.0f} equations ({ppl_sizes})"
    hand = _eqns(scaling.hand_straight(10), *_walk(10))
    assert hand == HAND_STRAIGHT[0] * 10 + HAND_STRAIGHT[1], hand
    assert per_site <= 1.03 * HAND_STRAIGHT[0], per_site  # ppl's per-site program against hand-coded: 1.00×


ENUM_BUDGETS = {1: 155, 4: 620, 8: 1_350}  # measured 147, 589, 1,285 (hand-coded: 99, 221, 413)


def test_enum_program_is_linear_in_the_sites_and_within_budget():
    scaling = _bench("scaling")
    sizes = {}
    for k, budget in ENUM_BUDGETS.items():
        args = (jax.random.key(0), jnp.zeros(k), jnp.zeros((k, scaling.ENUM_DIM)),
                jnp.zeros((scaling.ENUM_ROWS, scaling.ENUM_DIM)))
        sizes[k] = _eqns(scaling.ppl_enum(k), *args)
        assert sizes[k] <= budget, (k, sizes)
    per_site = (sizes[4] - sizes[1]) / 3
    assert sizes[8] <= sizes[1] + 1.4 * per_site * 7, sizes  # about linear (each site adds a little more), not 2^k


def test_vae_gradient_program_within_budget():
    # bench/vae.py's ppl.elbo gradient at batch 64 (docs/benchmarks.md §1): jaxpr equations, StableHLO ops before
    # XLA's optimization, HLO instructions and entry-computation kernels after it
    common, vae = _bench("common"), _bench("vae")
    common.COMPILER_OPTIONS.clear()  # sizes after XLA's default optimization (a --tiny run in this process sets -O0)
    key = jax.random.key(0)
    x = jnp.zeros((64, vae.PIXELS))
    enc = vae.init_mlp(key, (vae.PIXELS, vae.HIDDEN, 2 * vae.LATENT))
    dec = vae.init_mlp(key, (vae.LATENT, vae.HIDDEN, vae.PIXELS))
    c = common.compile_timed("ppl.elbo", vae.ppl_systems(x)["ppl.elbo"], key, dec, enc, x)
    eqns, hlo = common.count_eqns(c.jaxpr), common.hlo_stats(c)
    assert eqns <= 230, eqns  # measured 219 (hand-coded JAX: 159)
    assert hlo["stablehlo_ops"] <= 500, hlo  # measured 476 (hand-coded: 303)
    assert hlo["hlo_instructions"] <= 975, hlo  # measured 929 (hand-coded: 827)
    assert hlo["entry_kernels"] <= 61, hlo  # measured 57 (hand-coded: 47)
