"""Coming from NumPyro: three models fitted with NumPyro's SVI and with ppl side by side, and the numbers each prints.

Each model is written as a NumPyro user writes it, then the ppl way (``@ppl.gen``, ``ppl.plate``, observations as
the objective's data mapping), and also — for the first — the NumPyro model itself through ``ppl.from_numpyro``:

1. **Eight schools** (non-centered): NumPyro ``AutoNormal`` + ``SVI(Trace_ELBO)`` vs ``ppl.auto_normal`` +
   ``ppl.elbo`` + ``ppl.fit`` (same family, same initialization, same optax optimizer). The ELBO at the fitted
   family (mean ± standard error of many estimates), the posterior mean and sd of ``mu`` and ``tau`` (NumPyro's
   ``Predictive`` vs ``ppl.predictive`` + ``ppl.summary``), the wall time of the fit (compile included) and the
   steady-state time per SVI step (each library's step — NumPyro's ``svi.update``, ppl's gradient estimate + the
   optax update that ``ppl.fit`` scans — in one jitted ``lax.scan``, compiled first, best of 3).
2. **Logistic regression** on scikit-learn's breast-cancer data (569 tumours, 30 standardized features; 400 to fit,
   169 held out; synthetic data with a fixed seed if scikit-learn is missing): ``AutoNormal`` vs ``ppl.auto_normal``,
   held-out accuracy of the posterior predictive (``ppl.predictive`` with the held-out features) and held-out log
   predictive density per point.
3. **Gaussian mixture**, 3 components, 1,000 points (``examples/mixture.py``'s data): NumPyro ``TraceEnum_ELBO``
   (``z`` summed out of the model, ``AutoNormal`` on ``mu``) vs ``ppl.auto_normal`` (``mu`` Normal, and ``z`` a
   ``Categorical(logits)`` per point with the ``enum`` gradient strategy: exact, per point, inside the plate).
   Different objectives — NumPyro's marginalizes ``z``, ppl's has a guide on it — fitted to the same data; the
   held-out log-likelihood per point of the fitted mixture tells them apart (or not).
4. **End to end** (eight schools): ``ppl.auto_normal`` → ``ppl.fit`` → ``ppl.predictive`` → ``ppl.to_arviz`` +
   ``arviz.summary`` → ``FitResult.save`` → ``FitResult.load`` (bit-identical predictive draws) → the command line,
   ``python -m ppl predict examples/lang/eight_schools.ppl`` on the saved fit (the ``.ppl`` file declares the same
   family, ``guide eight_schools_q = auto_normal(eight_schools)``; full mode also fits it from the command line).

Run ``python examples/coming_from_numpyro.py`` (full: about a minute on 2 idle CPU cores; it also refits eight
schools with 3 more keys in each library, to show how far two fits of one library land apart) or ``--quick`` (CI,
about 35 s: fewer steps and estimates, steady-state times for eight schools only, no command-line fit). ``--out DIR``
keeps the saved fits (default: a temporary directory). The first line printed says which machine the numbers come
from (versions, cores, load average). docs/coming_from_numpyro.md quotes a full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from mixture import NOISE, PRIOR_MEANS, TRUE_MEANS, K, heldout_loglik, mixture_data  # examples/mixture.py
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO
from numpyro.infer.autoguide import AutoNormal

import ppl

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_DRAWS = 4000  # posterior / posterior predictive draws, both libraries


# ---------------------------------------------------------------------------------------------- shared helpers


def machine_line() -> str:
    import jaxlib

    try:
        cores = f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}"
    except AttributeError:
        cores = str(os.cpu_count())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"machine: python {platform.python_version()} | jax {jax.__version__} | jaxlib {jaxlib.__version__} | "
        f"numpyro {numpyro.__version__} | optax {optax.__version__} | backend {jax.default_backend()} | "
        f"cores {cores} | load average {load}"
    )


def timed(fn):
    """``(fn(), seconds)``, waiting for the result's arrays."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def per_step(step, state, n: int, reps: int = 3) -> float:
    """Steady-state seconds per step of ``state -> state``: ``n`` steps in one jitted ``lax.scan``, compiled and run
    once first, then timed ``reps`` times (the best). ``n = 0``: not measured (NaN)."""
    if n == 0:
        return math.nan
    run = jax.jit(lambda s: jax.lax.scan(lambda c, _: (step(c), None), s, None, length=n)[0])
    jax.block_until_ready(run(state))
    best = math.inf
    for _ in range(reps):
        _, t = timed(lambda: run(state))
        best = min(best, t)
    return best / n


