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

**Control variates.** NumPyro's ``TraceGraph_ELBO`` has none (NumPyro implements no baselines), so the comparison
rows give every system the same: none. ``reinforce``, ``mvd`` and ``enum`` use no control variate, and
``leave_one_out(4)`` builds its own from its 4 samples (its time includes them). The rows marked **oracle baseline**
(``ppl.baseline(b)`` with ``b = E_q[ELBO term]`` at the current parameters, computed by exact enumeration — what a
running average of the objective converges to at a fixed point) are a best case for a baseline, *not available in
practice*: they are reported for reference, labelled so, and left out of the speed-up claims.

NumPyro systems: ``TraceGraph_ELBO`` (score function, Rao-Blackwellized using the ``plate``) and ``TraceEnum_ELBO``
(funsor) with guide-side parallel enumeration of ``c`` (exact), both with ``numpyro.plate`` over the points and
``jax.value_and_grad`` of the jitted loss, as ``SVI.update`` computes it.

Reported: time per gradient step (median over interleaved repetitions), the gradient's variance over independent keys
(summed over coordinates, for ``mu`` and for ``logits``), and its bias against the exact gradient (z-scores of the
mean over keys, per coordinate: mean z² and max |z|). Goal: ``ppl`` ≥ 5× faster than NumPyro at equal or lower
variance. Then a table of what a user hits with each strategy in each way of writing per-datapoint latents.

Run ``python bench/discrete.py`` (full), ``--quick`` (N = 100; plated N = 100) or ``--tiny`` (a smoke test of seconds:
N = 20, fewest systems and keys, XLA at optimization level 0).

