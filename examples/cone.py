"""The noisy cone of the PLDI 2024 paper (*Probabilistic Programming with Programmable Variational Inference*).

Model::

    x, y ~ Normal(0, 10)          z ~ Normal(x² + y², 0.1 + (x² + y²)/100)          z = 5 observed

The posterior over ``(x, y)`` is a thin ring of radius √5: no Gaussian fits it. The variational families:

* **mean-field**: ``x ~ Normal(μx, σx)``, ``y ~ Normal(μy, σy)`` — trained with the ELBO and IWAE(K=5);
* **auxiliary-variable** (hierarchical), ``aux-mlp``: ``u ~ Normal(0, I₂)``, then
  ``(x, y) ~ Normal(MLP(u), diag σ²)`` with a 2-layer tanh MLP (learned weights), and the paper's ``aux-circle``
  (below). Their marginal density ``q(x, y)`` is intractable, so the objectives use
  ``ppl.marginal(aux, ["x", "y"], ppl.sir(m))``, a family whose density is *estimated* by importance sampling over
  ``u``. Then the library objectives apply unchanged:

  ===========  =================================================================
  HVI          ``ppl.elbo(model, ppl.marginal(aux, ["x", "y"], ppl.sir(1)), data)``
  IWHVI(5)     ``ppl.elbo(model, ppl.marginal(aux, ["x", "y"], ppl.sir(5)), data)``
  DIWHVI(5,5)  ``ppl.iwae(model, ppl.marginal(aux, ["x", "y"], ppl.sir(5)), data, 5)``
  ===========  =================================================================

Training: the paper's families (mean-field and the paper artifact's auxiliary family, ``aux-circle`` below) follow
the artifact's protocol — plain SGD at 1e-3, 5000 steps, each step the mean of 64 gradient estimates — and reproduce
the paper's Table 4 (ELBO, HVI, IWHVI, DIWHVI within a few hundredths; IWAE(5) comes out higher than the paper's, see
the printed notes). ``aux-circle`` is ``u ~ Uniform(0, 1)``, ``(x, y) ~ Normal(√z (cos 2πu, sin 2πu), diag σ²)``
with only ``σ`` learned. The MLP family is trained with Adam. All training runs through ``ppl.workflow.fit``; every
site is reparameterized.
Each objective is then estimated at its trained parameters over 20,000 independent keys and printed next to the
paper's value and next to ``log p(z = 5)`` (1-d quadrature), which bounds them all from above.

Run ``python examples/cone.py`` (under a minute on 2 CPU cores; writes ``out/cone_samples.png``) or ``--quick``
(CI, < 20 s: mean-field and MLP rows only, 300 Adam steps, not converged, no figure).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from scipy.integrate import quad

import ppl
from ppl import fit

Z_OBS = 5.0
DATA = {"z": jnp.asarray(Z_OBS)}
PAPER = {"ELBO": -8.08, "IWAE(5)": -7.79, "HVI": -9.75, "IWHVI(5)": -8.18, "DIWHVI(5,5)": -7.33}
HIDDEN = 32


# ---------------------------------------------------------------------------------------------- model


@ppl.gen
def model():
    x = ppl.sample("x", dist.Normal(0.0, 10.0))
    y = ppl.sample("y", dist.Normal(0.0, 10.0))
    rs = x**2 + y**2
    ppl.sample("z", dist.Normal(rs, 0.1 + rs / 100.0))


def log_evidence(z: float = Z_OBS) -> float:
    """``log p(z)``: in polar coordinates with ``s = r²`` the prior mass is ``exp(−s/200) ds / 200``."""

    def integrand(s):
        scale = 0.1 + s / 100.0
        return math.exp(-s / 200.0) / 200.0 * math.exp(-0.5 * ((z - s) / scale) ** 2) / (math.sqrt(2 * math.pi) * scale)

    head, _ = quad(integrand, 0.0, 10.0 * z, points=[z], limit=200)
    tail, _ = quad(integrand, 10.0 * z, np.inf)
    return math.log(head + tail)


# ---------------------------------------------------------------------------------------------- families


@ppl.gen
def mean_field(params):
    sigma = jnp.exp(params["log_sigma"])
    ppl.sample("x", dist.Normal(params["mu"][0], sigma[0]))
    ppl.sample("y", dist.Normal(params["mu"][1], sigma[1]))


def mean_field_init(mu_x: float) -> dict:
    # The paper's initial points (μx, μy, log σx, log σy): (0, 0, 1, 1) for the ELBO, (3, 0, 1, 1) for IWAE.
    return {"mu": jnp.array([mu_x, 0.0]), "log_sigma": jnp.array([1.0, 1.0])}


@ppl.gen
def mlp_family(params):
    """``u ~ Normal(0, I₂)``; ``(x, y) ~ Normal(MLP(u), σ)``. ``u`` is sampled first (the marginal's proposal is
    the prior over ``u``, so ``q(x, y | u)`` is the weight of the constrained choices)."""
    u = ppl.sample("u", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    h = jnp.tanh(params["W1"] @ u + params["b1"])
    mu = params["W2"] @ h + params["b2"]
    sigma = jnp.exp(params["log_sigma"])
    ppl.sample("x", dist.Normal(mu[0], sigma[0]))
    ppl.sample("y", dist.Normal(mu[1], sigma[1]))


def mlp_init(key: jax.Array) -> dict:
    # Initial means MLP(u) spread over a few units (sd ~3), so that the training can find the ring.
    k1, k2 = jax.random.split(key)
    return {
        "W1": jax.random.normal(k1, (HIDDEN, 2)),
        "b1": jnp.zeros(HIDDEN),
        "W2": 3.0 * jax.random.normal(k2, (2, HIDDEN)) / math.sqrt(HIDDEN),
        "b2": jnp.zeros(2),
        "log_sigma": jnp.full(2, -1.0),
    }


@ppl.gen
def circle_family(params):
    """The paper artifact's auxiliary family: a random angle, then a Gaussian around the ring of radius √z."""
    u = ppl.sample("u", dist.Uniform(0.0, 1.0))
    theta = 2.0 * jnp.pi * u
    sigma = jnp.exp(params["log_sigma"])
    ppl.sample("x", dist.Normal(jnp.sqrt(Z_OBS) * jnp.cos(theta), sigma[0]))
    ppl.sample("y", dist.Normal(jnp.sqrt(Z_OBS) * jnp.sin(theta), sigma[1]))