def numpyro_step(svi: SVI, *args):
    """NumPyro's SVI step (``svi.update``) and its initial state."""
    return (lambda s: svi.update(s, *args)[0]), svi.init(jax.random.key(0), *args)


def ppl_step(objective: ppl.Expectation, model_args, params, optimizer):
    """The step ``ppl.fit`` scans: a gradient estimate of the objective, negated, through the optax update."""

    def step(state):
        params, opt_state, key = state
        key, k = jax.random.split(key)
        _, (_, (grads,)) = objective.value_and_grad_estimate(k, model_args, (params,))
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key

    return step, (params, optimizer.init(params), jax.random.key(0))


def ppl_elbo(objective: ppl.Expectation, model_args, guide_args, n: int, key) -> tuple[float, float]:
    """Mean and standard error of ``n`` independent estimates of a ppl objective."""
    est = jax.jit(jax.vmap(lambda k: objective.estimate(k, model_args, guide_args)))(jax.random.split(key, n))
    est = np.asarray(est, np.float64)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(n))


def numpyro_elbo(loss, params, model, guide, args, n: int, key) -> tuple[float, float]:
    """Mean and standard error of ``n`` independent single-particle estimates of NumPyro's ELBO (``-loss``)."""
    one = lambda k: -loss.loss(k, params, model, guide, *args)  # noqa: E731
    est = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, n)), np.float64)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(n))


def warm_up() -> None:
    """One tiny fit in each library, untimed: JAX's one-time start-up costs (backend, small eager kernels) would
    otherwise land on whichever fit runs first."""

    def m(y=None):
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", 2):
            numpyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    y = jnp.array([0.5, 1.0])
    SVI(m, AutoNormal(m), optax.adam(0.01), Trace_ELBO()).run(jax.random.key(0), 10, y, progress_bar=False)
    p = ppl.from_numpyro(m)
    g, init = ppl.auto_normal(p, {}, ppl.fixed(y))
    ppl.fit(ppl.elbo(p, g, {}), (({}, ppl.fixed(y)), (init,)), optimizer=optax.adam(0.01), num_steps=10,
            key=jax.random.key(0), progress=False)


# ---------------------------------------------------------------------------------------------- 1. eight schools

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):  # NumPyro
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", len(sigma)):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


@ppl.gen
def eight_schools_ppl(sigma):  # ppl: the same program; "y" is observed by the objective's data
    mu = ppl.sample("mu", dist.Normal(0.0, 5.0))
    tau = ppl.sample("tau", dist.HalfCauchy(5.0))
    with ppl.plate("J", len(sigma)):
        theta_tilde = ppl.sample("theta_tilde", dist.Normal(0.0, 1.0))
        ppl.sample("y", dist.Normal(mu + tau * theta_tilde, sigma))


def schools_optimizer(steps: int) -> optax.GradientTransformation:
    return optax.adam(optax.exponential_decay(0.02, steps, 0.1))  # 0.02 decaying to 0.002 at the last step


def row(name: str, elbo: tuple[float, float], mu: tuple[float, float], tau: tuple[float, float], wall: float,
        step: float) -> str:
    return (
        f"{name:<22} {elbo[0]:>9.3f} ± {elbo[1]:.3f} {mu[0]:>8.3f} {mu[1]:>7.3f} {tau[0]:>9.3f} {tau[1]:>7.3f} "
        f"{wall:>9.2f} s {us(step)}"
    )


def us(seconds: float) -> str:
    return f"{'—':>12}" if math.isnan(seconds) else f"{1e6 * seconds:>9.1f} µs"


def timing_note(n_time: int) -> str:
    return f"step: steady state ({n_time} steps scanned, best of 3)" if n_time else "step: not measured (--quick)"