**Plated mixture** (``--section plated`` runs it alone): the same mixture written with ``ppl.plate`` as a NumPyro user
would, with the means *latent* (``mu ~ Normal(0, 10)``, guide ``Normal(m, softplus(ρ))``) and ``N = 1,000`` points
(100 with ``--quick``, 30 with ``--tiny``) plus 1,000 held-out points. ``ppl.elbo`` with ``enum`` / ``reinforce`` (also
``mvd``, ``leave_one_out(4)``) at the plated site ``z`` against NumPyro's ``TraceEnum_ELBO`` (``z`` enumerated in the
model, summed out: the guide has only ``mu``) and ``TraceGraph_ELBO`` (the guide samples ``z``, score function
Rao-Blackwellized by the plate and the dependency graph), and two hand-written JAX floors. Reported: time per
gradient step, compile time, the variance of the gradient with respect to the ``mu``-guide parameters ``(m, ρ)``
(and ``logits``) with bias z-scores against the closed-form gradient, and Adam fits of equal length: wall time and the
held-out log-likelihood per point of the plug-in mixture (means ``m``, equal weights).
"""

from __future__ import annotations

import time

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax import lax
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm
from numpyro.infer import SVI, TraceEnum_ELBO, TraceGraph_ELBO

import ppl

K = 3
MEANS = np.array([-3.0, 0.0, 3.0], np.float32)

ORACLE_BATCHED = "ppl batched baseline (oracle b)"
ORACLE_PER_POINT = "ppl per-point baseline (oracle b)"
ORACLE = "oracle baseline, not available in practice"
CONTROL_VARIATE = {ORACLE_BATCHED: ORACLE, ORACLE_PER_POINT: ORACLE, "ppl per-point leave_one_out(4)": "own 4 samples"}


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


def support_table(x, mu, logits, straight_sizes=(4, 8), only=None):
    """What a user hits with each strategy, for each way of writing per-datapoint discrete latents (each attempt is
    one jitted call: its first-call time includes tracing and compiling). ``only``: the (construct number, strategy)
    pairs to try (``--tiny``), constructs numbered 0–5 in the order of the table."""
    key = jax.random.key(0)
    n = 4
    xs, lg = x[:n], logits[:n]
    rows = []
    construct = iter(range(6))
    current = [None]

    def attempt(label, strategy_name, fn):
        if only is not None and (current[0], strategy_name) not in only:
            return
        try:
            t0 = time.perf_counter()
            jax.block_until_ready(common.run_once(fn))
            rows.append([label, strategy_name, f"works (first call: {common.fmt_time(time.perf_counter() - t0)})"])
        except Exception as e:  # noqa: BLE001 - we report whatever the user would see
            msg = (str(e).splitlines() or ["(no message)"])[0]
            rows.append([label, strategy_name, f"{type(e).__name__}: {msg[:150]}{'…' if len(msg) > 150 else ''}"])

    strategies = {
        "reinforce": ppl.reinforce,
        "enum": ppl.enum,
        "mvd": ppl.mvd,
        "leave_one_out(4)": ppl.leave_one_out(4),
    }

    current[0] = next(construct)
    for name, s in strategies.items():
        obj = ppl.elbo(model_batched, guide_batched_reinforce, {"x": xs}, strategies={"c": s})
        attempt(
            "batched site `Categorical(logits).to_event(1)`",
            name,
            lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg),
        )

    @ppl.gen
    def model_plain(mu, n):
        c = ppl.sample("c", dist.Categorical(logits=jnp.zeros((n, K))))
        ppl.sample("x", dist.Normal(mu[c], 1.0))

    @ppl.gen
    def guide_plain(logits):
        ppl.sample("c", dist.Categorical(logits=logits))

    current[0] = next(construct)
    for name, s in strategies.items():
        obj = ppl.elbo(model_plain, guide_plain, {"x": xs}, strategies={"c": s})
        attempt(
            "batched site `Categorical(logits)`, batch shape `(N,)`",
            name,
            lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg),
        )

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

    current[0] = next(construct)
    for name, s in strategies.items():
        obj = ppl.elbo(model_scan, guide_scan, {"x": xs}, strategies={"c": s})
        attempt(
            "one site per point inside `lax.scan`", name, lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg)
        )

    @ppl.gen
    def model_vmap(mu, n):
        ppl.vmap(lambda m: model_one(m), in_axes=(None,), axis_size=n)(mu)

    @ppl.gen
    def guide_vmap(logits):
        jax.vmap(lambda li: ppl.sample("c", dist.Categorical(logits=li)))(logits)

    current[0] = next(construct)
    for name, s in strategies.items():
        obj = ppl.elbo(model_vmap, guide_vmap, {"x": xs}, strategies={"c": s})
        attempt(
            "`jax.vmap` / `ppl.vmap` over points inside the model",
            name,
            lambda obj=obj: obj.value_and_grad_estimate(key, (mu, n), lg),
        )

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

    current[0] = next(construct)
    for m in straight_sizes:
        model_s, guide_s = straight(m)
        data = {f"x{i}": x[i] for i in range(m)}
        for name in ("enum", "mvd"):
            obj = ppl.elbo(model_s, guide_s, data, strategies={"c*": strategies[name]})
            attempt(
                f"{m} sites `c0..c{m - 1}` in straight-line code (3^{m} = {3**m} paths)",
                name,
                lambda obj=obj, m=m: obj.value_and_grad_estimate(key, mu, logits[:m]),
            )
    current[0] = next(construct)
    for name in strategies:
        attempt(
            "per-point estimator, `ppl.sum_over` over points",
            name,
            lambda name=name: ppl_per_point(name, jnp.zeros(n))(key, mu, lg, xs),
        )
    return rows


# --tiny's support table: each construct once and each strategy at least once (the full table tries every pair)
TINY_SUPPORT = {(0, "enum"), (1, "mvd"), (2, "mvd"), (3, "enum"), (4, "enum"), (5, "leave_one_out(4)"),
                (5, "reinforce")}


# ---------------------------------------------------------------------------------------------- plated mixture

PRIOR_SCALE = 10.0  # mu ~ Normal(0, PRIOR_SCALE) per component
N_HELDOUT = 1000
FIT_LR = 0.05  # optax.adam(FIT_LR) for every fit
HELDOUT_TOL = 0.01  # nats per point: "reached" = the held-out log-likelihood comes within this of the MAP means'


def draw_mixture(n, seed):
    """``n`` points from the true mixture: means ``MEANS``, unit variances, equal weights."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, K, size=n)
    return jnp.asarray((MEANS[c] + rng.normal(size=n)).astype(np.float32))


def plated_init(n):
    """Where every fit starts, and where the gradients are measured: means near 0, guide scale softplus(−2) ≈ 0.13,
    uniform assignments."""
    return {"m": jnp.array([-1.0, 0.0, 1.0]), "rho": jnp.full(K, -2.0), "logits": jnp.zeros((n, K))}


