"""Data-parallel VI: the same ``ppl.fit`` call on one device and sharded over four, with the same result.

A Bayesian logistic regression on ``N`` synthetic rows, fitted with a mean-field Gaussian guide and a *minibatch*
ELBO: each step draws ``batch_size`` rows (``fit(..., data=..., batch_size=...)``) and the objective scales their
log-likelihood by ``N / batch_size``, so its gradient is an unbiased estimate of the full-data ELBO gradient.

The script forces four CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, set below *before*
jax is imported) and runs the fit

1. on one device (``devices=None``, the default),
2. sharded over the four (``devices="all"``): the ``num_particles`` estimates of a step are split over a
   ``"particles"`` mesh axis and the minibatch over a ``"data"`` axis (``ppl.workflow.sharding``),
3. on a 2 × 2 ``Mesh`` of its own (2 particle groups × 2 minibatch shards),

and prints the largest difference between the runs' parameters and per-step estimates (float rounding: the same keys
give the same estimates), the collectives of the compiled sharded step (all-reduces only: nothing gathers the batch)
and the time per step of each. Four devices forced on a machine with fewer cores share those cores, so expect no
speed-up there; on a machine with several GPUs run it with ``JAX_PLATFORMS=cuda`` (the flag only affects CPU
devices; the 2 × 2 mesh then wants 4 GPUs).

Run ``python examples/multi_device.py`` (a minute or so on 2 CPU cores) or ``--quick`` for CI.
"""

from __future__ import annotations

import os

NUM_CPU_DEVICES = 4
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_CPU_DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402

import ppl  # noqa: E402
from ppl.workflow import sharding  # noqa: E402
from ppl.workflow.fit import lower_fit  # noqa: E402


def make_data(key, n, d):
    kx, kw, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d))
    w_true = jax.random.normal(kw, (d,))
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(x @ w_true)).astype(jnp.float32)
    return {"x": np.asarray(x), "y": np.asarray(y)}, np.asarray(w_true)


@ppl.gen
def guide(p):
    ppl.sample("w", dist.Normal(p["loc"], jax.nn.softplus(p["rho"])).to_event(1))


def make_elbo(num_rows):
    @ppl.expectation
    def minibatch_elbo(guide_params, batch):
        """log p(w) + (N / b) Σ_batch log p(y | x, w) − log q(w): unbiased for the full-data ELBO."""
        z, log_q = ppl.sim(guide, guide_params)
        w = z["w"]
        log_prior = dist.Normal(0.0, 1.0).log_prob(w).sum()
        log_lik = dist.Bernoulli(logits=batch["x"] @ w).log_prob(batch["y"]).sum()
        return log_prior + log_lik * (num_rows / batch["y"].shape[0]) - log_q

    return minibatch_elbo


def timed_fit(objective, params, steps, chunk, **kw):
    """(result, seconds per step): a first call compiles the chunk program; the second reuses it (fit keeps it)."""
    ppl.fit(objective, params, num_steps=chunk, chunk_size=chunk, progress=False, **kw)
    res = ppl.fit(objective, params, num_steps=steps, chunk_size=chunk, progress=False, **kw)
    return res, res.wall_time / steps


def main(quick: bool) -> None:
    n, d = (4096, 8) if quick else (32768, 32)
    steps, chunk = (300, 100) if quick else (1500, 250)
    batch_size, num_particles = 512, 8
    data, w_true = make_data(jax.random.key(0), n, d)
    elbo = make_elbo(n)
    params = {"loc": jnp.zeros(d), "rho": jnp.full(d, -2.0)}
    kw = dict(
        optimizer=optax.adam(optax.cosine_decay_schedule(0.05, steps, alpha=0.05)),
        key=jax.random.key(1),
        num_particles=num_particles,
        data=data,
        batch_size=batch_size,
    )
    devices = jax.devices()
    print(f"Bayesian logistic regression: N={n} rows, {d} weights, minibatches of {batch_size}, "
          f"{num_particles} particles, {steps} Adam steps")  # fmt: skip
    print(f"devices: {len(devices)} x {devices[0].platform} ({devices[0].device_kind})\n")
    # devices="all": as many devices as possible on particles (gcd(8, 4) = 4), the rest on the minibatch.
    # A Mesh chooses the split itself: here 2 particle groups x 2 minibatch shards.
    runs = {"1 device": None, f"{len(devices)} devices": "all"}
    mesh = None
    if len(devices) % 2 == 0:
        mesh = jax.sharding.Mesh(np.array(devices).reshape(2, len(devices) // 2), ("particles", "data"))
        runs[f"2x{len(devices) // 2} Mesh"] = mesh

    results = {name: timed_fit(elbo, params, steps, chunk, devices=dev, **kw) for name, dev in runs.items()}
    one = results["1 device"][0]
    print(f"{'run':<12} {'layout (particles x data)':<26} {'final ELBO':>11} {'ms/step':>8} {'corr(w, w_true)':>15} "
          f"{'max |dparams|':>13} {'max rel dvalue':>14}")  # fmt: skip
    same = True
    for name, (res, t) in results.items():
        layout = sharding.make_layout(runs[name], num_particles, batch_size)
        shape = "-" if layout is None else f"{layout.shape['particles']} x {layout.shape['data']}"
        corr = float(np.corrcoef(np.asarray(res.args["loc"]), w_true)[0, 1])
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
            jax.tree_util.tree_leaves(one.args), jax.tree_util.tree_leaves(res.args), strict=True))  # fmt: skip
        value_diff = float(np.max(np.abs(one.values - res.values) / np.abs(one.values)))
        same = same and diff < 1e-4 and value_diff < 1e-4
        print(f"{name:<12} {shape:<26} {res.running_value(100):>11.2f} {1e3 * t:>8.3f} {corr:>15.4f} "
              f"{diff:>13.3g} {value_diff:>14.3g}")  # fmt: skip
    print("\nsame estimates for the same keys (to float rounding): " + ("yes" if same else "NO"))

    text = lower_fit(elbo, params, devices=mesh if mesh is not None else "all", **kw).compile().as_text()
    found = sharding.collectives(text)
    print(f"\ncollectives in the compiled step of the last run ({len(found)}):")
    for c in found:
        print(f"  {c.kind:<12} result shapes {list(c.shapes)}")
    gathers = [c for c in found if c.kind != "all-reduce" and any(batch_size in s or n in s for s in c.shapes)]
    print("gathers of the batch or the data set: " + ("none" if not gathers else str(gathers)))
    if not same or gathers:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller data set and fewer steps (CI)")
    main(parser.parse_args().quick)
