"""The GPU table of ``docs/benchmarks.md`` in one run: ``ppl`` against hand-coded JAX and NumPyro on one device.

Run it through ``bench/gpu.sh`` (which checks for an NVIDIA GPU and JAX's CUDA build first). Every row is measured in
this one process, with the protocol of ``bench/common.py`` (compile apart, steady state with
``block_until_ready``, the systems of a row interleaved, median of the repetitions), so the ratios compare systems
measured in the same run on the same device:

* **VAE step** — ``bench/vae.py``'s VAE (MNIST, latent 10, hidden 200): value and gradient of the ELBO + Adam update,
  one jitted call per step: ``ppl.elbo`` + ``optax.adam``, hand-coded JAX + ``optax.adam``, NumPyro
  ``SVI.update``. Batch 64, 256, 1,024, 4,096.
* **VAE step in lax.scan** — the same steps, ``SCAN_STEPS`` of them inside one jitted ``lax.scan`` (the
  per-call dispatch, which dominates small GPU kernels, paid once); time per step.
* **mixture, per-point enum / reinforce** — ``bench/discrete.py``'s Gaussian mixture (K = 3, one assignment per
  point): ``ppl.sum_over`` of the per-point ELBO with ``enum`` against the hand-coded exact gradient and NumPyro's
  ``TraceEnum_ELBO``; with ``reinforce`` against ``TraceGraph_ELBO`` (same control variate: none). N = 2,000 and
  100,000.
* **AIR** — ``bench/air.py``'s Attend-Infer-Repeat objective: time per training step (minibatch 32, one epoch of
  steps in a ``lax.scan``) for ``enum``, ``mvd``, ``reinforce`` and ``IWAE(2) mvd``; ``ppl`` only (the ratio is to
  ``enum``).
* **ppl.fit** — ``bench/fit.py``'s measurement (when that script exists): the chunk ``ppl.fit`` compiles against a
  hand-written ``lax.scan`` of optax Adam steps, per step, batch 64, 256, 1,024.

``--tiny`` is the CPU fallback smoke test (``bench/gpu.sh --tiny`` sets ``JAX_PLATFORMS=cpu``): the smallest sizes,
a few repetitions, XLA at optimization level 0; it writes nothing into the doc. On a GPU the table is written into
``docs/benchmarks.md`` between ``<!-- bench:gpu:table begin/end -->`` (``--no-write``: print only).
"""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
import time
from pathlib import Path

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from jax import lax
from numpyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

SCAN_STEPS = 50
HEADERS = ["workload", "size", "ppl", "hand JAX", "NumPyro", "ppl / hand", "ppl / NumPyro", "note"]


def _row(workload, size, t, ppl, hand=None, npy=None, note="", per=1):
    cell = lambda name: common.fmt_time(t[name].median / per) if name else "—"
    ratio = lambda name: common.ratio(t[ppl].median, t[name].median) if name else "—"
    return [workload, size, cell(ppl), cell(hand), cell(npy), ratio(hand), ratio(npy), note]


# ---------------------------------------------------------------------------------------------- VAE


def scanned(step, n_steps):
    """``n_steps`` calls of ``step(key, params, opt_state, x)`` in one ``lax.scan`` (step ``i``: key ``i``)."""

    def run(key, params, opt_state, x):
        def body(carry, i):
            p, s = carry
            p, s, v = step(jax.random.fold_in(key, i), p, s, x)
            return (p, s), v

        return lax.scan(body, (params, opt_state), jnp.arange(n_steps))

    return run


def svi_scanned(svi, n_steps):
    def run(state, x):
        return lax.scan(lambda st, _: svi.update(st, x), state, None, length=n_steps)

    return run