def eight_schools_section(steps: int, n_elbo: int, n_time: int, quick: bool) -> dict:
    print(f"\n== 1. Eight schools (non-centered), mean-field Normal family, {steps} Adam steps (0.02 -> 0.002), "
          f"1 particle")
    print(f"ELBO: mean ± stderr of {n_elbo} estimates at the fitted family; mu, tau: mean and sd of {NUM_DRAWS} "
          f"posterior draws; fit: wall time, compile included; {timing_note(n_time)}\n")
    print(f"{'system':<22} {'ELBO':>17} {'mu mean':>8} {'mu sd':>7} {'tau mean':>9} {'tau sd':>7} "
          f"{'fit':>11} {'step':>12}")
    opt = schools_optimizer(steps)
    k_fit, k_elbo, k_pred = jax.random.key(0), jax.random.key(1), jax.random.key(2)

    # --- NumPyro: AutoNormal + SVI(Trace_ELBO), Predictive
    def numpyro_fit(key=k_fit):
        guide = AutoNormal(eight_schools)
        svi = SVI(eight_schools, guide, opt, Trace_ELBO())
        return guide, svi.run(key, steps, SIGMA, Y, progress_bar=False)

    def numpyro_moments(guide, svi_result):
        post = Predictive(eight_schools, guide=guide, params=svi_result.params, num_samples=NUM_DRAWS,
                          return_sites=["mu", "tau", "theta_tilde", "y"])(k_pred, SIGMA)  # latents and replicated y
        assert post["y"].shape == (NUM_DRAWS, 8)
        return {a: (float(np.mean(post[a])), float(np.std(post[a], ddof=1))) for a in ("mu", "tau")}

    (guide, svi_result), wall = timed(numpyro_fit)
    elbo = numpyro_elbo(Trace_ELBO(), svi_result.params, eight_schools, guide, (SIGMA, Y), n_elbo, k_elbo)
    stat = np_stat = numpyro_moments(guide, svi_result)
    step = per_step(*numpyro_step(SVI(eight_schools, AutoNormal(eight_schools), opt, Trace_ELBO()), SIGMA, Y), n_time)
    print(row("numpyro AutoNormal", elbo, stat["mu"], stat["tau"], wall, step), flush=True)

    # --- ppl: the model written with ppl.gen / ppl.plate, y as the objective's data; sigma is data: ppl.fixed
    data, model_args = {"y": Y}, (ppl.fixed(SIGMA),)

    def ppl_fit(key=k_fit):
        guide, init = ppl.auto_normal(eight_schools_ppl, *model_args, observed=data)
        objective = ppl.elbo(eight_schools_ppl, guide, data)
        res = ppl.fit(objective, (model_args, (init,)), optimizer=opt, num_steps=steps, key=key, progress=False,
                      chunk_size=steps)
        return guide, init, objective, res

    def ppl_moments(guide, res):
        pred = ppl.predictive(eight_schools_ppl, guide, res.args[1], model_args=res.args[0], num_samples=NUM_DRAWS,
                              key=k_pred)
        assert pred["posterior_predictive"]["y"].shape == (NUM_DRAWS, 8)
        table = ppl.summary(pred["posterior"])
        return {a: (table[a]["mean"], table[a]["sd"]) for a in ("mu", "tau")}, pred

    (guide, init, objective, res), wall = timed(ppl_fit)
    elbo = ppl_elbo(objective, *res.args, n_elbo, k_elbo)
    stat, pred = ppl_moments(guide, res)
    step = per_step(*ppl_step(objective, model_args, init, opt), n_time)
    print(row("ppl auto_normal", elbo, stat["mu"], stat["tau"], wall, step), flush=True)
    native = {"guide": guide, "objective": objective, "res": res, "pred": pred}
    spread = {"numpyro AutoNormal": [np_stat], "ppl auto_normal": [stat]}

    # --- ppl: NumPyro's own model through ppl.from_numpyro; its data arguments in ppl.fixed
    p = ppl.from_numpyro(eight_schools)
    np_args = ({}, ppl.fixed(SIGMA), ppl.fixed(Y))  # {}: the (empty) numpyro.param dict comes first

    def from_numpyro_fit():
        guide, init = ppl.auto_normal(p, *np_args)  # observations are obs= factors: nothing to declare
        objective = ppl.elbo(p, guide, {})
        res = ppl.fit(objective, (np_args, (init,)), optimizer=opt, num_steps=steps, key=k_fit, progress=False,
                      chunk_size=steps)
        return guide, init, objective, res

    (guide, init, objective, res), wall = timed(from_numpyro_fit)
    elbo = ppl_elbo(objective, *res.args, n_elbo, k_elbo)
    pred = ppl.predictive(p, guide, res.args[1], model_args=({}, ppl.fixed(SIGMA)), num_samples=NUM_DRAWS,
                          key=k_pred)  # y=None: y is drawn, as NumPyro's Predictive does
    assert pred["posterior_predictive"]["y"].shape == (NUM_DRAWS, 8)
    table = ppl.summary(pred["posterior"])
    stat = {a: (table[a]["mean"], table[a]["sd"]) for a in ("mu", "tau")}
    step = per_step(*ppl_step(objective, np_args, init, opt), 0 if quick else n_time)
    print(row("ppl from_numpyro", elbo, stat["mu"], stat["tau"], wall, step))
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(res.args[1]),
                                                    jax.tree_util.tree_leaves(native["res"].args[1]), strict=True))
    print(f"\nppl auto_normal and ppl from_numpyro trained bit-identical parameters: {same} (same program, same key)")

    if not quick:  # how far apart two fits of one library land: the same fits with other keys
        seeds = range(1, 4)
        for seed in seeds:
            spread["numpyro AutoNormal"].append(numpyro_moments(*numpyro_fit(jax.random.key(seed))))
            g, _, _, r = ppl_fit(jax.random.key(seed))
            spread["ppl auto_normal"].append(ppl_moments(g, r)[0])
        print(f"\nthe same fits with keys 0-{seeds[-1]}, range over keys:")
        for name, stats in spread.items():
            cells = [f"{min(st[a][j] for st in stats):.2f}-{max(st[a][j] for st in stats):.2f}"
                     for a in ("mu", "tau") for j in (0, 1)]
            print(f"{name:<22} mu mean {cells[0]}, mu sd {cells[1]}, tau mean {cells[2]}, tau sd {cells[3]}")
    return native


