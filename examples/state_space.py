"""A linear-Gaussian state-space model over ``lax.scan``: simulate, assess, and importance sampling with ``generate``.

The model is a random walk observed with noise::

    x_t = x_{t-1} + Normal(0, sigma_x)      (x_{-1} = 0)
    y_t ~ Normal(x_t, sigma_y)              t = 0, ..., T-1

written once with ``lax.scan``: each of the two sites is one site in the program whatever ``T`` is, and its
recorded choice has the time axis in front (``trace.choices["x"].shape == (T,)``).

The script

1. simulates a data set (``model.simulate``) and prints the latent path and the observations;
2. checks that ``model.assess(trace.choices)`` reproduces ``trace.score`` (the log joint density);
3. runs importance sampling with the prior as proposal: ``model.generate`` with the observations ``{"y": ys}``
   constrained, ``jax.vmap``-ed over N particle keys. Each particle's log weight is ``log p(ys | xs)``, so
   ``logsumexp(w) - log N`` is an unbiased (in ``exp``) estimate of the log marginal likelihood ``log p(ys)``.
   The model is linear-Gaussian, so the exact value is known from a Kalman filter and printed beside it, with the
   effective sample size ``ESS = (sum w)^2 / sum w^2`` and the posterior mean of the last state.

Run ``python examples/state_space.py`` (about a second after compilation) or ``--quick`` for CI.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import lax
from jax.scipy.special import logsumexp

import ppl


@ppl.gen
def random_walk(T, sigma_x, sigma_y):
    """``T`` (a Python int) is static: it is the scan length. The scales are arrays (dynamic)."""

    def step(x_prev, _):
        x = ppl.sample("x", dist.Normal(x_prev, sigma_x))
        y = ppl.sample("y", dist.Normal(x, sigma_y))
        return x, y

    _, ys = lax.scan(step, 0.0, None, length=T)
    return ys


def kalman_log_marginal(ys, sigma_x, sigma_y):
    """Exact ``log p(ys)`` and the filtered mean/variance of the last state, for the model above."""

    def step(carry, y):
        m, P, ll = carry
        P = P + sigma_x**2  # predict
        S = P + sigma_y**2  # predictive variance of y
        ll = ll + dist.Normal(m, jnp.sqrt(S)).log_prob(y)
        K = P / S  # update
        return (m + K * (y - m), (1 - K) * P, ll), None

    (m, P, ll), _ = lax.scan(step, (0.0, 0.0, 0.0), ys)
    return ll, m, P


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--T", type=int, default=None, help="number of time steps")
    parser.add_argument("--particles", type=int, default=None, help="number of importance samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    T = args.T or (6 if args.quick else 10)
    n = args.particles or (2_000 if args.quick else 100_000)
    sigma_x, sigma_y = jnp.asarray(0.5), jnp.asarray(1.0)
    key_data, key_is = jax.random.split(jax.random.key(args.seed))
    start = time.perf_counter()

    # 1. simulate a data set
    trace = random_walk.simulate(key_data, T, sigma_x, sigma_y)
    xs, ys = trace.choices["x"], trace.choices["y"]
    print(f"== simulate: random walk, T={T}, sigma_x={float(sigma_x)}, sigma_y={float(sigma_y)}")
    print("choice shapes:          ", {a: tuple(v.shape) for a, v in trace.choices.items()})
    print("latent x:               ", np.round(np.asarray(xs), 3))
    print("observed y:             ", np.round(np.asarray(ys), 3))

    # 2. assess the simulated choices: the same log joint density as the trace's score
    log_joint, _ = random_walk.assess(trace.choices, T, sigma_x, sigma_y)
    print("\n== assess")
    print(f"trace.score:             {float(trace.score):.6f}")
    print(f"assess(trace.choices):   {float(log_joint):.6f}")
    print(f"|difference|:            {abs(float(log_joint) - float(trace.score)):.2e}")
    assert np.isclose(log_joint, trace.score, rtol=1e-5), "assess must reproduce the trace's score"

    # 3. importance sampling: observations constrained, latents drawn from the prior, n particles via vmap
    keys = jax.random.split(key_is, n)
    particles = jax.jit(jax.vmap(lambda k: random_walk.generate(k, {"y": ys}, T, sigma_x, sigma_y)))
    traces, log_w = particles(keys)
    log_z = logsumexp(log_w) - jnp.log(n)
    ess = jnp.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w))
    w = jnp.exp(log_w - logsumexp(log_w))
    post_mean_last = jnp.sum(w * traces.choices["x"][:, -1])
    exact_log_z, kalman_mean, kalman_var = kalman_log_marginal(ys, sigma_x, sigma_y)
    print(f"\n== generate: importance sampling with the prior as proposal, N={n} particles")
    print("particle choice shapes: ", {a: tuple(v.shape) for a, v in traces.choices.items()})
    print(f"log marginal likelihood estimate logsumexp(w) - log N: {float(log_z):.4f}")
    print(f"exact log p(y) (Kalman filter):                         {float(exact_log_z):.4f}")
    print(f"effective sample size:   {float(ess):.1f} of {n} ({100 * float(ess) / n:.2f}%)")
    print(f"posterior mean of x[T-1]: importance {float(post_mean_last):.4f}, Kalman {float(kalman_mean):.4f}")
    print(f"\ntotal time: {time.perf_counter() - start:.2f} s")
    return {"log_z": float(log_z), "exact_log_z": float(exact_log_z), "ess": float(ess)}


if __name__ == "__main__":
    main()