@ppl.gen
def plated_model(n):
    mu = ppl.sample("mu", dist.Normal(jnp.zeros(K), PRIOR_SCALE).to_event(1))
    with ppl.plate("data", n):
        z = ppl.sample("z", dist.Categorical(logits=jnp.zeros(K)))
        ppl.sample("x", dist.Normal(mu[z], 1.0))


@ppl.gen
def plated_guide(params):
    ppl.sample("mu", dist.Normal(params["m"], jax.nn.softplus(params["rho"])).to_event(1))
    with ppl.plate("data", params["logits"].shape[0]):
        ppl.sample("z", dist.Categorical(logits=params["logits"]))


def ppl_plated(strategy, x):
    """``ppl.elbo`` with ``strategy`` at the plated site ``z``, and ``grad(key, params, x) -> (estimate, ∇params)``."""
    obj = ppl.elbo(plated_model, plated_guide, {"x": x}, strategies={"z": strategy})

    def grad(key, params, x):
        v, (_, (g,), _) = obj.value_and_grad_estimate(key, (x.shape[0],), (params,), {"x": x})
        return v, g

    return obj, grad


def np_plated_model(x, enumerate_z):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(K), PRIOR_SCALE).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        infer = {"enumerate": "parallel"} if enumerate_z else {}
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(K)), infer=infer)
        numpyro.sample("x", dist.Normal(mu[z], 1.0), obs=x)


def np_plated_guide(x, init, sample_z):
    m, rho = numpyro.param("m", init["m"]), numpyro.param("rho", init["rho"])
    numpyro.sample("mu", dist.Normal(m, jax.nn.softplus(rho)).to_event(1))
    if sample_z:
        logits = numpyro.param("logits", init["logits"])
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits))


def numpyro_plated(enumerate_z, init):
    """NumPyro's ``TraceEnum_ELBO`` (``z`` summed out in the model, guide on ``mu`` only) or ``TraceGraph_ELBO``
    (the guide samples ``z``): ``(loss, model, guide, grad)``, ``grad`` as in :func:`ppl_plated`."""
    loss = TraceEnum_ELBO(max_plate_nesting=1) if enumerate_z else TraceGraph_ELBO()

    def model(x):
        np_plated_model(x, enumerate_z)

    def guide(x):
        np_plated_guide(x, init, not enumerate_z)

    def grad(key, params, x):
        v, g = jax.value_and_grad(lambda p: loss.loss(key, p, model, guide, x))(params)
        return -v, jax.tree.map(jnp.negative, g)  # NumPyro's loss is −ELBO

    return loss, model, guide, grad


def _plated_terms(key, params, x):
    s = jax.nn.softplus(params["rho"])
    mu = params["m"] + s * jax.random.normal(key, (K,))  # reparameterized
    glob = jnp.sum(norm.logpdf(mu, 0.0, PRIOR_SCALE) - norm.logpdf(mu, params["m"], s))
    return glob, -jnp.log(K) + norm.logpdf(x[:, None], mu, 1.0)  # (N, K): log p(z_i = k, x_i | mu)


def hand_plated_guided(key, params, x):
    """By hand, the objective of ``ppl`` and ``TraceGraph_ELBO``: ``mu`` reparameterized, ``E_q(z)`` in closed form."""

    def f(p):
        glob, lp = _plated_terms(key, p, x)
        lq = jax.nn.log_softmax(p["logits"])
        return glob + jnp.sum(jnp.exp(lq) * (lp - lq))

    return jax.value_and_grad(f)(params)


def hand_plated_marginal(key, params, x):
    """By hand, ``TraceEnum_ELBO``'s objective: ``z`` summed out of the model, ``mu`` reparameterized."""

    def f(p):
        glob, lp = _plated_terms(key, p, x)
        return glob + jnp.sum(logsumexp(lp, axis=1))

    return jax.value_and_grad(f)(params)


def plated_exact(params, x):
    """The ELBO with the guide on ``(mu, z)`` in closed form (``E_q[(x − mu_k)²] = (x − m_k)² + s_k²``)."""
    m, s = params["m"], jax.nn.softplus(params["rho"])
    lq = jax.nn.log_softmax(params["logits"])
    lp = -jnp.log(K) - 0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((x[:, None] - m) ** 2 + s**2)
    prior = -0.5 * jnp.log(2 * jnp.pi * PRIOR_SCALE**2) - (m**2 + s**2) / (2 * PRIOR_SCALE**2)
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)
    return jnp.sum(jnp.exp(lq) * (lp - lq)) + jnp.sum(prior + entropy)