def vae_rows(batches, reps, scan_steps):
    import vae

    images, _ = vae.load_mnist_5k()
    key = jax.random.key(0)
    k_enc, k_dec, k_bin = jax.random.split(key, 3)
    enc = vae.init_mlp(k_enc, (vae.PIXELS, vae.HIDDEN, 2 * vae.LATENT))
    dec = vae.init_mlp(k_dec, (vae.LATENT, vae.HIDDEN, vae.PIXELS))
    data = vae.binarize(k_bin, jnp.asarray(np.resize(images, (max(max(batches), len(images)), images.shape[1]))))
    params = {"dec": dec, "enc": enc}
    rows = []
    for n in batches:
        x = data[:n]
        ppl_step, opt = vae.adam_step(vae.ppl_systems(x)["ppl.elbo"])
        hand_step, _ = vae.adam_step(vae.hand_grad)
        _, np_model, np_guide = vae.numpyro_grad(dec, enc)
        svi = SVI(np_model, np_guide, numpyro.optim.optax_to_numpyro(optax.adam(vae.LR)), Trace_ELBO())
        state = svi.init(key, x)
        o = opt.init(params)
        per_call = [common.compile_timed("ppl", ppl_step, key, params, o, x),
                    common.compile_timed("hand", hand_step, key, params, o, x),
                    common.compile_timed("numpyro", svi.update, state, x)]
        t = common.interleaved(per_call, reps)
        rows.append(_row("VAE step (grad + Adam), one call per step", n, t, "ppl", "hand", "numpyro",
                         "NumPyro: SVI.update"))
        in_scan = [common.compile_timed("ppl", scanned(ppl_step, scan_steps), key, params, o, x),
                   common.compile_timed("hand", scanned(hand_step, scan_steps), key, params, o, x),
                   common.compile_timed("numpyro", svi_scanned(svi, scan_steps), state, x)]
        t = common.interleaved(in_scan, max(reps // 5, 1))
        rows.append(_row(f"VAE step in lax.scan ({scan_steps} steps), per step", n, t, "ppl", "hand", "numpyro",
                         per=scan_steps))
        common.progress(f"VAE batch {n} done")
    return rows


# ---------------------------------------------------------------------------------------------- discrete


def mixture_rows(sizes, reps):
    import discrete

    rows = []
    for n in sizes:
        x, mu, logits = discrete.make_data(n)
        _, _, per_point = discrete.exact(mu, logits, x)
        systems = {
            "ppl enum": discrete.ppl_per_point("enum", per_point),
            "hand": discrete.hand_exact,
            "numpyro enum": discrete.numpyro_grad(TraceEnum_ELBO(max_plate_nesting=1), mu, logits, True),
            "ppl reinforce": discrete.ppl_per_point("reinforce", per_point),
            "numpyro reinforce": discrete.numpyro_grad(TraceGraph_ELBO(), mu, logits, False),
        }
        key = jax.random.key(1)
        t = common.interleaved([common.compile_timed(k, f, key, mu, logits, x) for k, f in systems.items()], reps)
        rows.append(_row("mixture K=3, per-point enum (exact)", f"N={n:,}", t, "ppl enum", "hand", "numpyro enum",
                         "hand: closed-form enumerated ELBO; NumPyro: TraceEnum_ELBO"))
        rows.append(_row("mixture K=3, per-point reinforce", f"N={n:,}", t, "ppl reinforce", None, "numpyro reinforce",
                         "NumPyro: TraceGraph_ELBO; no control variate on either side"))
        common.progress(f"mixture N={n} done")
    return rows


# ---------------------------------------------------------------------------------------------- AIR


def air_rows(tiny, reps):
    import air

    size, steps = 40, (2 if tiny else air.STEPS)
    n_batches = 1 if tiny else 100
    x_tr, _, _, _ = air.load_data(size, n_batches * air.BATCH, 32)
    model, guide = air.make_model_guide(size, steps)
    variants = air.make_variants(model, guide, size, steps)
    names = ("enum", "reinforce") if tiny else ("enum", "mvd", "reinforce", "IWAE(2) mvd")
    optimizer = optax.adam(air.LR)
    params0 = air.init_params(jax.random.key(0), size)
    opt0 = optimizer.init(params0)
    compiled = [common.compile_timed(name, air.make_epoch(variants[name], n_batches, optimizer), params0, opt0,
                                     jax.random.key(1), x_tr) for name in names]
    t = common.interleaved(compiled, reps)
    rows = []
    for name in names:
        rel = common.ratio(t[name].median, t["enum"].median)
        rows.append([f"AIR, z_pres by {name}, per training step", f"{air.BATCH} canvases, {steps} objects",
                     common.fmt_time(t[name].median / n_batches), "—", "—", "—", "—", f"{rel} enum's time"])
    common.progress("AIR done")
    return rows


# ---------------------------------------------------------------------------------------------- ppl.fit


def fit_rows(batches, reps, num_steps):
    if not (Path(__file__).parent / "fit.py").exists():
        return [["ppl.fit vs hand-written scan", "—", "—", "—", "—", "—", "—", "bench/fit.py not found"]]
    try:
        import fit
        import vae

        images, _ = vae.load_mnist_5k()
        key = jax.random.key(0)
        k_enc, k_dec, k_bin = jax.random.split(key, 3)
        params = {"dec": vae.init_mlp(k_dec, (vae.LATENT, vae.HIDDEN, vae.PIXELS)),
                  "enc": vae.init_mlp(k_enc, (vae.PIXELS, vae.HIDDEN, 2 * vae.LATENT))}
        data = vae.binarize(k_bin, jnp.asarray(images))
        rows = []
        for n in batches:
            step_rows = fit.measure(n, data[:n], params, num_steps, reps, key)[0]
            by = {r[1]: r for r in step_rows}
            chunk, hand = by["ppl.fit (chunk)"], by["hand JAX scan"]
            rows.append([f"ppl.fit (compiled chunk of {num_steps} steps), per step", n, chunk[2], hand[2], "—",
                         chunk[4], "—", "hand: lax.scan of value_and_grad + optax.adam, no NaN guard"])
        common.progress("fit done")
        return rows
    except Exception as e:  # noqa: BLE001 - reported in the table: the other rows stand
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
        return [["ppl.fit vs hand-written scan", "—", "—", "—", "—", "—", "—", f"failed: {msg}"]]


# ---------------------------------------------------------------------------------------------- main


def nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print the table; do not write it into the doc")
    ap.add_argument("--only", default=None, help="comma-separated parts: vae, mixture, air, fit (default: all)")
    args = ap.parse_args(argv)
    reps = common.reps_for(args, full=100, quick=30, tiny=2)
    parts = [p.strip() for p in args.only.split(",")] if args.only else ["vae", "mixture", "air", "fit"]
    t0 = time.perf_counter()
    common.print_header("GPU: ppl against hand-coded JAX and NumPyro, one run", args, reps)
    device = jax.devices()[0]
    smi = nvidia_smi()
    print(f"device: {device.platform} {device.device_kind}" + (f" | nvidia-smi: {smi}" if smi else "") + "\n")

    rows = []
    if "vae" in parts:
        rows += vae_rows((64,) if args.tiny else (64, 256, 1024, 4096), reps, 5 if args.tiny else SCAN_STEPS)
    if "mixture" in parts:
        rows += mixture_rows((100,) if args.tiny else (2000, 100_000), reps)
    if "air" in parts:
        rows += air_rows(args.tiny, 1 if args.tiny else 10)
    if "fit" in parts:
        rows += fit_rows((64,) if args.tiny else (64, 256, 1024), max(reps // 10, 2), 5 if args.tiny else 50)

    table = common.table(HEADERS, rows)
    note = (f"Median of {reps} interleaved calls per system ({max(reps // 5, 1)} for the scans, "
            f"{1 if args.tiny else 10} epoch(s) for AIR); "
            "ratios of medians measured in this run. Dispatch included in 'one call per step'; the lax.scan rows "
            "pay it once per scan.")
    print("## GPU table\n")
    print(table)
    print(f"\n{note}")
    common.print_load()

    if device.platform == "gpu" and not args.tiny and not args.no_write:
        import regenerate

        env = common.environment()
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        line = (f"<sub>Measured by `bench/gpu.sh {shlex.join(argv if argv is not None else sys.argv[1:])}`, "
                f"{when}, {(time.perf_counter() - t0) / 60:.1f} min; device {device.device_kind}"
                + (f" ({smi})" if smi else "") + f"; python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, "
                f"numpyro {env['numpyro']}; host {env['cpu']}, {env['cores']} cores.</sub>")
        regenerate.update_doc({"gpu:table": f"{line}\n\n{table}\n\n{note}\n"})
        print("\nwritten into docs/benchmarks.md (region bench:gpu:table)")


if __name__ == "__main__":
    main()
