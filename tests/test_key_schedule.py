"""The key schedule: no key derivation inside a loop body, and keys independent across iterations, lanes and sites.

A loop or map splits its block key once, before the loop, into one key per (iteration / lane, site); a site inside
the loop body uses its key as is. Each threefry hash in a loop body runs once per iteration, and on CPU a
``fold_in`` per site and iteration made a random walk 8-10x slower than hand-coded JAX (issue 13): these tests pin
the number of hashing equations in the jaxpr, so that cost cannot come back unnoticed. The statistical tests check
that the cheaper schedule still gives every (iteration, lane, site) its own independent draw.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl
from ppl._jax_internals import is_scan, subjaxprs

HASHES = ("random_bits", "random_fold_in", "random_split", "threefry2x32", "random_seed")
DERIVATIONS = ("random_fold_in", "random_split", "threefry2x32", "random_seed")  # every hash but the draws' bits


def hashes(f, *args):
    """``{(inside a scan body, primitive): count}`` over the jaxpr of ``f(*args)``, nested jaxprs included."""
    out: collections.Counter = collections.Counter()

    def walk(jaxpr, in_loop):
        for e in jaxpr.eqns:
            if e.primitive.name in HASHES:
                out[(in_loop, e.primitive.name)] += 1
            for sub in subjaxprs(e):
                walk(sub, in_loop or is_scan(e))

    walk(jax.make_jaxpr(f)(*args).jaxpr, False)
    return out


def in_loop(counts, names=DERIVATIONS):
    return sum(n for (loop, name), n in counts.items() if loop and name in names)


@ppl.gen
def walk(T):
    def step(x, _):
        x = ppl.sample("x", dist.Normal(x, 1.0))
        ppl.sample("y", dist.Normal(x, 1.0))
        return x, None

    lax.scan(step, 0.0, None, length=T)


@ppl.gen
def guide(mu):
    def step(_, m):
        ppl.sample("x", dist.Normal(m, 1.0))
        return None, None

    lax.scan(step, None, mu)


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)], ids=["typed", "raw"])
def test_simulate_scan_body_hashes_only_its_draws(key):
    c = hashes(lambda k: walk.simulate(k, 100), key)
    assert in_loop(c) == 0, c  # no fold_in / split per iteration
    assert in_loop(c, ("random_bits",)) == 2, c  # one draw per site per iteration, as hand-coded
    assert c[(False, "random_split")] == 1, c  # the block key split once, outside the loop


def test_elbo_gradient_scan_body_hashes_only_the_guide_draw():
    y = jnp.ones(50)
    obj = ppl.elbo(walk, guide, {"y": y})
    c = hashes(lambda k, mu: obj.value_and_grad_estimate(k, 50, (mu,), {"y": y}), jax.random.key(0), jnp.zeros(50))
    assert in_loop(c) == 0, c
    assert in_loop(c, ("random_bits",)) == 1, c  # the guide's x; the model's sites are scored, not drawn


def test_seed_and_jit_inside_the_loop_body():
    def f():
        def step(c, _):
            a = jax.jit(lambda: ppl.sample("a", dist.Normal(0.0, 1.0)))()
            return c + a + ppl.sample("b", dist.Normal(0.0, 1.0)), None

        return lax.scan(step, 0.0, None, length=7)[0]

    c = hashes(ppl.seed(f), jax.random.key(0))
    assert in_loop(c) == 0 and in_loop(c, ("random_bits",)) == 2, c


def test_cond_in_a_loop_takes_its_keys_from_the_iteration():
    @ppl.gen
    def m():
        def step(c, _):
            z = lax.cond(
                c > 0,
                lambda: ppl.sample("z", dist.Normal(0.0, 1.0)) + ppl.sample("u", dist.Normal(0.0, 1.0)),
                lambda: ppl.sample("z", dist.Normal(1.0, 1.0)),
            )
            return c + z, None

        lax.scan(step, 0.0, None, length=4)

    c = hashes(lambda k: m.simulate(k), jax.random.key(0))
    assert in_loop(c) == 0, c
    assert in_loop(c, ("random_bits",)) == 3, c  # the sites of both branches, of which one runs


def test_nested_scan_splits_once_per_outer_iteration():
    @ppl.gen
    def m():
        def outer(c, _):
            def inner(c, _):
                return c + ppl.sample("z", dist.Normal(0.0, 1.0)), None

            c, _ = lax.scan(inner, c, None, length=3)
            return c + ppl.sample("w", dist.Normal(0.0, 1.0)), None

        lax.scan(outer, 0.0, None, length=4)

    c = hashes(lambda k: m.simulate(k), jax.random.key(0))
    assert in_loop(c) == 1 and c[(True, "random_split")] == 1, c  # the inner loop's keys, once per outer iteration
    assert in_loop(c, ("random_bits",)) == 2, c


@pytest.mark.parametrize("via", ["ppl.vmap", "jax.vmap"])
def test_map_lanes_split_once(via):
    def lane(_):
        return ppl.sample("a", dist.Normal(0.0, 1.0)), ppl.sample("b", dist.Normal(0.0, 1.0))

    mapped = ppl.vmap(lane) if via == "ppl.vmap" else jax.vmap(lane)
    c = hashes(lambda k: ppl.seed(mapped)(k, jnp.arange(5)), jax.random.key(0))
    blocks = 1 if via == "ppl.vmap" else 2  # jax.vmap maps each site on its own
    assert c[(False, "random_split")] == blocks and c[(False, "random_fold_in")] == blocks, c  # per map, not lane
    assert c[(False, "random_bits")] == 2, c


# ---------------------------------------------------------------------------------------------- independence


def _corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_draws_independent_across_iterations_and_sites():
    def f():
        def step(c, _):
            a = ppl.sample("a", dist.Normal(0.0, 1.0))
            b = ppl.sample("b", dist.Normal(0.0, 1.0))
            return c, (a, b)

        return lax.scan(step, 0.0, None, length=64)[1]

    a, b = jax.vmap(ppl.seed(f))(jax.random.split(jax.random.key(1), 500))  # (500 runs, 64 iterations)
    a, b = np.asarray(a), np.asarray(b)
    assert len(np.unique(np.concatenate([a[0], b[0]]))) == 2 * a.shape[1]  # every draw of a run its own
    tol = 4 / np.sqrt(a.size)  # 4 standard errors of a correlation of independent draws
    assert abs(_corr(a, b)) < tol  # site a and site b of an iteration
    assert abs(_corr(a[:, 1:], a[:, :-1])) < tol  # consecutive iterations
    assert abs(_corr(a[1:], a[:-1])) < tol  # consecutive runs (keys)
    assert abs(a.mean()) < tol and abs(a.std() - 1.0) < 2 * tol


def test_draws_independent_across_lanes_and_sites_in_a_loop():
    def f():
        def step(c, _):
            return c, ppl.vmap(
                lambda: (ppl.sample("a", dist.Normal(0.0, 1.0)), ppl.sample("b", dist.Normal(0.0, 1.0))), axis_size=8
            )()

        return lax.scan(step, 0.0, None, length=16)[1]

    a, b = (np.asarray(v) for v in jax.vmap(ppl.seed(f))(jax.random.split(jax.random.key(2), 200)))  # (200, 16, 8)
    assert len(np.unique(np.concatenate([a[0].ravel(), b[0].ravel()]))) == 2 * a[0].size  # 256 draws of one run
    tol = 4 / np.sqrt(a.size)
    assert abs(_corr(a, b)) < tol
    assert abs(_corr(a[..., 1:], a[..., :-1])) < tol  # neighbouring lanes
    assert abs(_corr(a[:, 1:], a[:, :-1])) < tol  # the same lane in consecutive iterations


def test_same_key_same_draws():
    def f():
        return lax.scan(lambda c, _: (c, ppl.sample("a", dist.Normal(0.0, 1.0))), 0.0, None, length=5)[1]

    k = jax.random.key(3)
    np.testing.assert_array_equal(ppl.seed(f)(k), jax.jit(ppl.seed(f))(k))
    assert not np.array_equal(ppl.seed(f)(k), ppl.seed(f)(jax.random.key(4)))