def map_means(x, m0, iters=500):
    """The model's MAP means (EM with equal weights, unit variances and the ``Normal(0, PRIOR_SCALE)`` prior): what a
    converged fit can reach on this training set, the reference for "steps to within"."""

    def em(_, m):
        r = jax.nn.softmax(-0.5 * (x[:, None] - m) ** 2, axis=1)
        return (r * x[:, None]).sum(0) / (r.sum(0) + 1.0 / PRIOR_SCALE**2)

    return lax.fori_loop(0, iters, em, m0)


def heldout_ll(m, x_heldout):
    """Average log-likelihood per held-out point of the plug-in mixture: means ``m``, unit variances, equal weights."""
    lp = norm.logpdf(x_heldout[:, None], m, 1.0) - jnp.log(K)
    return jnp.mean(logsumexp(lp, axis=1))


def scan_fit(grad, steps):
    """``steps`` steps of ``optax.adam(FIT_LR)`` on ``grad``'s estimates in one jitted ``lax.scan`` (step ``i`` uses
    ``fold_in(key, i)``); returns the final parameters, the estimates and the means ``m`` after every step."""
    opt = optax.adam(FIT_LR)

    def fit(key, params, x):
        def step(carry, i):
            p, state = carry
            v, g = grad(jax.random.fold_in(key, i), p, x)
            updates, state = opt.update(jax.tree.map(jnp.negative, g), state, p)
            p = optax.apply_updates(p, updates)
            return (p, state), (v, p["m"])

        (p, _), (values, ms) = lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
        return p, values, ms

    return fit


