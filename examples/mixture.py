"""A Gaussian mixture with discrete assignments, written with a plate: five gradient strategies, measured, then used.

The model (Bayesian, 3 components, 6 points, everything small enough to solve exactly)::

    μ_k ~ Normal(m0_k, 1)       k = 1..3,  m0 = (−3, 0, 3)
    z_i ~ Categorical(1/3, 1/3, 1/3)        i = 1..6
    x_i ~ Normal(μ_{z_i}, 1)                x = (−3.1, −2.2, −0.4, 0.8, 1.6, 3.3) observed

and the mean-field family ``q(μ) Π_i q(z_i)``: ``μ ~ Normal(m, softplus(ρ))`` (reparameterized) and
``z_i ~ Categorical(logits=L_i)``. Both are written as a NumPyro user writes them: the points inside
``with ppl.plate("data", N)``, one vectorized site ``z`` of shape ``(N,)``. The plate declares the points
conditionally independent, so the estimators work per point: a point's score multiplies only its own terms, and
``enum``/``mvd`` at ``z`` run the rest of the program 3 times for all points at once (not 3^N).

What the script shows:

1. the **exact posterior**: ``μ`` integrates out in closed form, so ``p(z | x)`` is a sum over the 3⁶ = 729
   assignments — exact ``log p(x)`` and exact marginals ``p(z_i = k | x)``;
2. **the same** ``ppl.elbo(model, guide, data)`` with the strategy of ``z`` set by glob to ``reinforce``,
   ``baseline(b)`` (REINFORCE with a constant control variate: the ELBO at the initial guide), ``leave_one_out(4)``,
   ``mvd`` and ``enum``, measured by ``ppl.compare_estimators`` at the initial guide: all unbiased (their mean
   gradients agree: the ``max |z|`` column), with variances and costs that differ by orders of magnitude;
3. ``ppl.fit`` with the assignment of lowest variance × time — skipping the constant baseline, whose constant is tuned
   to the initial guide and goes stale as training raises the ELBO — and the learned ``q(z_i)`` next to the exact
   ``p(z_i | x)``. They are close but not equal: the mean-field family cannot represent the dependence between ``μ``
   and ``z``, so it is somewhat more confident than the exact posterior, and its ELBO stays below ``log p(x)``;
4. **the same model at N = 1,000 points** (data drawn from a 3-component mixture, 1,000 held-out points): ``enum`` at
   the plated assignments, the time per gradient step, and the held-out log-likelihood per point of the fitted
   mixture against that of the true one;
5. (full mode) the same fit under every assignment (the stale baseline visibly trains worse), the comparison repeated
   at the fitted guide (the ranking can change as the guide sharpens), and the figure
   ``OUT/mixture_estimators.png`` (``ppl.compare_estimators(..., plot=...)``).

Run ``python examples/mixture.py`` (about a minute on 2 CPU cores) or ``--quick`` (CI, < 30 s: 1,000 gradient
estimates per assignment, one 600-step fit, a 300-step fit at N = 1,000, no figure). Most of the quick run is XLA
compilation (a few seconds per assignment).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

import ppl

X = np.array([-3.1, -2.2, -0.4, 0.8, 1.6, 3.3], dtype=np.float32)
N, K = len(X), 3
PRIOR_MEANS = np.array([-3.0, 0.0, 3.0], dtype=np.float32)
PRIOR_SCALE, NOISE = 1.0, 1.0
DATA = {"x": jnp.asarray(X)}
Z_FLAG = 4.0  # compare_estimators flags a mean gradient more than 4 standard errors from the reference


# ---------------------------------------------------------------------------------------------- model and family


def mixture(n: int) -> ppl.GenFn:
    """The model for ``n`` points (a plate's size is static: one program per ``n``)."""

    @ppl.gen
    def model():
        mu = ppl.sample("mu", dist.Normal(jnp.asarray(PRIOR_MEANS), PRIOR_SCALE).to_event(1))
        with ppl.plate("data", n):  # the points are conditionally independent given mu
            z = ppl.sample("z", dist.Categorical(probs=jnp.full(K, 1.0 / K)))  # batch (n,)
            ppl.sample("x", dist.Normal(mu[z], NOISE))  # observed: the data's "x"

    return model


model = mixture(N)


@ppl.gen
def guide(params):
    ppl.sample("mu", dist.Normal(params["m"], jax.nn.softplus(params["rho"])).to_event(1))
    with ppl.plate("data", params["logits"].shape[0]):
        ppl.sample("z", dist.Categorical(logits=params["logits"]))


def initial_params(n: int = N) -> dict[str, jax.Array]:
    return {"m": jnp.asarray(PRIOR_MEANS), "rho": jnp.full(K, 0.5), "logits": jnp.zeros((n, K))}


# ---------------------------------------------------------------------------------------------- exact posterior


def log_marginal_cluster(xs: np.ndarray, k: int) -> float:
    """``log p(x_C | all of C in component k)`` with ``μ_k`` integrated out: ``Normal(m0_k 1, I + 11ᵀ)``."""
    n = len(xs)
    if n == 0:
        return 0.0
    cov = NOISE**2 * np.eye(n) + PRIOR_SCALE**2 * np.ones((n, n))
    d = xs.astype(np.float64) - PRIOR_MEANS[k]
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (d @ np.linalg.solve(cov, d) + logdet + n * math.log(2 * math.pi))


def exact_posterior() -> tuple[float, np.ndarray]:
    """``(log p(x), p(z_i = k | x))`` by summing over the K^N assignments."""
    zs = np.array(list(itertools.product(range(K), repeat=N)))
    log_joint = np.array(
        [N * math.log(1.0 / K) + sum(log_marginal_cluster(X[z == k], k) for k in range(K)) for z in zs]
    )
    log_px = float(np.logaddexp.reduce(log_joint))
    post = np.exp(log_joint - log_px)
    marginals = np.stack([np.bincount(zs[:, i], weights=post, minlength=K) for i in range(N)])
    return log_px, marginals


# ---------------------------------------------------------------------------------------------- strategies


def assignments(b: float) -> dict[str, dict[str, ppl.Strategy]]:
    """The same objective, five ways: the strategy of the plated assignment site ``z`` set by address."""
    return {
        "reinforce": {"z": ppl.reinforce},
        "baseline": {"z": ppl.baseline(b)},
        "leave_one_out(4)": {"z": ppl.leave_one_out(4)},
        "mvd": {"z": ppl.mvd},
        "enum": {"z": ppl.enum},
    }


@jax.jit
def _enum_elbo_estimates(keys: jax.Array, params) -> jax.Array:
    obj = ppl.elbo(model, guide, DATA, strategies={"z": ppl.enum})  # exact over z; mu still sampled
    return jax.vmap(obj.estimate, (0, None, None))(keys, (), (params,))


def elbo_at(params, key: jax.Array, n: int = 4000) -> float:
    """The ELBO at ``params``: the mean of ``n`` independent estimates (enumerating ``z``, sampling ``mu``)."""
    return float(jnp.mean(_enum_elbo_estimates(jax.random.split(key, n), params)))


def report_unbiased(cmp: ppl.Comparison) -> list[str]:
    """Print whether every assignment's mean gradient agrees with the reference's; return the flagged names."""
    worst = max(cmp.rows, key=lambda r: r["max_abs_z"])
    flagged = [r["name"] for r in cmp.rows if r["max_abs_z"] > Z_FLAG]
    if not flagged:
        print(
            f"unbiasedness: all agree: every assignment's mean gradient is within {Z_FLAG:g} standard errors of "
            f"{cmp.reference!r} (largest |z| = {worst['max_abs_z']:.2f}, {worst['name']})"
        )
    else:
        print(f"unbiasedness: flagged (|z| > {Z_FLAG:g} against {cmp.reference!r}): {', '.join(flagged)}")
    return flagged


def explain_flag(cmp: ppl.Comparison, name: str, params, obj: ppl.Expectation, strategies, key, num_samples) -> None:
    """A flag at a sharp guide is usually a rare event, not a bias: name the component, then measure again."""
    a, b = cmp.stats[name], cmp.stats[cmp.reference]
    z = np.abs(a["mean"] - b["mean"]) / np.sqrt(a["stderr"] ** 2 + b["stderr"] ** 2 + 1e-30)
    j = int(np.argmax(z))
    comp = cmp.components[j]
    m = re.search(r"\['logits'\]\[(\d+),(\d+)\]", comp)
    if m:
        i, k = int(m[1]), int(m[2])
        q = float(jax.nn.softmax(params["logits"][i])[k])
        print(
            f"  {name}: worst component {comp} (|z| = {z[j]:.1f}), where q(z[{i}] = {k + 1}) = {q:.2g}. {name}'s "
            f"estimate of it has a term of order 1 that appears only when that unlikely component is drawn "
            f"(expected {q * num_samples:.1g} times in {num_samples} estimates); a sample that misses it has a mean "
            f"off by about {q:.2g}: a heavy tail, not a bias"
        )
    big = 10 * num_samples
    pair = {name: strategies[name], cmp.reference: strategies[cmp.reference]}
    again = ppl.compare_estimators(obj, ((), (params,)), strategies=pair, key=key, num_samples=big, repeats=1)
    print(f"  measured again with {big} estimates: {name} max |z| = {again[name]['max_abs_z']:.2f}")


def print_probabilities(q: np.ndarray, exact: np.ndarray) -> None:
    print(f"{'point':<6} {'x':>6}   {'learned q(z_i = 1, 2, 3)':<26} {'exact p(z_i = 1, 2, 3 | x)':<26} {'|diff|':>6}")
    for i in range(N):
        fq = " ".join(f"{v:.3f}" for v in q[i])
        fe = " ".join(f"{v:.3f}" for v in exact[i])
        print(f"z[{i}]{'':<2} {X[i]:6.2f}   {fq:<26} {fe:<26} {np.abs(q[i] - exact[i]).max():6.3f}")
    print(
        f"assignment probabilities: mean |learned - exact| = {np.abs(q - exact).mean():.4f}, "
        f"max = {np.abs(q - exact).max():.4f}, most probable component agrees for "
        f"{int(np.sum(q.argmax(1) == exact.argmax(1)))}/{N} points"
    )


def train(obj: ppl.Expectation, steps: int, key: jax.Array) -> ppl.FitResult:
    opt = optax.adam(optax.cosine_decay_schedule(0.05, steps, alpha=0.1))
    return ppl.fit(obj, ((), (initial_params(),)), optimizer=opt, num_steps=steps, key=key, chunk_size=steps)


def learned_probs(res: ppl.FitResult) -> np.ndarray:
    return np.asarray(jax.nn.softmax(res.args[1][0]["logits"], axis=-1), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- N = 1,000


LARGE_N, TRUE_MEANS = 1000, np.array([-3.0, 0.5, 3.5], dtype=np.float32)


def mixture_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (TRUE_MEANS[rng.integers(0, K, n)] + NOISE * rng.standard_normal(n)).astype(np.float32)


def heldout_loglik(means: np.ndarray, x: np.ndarray) -> float:
    """Average log-likelihood per point of ``x`` under the equal-weight mixture with these means."""
    lp = -0.5 * (x[:, None] - means[None, :]) ** 2 / NOISE**2 - 0.5 * math.log(2 * math.pi * NOISE**2)
    return float(np.mean(np.logaddexp.reduce(lp, axis=1) - math.log(K)))


def large_n(steps: int, key: jax.Array) -> None:
    """The same model and family at N = 1,000 points, ``enum`` at the plated assignments: 3 runs per estimate."""
    x, held = mixture_data(LARGE_N, 1), mixture_data(LARGE_N, 2)
    print(f"\n== N = {LARGE_N} points (true means {TRUE_MEANS.tolist()}), enum at the plated z, {steps} Adam steps\n")
    obj = ppl.elbo(mixture(LARGE_N), guide, {"x": jnp.asarray(x)}, strategies={"z": ppl.enum})
    args = ((), (initial_params(LARGE_N),))
    step = jax.jit(lambda k, a: obj.value_and_grad_estimate(k, *a))
    step_keys = [jax.random.fold_in(key, i) for i in range(200)]
    for k in step_keys[:100]:  # compile, then warm up
        jax.block_until_ready(step(k, args))
    t0 = time.perf_counter()
    for k in step_keys[100:]:
        out = step(k, args)
    jax.block_until_ready(out)
    per_step = (time.perf_counter() - t0) / 100
    opt = optax.adam(optax.cosine_decay_schedule(0.05, steps, alpha=0.1))
    res = ppl.fit(obj, args, optimizer=opt, num_steps=steps, key=key, chunk_size=steps, progress=False)
    means = np.sort(np.asarray(res.args[1][0]["m"]))
    print(
        f"gradient estimate: {1e6 * per_step:.0f} µs per call (jitted, steady state); fit: {res.steps} steps in "
        f"{res.wall_time:.1f} s (compile included), {res.num_skipped} skipped"
    )
    print(f"learned q(mu) means = {np.array2string(means, precision=3)}")
    print(
        f"held-out log-likelihood per point: {heldout_loglik(means, held):.4f} (the true mixture: "
        f"{heldout_loglik(TRUE_MEANS, held):.4f})"
    )

    # The same fit from NumPyro syntax: numpyro.plate and infer={"enumerate": "parallel"} mean the same thing.
    p, q = ppl.from_numpyro(numpyro_model), ppl.from_numpyro(numpyro_guide)
    data = ppl.fixed(jnp.asarray(x))  # data passed as an argument: never trained
    params = {k: v for k, v in initial_params(LARGE_N).items()}
    res = ppl.fit(
        ppl.elbo(p, q, {}),
        (({}, data), (params, data)),
        optimizer=opt,
        num_steps=steps,
        key=key,
        chunk_size=steps,
        progress=False,
    )
    means = np.sort(np.asarray(res.args[1][0]["m"]))
    print(
        f"from NumPyro syntax (ppl.from_numpyro): {res.steps} steps in {res.wall_time:.1f} s, held-out "
        f"log-likelihood per point {heldout_loglik(means, held):.4f}"
    )


def numpyro_model(x):
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(PRIOR_MEANS), PRIOR_SCALE).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=jnp.full(K, 1.0 / K)))
        numpyro.sample("x", dist.Normal(mu[z], NOISE), obs=x)


