"""Program size and compile cost of a ``ppl`` gradient estimator as the number of random choices grows.

Three structures, each against a hand-coded JAX program of the same structure (same loop / unrolled code / nested
``vmap``; in the loop, ``ppl``'s key schedule: the key split once before the scan, one key per step), both
differentiated with ``jax.value_and_grad`` and jitted:

* **scan** — a Gaussian random walk with ``T`` latent steps and ``T`` observations, all sites inside one
  ``lax.scan`` (model and guide); ``ppl.elbo``. T = 10, 100, 1,000, 10,000: the program must not grow with ``T``.
* **straight line** — the same model with its ``2T`` sites written out in a Python loop (distinct addresses
  ``x0, x1, ...``); ``ppl.elbo``. T = 10, 100, 1,000: the program grows linearly, like the hand-coded one. XLA's
  compile of unrolled code is slow (≈ 1 minute per program at T = 100 on 2 cores, for ``ppl`` and hand-coded alike:
  both unroll ``T`` threefry key derivations), so T = 100 is built once and T = 1,000 is traced and lowered only.
* **enum** — ``k`` binary latents ``z_i ~ Bernoulli``, and 64 × 64 Gaussian observations with mean ``Σ_i z_i w_i``
  (``w_i`` a row of 64 weights; each enumerated path scores 4,096 Gaussians, so the ``2^k`` shows), guide
  ``Bernoulli(logits=φ_i)`` with ``enum`` at every site (the exact ELBO gradient). k = 1..8. The program is linear
  in ``k`` (one ``vmap`` level per site), the *runtime* is ``2^k`` continuation evaluations: the hand-coded program
  is the same nest of ``vmap`` over ``{0, 1}``.

Measured: jaxpr equations of the jitted estimator (counted recursively into scan bodies and nested jaxprs), trace
time (Python: ``ppl``'s staging and interpretation, then JAX's tracing of ``value_and_grad``), lowering, XLA compile
time, and the steady-state time per call of the compiled estimator (``ppl`` and hand-coded interleaved, as every
script in ``bench/``; not for the straight-line programs that are only traced and lowered). Each compile measurement
uses fresh function objects (nothing cached); the median over a few measurements is reported. Goals: ``ppl``'s
trace + lower + compile ≤ 2× hand-coded (issue #13: ≤ 1.5× at 1,000 sites), run time ≤ 1.05× hand-coded.

Run ``python bench/scaling.py`` (full, ≈ 5–10 minutes: XLA compiles 100 unrolled sites twice), ``--quick`` (straight
line at 10 and 30 sites) or ``--tiny`` (a smoke test of seconds).
"""

from __future__ import annotations

import itertools
import statistics
import time

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import lax

import ppl

LOG_2PI = float(np.log(2 * np.pi))
ENUM_ROWS, ENUM_DIM = 64, 64  # the enum model observes a 64 x 64 matrix: each path scores 4,096 Gaussians
STRAIGHT_COMPILE_MAX = 100  # straight-line programs with more sites are traced and lowered, not XLA-compiled