def plated_section(args, reps, n_keys):
    n = 30 if args.tiny else 100 if args.quick else 1000
    steps = 50 if args.tiny else 1000 if args.quick else 2000
    fit_reps = 1 if args.tiny else 3 if args.quick else 5
    x, x_heldout = draw_mixture(n, seed=10), draw_mixture(N_HELDOUT, seed=11)
    init = plated_init(n)
    init_mu = {"m": init["m"], "rho": init["rho"]}
    oracle = float(heldout_ll(jnp.asarray(MEANS), x_heldout))
    target = float(heldout_ll(map_means(x, init["m"]), x_heldout))
    guided, marginal = "ELBO, guide on (mu, z)", "ELBO, z summed out"

    # name -> (objective, grad, initial parameters, how a user fits it: (final m, wall time incl. compile))
    systems = {}
    for label, strategy in [
        ("enum", ppl.enum),
        ("reinforce", ppl.reinforce),
        ("mvd", ppl.mvd),
        ("leave_one_out(4)", ppl.leave_one_out(4)),
    ]:
        if label in ("mvd", "leave_one_out(4)") and args.tiny:
            continue
        obj, grad = ppl_plated(strategy, x)

        def api(obj=obj):
            res = ppl.fit(
                obj,
                ((n,), (init,)),
                optimizer=optax.adam(FIT_LR),
                num_steps=steps,
                key=jax.random.key(5),
                progress=False,
            )
            return res.args[1][0]["m"], res.wall_time

        systems[f"ppl {label}"] = (guided, grad, init, api)
    for name, enumerate_z in [("numpyro TraceEnum_ELBO", True), ("numpyro TraceGraph_ELBO", False)]:
        loss, model, guide, grad = numpyro_plated(enumerate_z, init)

        def api(loss=loss, model=model, guide=guide):
            t0 = time.perf_counter()
            res = SVI(model, guide, optax.adam(FIT_LR), loss).run(jax.random.key(5), steps, x, progress_bar=False)
            return jax.block_until_ready(res.params["m"]), time.perf_counter() - t0

        systems[name] = (marginal if enumerate_z else guided, grad, init_mu if enumerate_z else init, api)
    if not args.tiny:
        systems["hand JAX, guide on (mu, z)"] = (guided, hand_plated_guided, init, None)
        systems["hand JAX, z summed out"] = (marginal, hand_plated_marginal, init_mu, None)
    in_fits = [k for k in systems if not k.endswith(("mvd", "leave_one_out(4)"))]
    if args.tiny:  # a smoke test of the fit code: two fits, not six
        in_fits = ["ppl enum", "numpyro TraceGraph_ELBO"]

    # 1. time per gradient step
    key = jax.random.key(1)
    compiled = [common.compile_timed(name, g, key, p, x) for name, (_, g, p, _) in systems.items()]
    t = common.interleaved(compiled, reps)
    te, tg = t["numpyro TraceEnum_ELBO"].median, t["numpyro TraceGraph_ELBO"].median
    rows = [
        [
            c.name,
            systems[c.name][0],
            common.fmt_time(t[c.name].median),
            common.fmt_time(t[c.name].min),
            common.ratio(te, t[c.name].median),
            common.ratio(tg, t[c.name].median),
            common.fmt_time(c.total_compile_s),
        ]
        for c in compiled
    ]

    # 2. variance over independent keys, bias against the closed-form gradient (guide on (mu, z) only)
    exact_value, exact_grad = jax.value_and_grad(plated_exact)(init, x)
    keys = jax.random.split(jax.random.key(2), n_keys)
    var_rows = []
    for name, (objective, grad, params, _) in systems.items():
        vals, g = common.run_once(jax.vmap(grad, in_axes=(0, None, None)), keys, params, x)
        var = {k: float(v.var(0).sum()) for k, v in g.items()}
        if objective == guided:
            z = np.concatenate([_z_scores(g[k].mean(0), exact_grad[k], g[k].std(0) / np.sqrt(n_keys)) for k in g])
            bias = [f"{np.mean(z**2):.2f}", f"{np.max(np.abs(z)):.1f}"]
        else:
            bias = ["—", "—"]
        var_rows.append(
            [
                name,
                f"{float(vals.mean()):.1f}",
                f"{var['m']:.4g}",
                f"{var['rho']:.4g}",
                f"{var['m'] + var['rho']:.4g}",
                f"{var['logits']:.4g}" if "logits" in var else "—",
                *bias,
            ]
        )

    # 3. Adam fits of equal length: steady-state wall time, held-out log-likelihood along the way
    fits = [
        common.compile_timed(name, scan_fit(systems[name][1], steps), jax.random.key(5), systems[name][2], x)
        for name in in_fits
    ]
    t_fit = common.interleaved(fits, fit_reps, warmup=1)
    curve_fn = jax.jit(jax.vmap(heldout_ll, in_axes=(0, None)))
    fit_rows = []
    for f in fits:
        finals, reached = [], []  # over fit_reps seeds (off the clock): the held-out LL at the end, steps to target
        for seed in range(fit_reps):
            _, _, ms = f.executable(jax.random.key(100 + seed), *f.args[1:])
            curve = np.asarray(curve_fn(ms, x_heldout))
            finals.append(curve[-1])
            reached.append(_steps_to_reach(curve >= target - HELDOUT_TOL))
        final, steps_med = float(np.median(finals)), float(np.median(reached))
        wall = t_fit[f.name].median
        api = systems[f.name][3]
        if api is not None and not args.tiny:  # (each compiles again: ~2 s)
            m_api, wall_api = api()
            api_cells = [common.fmt_time(wall_api), f"{float(heldout_ll(m_api, x_heldout)):.4f}"]
        else:
            api_cells = ["—", "—"]
        fit_rows.append(
            [
                f.name,
                common.fmt_time(f.total_compile_s),
                common.fmt_time(wall),
                common.fmt_time(wall / steps),
                f"{final:.4f}",
                f"{final - oracle:+.4f}",
                _steps_range(reached),
                "—" if np.isinf(steps_med) else common.fmt_time(wall * steps_med / steps),
                *api_cells,
            ]
        )

    print(f"\n## Plated mixture, N = {n} points, K = {K}: gradient step, ppl.plate vs NumPyro plate\n")
    print(
        common.table(
            [
                "system",
                "objective",
                "median time",
                "min time",
                "NumPyro TraceEnum / this",
                "NumPyro TraceGraph / this",
                "trace+compile",
            ],
            rows,
        )
    )
    print(
        f"\n`mu ~ Normal(0, {PRIOR_SCALE:g})` (K = {K}), `z_i ~ Categorical(uniform)`, `x_i ~ Normal(mu[z_i], 1)` "
        f"in a plate of {n}; guide `mu ~ Normal(m, softplus(ρ))` (+ `z_i ~ Categorical(logits_i)` in the plate, "
        "except TraceEnum). One call of the jitted value-and-gradient (dispatch included: the time per step inside "
        "a `lax.scan` is in the fit table), steady state, interleaved; compile apart. The objectives "
        "differ: TraceEnum_ELBO sums z out of the model, a *tighter* bound (log p(x | mu) in place of its ELBO "
        f"under q(z)) with 3 + 3 parameters instead of 3 + 3 + {K}·N; its gradient estimates another function. "
        "`ppl enum` enumerates the guide's z per lane (K runs for all N lanes), exact in z like the hand floor."
    )
    print(f"\n## Plated mixture, N = {n}: gradient variance over {n_keys} independent keys, at the fits' start\n")
    print(
        common.table(
            [
                "system",
                "mean estimate",
                "Var[∇m]",
                "Var[∇ρ]",
                "Var[∇(m, ρ)] total",
                "Var[∇logits]",
                "mean z²",
                "max |z|",
            ],
            var_rows,
        )
    )
    print(
        f"\nVariances summed over coordinates (m, ρ: {K} each; logits: {K}·N). The only noise left in `enum` and the "
        "hand floors is mu's reparameterized sample. z = (mean − exact) / standard error per coordinate against the "
        f"closed-form gradient of the guided ELBO (exact value {float(exact_value):.1f}); mean z² ≈ 1 = unbiased. "
        "'—': another objective (TraceEnum's mean estimate is higher: the tighter bound) or no logits. "
        "`ppl reinforce` and TraceGraph build the same estimator: lane i's score multiplies lane i's terms only "
        "(not mu's log p − log q outside the plate) and the zero-mean −∇log q(z_i) term is left out. "
        "`leave_one_out(4)` and `mvd` lower ∇logits' variance only: ∇m still comes from one sampled z per lane, as "
        "with reinforce (mvd on a Categorical evaluates every value, so its ∇logits equals enum's)."
    )
    print(f"\n## Plated mixture, N = {n}: Adam fits of {steps} steps, held-out log-likelihood ({N_HELDOUT} points)\n")
    print(
        common.table(
            [
                "system",
                "trace+compile",
                f"{steps} steps (median of {fit_reps})",
                "per step",
                "held-out LL / point",
                "− oracle",
                f"steps to within {HELDOUT_TOL} of MAP",
                "time to it",
                "ppl.fit / SVI.run wall",
                "its held-out LL",
            ],
            fit_rows,
        )
    )
    print(
        f"\nEvery fit: `optax.adam({FIT_LR})`, the same start, one jitted `lax.scan` of value-and-grad + Adam "
        "(compile apart, steady-state wall time); held-out LL = average log-likelihood per point of the plug-in "
        f"mixture (the guide's means m, unit variances, equal weights); oracle (true means) = {oracle:.4f}, MAP "
        f"means of the training set (EM to convergence) = {target:.4f}. 'steps to within': the first step at "
        f"which the held-out LL comes within {HELDOUT_TOL} nats/point of the MAP means', median (min–max) over "
        f"{fit_reps} seed{'s' if fit_reps > 1 else ''}, as is the held-out LL at the end; 'time to it' = median "
        "steps × time per step. Last two columns: the same fit as a user calls it, `ppl.fit(obj, …, optax.adam)` or "
        "NumPyro's `SVI(…, optax.adam).run(…, progress_bar=False)`, wall time *including* compilation (other keys; "
        "not run with --tiny)."
    )


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=None, help="independent gradients for the variance (default 1000)")
    ap.add_argument(
        "--section",
        choices=("all", "per-point", "plated"),
        default="all",
        help="per-point: the per-datapoint estimators and the support table; plated: the ppl.plate mixture "
        "with latent means, N = 1,000 (default: both)",
    )
    args = ap.parse_args(argv)
    reps = common.reps_for(args)
    n_keys = args.keys or (50 if args.tiny else 1000)
    common.print_header("Gaussian mixture with per-datapoint discrete latents: strategies vs NumPyro", args, reps)
    if args.section in ("all", "per-point"):
        per_point_section(args, reps, n_keys)
    if args.section in ("all", "plated"):
        plated_section(args, reps, n_keys)
    common.print_load()


