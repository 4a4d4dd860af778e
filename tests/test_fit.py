"""``ppl.workflow.fit``: convergence to an exact posterior, bit-identical checkpoint resume, skipped non-finite steps.

The ELBO is written as a user program (``sim`` / ``density``), so these tests depend only on the core.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import ppl
from ppl.workflow import FitResult, fit

fit_module = importlib.import_module("ppl.workflow.fit")  # the attribute ppl.workflow.fit is the function

XS = jnp.array([0.5, 1.2, -0.3, 0.9, 1.7])
N = XS.shape[0]
POST_MEAN, POST_SCALE = float(XS.sum() / (N + 1)), float(1.0 / np.sqrt(N + 1))


@ppl.gen
def model():
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("x", dist.Normal(z, 1.0).expand((N,)))


@ppl.gen
def guide(params):
    ppl.sample("z", dist.Normal(params["mu"], jax.nn.softplus(params["rho"])))


@ppl.expectation
def elbo(model_args, guide_args):
    z, log_q = ppl.sim(guide, *guide_args)
    return ppl.density(model, {**z, "x": XS}, *model_args) - log_q


def init_args():
    return ((), ({"mu": jnp.array(0.0), "rho": jnp.array(0.0)},))


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True))


# ---------------------------------------------------------------------------------------------- convergence


def test_fit_converges_to_exact_posterior():
    """z ~ N(0,1), x_i ~ N(z,1): the posterior N(Σx/(n+1), 1/√(n+1)) is in the family, and at it the ELBO estimate
    is log p(x) for every sample. Tolerances: over 20 seeds this setting ends within sd 0.01 of the exact values
    (max error 0.02), so 0.05 is ~5 sd."""
    num_steps = 2000
    opt = optax.adam(optax.cosine_decay_schedule(0.05, num_steps, alpha=0.01))
    res = fit(
        elbo, init_args(), optimizer=opt, num_steps=num_steps, key=jax.random.key(3), num_particles=8, progress=False
    )
    assert isinstance(res, FitResult)
    p = res.args[1][0]
    assert abs(float(p["mu"]) - POST_MEAN) < 0.05
    assert abs(float(jax.nn.softplus(p["rho"])) - POST_SCALE) < 0.05
    log_px = jax.scipy.stats.multivariate_normal.logpdf(XS, jnp.zeros(N), jnp.eye(N) + jnp.ones((N, N)))
    assert abs(res.running_value(100) - float(log_px)) < 0.01
    assert res.values.shape == (num_steps,) and np.all(np.isfinite(res.values))
    assert res.num_skipped == 0 and res.steps == num_steps and res.resumed_from == 0
    assert res.args[0] == ()  # structure kept
    assert res.values[0] < res.running_value(100) - 1.0  # the ELBO went up


def test_num_particles_average_of_fold_in_keys():
    """With a zero learning rate, values[i] is the mean of K estimates on split(fold_in(key, i), K)."""
    key, k = jax.random.key(7), 3
    res = fit(
        elbo, init_args(), optimizer=optax.sgd(0.0), num_steps=5, key=key, num_particles=k, progress=False, chunk_size=2
    )
    args = init_args()
    for i in range(5):
        keys = jax.random.split(jax.random.fold_in(key, i), k)
        expect = np.mean([float(elbo.estimate(kk, *args)) for kk in keys])
        np.testing.assert_allclose(res.values[i], expect, rtol=1e-5)
    assert leaves_equal(res.args, args)


# ---------------------------------------------------------------------------------------------- checkpoints


def _run(num_steps, checkpoint=None, chunk_size=10, seed=0):
    return fit(
        elbo,
        init_args(),
        optimizer=optax.adam(0.05),
        num_steps=num_steps,
        key=jax.random.key(seed),
        num_particles=2,
        progress=False,
        checkpoint=checkpoint,
        chunk_size=chunk_size,
    )


@pytest.fixture(scope="module")
def uninterrupted():
    return _run(40)


def assert_same_run(a: FitResult, b: FitResult):
    assert leaves_equal(a.args, b.args), (a.args, b.args)
    assert leaves_equal(a.opt_state, b.opt_state)
    assert np.array_equal(a.values, b.values)
    assert np.array_equal(a.skipped, b.skipped) and a.num_skipped == b.num_skipped and a.steps == b.steps


@pytest.mark.parametrize("midpoint", [20, 25])  # on a chunk boundary, and not (chunks 20-25, 25-30 on resume)
def test_checkpoint_resume_is_bit_identical(tmp_path, uninterrupted, midpoint):
    first = _run(midpoint, checkpoint=tmp_path)
    assert (tmp_path / fit_module.CHECKPOINT_FILE).exists() and first.steps == midpoint
    resumed = _run(40, checkpoint=tmp_path)
    assert resumed.resumed_from == midpoint
    assert_same_run(resumed, uninterrupted)


def test_checkpoint_interrupt_mid_run_then_resume(tmp_path, monkeypatch, uninterrupted):
    """A run killed after its second checkpoint (step 20) resumes, with no trace of the interruption."""
    real_save, saves = fit_module._save, []

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        saves.append(a[1]["step"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(40, checkpoint=tmp_path)
    monkeypatch.setattr(fit_module, "_save", real_save)
    assert saves == [10, 20] and not list(tmp_path.glob("*.tmp-*"))
    resumed = _run(40, checkpoint=tmp_path)
    assert resumed.resumed_from == 20
    assert_same_run(resumed, uninterrupted)
    again = _run(40, checkpoint=tmp_path)  # already complete: nothing to do, same result
    assert again.resumed_from == 40
    assert_same_run(again, uninterrupted)


def test_checkpoint_mismatch_is_an_error(tmp_path):
    _run(10, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="different run.*key"):
        _run(20, checkpoint=tmp_path, seed=1)
    with pytest.raises(ValueError, match="past num_steps"):
        _run(5, checkpoint=tmp_path)


# ---------------------------------------------------------------------------------------------- non-finite steps


@jax.custom_jvp
def _poison_grad(theta, flag):
    """Identity in value; the derivative is NaN where ``flag`` is 1."""
    return theta


@_poison_grad.defjvp
def _poison_grad_jvp(primals, tangents):
    theta, flag = primals
    return theta, tangents[0] * jnp.where(flag > 0.5, jnp.nan, 1.0)


@ppl.expectation
def flaky(theta):
    """E[-(x - 2)^2], x ~ N(theta, 1); the value is NaN when u < 0.08 and the gradient NaN when u > 0.92."""
    x = ppl.sample("x", dist.Normal(theta, 1.0))
    u = ppl.sample("u", dist.Uniform(0.0, 1.0))
    value = -((_poison_grad(x, (u > 0.92).astype(jnp.float32)) - 2.0) ** 2)
    return jnp.where(u < 0.08, jnp.nan, value)


def test_nonfinite_steps_are_skipped_and_counted():
    key, num_steps, opt = jax.random.key(11), 120, optax.adam(0.1)
    res = fit(flaky, jnp.array(0.0), optimizer=opt, num_steps=num_steps, key=key, progress=False, chunk_size=50)
    # reference: the same steps in a Python loop, skipping by hand
    theta, state, skipped = jnp.array(0.0), opt.init(jnp.array(0.0)), []
    step = jax.jit(flaky.value_and_grad_estimate)
    for i in range(num_steps):
        v, g = step(jax.random.fold_in(key, i), theta)
        ok = bool(jnp.isfinite(v) & jnp.isfinite(g))
        skipped.append(not ok)
        if ok:
            upd, state = opt.update(-g, state, theta)
            theta = optax.apply_updates(theta, upd)
    skipped = np.array(skipped)
    assert 10 < skipped.sum() < 40  # both kinds happen (value NaN ~8 %, gradient NaN ~8 %)
    assert np.array_equal(res.skipped, skipped) and res.num_skipped == int(skipped.sum())
    assert np.isnan(res.values[skipped]).sum() > 0 and np.isfinite(res.values[skipped]).sum() > 0
    assert np.all(np.isfinite(res.values[~skipped]))
    assert res.args.shape == () and np.isfinite(res.args)  # a bare argument comes back bare
    np.testing.assert_allclose(res.args, theta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(int(res.opt_state[0].count), num_steps - skipped.sum())
    assert abs(float(res.args) - 2.0) < 0.5


@ppl.expectation
def spike(theta):
    """-0.1 (theta - 1)^2, plus 3e38 theta when u > 0.9 (u ~ U(0, 1)): there the value (theta in [0, 1]) and the
    gradient (3e38) are finite but an sgd step of learning rate 2 overflows the parameter."""
    u = ppl.sample("u", dist.Uniform(0.0, 1.0))
    return -0.1 * (theta - 1.0) ** 2 + jnp.where(u > 0.9, 3e38, 0.0) * theta


def test_updates_overflowing_mid_chunk_are_skipped():
    """A step whose update overflows the parameters is skipped (the fast program sees the overflow at the chunk's
    end; the guarded one reruns the chunk). Same steps, parameters and momentum as a Python loop that skips by
    hand."""
    key, num_steps, opt = jax.random.key(5), 60, optax.sgd(2.0, momentum=0.1)
    res = fit(spike, jnp.array(0.0), optimizer=opt, num_steps=num_steps, key=key, progress=False, chunk_size=20)
    theta, state, skipped, overflowed = jnp.array(0.0), opt.init(jnp.array(0.0)), [], []
    step = jax.jit(spike.value_and_grad_estimate)
    for i in range(num_steps):
        v, g = step(jax.random.fold_in(key, i), theta)
        upd, new_state = opt.update(-g, state, theta)
        new_theta = optax.apply_updates(theta, upd)
        ok = bool(jnp.isfinite(v) & jnp.isfinite(g) & jnp.isfinite(new_theta))
        skipped.append(not ok)
        overflowed.append(bool(jnp.isfinite(v) & jnp.isfinite(g)) and not ok)
        if ok:
            theta, state = new_theta, new_state
    skipped, overflowed = np.array(skipped), np.array(overflowed)
    assert np.array_equal(skipped, overflowed) and 3 <= overflowed.sum() < 15  # overflows only, in several chunks
    assert len({i // 20 for i in np.flatnonzero(overflowed)}) >= 2
    assert np.array_equal(res.skipped, skipped) and res.num_skipped == int(skipped.sum())
    assert np.all(np.isfinite(res.values))  # the value of an overflowing step is finite, and kept
    np.testing.assert_allclose(res.args, theta, rtol=1e-6)
    np.testing.assert_allclose(res.opt_state[0].trace, state[0].trace, rtol=1e-6)


def test_an_optimizer_that_discards_nan_gradients_takes_those_steps():
    """With ``optax.zero_nans`` in the chain a NaN gradient is the optimizer's business: the step is taken (zero
    gradient); a NaN estimate is still skipped. The same whether the chunk ran the fast program (no NaN estimate) or
    was rerun by the guarded one (a NaN estimate in it): chunks of both kinds occur here."""
    key, num_steps = jax.random.key(11), 120
    opt = optax.chain(optax.zero_nans(), optax.adam(0.1))
    res = fit(flaky, jnp.array(0.0), optimizer=opt, num_steps=num_steps, key=key, progress=False, chunk_size=10)
    theta, state, skipped, grad_nan = jnp.array(0.0), opt.init(jnp.array(0.0)), [], []
    step = jax.jit(flaky.value_and_grad_estimate)
    for i in range(num_steps):
        v, g = step(jax.random.fold_in(key, i), theta)
        skipped.append(not bool(jnp.isfinite(v)))
        grad_nan.append(bool(jnp.isfinite(v)) and not bool(jnp.isfinite(g)))
        if not skipped[-1]:
            upd, state = opt.update(-g, state, theta)
            theta = optax.apply_updates(theta, upd)
    skipped, grad_nan = np.array(skipped), np.array(grad_nan)
    chunks_with_skips = {i // 10 for i in np.flatnonzero(skipped)}
    assert 3 <= skipped.sum() < 25 and 3 <= grad_nan.sum() < 25
    assert any(i // 10 in chunks_with_skips for i in np.flatnonzero(grad_nan))  # taken inside a guarded rerun
    assert any(i // 10 not in chunks_with_skips for i in np.flatnonzero(grad_nan))  # and inside a fast chunk
    assert np.array_equal(res.skipped, skipped)
    np.testing.assert_allclose(res.args, theta, rtol=1e-5, atol=1e-6)
    assert int(res.opt_state[1][0].count) == num_steps - skipped.sum()


# ---------------------------------------------------------------------------------------------- arguments


def test_the_parameter_rule():
    # parameters: float arrays and Python floats outside ppl.fixed; ints and integer arrays are constants
    @ppl.expectation
    def obj(p, n, scale, data):
        x = ppl.sample("x", dist.Normal(p["w"], 1.0))
        return -jnp.sum((x * scale - data[:n]) ** 2) + 0.0 * p["count"]

    data = jnp.array([1.0, 2.0, 3.0])
    args = ({"w": jnp.zeros(2), "count": jnp.array(3)}, 2, 1.5, ppl.fixed(data))
    res = fit(obj, args, optimizer=optax.adam(0.1), num_steps=30, key=0, progress=False)
    p, n, scale, d = res.args
    assert not np.array_equal(p["w"], jnp.zeros(2))  # trained
    assert p["count"].dtype == jnp.int32 and int(p["count"]) == 3 and n == 2  # constants pass through
    assert isinstance(scale, jax.Array) and float(scale) != 1.5  # a Python float is a parameter: trained
    assert isinstance(d, ppl.fixed(0.0).__class__) and np.array_equal(d.value, data)  # fixed data is never trained
    assert res.trained == "p['w'] (2,), scale () — 3 numbers"
    frozen = fit(
        obj, args, optimizer=optax.adam(0.1), num_steps=30, key=0, progress=False, trainable=(True,) * 2 + (False, True)
    )
    assert frozen.args[2] == 1.5 and frozen.trained == "p['w'] (2,) — 2 numbers"  # trainable= freezes on top
    g = obj.grad_estimate(jax.random.key(0), *args)  # the same rule in grad_estimate
    assert g[0]["count"] is None and g[1] is None and g[2] is not None and g[3] is None


def test_fit_prints_what_it_trains(capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)

    @ppl.expectation
    def obj(theta, y):
        return -jnp.sum((ppl.sample("x", dist.Normal(theta, 1.0)) - y) ** 2)

    fit(obj, (jnp.zeros(3), ppl.fixed(1.0)), optimizer=optax.adam(0.1), num_steps=2, key=0)
    assert "fit: training theta (3,) — 3 numbers" in capsys.readouterr().out


def test_nothing_to_train_and_bad_arguments():
    @ppl.expectation
    def obj(theta):
        return ppl.sample("x", dist.Normal(theta, 1.0))

    with pytest.raises(ValueError, match="nothing to train"):
        fit(obj, (ppl.fixed(0.5),), optimizer=optax.adam(0.1), num_steps=3, key=0, progress=False)
    with pytest.raises(TypeError, match="optax"):
        fit(obj, (jnp.array(0.5),), optimizer=None, num_steps=3, key=0, progress=False)
    with pytest.raises(ValueError, match="num_particles"):
        fit(obj, (jnp.array(0.5),), optimizer=optax.adam(0.1), num_steps=3, key=0, num_particles=0)
    with pytest.raises(ValueError, match="prefix"):
        fit(obj, (jnp.array(0.5),), optimizer=optax.adam(0.1), num_steps=3, key=0, trainable=(True, False))


def test_progress_bar_shows_running_value(capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    fit(elbo, init_args(), optimizer=optax.adam(0.05), num_steps=20, key=0, chunk_size=10)
    err = capsys.readouterr().err
    assert "elbo" in err and "value=" in err and "20/20" in err
    monkeypatch.setenv("CI", "1")
    fit(elbo, init_args(), optimizer=optax.adam(0.05), num_steps=20, key=0, chunk_size=10)
    assert capsys.readouterr().err == ""


def test_resume_in_a_new_process(tmp_path, uninterrupted):
    """The checkpoint written by another Python process (the usual interruption) resumes bit for bit."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); from tests.test_fit import _run; _run(20, checkpoint=sys.argv[1])"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(root)], check=True, env=env, cwd=root)
    resumed = _run(40, checkpoint=tmp_path)
    assert resumed.resumed_from == 20
    assert_same_run(resumed, uninterrupted)
