"""``ppl.fit`` against a hand-written ``lax.scan`` of optax Adam steps (issue #13).

The objective is the VAE ELBO of ``bench/vae.py`` (binarized MNIST, latent 10, hidden 200; one reparameterized ``z``
per datapoint), on a fixed batch of 64, 256 or 1,024 digits; Adam with learning rate 1e-3; step ``i`` uses the key
``fold_in(key, i)``, as ``fit`` does. Systems, timed per step over ``T`` steps run by one compiled program:

* ``hand JAX scan`` — the baseline: ``jax.lax.scan`` of ``jax.value_and_grad`` of the ELBO written in plain JAX
  (``vae.hand_elbo``), negated, ``optax.adam`` update, ``optax.apply_updates``. No NaN guard, nothing else;
* ``scan of ppl.elbo`` — the same loop around ``ppl.elbo(model, guide).value_and_grad_estimate``: what ``fit`` runs
  without ``fit`` (the difference to the baseline is the objective's, measured in ``bench/vae.py``);
* ``ppl.fit (chunk)`` — the compiled chunk ``fit`` runs (the jitted program it keeps between calls; ``lower_fit``
  shows it), called with the arguments ``fit`` passes: one chunk of ``T`` steps, NaN guard included (the fast
  program: the estimate's finiteness each step, parameters and optimizer state once per chunk; the guarded program
  that reruns a chunk with a non-finite number never runs here);
* ``ppl.fit()`` — the whole Python call ``fit(objective, args, num_steps=T, chunk_size=T)`` after its first call
  (compiled program reused): setup, the chunk, the values brought back to the host, the ``FitResult``.

``ppl.fit (chunk)`` / ``scan of ppl.elbo`` is ``fit``'s own cost per step (goal: ≤ 1.05×). Before each timing,
``ppl.fit`` and the ``ppl.elbo`` scan are checked to compute the same values (same keys, same estimator).

Compile cost: for the two scans, ``jax.jit(...).lower(...).compile()`` (trace + lower + XLA compile); for ``fit``,
the compile time JAX reports for the calls (``jax.monitoring`` time spans of tracing, lowering and XLA compilation of
everything the call compiles, nested spans counted once) of a first ``fit`` call (empty cache), of a second call
continuing from its result (``fit(objective, res.args, ...)`` with a new key and the same optimizer), and of a third
of another length (``T + 7`` steps: a last chunk of 7). The second and third compile nothing.

Run ``python bench/fit.py`` (full: batches 64, 256, 1024; 50 steps per timed call; 100 repetitions), ``--quick``
(20 steps, 20 repetitions) or ``--tiny`` (batch 64 only, 10 steps, 3 repetitions).
"""

from __future__ import annotations

import importlib
import time

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import optax
import vae  # bench/vae.py: the networks, the model and guide, the hand-coded ELBO

import ppl

fit_module = importlib.import_module("ppl.workflow.fit")  # the attribute ppl.workflow.fit is the function

LR = 1e-3
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


# ---------------------------------------------------------------------------------------------- systems


def scan_of(grad_fn, num_steps):
    """``num_steps`` Adam steps on ``grad_fn(key, dec, enc) -> (value, (g_dec, g_enc))`` (the ELBO, maximized)."""
    opt = optax.adam(LR)

    def run(params, opt_state, key):
        def body(carry, i):
            params, opt_state = carry
            v, (gd, ge) = grad_fn(jax.random.fold_in(key, i), params["dec"], params["enc"])
            g = jax.tree_util.tree_map(jnp.negative, {"dec": gd, "enc": ge})
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), v

        return jax.lax.scan(body, (params, opt_state), jnp.arange(num_steps))

    return run, opt


def hand_grad(x):
    return lambda key, dec, enc: jax.value_and_grad(vae.hand_elbo, argnums=(0, 1))(dec, enc, key, x)


def ppl_grad(objective, x):
    n = x.shape[0]

    def grad(key, dec, enc):
        v, (gm, gg) = objective.value_and_grad_estimate(key, (dec, n), (enc, ppl.fixed(x)))
        return v, (gm[0], gg[0])

    return grad