def per_point_section(args, reps, n_keys):
    sizes = (20,) if args.tiny else (100,) if args.quick else (100, 500, 2000)
    rows, eff, goal_vals = [], [], {}
    for n in sizes:
        x, mu, logits = make_data(n)
        value, (g_mu, g_logits), per_point = exact(mu, logits, x)
        systems = {
            "ppl batched reinforce": ppl_batched("reinforce", x, value),
            ORACLE_BATCHED: ppl_batched("baseline", x, value),
            "ppl per-point reinforce": ppl_per_point("reinforce", per_point),
            ORACLE_PER_POINT: ppl_per_point("baseline", per_point),
            "ppl per-point leave_one_out(4)": ppl_per_point("leave_one_out(4)", per_point),
            "ppl per-point mvd": ppl_per_point("mvd", per_point),
            "ppl per-point enum": ppl_per_point("enum", per_point),
            "numpyro TraceGraph_ELBO": numpyro_grad(TraceGraph_ELBO(), mu, logits, False),
            "numpyro TraceEnum_ELBO (enum)": numpyro_grad(TraceEnum_ELBO(max_plate_nesting=1), mu, logits, True),
            "hand JAX exact (enumerated ELBO)": hand_exact,
        }
        if args.tiny:
            systems = {
                k: v
                for k, v in systems.items()
                if k.endswith(
                    ("per-point reinforce", "per-point enum", "point mvd", "TraceGraph_ELBO", "(enum)")
                )
            }
        key = jax.random.key(1)
        compiled = [common.compile_timed(name, f, key, mu, logits, x) for name, f in systems.items()]
        t = common.interleaved(compiled, reps)
        keys = jax.random.split(jax.random.key(2), n_keys)
        stats = {}
        for name, f in systems.items():
            vals, (gm, gl) = common.run_once(jax.vmap(f, in_axes=(0, None, None, None)), keys, mu, logits, x)
            se_m, se_l = gm.std(0) / np.sqrt(n_keys), gl.std(0) / np.sqrt(n_keys)
            z = np.concatenate([_z_scores(gm.mean(0), g_mu, se_m), _z_scores(gl.mean(0), g_logits, se_l)])
            stats[name] = (float(gm.var(0).sum()), float(gl.var(0).sum()), z, float(vals.mean()))
        base_np = {
            "TraceGraph": t["numpyro TraceGraph_ELBO"].median,
            "TraceEnum": t["numpyro TraceEnum_ELBO (enum)"].median,
        }
        tg = "numpyro TraceGraph_ELBO"
        for c in compiled:
            vm, vl, z, _ = stats[c.name]
            tm = t[c.name].median
            if tg in stats and c.name != tg:
                eff.append(
                    [n, c.name, CONTROL_VARIATE.get(c.name, "none")]
                    + [_efficiency(t[tg].median, stats[tg][i], tm, stats[c.name][i]) for i in (0, 1)]
                )
                if c.name.startswith("ppl per-point") and c.name != ORACLE_PER_POINT:
                    for i, group in ((1, "∇logits"), (0, "∇mu")):
                        ratio = _efficiency_value(t[tg].median, stats[tg][i], tm, stats[c.name][i])
                        goal_vals.setdefault((c.name, group), {})[f"N = {n}"] = ratio
            rows.append(
                [
                    n,
                    c.name,
                    CONTROL_VARIATE.get(c.name, "none"),
                    common.fmt_time(tm),
                    common.ratio(base_np["TraceGraph"], tm),
                    common.ratio(base_np["TraceEnum"], tm),
                    f"{vm:.4g}",
                    f"{vl:.4g}",
                    f"{np.mean(z**2):.2f}",
                    f"{np.max(np.abs(z)):.1f}",
                    common.fmt_time(c.total_compile_s),
                ]
            )
        common.progress(
            f"N={n} done (exact ELBO {float(value):.2f}; estimator means "
            + ", ".join(f"{k.split(' ', 1)[1]} {s[3]:.2f}" for k, s in stats.items())
            + ")"
        )

    print("\n## Gradient step: time, speed-up over NumPyro, variance over independent keys, bias\n")
    print(
        common.table(
            [
                "N",
                "system",
                "control variate",
                "median time",
                "NumPyro TraceGraph / this",
                "NumPyro TraceEnum / this",
                "Var[∇mu] (sum)",
                "Var[∇logits] (sum)",
                "mean z²",
                "max |z|",
                "trace+compile",
            ],
            rows,
        )
    )
    print(
        f"\nVariance over {n_keys} independent keys, summed over coordinates. z = (mean − exact) / standard error "
        f"per coordinate, over the {K} + {K}·N coordinates: an unbiased estimator has mean z² ≈ 1 and max |z| ≈ "
        "√(2 ln(2m)) for m coordinates (≈ 3.6 at N = 100, 4.3 at N = 2000); exact estimators show 0. "
        "Control variates: NumPyro's TraceGraph_ELBO has none, and neither do the ppl rows marked 'none' "
        "(leave_one_out(4) builds its own from its 4 samples, at their cost); the 'oracle' rows use the exact "
        "per-point expected ELBO as baseline, which no user has: a best case, not a comparison. "
        "Goal: ppl ≥ 5× faster than NumPyro at equal or lower variance."
    )

    print("\n## Speed-up over TraceGraph_ELBO at equal variance (time × variance)\n")
    print(common.table(["N", "system", "control variate", "on ∇mu", "on ∇logits"], eff))
    print(
        "\nAveraging m independent estimates divides the variance by m, so the cost of reaching a given variance is "
        "time × variance per estimate: this table is (t · Var)_TraceGraph / (t · Var)_system, per parameter group, "
        "against TraceGraph_ELBO without a control variate (NumPyro has none). 'exact' = zero variance (no number "
        "of TraceGraph samples reaches it). Rows with an oracle baseline are a best case that no user can run."
    )

    common.print_goals(
        [common.Goal(f"discrete: {name.removeprefix('ppl ')} vs TraceGraph_ELBO at equal variance, on {group}", 5.0,
                     vals, at_least=True) for (name, group), vals in goal_vals.items()],
        "(t · Var)_TraceGraph / (t · Var)_ppl from the table above, no control variate on either side ('exact': zero "
        "variance). The oracle-baseline rows are not goals: no user has that baseline.",
    )

    x, mu, logits = make_data(8)
    print("\n## What a user hits: per-datapoint discrete latents, by construct and strategy (4 points)\n")
    rows = support_table(x, mu, logits, (4,) if args.tiny else (4, 8), TINY_SUPPORT if args.tiny else None)
    print(common.table(["construct", "strategy", "result"], rows))
    print("\nEach attempt is one jitted call of the value-and-gradient estimator; its first-call time includes "
          "ppl's interpretation, JAX's tracing and XLA's compile." + (" (--tiny: a subset of the pairs.)" if args.tiny
                                                                       else ""))