def circle_init(key: jax.Array) -> dict:
    return {"log_sigma": jnp.zeros(2)}


# ---------------------------------------------------------------------------------------------- objectives


@dataclass
class Row:
    name: str  # the objective, as in the paper's table
    family: str
    objective: ppl.Expectation
    sampler: ppl.GenFn  # the family to draw (x, y) from (the joint one, for the auxiliary families)
    init: dict


def rows(families: tuple[str, ...], key: jax.Array) -> list[Row]:
    """The mean-field rows, then HVI, IWHVI(5) and DIWHVI(5,5) for each auxiliary family named."""
    out = [
        Row("ELBO", "mean-field", ppl.elbo(model, mean_field, DATA), mean_field, mean_field_init(0.0)),
        Row("IWAE(5)", "mean-field", ppl.iwae(model, mean_field, DATA, 5), mean_field, mean_field_init(3.0)),
    ]
    for fam in families:
        aux, init = {"circle": (circle_family, circle_init), "mlp": (mlp_family, mlp_init)}[fam]
        hvi = ppl.marginal(aux, ["x", "y"], ppl.sir(1))
        iwhvi = ppl.marginal(aux, ["x", "y"], ppl.sir(5))
        out += [
            Row("HVI", f"aux-{fam}", ppl.elbo(model, hvi, DATA), aux, init(key)),
            Row("IWHVI(5)", f"aux-{fam}", ppl.elbo(model, iwhvi, DATA), aux, init(key)),
            Row("DIWHVI(5,5)", f"aux-{fam}", ppl.iwae(model, iwhvi, DATA, 5), aux, init(key)),
        ]
    return out