class Call:
    """A timed system that is a Python call (``common.interleaved`` needs ``name`` and ``__call__``)."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self):
        return self.fn()


class CompileMeter:
    """Seconds JAX spends tracing, lowering and compiling while active (``jax.monitoring`` time spans of those events,
    merged: a trace nested in another counts once), and how many programs XLA compiled."""

    def __enter__(self):
        self.spans, self.compiles = [], 0
        jax.monitoring.register_event_time_span_listener(self._listen)
        return self

    def _listen(self, event, start, end, **kwargs):
        if event in COMPILE_EVENTS:
            self.spans.append((start, end))
            self.compiles += event.endswith("backend_compile_duration")

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_time_span_listener(self._listen)

    @property
    def total(self):
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


# ---------------------------------------------------------------------------------------------- one batch size


def measure(n, x, params, num_steps, reps, key):
    dec, enc = params["dec"], params["enc"]
    objective = ppl.elbo(vae.model, vae.guide, {"x": x})
    args = ((dec, n), (enc, ppl.fixed(x)))
    kw = dict(optimizer=optax.adam(LR), num_steps=num_steps, chunk_size=num_steps, progress=False)

    # compile cost of fit: a first call (nothing cached), a call continuing from its result, one of another length
    fit_module.clear_cache()
    with CompileMeter() as first:
        t0 = time.perf_counter()
        res = ppl.fit(objective, args, key=key, **kw)
        first_wall = time.perf_counter() - t0
    with CompileMeter() as second:
        t0 = time.perf_counter()
        res2 = ppl.fit(objective, res.args, key=jax.random.key(1), **kw)
        second_wall = time.perf_counter() - t0
    with CompileMeter() as third:
        t0 = time.perf_counter()
        ppl.fit(objective, res2.args, key=jax.random.key(2), **{**kw, "num_steps": num_steps + 7})
        third_wall = time.perf_counter() - t0

    # the timed programs
    hand_run, opt = scan_of(hand_grad(x), num_steps)
    ppl_run, _ = scan_of(ppl_grad(objective, x), num_steps)
    opt_state = opt.init(params)
    hand = common.compile_timed("hand JAX scan", hand_run, params, opt_state, key)
    scan_ppl = common.compile_timed("scan of ppl.elbo", ppl_run, params, opt_state, key)
    # the program fit runs (from its cache: compiled by the calls above), with the arguments fit passes it
    st = fit_module._setup(objective, args, kw["optimizer"], key, 1, None, None, None, None, num_steps)
    chunk_args = (st.params, st.opt_state, st.frozen, st.key, jnp.int32(0), jnp.int32(num_steps), st.data)
    chunk = Call("ppl.fit (chunk)", lambda: st.chunk.fast(*chunk_args))
    call = Call("ppl.fit()", lambda: ppl.fit(objective, args, key=key, **kw).values)

    # the same computation: fit's values are those of the ppl.elbo scan (same keys), and fit() returns them
    (_, _), v_scan = scan_ppl()
    (_, _), (v_chunk, ok) = chunk()
    assert bool(ok)  # no non-finite number: the guarded program is not run
    np.testing.assert_allclose(np.asarray(v_chunk)[:num_steps], np.asarray(v_scan), rtol=1e-4)
    np.testing.assert_allclose(res.values, np.asarray(v_chunk), rtol=1e-6)

    t = common.interleaved([hand, scan_ppl, chunk, call], reps)
    base, pbase = t["hand JAX scan"].median, t["scan of ppl.elbo"].median
    rows = []
    for name in ("hand JAX scan", "scan of ppl.elbo", "ppl.fit (chunk)", "ppl.fit()"):
        tc = t[name]
        rows.append([n, name, common.fmt_time(tc.median / num_steps), common.fmt_time(tc.min / num_steps),
                     common.ratio(tc.median, base), common.ratio(tc.median, pbase)])  # fmt: skip
    compile_rows = [
        [n, "hand JAX scan: jit(...).lower(...).compile()", common.fmt_time(hand.total_compile_s), 1, "—"],
        [n, "scan of ppl.elbo: the same", common.fmt_time(scan_ppl.total_compile_s), 1, "—"],
        [n, "ppl.fit: first call", common.fmt_time(first.total), first.compiles, common.fmt_time(first_wall)],
        [n, "ppl.fit: continuing from its result", common.fmt_time(second.total), second.compiles,
         common.fmt_time(second_wall)],
        [n, f"ppl.fit: {num_steps + 7} steps (last chunk of 7)", common.fmt_time(third.total), third.compiles,
         common.fmt_time(third_wall)],
    ]  # fmt: skip
    ratio = t["ppl.fit (chunk)"].median / pbase
    return rows, compile_rows, ratio, second.compiles + third.compiles


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="steps per timed call (default 50; 20 quick, 10 tiny)")
    args = ap.parse_args(argv)
    reps = common.reps_for(args, full=100, quick=20)
    num_steps = args.steps or (10 if args.tiny else 20 if args.quick else 50)
    batches = (64,) if args.tiny else (64, 256, 1024)
    common.print_header("ppl.fit against a hand-written lax.scan of optax Adam steps (VAE ELBO)", args, reps)

    images, _ = vae.load_mnist_5k()
    key = jax.random.key(0)
    k_enc, k_dec, k_bin = jax.random.split(key, 3)
    params = {
        "dec": vae.init_mlp(k_dec, (vae.LATENT, vae.HIDDEN, vae.PIXELS)),
        "enc": vae.init_mlp(k_enc, (vae.PIXELS, vae.HIDDEN, 2 * vae.LATENT)),
    }
    data = vae.binarize(k_bin, jnp.asarray(images))

    step_rows, compile_rows, chunk_ratio, recompiles = [], [], {}, {}
    for n in batches:
        rows, crows, chunk_ratio[f"batch {n}"], recompiles[f"batch {n}"] = measure(
            n, data[:n], params, num_steps, reps, key
        )
        step_rows += rows
        compile_rows += crows
        common.progress(f"batch {n} done")

    print("\n## Time per step (gradient + Adam update)\n")
    print(common.table(["batch", "system", "median", "min", "vs hand JAX scan", "vs scan of ppl.elbo"], step_rows))
    print(f"\n{num_steps} steps per timed call. Goal: ppl.fit (chunk) ≤ 1.05× scan of ppl.elbo (median, same run).")
    print("\n## Compile cost\n")
    print(common.table(["batch", "what", "trace + lower + compile", "programs compiled", "wall time of the call"],
                       compile_rows))  # fmt: skip
    print("\nppl.fit's first call also compiles a few small programs (its set-up, once per process). Goal: a call "
          "continuing from a result compiles nothing.")  # fmt: skip
    common.print_goals([
        common.Goal("fit: compiled chunk vs lax.scan of the same ppl.elbo (issue #13)", 1.05, chunk_ratio),
    ], "Continuing from a result and a short last chunk compiled "
       + ", ".join(f"{v} program(s) at {k}" for k, v in recompiles.items()) + " (goal: none).")  # fmt: skip
    common.print_load()


if __name__ == "__main__":
    main()
