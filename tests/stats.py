"""Statistical assertions shared by the test-suite.

Unbiasedness is a statistical claim: draw ``N`` independent estimates (``jax.vmap`` over keys) and assert
``|mean - exact| < 4 * stderr``, with ``stderr`` bounded so a test cannot pass by being noisy. A zero-variance
estimator (enumeration) must match to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


def assert_unbiased(samples, exact, max_stderr: float, z: float = 4.0, rtol: float = 2e-5) -> None:
    """``samples`` has the estimates along axis 0; every component must be within ``z`` standard errors."""
    s = np.asarray(samples, dtype=np.float64)
    exact = np.broadcast_to(np.asarray(exact, dtype=np.float64), s.shape[1:])
    n = s.shape[0]
    assert n >= 2, "need at least two estimates"
    mean, se = s.mean(0), s.std(0, ddof=1) / np.sqrt(n)
    assert np.all(np.isfinite(mean)), f"non-finite estimates: mean={mean}"
    assert np.all(se <= max_stderr), f"stderr {se} above the bound {max_stderr}: the test would be too weak"
    tol = z * se + rtol * (1.0 + np.abs(exact))  # rtol: float32 rounding for zero-variance estimators
    err = np.abs(mean - exact)
    assert np.all(err < tol), f"biased: mean={mean} exact={exact} stderr={se} |z|={err / np.maximum(se, 1e-30)}"


def vmap_grads(objective, n: int, *args, seed: int = 0, jit: bool = True):
    """``n`` independent gradient estimates of an ``Expectation`` (vmapped over keys)."""
    f = jax.vmap(objective.grad_estimate, (0, *([None] * len(args))))
    f = jax.jit(f) if jit else f
    return f(keys(n, seed), *args)


def flat(x) -> jnp.ndarray:
    """Concatenate a pytree of per-sample estimates into shape (N, D)."""
    leaves = [jnp.reshape(v, (v.shape[0], -1)) for v in jax.tree_util.tree_leaves(x)]
    return jnp.concatenate(leaves, axis=1)
