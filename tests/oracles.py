"""Exact oracles shared by test files, written without ppl's machinery (closed forms in plain JAX)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import gammaln

import ppl

LOG2PI = float(np.log(2 * np.pi))

# ---------------------------------------------------------------------------------------------- a constrained model

ALPHA = jnp.array([1.5, 2.0, 3.0])
XC = jnp.array([0.4, 0.1, 0.9])


@ppl.gen
def constrained_model():
    """A positive and a simplex latent (HalfNormal, Dirichlet) and an observation ``x`` (give it ``XC``)."""
    s = ppl.sample("s", dist.HalfNormal(1.5))
    p = ppl.sample("p", dist.Dirichlet(ALPHA))
    ppl.sample("x", dist.Normal(s * p, 0.5).to_event(1))


def norm_lp(x, m, s=1.0):
    return -0.5 * ((x - m) / s) ** 2 - jnp.log(s) - 0.5 * LOG2PI


def _stick(v):  # the first two coordinates of stick-breaking (the simplex's chart), written out
    z = jax.nn.sigmoid(v - jnp.log(jnp.array([2.0, 1.0])))
    return jnp.array([z[0], (1 - z[0]) * z[1]])


def constrained_log_joint(u):
    """``(log p(s, p, x = XC), log |det J|)`` at the unconstrained vector ``u = (log s, stick-breaking chart of p)``:
    the model's log density at the constrained values and the log Jacobian of the map from ``u`` to them."""
    s, p2 = jnp.exp(u[0]), _stick(u[1:])
    p = jnp.append(p2, 1 - p2.sum())
    log_p = (
        jnp.log(2.0)
        + norm_lp(s, 0.0, 1.5)
        + gammaln(ALPHA.sum())
        - gammaln(ALPHA).sum()
        + jnp.sum((ALPHA - 1) * jnp.log(p))
        + jnp.sum(norm_lp(XC, s * p, 0.5))
    )
    return log_p, u[0] + jnp.linalg.slogdet(jax.jacfwd(_stick)(u[1:]))[1]