def norm_lp(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * LOG_2PI


# ---------------------------------------------------------------------------------------------- scan


def ppl_scan(T):
    @ppl.gen
    def model(T):
        def step(x, _):
            x = ppl.sample("x", dist.Normal(x, 1.0))
            ppl.sample("y", dist.Normal(x, 1.0))
            return x, None

        lax.scan(step, 0.0, None, length=T)

    @ppl.gen
    def guide(mu, log_sig):
        def step(_, p):
            ppl.sample("x", dist.Normal(p[0], jnp.exp(p[1])))
            return None, None

        lax.scan(step, None, (mu, log_sig))

    def estimator(key, mu, log_sig, y):
        obj = ppl.elbo(model, guide, {"y": y})
        v, (_, g, _) = obj.value_and_grad_estimate(key, T, (mu, log_sig), {"y": y})
        return v, g

    return estimator


def hand_scan(T):
    """The random walk by hand, with ``ppl``'s key schedule in loops: the key split once before the scan into one key
    per step (passed in as ``xs``), one normal draw per step from it (no key derivation inside the loop)."""

    def elbo(mu, log_sig, key, y):
        def step(carry, inp):
            xprev, acc = carry
            m, ls, yt, kt = inp
            eps = jax.random.normal(kt)
            x = m + jnp.exp(ls) * eps
            lp = norm_lp(x, xprev, 1.0) + norm_lp(yt, x, 1.0) - norm_lp(x, m, jnp.exp(ls))
            return (x, acc + lp), None

        (_, acc), _ = lax.scan(step, (0.0, 0.0), (mu, log_sig, y, jax.random.split(key, T)))
        return acc

    def estimator(key, mu, log_sig, y):
        return jax.value_and_grad(elbo, argnums=(0, 1))(mu, log_sig, key, y)

    return estimator


# ---------------------------------------------------------------------------------------------- straight line


def ppl_straight(T):
    @ppl.gen
    def model(T):
        x = 0.0
        for t in range(T):
            x = ppl.sample(f"x{t}", dist.Normal(x, 1.0))
            ppl.sample(f"y{t}", dist.Normal(x, 1.0))

    @ppl.gen
    def guide(mu, log_sig):
        for t in range(mu.shape[0]):
            ppl.sample(f"x{t}", dist.Normal(mu[t], jnp.exp(log_sig[t])))

    def estimator(key, mu, log_sig, y):
        data = {f"y{t}": y[t] for t in range(T)}
        obj = ppl.elbo(model, guide, data)
        v, (_, g, _) = obj.value_and_grad_estimate(key, T, (mu, log_sig), data)
        return v, g

    return estimator


def hand_straight(T):
    def elbo(mu, log_sig, key, y):
        x, acc = 0.0, 0.0
        for t in range(T):
            eps = jax.random.normal(jax.random.fold_in(key, t))
            xt = mu[t] + jnp.exp(log_sig[t]) * eps
            acc = acc + norm_lp(xt, x, 1.0) + norm_lp(y[t], xt, 1.0) - norm_lp(xt, mu[t], jnp.exp(log_sig[t]))
            x = xt
        return acc

    def estimator(key, mu, log_sig, y):
        return jax.value_and_grad(elbo, argnums=(0, 1))(mu, log_sig, key, y)

    return estimator


# ---------------------------------------------------------------------------------------------- enum


def ppl_enum(k):
    @ppl.gen
    def model(w):
        s = 0.0
        for i in range(w.shape[0]):
            s = s + w[i] * ppl.sample(f"z{i}", dist.Bernoulli(probs=0.4))
        ppl.sample("y", dist.Normal(jnp.broadcast_to(s, (ENUM_ROWS, ENUM_DIM)), 1.0).to_event(2))

    @ppl.gen
    def guide(phi):
        for i in range(phi.shape[0]):
            ppl.sample(f"z{i}", dist.Bernoulli(logits=phi[i]))

    def estimator(key, phi, w, y):
        obj = ppl.elbo(model, guide, {"y": y}, strategies={"z*": ppl.enum})
        v, (_, g, _) = obj.value_and_grad_estimate(key, w, phi, {"y": y})
        return v, g

    return estimator


def hand_enum(k):
    def elbo(phi, w, y):
        def level(i, zs):
            if i == k:
                z = jnp.stack(zs)
                log_p = jnp.sum(z * jnp.log(0.4) + (1 - z) * jnp.log(0.6)) + jnp.sum(norm_lp(y, z @ w, 1.0))
                log_q = jnp.sum(z * phi - jax.nn.softplus(phi))
                return log_p - log_q
            vals = jnp.array([0.0, 1.0])
            fs = jax.vmap(lambda v: level(i + 1, [*zs, v]))(vals)
            p1 = jax.nn.sigmoid(phi[i])
            return (1 - p1) * fs[0] + p1 * fs[1]

        return level(0, [])

    def estimator(key, phi, w, y):
        return jax.value_and_grad(elbo)(phi, w, y)

    return estimator


def exact_enum_grad(phi, w, y):
    """The exact ELBO gradient by brute force over the 2^k grid (a check of both programs)."""
    k = phi.shape[0]
    grid = jnp.array(list(itertools.product([0.0, 1.0], repeat=k)))

    def elbo(phi):
        log_q = jnp.sum(grid * phi - jax.nn.softplus(phi), axis=1)
        log_p = jnp.sum(grid * jnp.log(0.4) + (1 - grid) * jnp.log(0.6), axis=1)
        log_p = log_p + jnp.sum(norm_lp(y, (grid @ w)[:, None, :], 1.0), axis=(1, 2))
        return jnp.sum(jnp.exp(log_q) * (log_p - log_q))

    return jax.grad(elbo)(phi)


# ---------------------------------------------------------------------------------------------- measurement


def measure(make, size, args, n_compile, compile=True):
    """Median trace / lower / compile times over ``n_compile`` fresh builds; the last build (``None`` when the XLA
    compile is skipped: then only trace and lower are timed)."""
    times, build = [], None
    for _ in range(n_compile):
        if compile:
            build = common.compile_timed(make.__name__, make(size), *args)
            times.append((build.trace_s, build.lower_s, build.compile_s, build.jaxpr))
        else:
            t0 = time.perf_counter()
            traced = jax.jit(make(size)).trace(*args)
            t1 = time.perf_counter()
            traced.lower()
            times.append((t1 - t0, time.perf_counter() - t1, float("nan"), traced.jaxpr))
    med = {a: statistics.median(t[i] for t in times) for i, a in enumerate(("trace_s", "lower_s", "compile_s"))}
    return build, med, times[-1][3]


def row(kind, size, ppl_m, hand_m, extra=()):
    (_, pt, pj), (_, ht, hj) = ppl_m, hand_m
    compiled = pt["compile_s"] == pt["compile_s"]  # not nan
    tot_p = pt["trace_s"] + pt["lower_s"] + (pt["compile_s"] if compiled else 0.0)
    tot_h = ht["trace_s"] + ht["lower_s"] + (ht["compile_s"] if compiled else 0.0)
    return [
        kind,
        size,
        f"{common.count_eqns(pj):,}",
        f"{common.count_eqns(hj):,}",
        common.fmt_time(pt["trace_s"]),
        common.fmt_time(ht["trace_s"]),
        common.fmt_time(pt["lower_s"] + pt["compile_s"]) if compiled else "not compiled",
        common.fmt_time(ht["lower_s"] + ht["compile_s"]) if compiled else "not compiled",
        common.ratio(tot_p, tot_h) + ("" if compiled else " (trace+lower)"),
        *extra,
    ]


def note_goals(goals, kind, size, cells):
    """Record a table row's ratios for the goals: run time by structure, trace + lower (+ compile) overall."""
    total = cells[8]
    value = float(total.split("×")[0])
    if total.endswith("(trace+lower)"):
        goals["1000"][f"{kind} {size}"] = value
    else:
        goals["total"][f"{kind} {size}"] = value
    if cells[-1] != "—":
        goals[f"{kind} run"][f"{'T' if kind != 'enum' else 'k'} = {size}"] = float(cells[-1].rstrip("×"))


def run_cells(pb, hb, reps):
    """Steady-state time per call of the two compiled estimators (interleaved) and their ratio."""
    if pb is None or hb is None:
        return ["—", "—", "—"]
    t = common.interleaved([pb, hb], reps)
    tp, th = t[pb.name].median, t[hb.name].median
    return [common.fmt_time(tp), common.fmt_time(th), common.ratio(tp, th)]


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    args = ap.parse_args(argv)
    reps = common.reps_for(args)
    n_compile = 1 if args.tiny else 2 if args.quick else 3
    if args.tiny:
        scan_ts, straight_ts, enum_ks = (10, 100), (10,), (1, 2)
    elif args.quick:
        scan_ts, straight_ts, enum_ks = (10, 100, 1000, 10000), (10, 30), (1, 2, 4, 6, 8)
    else:
        scan_ts, straight_ts, enum_ks = (10, 100, 1000, 10000), (10, 100, 1000), tuple(range(1, 9))
    common.print_header("Program size, compile cost and run time vs number of sites", args, reps)
    key = jax.random.key(0)
    hdr = ["structure", "size", "ppl eqns", "hand eqns", "ppl trace", "hand trace", "ppl lower+compile",
           "hand lower+compile", "ppl/hand total"]

    rows = []
    goals = {"scan run": {}, "straight run": {}, "enum run": {}, "total": {}, "1000": {}}
    for kind, sizes, mk_ppl, mk_hand in (
        ("scan", scan_ts, ppl_scan, hand_scan),
        ("straight", straight_ts, ppl_straight, hand_straight),
    ):
        for T in sizes:
            rng = np.random.default_rng(T)
            mu, ls, y = (jnp.asarray(rng.normal(size=T), jnp.float32) * s for s in (1.0, 0.1, 1.0))
            a = (key, mu, ls, y)
            # XLA's compile time of unrolled code grows fast (100 straight-line sites: ~1 min per program on 2 cores,
            # mostly the 100 inlined threefry key derivations both programs contain): build those once, and time
            # only tracing + lowering at 1,000 sites
            compile = not (kind == "straight" and T > STRAIGHT_COMPILE_MAX)
            n = 1 if kind == "straight" and T >= 100 else n_compile
            pm, hm = measure(mk_ppl, T, a, n, compile), measure(mk_hand, T, a, n, compile)
            if compile:
                (vp, _), (vh, _) = pm[0](), hm[0]()
                assert np.isfinite(float(vp)) and np.isfinite(float(vh)), (kind, T, vp, vh)
            rows.append(row(kind, T, pm, hm, extra=run_cells(pm[0], hm[0], reps)))
            note_goals(goals, kind, T, rows[-1])
            common.progress(f"{kind} T={T} done: " + " | ".join(map(str, rows[-1][2:])))
    print("\n## Sites in a scan and in straight-line code (ppl.elbo, value and gradient)\n")
    print(common.table([*hdr, "ppl run", "hand run", "ppl/hand run"], rows))
    print(f"\nA Gaussian random walk with T latent steps and T observations; jaxpr equations counted recursively; "
          f"compile times: median of {n_compile} fresh build(s) (1 for straight-line code at T ≥ 100); run: median "
          f"of {reps} interleaved calls of the compiled programs. Straight-line programs above "
          f"{STRAIGHT_COMPILE_MAX} sites are traced and lowered only (ratio of trace + lower).")

    rows = []
    for k in enum_ks:
        rng = np.random.default_rng(k)
        phi = jnp.asarray(rng.normal(size=k), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, ENUM_DIM)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(ENUM_ROWS, ENUM_DIM)), jnp.float32)
        a = (key, phi, w, y)
        pm, hm = measure(ppl_enum, k, a, n_compile), measure(hand_enum, k, a, n_compile)
        pb, hb = pm[0], hm[0]
        exact = exact_enum_grad(phi, w, y)
        np.testing.assert_allclose(pb()[1], exact, rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(hb()[1], exact, rtol=2e-3, atol=2e-4)
        rows.append(row("enum", k, pm, hm, extra=(2**k, *run_cells(pb, hb, reps))))
        note_goals(goals, "enum", k, rows[-1])
        common.progress(f"enum k={k} done")
    print("\n## k enumerated Bernoulli sites (exact ELBO gradient; checked against brute force)\n")
    print(common.table([*hdr, "2^k", "ppl run", "hand run", "ppl/hand run"], rows))
    print(f"\nEach enumerated path scores {ENUM_ROWS} × {ENUM_DIM} Gaussians; the gradients of both programs are "
          "checked against brute-force enumeration of the 2^k grid. Goals: scan program size flat in T; "
          "straight-line and enum program size linear; ppl trace + lower + compile ≤ 2× hand-coded; run time "
          "≤ 1.05× hand-coded.")
    common.print_goals([
        common.Goal("scaling: scan run time vs hand-coded (issue #13)", 1.05, goals["scan run"]),
        common.Goal("scaling: trace + lower at 1,000 straight-line sites vs hand-coded (issue #13)", 1.5,
                    goals["1000"]),
        common.Goal("scaling: trace + lower + compile vs hand-coded", 2.0, goals["total"]),
        common.Goal("scaling: straight-line run time vs hand-coded", 1.05, goals["straight run"]),
        common.Goal("scaling: enum run time vs hand-coded", 1.05, goals["enum run"]),
    ], "Ratios from the two tables above (run: medians of interleaved calls; compile: as in the tables).")
    common.print_load()


if __name__ == "__main__":
    main()