# ---------------------------------------------------------------------------------------------- 2. logistic regression


def breast_cancer() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:  # synthetic data of the same shape, fixed seed
        rng = np.random.default_rng(0)
        X = rng.standard_normal((569, 30))
        w = rng.standard_normal(30) * 0.5
        y = (rng.random(569) < 1 / (1 + np.exp(-(X @ w + 0.5)))).astype(np.int64)
        return X, y, "synthetic data (scikit-learn is not installed; seed 0)"
    X, y = load_breast_cancer(return_X_y=True)
    return X, y, "scikit-learn's breast-cancer data"


def logreg_data(n_train: int = 400):
    X, y, source = breast_cancer()
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[:n_train], perm[n_train:]
    m, s = X[tr].mean(0), X[tr].std(0)
    Xs = ((X - m) / s).astype(np.float32)  # standardized with the training statistics
    return jnp.asarray(Xs[tr]), jnp.asarray(y[tr], jnp.float32), jnp.asarray(Xs[te]), y[te], source


def logreg(X, y=None):  # NumPyro
    w = numpyro.sample("w", dist.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


@ppl.gen
def logreg_ppl(X):  # ppl
    w = ppl.sample("w", dist.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
    b = ppl.sample("b", dist.Normal(0.0, 5.0))
    with ppl.plate("data", X.shape[0]):
        ppl.sample("y", dist.Bernoulli(logits=X @ w + b))


def heldout_lpd(w: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Held-out log predictive density per point, ``mean_i log mean_s p(y_i | w_s, b_s)``."""
    logits = np.asarray(X, np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)  # (n, S)
    logp = -np.logaddexp(0.0, np.where(y[:, None] == 1, -logits, logits))
    return float(np.mean(np.logaddexp.reduce(logp, axis=1) - math.log(logp.shape[1])))


def logreg_section(steps: int, n_elbo: int, n_time: int) -> None:
    Xtr, ytr, Xte, yte, source = logreg_data()
    print(f"\n== 2. Logistic regression, {source}: {Xtr.shape[0]} points to fit, {Xte.shape[0]} held out, "
          f"{Xtr.shape[1]} features; {steps} Adam steps (0.02 -> 0.002)")
    print(f"accuracy: held-out points whose posterior predictive mean ({NUM_DRAWS} draws of y) is on the right side "
          f"of 0.5; lpd: held-out log predictive density per point; {timing_note(n_time)}\n")
    print(f"{'system':<22} {'ELBO':>17} {'accuracy':>9} {'lpd':>8} {'fit':>11} {'step':>12}")
    opt = schools_optimizer(steps)
    k_fit, k_elbo, k_pred = jax.random.key(0), jax.random.key(1), jax.random.key(2)

    def numpyro_fit():
        guide = AutoNormal(logreg)
        return guide, SVI(logreg, guide, opt, Trace_ELBO()).run(k_fit, steps, Xtr, ytr, progress_bar=False)

    (guide, svi_result), wall = timed(numpyro_fit)
    elbo = numpyro_elbo(Trace_ELBO(), svi_result.params, logreg, guide, (Xtr, ytr), n_elbo, k_elbo)
    post = Predictive(logreg, guide=guide, params=svi_result.params, num_samples=NUM_DRAWS,
                      return_sites=["w", "b", "y"])(k_pred, Xte)  # the held-out features: y is drawn for them
    acc = float(np.mean((np.mean(post["y"], 0) > 0.5) == yte))
    lpd = heldout_lpd(post["w"], post["b"], Xte, yte)
    step = per_step(*numpyro_step(SVI(logreg, AutoNormal(logreg), opt, Trace_ELBO()), Xtr, ytr), n_time)
    print(f"{'numpyro AutoNormal':<22} {elbo[0]:>9.3f} ± {elbo[1]:.3f} {acc:>9.4f} {lpd:>8.4f} {wall:>9.2f} s "
          f"{us(step)}", flush=True)

    data, model_args = {"y": ytr}, (ppl.fixed(Xtr),)  # features: a model argument, never trained

    def ppl_fit():
        guide, init = ppl.auto_normal(logreg_ppl, *model_args, observed=data)
        objective = ppl.elbo(logreg_ppl, guide, data)
        res = ppl.fit(objective, (model_args, (init,)), optimizer=opt, num_steps=steps, key=k_fit, progress=False,
                      chunk_size=steps)
        return guide, init, objective, res

    (guide, init, objective, res), wall = timed(ppl_fit)
    elbo = ppl_elbo(objective, *res.args, n_elbo, k_elbo)
    pred = ppl.predictive(logreg_ppl, guide, res.args[1], model_args=(ppl.fixed(Xte),), num_samples=NUM_DRAWS,
                          key=k_pred)  # the held-out features: y is drawn for them
    acc = float(np.mean((pred["posterior_predictive"]["y"].mean(0) > 0.5) == yte))
    lpd = heldout_lpd(pred["posterior"]["w"], pred["posterior"]["b"], Xte, yte)
    step = per_step(*ppl_step(objective, model_args, init, opt), n_time)
    print(f"{'ppl auto_normal':<22} {elbo[0]:>9.3f} ± {elbo[1]:.3f} {acc:>9.4f} {lpd:>8.4f} {wall:>9.2f} s "
          f"{us(step)}", flush=True)


# ---------------------------------------------------------------------------------------------- 3. Gaussian mixture

MIX_N = 1000


def gmm(x):  # NumPyro: z enumerated (summed out) by TraceEnum_ELBO
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(PRIOR_MEANS), 1.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=jnp.full(K, 1.0 / K)), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(mu[z], NOISE), obs=x)


@ppl.gen
def gmm_ppl(n):  # ppl: z is a latent of the guide too (auto_normal: Categorical(logits), enum)
    mu = ppl.sample("mu", dist.Normal(jnp.asarray(PRIOR_MEANS), 1.0).to_event(1))
    with ppl.plate("data", n):
        z = ppl.sample("z", dist.Categorical(probs=jnp.full(K, 1.0 / K)))
        ppl.sample("x", dist.Normal(mu[z], NOISE))


def mixture_section(steps: int, n_elbo: int, n_time: int) -> None:
    x, held = jnp.asarray(mixture_data(MIX_N, 1)), mixture_data(MIX_N, 2)
    print(f"\n== 3. Gaussian mixture, {K} components, {MIX_N} points (+ {MIX_N} held out), true means "
          f"{TRUE_MEANS.tolist()}, prior mu ~ Normal({PRIOR_MEANS.tolist()}, 1); {steps} Adam steps (cosine 0.05)")
    print("ELBO: NumPyro's has z summed out of the model (a tighter bound, on mu only); ppl's has q(z_i) per point "
          f"(enum); held-out: log-likelihood per point of the mixture at the posterior mean of mu; "
          f"{timing_note(n_time)}\n")
    print(f"{'system':<22} {'objective':<26} {'ELBO':>19} {'held-out':>9} {'fit':>11} {'step':>12}")
    opt = optax.adam(optax.cosine_decay_schedule(0.05, steps, alpha=0.1))
    k_fit, k_elbo, k_pred = jax.random.key(0), jax.random.key(1), jax.random.key(2)

    try:
        import funsor  # noqa: F401  (NumPyro's TraceEnum_ELBO needs it)
    except ImportError:
        print("numpyro TraceEnum_ELBO: skipped (pip install funsor)")
    else:
        def numpyro_fit():
            guide = AutoNormal(handlers.block(gmm, hide=["z"]))  # the guide has mu only
            return guide, SVI(gmm, guide, opt, TraceEnum_ELBO()).run(k_fit, steps, x, progress_bar=False)

        (guide, svi_result), wall = timed(numpyro_fit)
        elbo = numpyro_elbo(TraceEnum_ELBO(), svi_result.params, gmm, guide, (x,), n_elbo, k_elbo)
        post = Predictive(guide, params=svi_result.params, num_samples=NUM_DRAWS)(k_pred, x)
        ll = heldout_loglik(np.sort(np.asarray(post["mu"]).mean(0)), held)
        block = AutoNormal(handlers.block(gmm, hide=["z"]))
        step = per_step(*numpyro_step(SVI(gmm, block, opt, TraceEnum_ELBO()), x), n_time)
        print(f"{'numpyro TraceEnum_ELBO':<22} {'z summed out':<26} {elbo[0]:>11.3f} ± {elbo[1]:.3f} {ll:>9.4f} "
              f"{wall:>9.2f} s {us(step)}", flush=True)

    data = {"x": x}

    def ppl_fit():
        guide, init = ppl.auto_normal(gmm_ppl, MIX_N, observed=data)  # z: Categorical(logits), ppl.enum
        objective = ppl.elbo(gmm_ppl, guide, data)
        res = ppl.fit(objective, ((MIX_N,), (init,)), optimizer=opt, num_steps=steps, key=k_fit, progress=False,
                      chunk_size=steps)
        return guide, init, objective, res

    (guide, init, objective, res), wall = timed(ppl_fit)
    elbo = ppl_elbo(objective, *res.args, n_elbo, k_elbo)
    pred = ppl.predictive(None, guide, res.args[1], num_samples=NUM_DRAWS, key=k_pred)  # the posterior only
    ll = heldout_loglik(np.sort(pred["posterior"]["mu"].mean(0)), held)
    step = per_step(*ppl_step(objective, (MIX_N,), init, opt), n_time)
    shapes = {a: {k: tuple(v.shape) for k, v in p.items()} for a, p in init.items()}
    print(f"{'ppl auto_normal':<22} {'q(z_i) per point, enum':<26} {elbo[0]:>11.3f} ± {elbo[1]:.3f} {ll:>9.4f} "
          f"{wall:>9.2f} s {us(step)}")
    print(f"{'true mixture':<22} {'':<26} {'':>19} {heldout_loglik(TRUE_MEANS, held):>9.4f}")
    print(f"\nppl.auto_normal's parameters: {shapes}")


# ---------------------------------------------------------------------------------------------- 4. end to end


def ppl_guide_args(params: dict) -> tuple:
    """The fitted ``auto_normal`` parameters in the order of ``eight_schools_q``'s arguments (examples/lang/)."""
    return tuple(np.asarray(params[a][k]) for a in ("mu", "tau", "theta_tilde") for k in ("loc", "raw_scale"))


def cli(*args: str) -> str:
    """``python -m ppl ARGS`` (paths relative to the checkout), its output."""
    proc = subprocess.run([sys.executable, "-m", "ppl", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode != 0:
        raise RuntimeError(f"python -m ppl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.rstrip()


def end_to_end(native: dict, out: str, steps: int, cli_fit: bool) -> None:
    print("\n== 4. End to end (eight schools): auto_normal -> fit -> predictive -> to_arviz + arviz.summary -> "
          "save -> load -> command line\n")
    res, guide, pred = native["res"], native["guide"], native["pred"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz as az
    except ImportError:
        print("arviz: not installed (pip install 'ppl[arviz]'): skipped")
    else:
        idata = ppl.to_arviz(pred, observed_data={"y": np.asarray(Y)})
        print(f"ppl.to_arviz: groups {list(idata)}, posterior mu dims "
              f"{dict(idata.posterior['mu'].sizes)}")
        print(az.summary(idata, var_names=["mu", "tau"], kind="stats", round_to=3).to_string())

    path = os.path.join(out, "eight_schools_fit.npz")
    res.save(path, metadata={"model": "eight_schools_ppl", "family": "ppl.auto_normal"})
    back = ppl.FitResult.load(path)
    again = ppl.predictive(eight_schools_ppl, guide, back.args[1], model_args=back.args[0], num_samples=NUM_DRAWS,
                           key=jax.random.key(2))
    same = all(np.array_equal(again[g][a], pred[g][a]) for g in pred for a in pred[g])
    print(f"\nFitResult.save -> {os.path.basename(path)} ({os.path.getsize(path)} bytes); FitResult.load -> "
          f"ppl.predictive draws bit-identical: {same}")

    # The .ppl file declares the same family (auto_normal(eight_schools)): the Python fit, saved in the order of that
    # guide's arguments, drives the CLI.
    ppl_file, json_file = "examples/lang/eight_schools.ppl", "examples/lang/eight_schools.json"
    as_cli = dataclasses.replace(res, args=((), ppl_guide_args(res.args[1][0])))
    cli_path = os.path.join(out, "eight_schools_for_cli.npz")
    as_cli.save(cli_path, metadata={"from": "examples/coming_from_numpyro.py (ppl.auto_normal fit)"})
    print(f"\n$ python -m ppl predict {ppl_file} --fit {os.path.basename(cli_path)} --data {json_file} "
          f"--samples {NUM_DRAWS}")
    print(cli("predict", ppl_file, "--fit", cli_path, "--data", json_file, "--samples", str(NUM_DRAWS)))

    if cli_fit:
        fit_path = os.path.join(out, "eight_schools_cli_fit.npz")
        print(f"\n$ python -m ppl fit {ppl_file} --data {json_file} --steps {steps} --lr 0.01 --out "
              f"{os.path.basename(fit_path)}")
        t0 = time.perf_counter()
        text = cli("fit", ppl_file, "--data", json_file, "--steps", str(steps), "--lr", "0.01", "--out", fit_path)
        print("\n".join(line for line in text.splitlines() if not line.startswith("  eight_schools_q.theta")))
        print(f"(wall time of the command, Python start-up and compile included: {time.perf_counter() - t0:.1f} s)")
        print(f"\n$ python -m ppl sample {ppl_file} --fit {os.path.basename(fit_path)} --samples {NUM_DRAWS}")
        print("\n".join(cli("sample", ppl_file, "--fit", fit_path, "--samples", str(NUM_DRAWS)).splitlines()[:5]))


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: fewer steps and estimates, no CLI fit")
    parser.add_argument("--out", default=None, help="directory for the saved fits (default: a temporary one)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    q = args.quick
    print(f"== Coming from NumPyro: NumPyro SVI next to ppl ({'quick' if q else 'full'})")
    print(machine_line(), flush=True)
    if not q:  # (--quick: its times are not quoted anywhere)
        t = time.perf_counter()
        warm_up()
        print(f"(warm-up {time.perf_counter() - t:.1f} s)")
    n_elbo = 1000 if q else 20000
    t = time.perf_counter()
    native = eight_schools_section(steps=2000 if q else 5000, n_elbo=n_elbo, n_time=200 if q else 2000, quick=q)
    print(f"(section {time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    logreg_section(steps=1000 if q else 3000, n_elbo=n_elbo, n_time=0 if q else 2000)
    print(f"(section {time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    mixture_section(steps=300 if q else 1000, n_elbo=n_elbo // 4, n_time=0 if q else 500)
    print(f"(section {time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        end_to_end(native, out, steps=5000, cli_fit=not q)
    print(f"(section {time.perf_counter() - t:.1f} s)")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\ntotal time: {time.perf_counter() - t_start:.1f} s (load average at the end: {load})")


if __name__ == "__main__":
    main()
