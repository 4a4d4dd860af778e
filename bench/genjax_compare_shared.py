"""What both halves of ``bench/genjax_compare.py`` share: constants, the VAE networks, data and statistics helpers."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENJAX_PYTHON = ROOT / ".venv-genjax" / "bin" / "python"
INSTALL = (
    "python3.12 -m venv .venv-genjax && .venv-genjax/bin/pip install genjax==1.0.14   "
    "(from the checkout's root; genjax 1.0.14 requires Python >= 3.12 and installs its own jax 0.11.x)"
)
TAG = "@@genjax-side "  # prefix of the worker's protocol lines on its stdout (anything else there is ignored)

LATENT, HIDDEN, PIXELS = 10, 200, 784
THETA = 0.5  # parameter of the scan-bug demonstration
BUG_KEYS = 4
SMALL_REPS = 5  # the mixture's programs run in tens of µs: 5× the repetitions (a second or so per system)

# (row, ppl strategy, GenJAX primitive) per mixture size K
MIX_STRATEGIES: dict[int, list[tuple[str, str, str]]] = {
    3: [
        ("reinforce", "reinforce", "genjax.adev.reinforce(categorical.sample, categorical.logpdf, ...)"),
        ("enum", "enum", "categorical_enum_parallel"),
    ],
    2: [
        ("reinforce", "reinforce", "flip_reinforce"),
        ("enum", "enum", "flip_enum"),
        ("enum (parallel)", "enum", "flip_enum_parallel"),
        ("mvd", "mvd", "flip_mvd"),
    ],
}


# ---------------------------------------------------------------------------------------------- shared by both sides


def relu(x):
    return jnp.maximum(x, 0.0)  # not jax.nn.relu: a custom_jvp, which GenJAX's ADEV cannot differentiate


def mlp(params, x):
    for layer in params[:-1]:
        x = relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def encode(enc, x):
    out = mlp(enc, x)
    return out[..., :LATENT], jax.nn.softplus(out[..., LATENT:]) + 1e-4


def decode(dec, z):
    return mlp(dec, z)


def flatten_params(prefix, params):
    return {f"{prefix}.{i}.{k}": np.asarray(v) for i, layer in enumerate(params) for k, v in layer.items()}


def unflatten_params(prefix, arrays):
    n = len({k.split(".")[1] for k in arrays if k.startswith(prefix + ".")})
    return [{k: jnp.asarray(arrays[f"{prefix}.{i}.{k}"]) for k in ("w", "b")} for i in range(n)]


def mixture2_data(n, seed=0):
    """The Bernoulli (K = 2) variant of ``bench/discrete.py``'s data: one guide logit per point."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 2, size=n)
    x = (np.array([-2.0, 2.0], np.float32)[c] + rng.normal(size=n)).astype(np.float32)
    mu = np.array([-1.5, 1.0], np.float32)  # current parameters: not at the optimum
    logits = (0.5 * rng.normal(size=n)).astype(np.float32)
    return x, mu, logits


def baked_keys(jaxpr_text: str) -> int:
    """PRNG keys built from a literal seed inside a program (``random_seed[...] 1:i32[]``): keys fixed at trace time."""
    return len(re.findall(r"random_seed\[[^\]]*\] -?\d+", jaxpr_text))


def grad_stats(f, mu, logits, x, n_keys):
    """Mean, standard error and variance over ``n_keys`` independent keys of the gradient ``f`` returns."""
    keys = jax.random.split(jax.random.key(2), n_keys)
    gm, gl = jax.jit(jax.vmap(f, in_axes=(0, None, None, None)))(keys, mu, logits, x)
    gm, gl = np.asarray(gm, np.float64), np.asarray(gl, np.float64)
    return {
        "mean_mu": gm.mean(0).tolist(), "se_mu": (gm.std(0) / np.sqrt(n_keys)).tolist(),
        "mean_logits": gl.mean(0).ravel().tolist(), "se_logits": (gl.std(0) / np.sqrt(n_keys)).ravel().tolist(),
        "var_mu": float(gm.var(0).sum()), "var_logits": float(gl.var(0).sum()),
    }


def elbo_stats(est, n_keys):
    vals = np.array([float(est(jax.random.key(1000 + i))) for i in range(n_keys)])
    return {"mean": float(vals.mean()), "se": float(vals.std() / np.sqrt(n_keys))}


def size_stats(common, c) -> dict[str, int]:
    return {"eqns": common.count_eqns(c.jaxpr), **common.hlo_stats(c)}


def per_point(one):
    """``jax.vmap`` of one point's gradient estimator over the points (a key each); ``mu``'s gradient summed."""

    def grad(key, mu, logits, x):
        keys = jax.random.split(key, x.shape[0])
        gm, gl = jax.vmap(one, in_axes=(0, None, 0, 0))(keys, mu, logits, x)
        return jnp.sum(gm, axis=0), gl

    return grad


def dispatch_floor(key, mu, logits, x):
    """The cheapest jitted call with the mixture's arguments: what calling an executable costs in each jax version."""
    return mu, logits


def floor_system(w, arrays):
    args = tuple(jnp.asarray(arrays[f"mix{w['K']}_{w['N']}_{k}"]) for k in ("mu", "logits", "x"))
    return {"identity": (dispatch_floor, (jax.random.key(1), *args), None)}


def import_common(without_ppl: bool):
    """``bench/common.py``. In the GenJAX venv (no numpyro, so no ``import ppl``) load only the one ``ppl`` file it
    imports from, ``ppl/_jax_internals.py`` (which imports nothing but jax), under its own name."""
    if without_ppl and "ppl._jax_internals" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ppl._jax_internals", ROOT / "ppl" / "_jax_internals.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules.setdefault("ppl", types.ModuleType("ppl"))  # a bare placeholder: ppl/__init__.py needs numpyro
        sys.modules["ppl._jax_internals"] = mod
        spec.loader.exec_module(mod)
    import common

    return common


def workload_label(w: dict[str, Any]) -> str:
    if w["kind"] == "vae":
        return f"VAE, batch {w['batch']}"
    if w["kind"] == "floor":
        return f"dispatch floor (N={w['N']} arguments)"
    return f"mixture K={w['K']} ({'categorical' if w['K'] == 3 else 'Bernoulli'}), N={w['N']}"