def numpyro_guide(x):
    m = numpyro.param("m", jnp.asarray(PRIOR_MEANS))
    rho = numpyro.param("rho", jnp.full(K, 0.5))
    logits = numpyro.param("logits", jnp.zeros((x.shape[0], K)))
    numpyro.sample("mu", dist.Normal(m, jax.nn.softplus(rho)).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: fewer estimates, one short fit, no figure")
    parser.add_argument("--out", default="out", help="directory for the figure (full mode)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    num_samples = 1000 if args.quick else 5000
    steps = 600 if args.quick else 2000
    key = jax.random.key(0)
    k_base, k_cmp, k_fit, k_eval, k_cmp2 = jax.random.split(key, 5)

    print(f"== Gaussian mixture: {K} components, {N} points, mean-field guide ({'quick' if args.quick else 'full'})")
    log_px, exact = exact_posterior()
    print(f"exact: log p(x) = {log_px:.4f} (sum over {K**N} assignments, mu integrated out)")

    obj = ppl.elbo(model, guide, DATA)
    p0 = initial_params()
    b = elbo_at(p0, k_base)
    print(f"ELBO at the initial guide = {b:.3f} (the constant of 'baseline')")

    print("\n== compare_estimators: the same ppl.elbo, strategy of the plated z set by address, at the initial guide\n")
    plot = None if args.quick else os.path.join(args.out, "mixture_estimators.png")
    if plot:
        os.makedirs(args.out, exist_ok=True)
    cmp = ppl.compare_estimators(
        obj, ((), (p0,)), strategies=assignments(b), key=k_cmp, num_samples=num_samples, plot=plot
    )
    print(cmp)
    print()
    report_unbiased(cmp)
    if plot:
        print(f"figure: {plot}")

    # The constant baseline is tuned to the initial guide; pick among the assignments that need no tuning.
    candidates = [r for r in cmp.rows if r["name"] != "baseline"]
    chosen = min(candidates, key=lambda r: r["variance_x_time"])["name"]
    print(
        f"\n== fit: {steps} Adam steps with {chosen!r} (lowest variance x time among the assignments with no tuned "
        "constant)\n"
    )
    strategies = assignments(b)
    res = train(ppl.with_strategies(obj, strategies[chosen]), steps, k_fit)
    q = learned_probs(res)
    final = elbo_at(res.args[1][0], k_eval)
    print(
        f"fit ({chosen}): {res.steps} steps in {res.wall_time:.1f} s, {res.num_skipped} skipped; "
        f"final ELBO = {final:.4f} <= log p(x) = {log_px:.4f} (gap = KL(q || p) = {log_px - final:.4f})"
    )
    m = np.asarray(res.args[1][0]["m"])
    print(f"learned q(mu) means = {np.array2string(m, precision=3)} (prior means {PRIOR_MEANS.tolist()})\n")
    print_probabilities(q, exact)

    large_n(steps=300 if args.quick else 1000, key=k_fit)

    if not args.quick:
        print(f"\n== every assignment, {steps} steps each (same key): final ELBO and distance to the exact posterior\n")
        print(f"{'assignment':<18} {'final ELBO':>10} {'mean |q - p|':>12} {'max |q - p|':>11} {'wall':>7}")
        for name, mapping in strategies.items():
            r = res if name == chosen else train(ppl.with_strategies(obj, mapping), steps, k_fit)
            e = elbo_at(r.args[1][0], k_eval)
            d = np.abs(learned_probs(r) - exact)
            print(f"{name:<18} {e:10.4f} {d.mean():12.4f} {d.max():11.4f} {r.wall_time:6.1f}s")
        print(f"(exact log p(x) = {log_px:.4f}; 'baseline' keeps the constant {b:.2f}, tuned to the initial guide)")

        print("\n== compare_estimators again, at the fitted guide\n")
        b2 = elbo_at(res.args[1][0], k_base)
        cmp2 = ppl.compare_estimators(obj, res.args, strategies=assignments(b2), key=k_cmp2, num_samples=num_samples)
        print(cmp2)
        print()
        for name in report_unbiased(cmp2):
            explain_flag(cmp2, name, res.args[1][0], obj, assignments(b2), k_cmp2, num_samples)

    print(f"\ntotal time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