def evaluate(obj: ppl.Expectation, params: dict, n: int, key: jax.Array) -> tuple[float, float]:
    """Mean and standard error of ``n`` independent estimates of the objective at ``params``."""
    est = jax.jit(jax.vmap(lambda k: obj.estimate(k, (), (params,))))(jax.random.split(key, n))
    est = np.asarray(est, dtype=np.float64)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(n))


def sample_xy(family: ppl.GenFn, params: dict, n: int, key: jax.Array) -> np.ndarray:
    tr = jax.jit(jax.vmap(lambda k: family.simulate(k, params)))(jax.random.split(key, n))
    return np.stack([np.asarray(tr.choices["x"]), np.asarray(tr.choices["y"])], axis=1)


def sample_posterior(n: int, seed: int = 0) -> np.ndarray:
    """Exact posterior draws: the angle is uniform; ``s = r²`` by inverse CDF on a fine grid."""
    rng = np.random.default_rng(seed)
    s = np.linspace(1e-6, 4.0 * Z_OBS, 200_001)
    scale = 0.1 + s / 100.0
    logw = -s / 200.0 - 0.5 * ((Z_OBS - s) / scale) ** 2 - np.log(scale)
    cdf = np.cumsum(np.exp(logw - logw.max()))
    r = np.sqrt(np.interp(rng.uniform(0, cdf[-1], n), cdf, s))
    theta = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def save_figure(panels: dict[str, np.ndarray], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 3
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.3 * nrow), sharex=True, sharey=True, squeeze=False)
    t = np.linspace(0, 2 * np.pi, 200)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, xy) in zip(axes.flat, panels.items(), strict=False):
        ax.scatter(xy[:, 0], xy[:, 1], s=1, alpha=0.25)
        ax.plot(math.sqrt(Z_OBS) * np.cos(t), math.sqrt(Z_OBS) * np.sin(t), "k--", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-3.5, 3.5)
        ax.set_ylim(-3.5, 3.5)
        ax.set_aspect("equal")
    fig.suptitle("Noisy cone, z = 5: exact posterior and samples of each trained family (dashed: r = √5)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOTES = """\
 * mean-field and aux-circle are the paper artifact's families, trained with its protocol: ELBO, HVI,
   IWHVI(5) and DIWHVI(5,5) reproduce the paper's values to within a few hundredths (Monte Carlo error
   and one training seed).
 * IWAE(5) comes out about 0.25 nats *above* the paper's -7.79 with the same protocol. We checked the
   objective against a hand-written reparameterized IWAE in plain JAX (value and gradient agree), so the
   trained mean-field Gaussian (one arc of the ring) really has this IWAE(5); we do not know which
   setting behind the paper's number differs.
 * HVI (sir(1)) pays E[KL(q(u | x, y) || q(u))] for using u at all, so with a family that does use u it
   lands *below* the plain ELBO, as in the paper; IWHVI(5) shrinks that gap with 5 inner samples, and
   DIWHVI(5,5) adds 5 outer samples and is the tightest of all, as in the paper.
 * aux-mlp (ours; the paper's column is for reference): a continuous map of a 2-d Gaussian u cannot put
   all its mass on a ring, some u land inside it (see out/cone_samples.png). Those rare (x, y) have
   log p(z | x, y) of minus hundreds, so HVI and IWHVI are heavy-tailed (large stderr) and depend on
   the training seed (HVI from about -9.8 to -14 in the seeds we tried; from a smaller initialization
   runs also collapsed onto one arc, where HVI = IWHVI = ELBO). DIWHVI's outer importance weights
   discount those samples: it does best."""


# ---------------------------------------------------------------------------------------------- main


def protocol(family: str, quick: bool, steps: int | None) -> tuple[str, optax.GradientTransformation, int, int]:
    """(label, optimizer, steps, gradient estimates per step) for a row.

    Full mode trains the paper's families (mean-field, aux-circle) with the paper artifact's protocol — plain SGD at
    1e-3, 5000 steps, each step the mean of 64 gradient estimates — and the MLP family (ours) with Adam.
    """
    if quick:
        n = steps or 300
        return "Adam", optax.adam(optax.cosine_decay_schedule(0.05, n, alpha=0.05)), n, 1
    n = steps or 5000
    if family == "aux-mlp":
        return "Adam", optax.adam(optax.cosine_decay_schedule(0.02, n, alpha=0.05)), n, 16
    return "SGD", optax.sgd(1e-3), n, 64


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, MLP family only, no figure (CI, < 20 s)")
    parser.add_argument("--steps", type=int, default=None, help="steps per objective (default 5000; quick 300)")
    parser.add_argument("--out", default="out", help="directory for the figure (full mode only)")
    args = parser.parse_args(argv)
    n_eval = 20_000
    families = ("mlp",) if args.quick else ("circle", "mlp")
    t_start = time.perf_counter()

    log_pz = log_evidence()
    print("Noisy cone: x, y ~ Normal(0, 10); z ~ Normal(x^2 + y^2, 0.1 + (x^2 + y^2)/100); z = 5 observed")
    print(f"log p(z = 5) = {log_pz:.4f} (1-d quadrature): every objective below is a lower bound on it")
    print("families:  mean-field  x ~ Normal(mx, sx), y ~ Normal(my, sy)  [the paper's]")
    if "circle" in families:
        print("           aux-circle  u ~ Uniform(0, 1); (x, y) ~ Normal(sqrt(z) (cos 2 pi u, sin 2 pi u), s)  "
              "[the paper's]")
    print(f"           aux-mlp     u ~ Normal(0, I2); (x, y) ~ Normal(MLP(u), s), MLP 2 -> {HIDDEN} (tanh) -> 2  "
          "[ours]")
    if args.quick:
        _, _, n, k = protocol("", True, args.steps)
        print(f"training:  Adam, lr 0.05 cosine-decayed, {n} steps, mean of {k} gradient estimates per step")
        print("value:     --quick: NOT converged; running mean of the last 100 training estimates (no evaluation)")
    else:
        _, _, n, _ = protocol("", False, args.steps)
        print(f"training:  the paper's families: SGD lr 1e-3, {n} steps, mean of 64 gradient estimates per step")
        print(f"           (the paper artifact's protocol); aux-mlp: Adam lr 0.02 cosine-decayed, {n} steps, 16 per "
              "step")
        print(f"value:     mean ± stderr of {n_eval} independent estimates of the objective at the trained parameters")
    print()
    header = f"{'objective':<12} {'family':<11} {'optimizer':<9} {'ppl':>17} {'paper':>7} {'train':>7}"
    print(header)
    print("-" * len(header))
    key = jax.random.key(0)
    panels = {} if args.quick else {"exact posterior": sample_posterior(3000)}
    for i, row in enumerate(rows(families, jax.random.key(42))):
        label, optimizer, steps, particles = protocol(row.family, args.quick, args.steps)
        res = fit(row.objective, ((), (row.init,)), optimizer=optimizer, num_steps=steps, num_particles=particles,
                  key=jax.random.fold_in(key, i), progress=False)
        params = res.args[1][0]
        if args.quick:
            value = f"{res.running_value(100):>+9.3f} (train)"
        else:
            mean, se = evaluate(row.objective, params, n_eval, jax.random.fold_in(key, 100 + i))
            value = f"{mean:>+9.3f} ± {se:<5.3f}"
            xy = sample_xy(row.sampler, params, 3000, jax.random.fold_in(key, 200 + i))
            panels[f"{row.name}, {row.family}: {mean:.2f}"] = xy
        skipped = f"  ({res.num_skipped} non-finite steps skipped)" if res.num_skipped else ""
        print(f"{row.name:<12} {row.family:<11} {label:<9} {value:>17} {PAPER[row.name]:>+7.2f} "
              f"{res.wall_time:>6.1f}s{skipped}", flush=True)

    print(f"\nlog p(z = 5) = {log_pz:.3f} bounds every row from above.")
    if args.quick:
        print("--quick is a smoke test (not converged): run without it for the comparison with the paper.")
    else:
        print(NOTES)
    if not args.quick:
        path = os.path.join(args.out, "cone_samples.png")
        save_figure(panels, path)
        print(f"\nsaved {path}")
    print(f"\nTotal time: {time.perf_counter() - t_start:.1f}s")


if __name__ == "__main__":
    main()