def _steps_to_reach(ok) -> float:
    """Steps until ``ok`` first holds (``ok[i]``: after step ``i + 1``); ``inf`` if never."""
    return float(np.argmax(ok) + 1) if ok.any() else np.inf


def _steps_range(reached) -> str:
    """``median (min–max)`` of steps to the target over seeds; ``never`` for a seed that did not get there."""
    fmt = lambda v: "never" if np.isinf(v) else f"{v:.0f}"
    med = float(np.median(reached))
    return fmt(med) if len(reached) == 1 else f"{fmt(med)} ({fmt(min(reached))}–{fmt(max(reached))})"


def _efficiency(t_ref: float, var_ref: float, t: float, var: float) -> str:
    """``(t · Var)_ref / (t · Var)``; "exact" where the variance is round-off (below 1e-6 of the reference's)."""
    value = _efficiency_value(t_ref, var_ref, t, var)
    return "exact" if np.isinf(value) else f"{value:.3g}×"


def _efficiency_value(t_ref: float, var_ref: float, t: float, var: float) -> float:
    """:func:`_efficiency` as a number (``inf`` for an exact estimator)."""
    return np.inf if var <= 1e-6 * var_ref else t_ref * var_ref / (t * var)


def _z_scores(mean, exact, se):
    """Per-coordinate ``(mean − exact) / se``; for a coordinate with no noise (exact estimators), 0 if it matches the
    exact value and ``inf`` if not."""
    mean, exact, se = np.asarray(mean).ravel(), np.asarray(exact).ravel(), np.asarray(se).ravel()
    noisy = se > 1e-6 * (1 + np.abs(exact))
    match = np.abs(mean - exact) < 1e-4 * (1 + np.abs(exact))
    return np.where(noisy, (mean - exact) / np.maximum(se, 1e-30), np.where(match, 0.0, np.inf))


if __name__ == "__main__":
    main()
