"""A Gaussian mixture with per-datapoint discrete assignments: gradient strategies in ``ppl`` against NumPyro.

Model: ``K = 3`` unit-variance components with learnable means ``mu`` (a model parameter), uniform weights, ``N``
points in 1-D; assignment ``c_i ~ Categorical(uniform)``, ``x_i ~ Normal(mu[c_i], 1)``. Guide: free per-point logits
``q(c_i) = Categorical(logits_i)`` (``N × K`` parameters). Objective: the ELBO; gradient with respect to
``(mu, logits)``. Since ``mu`` is a parameter, the ELBO is a sum of ``N`` independent per-point ELBOs.

``ppl`` systems (all jitted):

* **batched site** — one site ``c`` with batch shape ``(N,)`` (``Categorical(logits).to_event(1)``), as a NumPyro
  user would write it without a plate. Only one-call strategies apply (``reinforce``, ``baseline``): the site's score
  ``∇ log q(c)`` is a sum over all points and multiplies the *whole* ELBO, so each point's gradient carries the noise of
  the other ``N − 1`` points' terms (``ppl`` has no notion of a plate / conditional independence). ``enum``, ``mvd`` and
  ``leave_one_out`` at a batched site are an error (they would enumerate the product space).
* **per-point estimator** — the ELBO of *one* point (a scalar site ``c``), summed over the points with
  ``ppl.sum_over(per_point_elbo, in_axes=(None, 0, 0))`` (one estimator per point, independent keys). Every strategy
  applies: ``reinforce``, ``baseline``, ``leave_one_out(4)``, ``mvd``, ``enum`` (exact). This is the way to get
  per-datapoint Rao-Blackwellization in ``ppl``.

The baselines are ``b = E_q[ELBO term]`` at the current parameters (computed once by enumeration): what a running
average of the objective converges to.

NumPyro systems: ``TraceGraph_ELBO`` (score function, Rao-Blackwellized using the ``plate``) and ``TraceEnum_ELBO``
(funsor) with guide-side parallel enumeration of ``c`` (exact), both with ``numpyro.plate`` over the points and
``jax.value_and_grad`` of the jitted loss, as ``SVI.update`` computes it.

Reported: time per gradient step (median over interleaved repetitions), the gradient's variance over independent keys
(summed over coordinates, for ``mu`` and for ``logits``), and its bias against the exact gradient (z-scores of the
mean over keys, per coordinate: mean z² and max |z|). Goal: ``ppl`` ≥ 5× faster than NumPyro at equal or lower
variance. Last, a table of what a user hits with each strategy in each way of writing per-datapoint latents.
"""

from __future__ import annotations

import time

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax
from numpyro.infer import TraceEnum_ELBO, TraceGraph_ELBO

import ppl

K = 3
MEANS = np.array([-3.0, 0.0, 3.0], np.float32)


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, K, size=n)
    x = (MEANS[c] + rng.normal(size=n)).astype(np.float32)
    mu = np.array([-2.0, 0.5, 2.0], np.float32)  # current parameters: not at the optimum
    logits = (0.5 * rng.normal(size=(n, K))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(mu), jnp.asarray(logits)


# ---------------------------------------------------------------------------------------------- ppl: batched site


@ppl.gen
def model_batched(mu, n):
    c = ppl.sample("c", dist.Categorical(logits=jnp.zeros((n, K))).to_event(1))
    ppl.sample("x", dist.Normal(mu[c], 1.0).to_event(1))


@ppl.gen
def guide_batched(logits, b):
    ppl.sample("c", dist.Categorical(logits=logits).to_event(1), strategy=ppl.baseline(b))


@ppl.gen
def guide_batched_reinforce(logits):
    ppl.sample("c", dist.Categorical(logits=logits).to_event(1))


def ppl_batched(strategy, x, b_total):
    if strategy == "reinforce":
        obj = ppl.elbo(model_batched, guide_batched_reinforce, {"x": x})

        def grad(key, mu, logits, x):
            v, (gm, gl, _) = obj.value_and_grad_estimate(key, (mu, x.shape[0]), logits, {"x": x})
            return v, (gm[0], gl)

        return grad
    obj = ppl.elbo(model_batched, guide_batched, {"x": x})

    def grad(key, mu, logits, x):
        v, (gm, gl, _) = obj.value_and_grad_estimate(key, (mu, x.shape[0]), (logits, b_total), {"x": x})
        return v, (gm[0], gl[0])

    return grad


# ---------------------------------------------------------------------------------------------- ppl: per-point


@ppl.gen
def model_one(mu):
    c = ppl.sample("c", dist.Categorical(logits=jnp.zeros(K)))
    ppl.sample("x", dist.Normal(mu[c], 1.0))


@ppl.gen
def guide_one(logits):
    ppl.sample("c", dist.Categorical(logits=logits))


@ppl.gen
def guide_one_baseline(logits, b):
    ppl.sample("c", dist.Categorical(logits=logits), strategy=ppl.baseline(b))


def ppl_per_point(strategy, b_points):
    """``ppl.sum_over`` of one point's ELBO: the sum of per-point estimators, one key per point."""
    if strategy == "baseline":
        obj = ppl.sum_over(ppl.elbo(model_one, guide_one_baseline, {"x": 0.0}), in_axes=(None, 0, 0))

        def grad(key, mu, logits, x):
            v, (gm, (gl, _), _) = obj.value_and_grad_estimate(key, mu, (logits, b_points), {"x": x})
            return v, (gm, gl)

        return grad
    s = {"reinforce": ppl.reinforce, "leave_one_out(4)": ppl.leave_one_out(4), "mvd": ppl.mvd, "enum": ppl.enum}
    obj = ppl.sum_over(ppl.elbo(model_one, guide_one, {"x": 0.0}, strategies={"c": s[strategy]}), in_axes=(None, 0, 0))

    def grad(key, mu, logits, x):
        v, (gm, gl, _) = obj.value_and_grad_estimate(key, mu, logits, {"x": x})
        return v, (gm, gl)

    return grad


# ---------------------------------------------------------------------------------------------- NumPyro


def np_model(x, mu_init):
    mu = numpyro.param("mu", mu_init)
    with numpyro.plate("data", x.shape[0]):
        c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(K)))
        numpyro.sample("x", dist.Normal(mu[c], 1.0), obs=x)


def np_guide(x, logits_init, enumerate_c):
    logits = numpyro.param("logits", logits_init)
    with numpyro.plate("data", x.shape[0]):
        infer = {"enumerate": "parallel"} if enumerate_c else {}
        numpyro.sample("c", dist.Categorical(logits=logits), infer=infer)


def numpyro_grad(loss, mu0, logits0, enumerate_c):
    def model(x):
        np_model(x, mu0)

    def guide(x):
        np_guide(x, logits0, enumerate_c)

    def grad(key, mu, logits, x):
        v, g = jax.value_and_grad(lambda p: loss.loss(key, p, model, guide, x))({"mu": mu, "logits": logits})
        return -v, (-g["mu"], -g["logits"])  # NumPyro's loss is −ELBO; report the ELBO and its gradient like ppl

    return grad


# ---------------------------------------------------------------------------------------------- exact


def exact(mu, logits, x):
    """ELBO, its gradient, and the per-point ELBO terms, by enumeration in closed form."""

    def terms(mu, logits):
        log_q = jax.nn.log_softmax(logits)  # (N, K)
        log_p = jnp.log(1.0 / K) - 0.5 * (x[:, None] - mu[None, :]) ** 2 - 0.5 * jnp.log(2 * jnp.pi)
        return jnp.sum(jnp.exp(log_q) * (log_p - log_q), axis=1)

    def total(mu, logits):
        t = terms(mu, logits)
        return jnp.sum(t), t

    (value, per_point), g = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(mu, logits)
    return value, g, per_point


def hand_exact(key, mu, logits, x):
    """The floor for any exact estimator: ``jax.value_and_grad`` of the closed-form enumerated ELBO, by hand."""
    del key
    value, grads, _ = exact(mu, logits, x)
    return value, grads


# ---------------------------------------------------------------------------------------------- support table


def support_table(x, mu, logits, straight_sizes=(4, 8)):
    """What a user hits with each strategy, for each way of writing per-datapoint discrete latents."""
    key = jax.random.key(0)
    n = 4
    xs, lg = x[:n], logits[:n]
    rows = []

    def attempt(label, strategy_name, fn):
        try:
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            rows.append([label, strategy_name, f"works (first call: {common.fmt_time(time.perf_counter() - t0)})"])
        except Exception as e:  # noqa: BLE001 - we report whatever the user would see
            msg = (str(e).splitlines() or ["(no message)"])[0]
            rows.append([label, strategy_name, f"{type(e).__name__}: {msg[:150]}{'…' if len(msg) > 150 else ''}"])

    strategies = {"reinforce": ppl.reinforce, "enum": ppl.enum, "mvd": ppl.mvd,
                  "leave_one_out(4)": ppl.leave_one_out(4)}

    for name, s in strategies.items():
        obj = ppl.elbo(model_batched, guide_batched_reinforce, {"x": xs}, strategies={"c": s})
        attempt("batched site `Categorical(logits).to_event(1)`", name,
                lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg))

    @ppl.gen
    def model_plain(mu, n):
        c = ppl.sample("c", dist.Categorical(logits=jnp.zeros((n, K))))
        ppl.sample("x", dist.Normal(mu[c], 1.0))

    @ppl.gen
    def guide_plain(logits):
        ppl.sample("c", dist.Categorical(logits=logits))

    for name, s in strategies.items():
        obj = ppl.elbo(model_plain, guide_plain, {"x": xs}, strategies={"c": s})
        attempt("batched site `Categorical(logits)`, batch shape `(N,)`", name,
                lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg))

    @ppl.gen
    def model_scan(mu, n):
        def step(_, __):
            c = ppl.sample("c", dist.Categorical(logits=jnp.zeros(K)))
            ppl.sample("x", dist.Normal(mu[c], 1.0))
            return None, None

        lax.scan(step, None, None, length=n)

    @ppl.gen
    def guide_scan(logits):
        def step(_, li):
            return None, ppl.sample("c", dist.Categorical(logits=li))

        lax.scan(step, None, logits)

    for name, s in strategies.items():
        obj = ppl.elbo(model_scan, guide_scan, {"x": xs}, strategies={"c": s})
        attempt("one site per point inside `lax.scan`", name,
                lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg))

    @ppl.gen
    def model_vmap(mu, n):
        ppl.vmap(lambda m: model_one(m), in_axes=(None,), axis_size=n)(mu)

    @ppl.gen
    def guide_vmap(logits):
        jax.vmap(lambda li: ppl.sample("c", dist.Categorical(logits=li)))(logits)

    for name, s in strategies.items():
        obj = ppl.elbo(model_vmap, guide_vmap, {"x": xs}, strategies={"c": s})
        attempt("`jax.vmap` / `ppl.vmap` over points inside the model", name,
                lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg))

    def straight(m):
        @ppl.gen
        def model_s(mu):
            for i in range(m):
                c = ppl.sample(f"c{i}", dist.Categorical(logits=jnp.zeros(K)))
                ppl.sample(f"x{i}", dist.Normal(mu[c], 1.0))

        @ppl.gen
        def guide_s(logits):
            for i in range(m):
                ppl.sample(f"c{i}", dist.Categorical(logits=logits[i]))

        return model_s, guide_s

    for m in straight_sizes:
        model_s, guide_s = straight(m)
        data = {f"x{i}": x[i] for i in range(m)}
        for name in ("enum", "mvd"):
            obj = ppl.elbo(model_s, guide_s, data, strategies={"c*": strategies[name]})
            attempt(f"{m} sites `c0..c{m - 1}` in straight-line code (3^{m} = {3**m} paths)", name,
                    lambda obj=obj, m=m: jax.jit(obj.value_and_grad_estimate)(key, mu, logits[:m]))
    for name, s in strategies.items():
        attempt("per-point estimator, `ppl.sum_over` over points", name,
                lambda s=s, name=name: jax.jit(ppl_per_point(name, jnp.zeros(n)))(key, mu, lg, xs))
    return rows


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=None, help="independent gradients for the variance (default 1000)")
    args = ap.parse_args()
    reps = common.reps_for(args)
    sizes = (100,) if args.tiny or args.quick else (100, 500, 2000)
    n_keys = args.keys or (100 if args.tiny else 1000)
    common.print_header("Gaussian mixture with per-datapoint discrete latents: strategies vs NumPyro", args, reps)

    rows, eff = [], []
    for n in sizes:
        x, mu, logits = make_data(n)
        value, (g_mu, g_logits), per_point = exact(mu, logits, x)
        systems = {
            "ppl batched reinforce": ppl_batched("reinforce", x, value),
            "ppl batched baseline": ppl_batched("baseline", x, value),
            "ppl per-point reinforce": ppl_per_point("reinforce", per_point),
            "ppl per-point baseline": ppl_per_point("baseline", per_point),
            "ppl per-point leave_one_out(4)": ppl_per_point("leave_one_out(4)", per_point),
            "ppl per-point mvd": ppl_per_point("mvd", per_point),
            "ppl per-point enum": ppl_per_point("enum", per_point),
            "numpyro TraceGraph_ELBO": numpyro_grad(TraceGraph_ELBO(), mu, logits, False),
            "numpyro TraceEnum_ELBO (enum)": numpyro_grad(TraceEnum_ELBO(max_plate_nesting=1), mu, logits, True),
            "hand JAX exact (enumerated ELBO)": hand_exact,
        }
        if args.tiny:
            systems = {k: v for k, v in systems.items() if k.endswith(("batched reinforce", "per-point enum",
                                                                      "point mvd", "TraceGraph_ELBO", "(enum)",
                                                                      "ELBO)"))}
        key = jax.random.key(1)
        compiled = [common.compile_timed(name, f, key, mu, logits, x) for name, f in systems.items()]
        t = common.interleaved(compiled, reps)
        keys = jax.random.split(jax.random.key(2), n_keys)
        stats = {}
        for name, f in systems.items():
            vals, (gm, gl) = jax.jit(jax.vmap(f, in_axes=(0, None, None, None)))(keys, mu, logits, x)
            se_m, se_l = gm.std(0) / np.sqrt(n_keys), gl.std(0) / np.sqrt(n_keys)
            z = np.concatenate([_z_scores(gm.mean(0), g_mu, se_m), _z_scores(gl.mean(0), g_logits, se_l)])
            stats[name] = (float(gm.var(0).sum()), float(gl.var(0).sum()), z, float(vals.mean()))
        base_np = {"TraceGraph": t["numpyro TraceGraph_ELBO"].median,
                   "TraceEnum": t["numpyro TraceEnum_ELBO (enum)"].median}
        tg = "numpyro TraceGraph_ELBO"
        for c in compiled:
            vm, vl, z, _ = stats[c.name]
            tm = t[c.name].median
            if tg in stats:
                eff.append([n, c.name] + [_efficiency(t[tg].median, stats[tg][i], tm, stats[c.name][i])
                                          for i in (0, 1)])
            rows.append([n, c.name, common.fmt_time(tm), common.ratio(base_np["TraceGraph"], tm),
                         common.ratio(base_np["TraceEnum"], tm), f"{vm:.4g}", f"{vl:.4g}",
                         f"{np.mean(z**2):.2f}", f"{np.max(np.abs(z)):.1f}", common.fmt_time(c.total_compile_s)])
        print(f"N={n} done (exact ELBO {float(value):.2f}; estimator means "
              + ", ".join(f"{k.split(' ', 1)[1]} {s[3]:.2f}" for k, s in stats.items()) + ")", flush=True)

    print("\n## Gradient step: time, speed-up over NumPyro, variance over independent keys, bias\n")
    print(common.table(["N", "system", "median time", "NumPyro TraceGraph / this", "NumPyro TraceEnum / this",
                        "Var[∇mu] (sum)", "Var[∇logits] (sum)", "mean z²", "max |z|", "trace+compile"], rows))
    print(f"\nVariance over {n_keys} independent keys, summed over coordinates. z = (mean − exact) / standard error "
          f"per coordinate, over the {K} + {K}·N coordinates: an unbiased estimator has mean z² ≈ 1 and max |z| ≈ "
          "√(2 ln(2m)) for m coordinates (≈ 3.6 at N = 100, 4.3 at N = 2000); exact estimators show 0. "
          "Goal: ppl ≥ 5× faster than NumPyro at equal or lower variance.")

    print("\n## Speed-up over TraceGraph_ELBO at equal variance (time × variance)\n")
    print(common.table(["N", "system", "on ∇mu", "on ∇logits"], eff))
    print("\nAveraging m independent estimates divides the variance by m, so the cost of reaching a given variance is "
          "time × variance per estimate: this table is (t · Var)_TraceGraph / (t · Var)_system, per parameter group. "
          "'exact' = zero variance (no number of TraceGraph samples reaches it).")

    x, mu, logits = make_data(8)
    print("\n## What a user hits: per-datapoint discrete latents, by construct and strategy (4 points)\n")
    rows = support_table(x, mu, logits, (4,) if args.tiny else (4, 8))
    print(common.table(["construct", "strategy", "result"], rows))
    common.print_load()


def _efficiency(t_ref: float, var_ref: float, t: float, var: float) -> str:
    """``(t · Var)_ref / (t · Var)``; "exact" where the variance is round-off (below 1e-6 of the reference's)."""
    if var <= 1e-6 * var_ref:
        return "exact"
    return f"{t_ref * var_ref / (t * var):.3g}×"


def _z_scores(mean, exact, se):
    """Per-coordinate ``(mean − exact) / se``; for a coordinate with no noise (exact estimators), 0 if it matches the
    exact value and ``inf`` if not."""
    mean, exact, se = np.asarray(mean).ravel(), np.asarray(exact).ravel(), np.asarray(se).ravel()
    noisy = se > 1e-6 * (1 + np.abs(exact))
    match = np.abs(mean - exact) < 1e-4 * (1 + np.abs(exact))
    return np.where(noisy, (mean - exact) / np.maximum(se, 1e-30), np.where(match, 0.0, np.inf))


if __name__ == "__main__":
    main()
