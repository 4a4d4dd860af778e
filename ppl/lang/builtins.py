"""What a ``ppl.lang`` program can name: distributions, functions, strategies, library objectives, constants.

Everything is an allowlist: a program cannot reach arbitrary Python. Distributions are NumPyro's, by their NumPyro
names (``Normal``, ``Bernoulli``, ``Beta``, ...); functions are ``jax.numpy`` / ``jax.nn`` / ``jax.scipy.special``
functions under their usual names.

>>> from ppl.lang.builtins import DISTRIBUTIONS, FUNCTIONS
>>> "Normal" in DISTRIBUTIONS and "softplus" in FUNCTIONS and "open" not in FUNCTIONS
True
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpyro.distributions as nd

from .. import gradients  # noqa: F401  (registers the strategies)
from ..core.strategy import STRATEGIES, Strategy
from ..objectives import library

# ---------------------------------------------------------------------------------------------- distributions

_NOT_CONSTRUCTIBLE = {
    "Distribution",
    "ExpandedDistribution",
    "Independent",
    "MaskedDistribution",
    "TransformedDistribution",
    "FoldedDistribution",
    "ImproperUniform",
    "Unit",
    "Mixture",
    "MixtureGeneral",
    "MixtureSameFamily",
    "ZeroInflatedDistribution",
    "HurdleDistribution",
    "LeftTruncatedDistribution",
    "RightTruncatedDistribution",
    "TwoSidedTruncatedDistribution",
    "TruncatedDistribution",
    "LeftCensoredDistribution",
    "RightCensoredDistribution",
    "IntervalCensoredDistribution",
    "EulerMaruyama",
    "GaussianCopula",
    "SineSkewed",
}


def _distributions() -> dict[str, Any]:
    out = {}
    for name in nd.__all__:
        obj = getattr(nd, name, None)
        if name in _NOT_CONSTRUCTIBLE or not name[:1].isupper() or not callable(obj):
            continue
        if (isinstance(obj, type) and issubclass(obj, nd.Distribution)) or inspect.isfunction(obj):
            out[name] = obj  # classes, and factories such as Bernoulli(probs=None, logits=None)
    return out


DISTRIBUTIONS: dict[str, Any] = _distributions()

# ---------------------------------------------------------------------------------------------- functions


def _len(x: Any) -> int:
    """The length of the leading axis (a static Python int, usable as a loop bound)."""
    if isinstance(x, dict | tuple | list):
        return len(x)
    shape = jnp.shape(x)
    if not shape:
        raise TypeError(f"len() of a scalar (shape {shape})")
    return int(shape[0])


def _float(x: Any) -> Any:
    return float(x) if isinstance(x, int | float) else jnp.asarray(x, jnp.result_type(float))


def _int(x: Any) -> Any:
    return int(x) if isinstance(x, int | float) else jnp.asarray(x, jnp.result_type(int))


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(jnp.shape(x))


_JNP = """abs exp exp2 expm1 log log1p log2 log10 sqrt square sign sin cos tan arcsin arccos arctan arctan2 sinh cosh
tanh arcsinh arctanh floor ceil round clip maximum minimum where sum mean prod max min std var cumsum cumprod dot
matmul outer transpose reshape concatenate stack zeros ones full eye arange linspace zeros_like ones_like power
logaddexp isfinite isnan argmax argmin diag tril triu sort flip squeeze expand_dims""".split()
_NN = "sigmoid softplus relu softmax log_softmax logsumexp log_sigmoid one_hot gelu elu silu".split()
_SPECIAL = "logit expit gammaln digamma erf betaln xlogy".split()

FUNCTIONS: dict[str, Any] = {
    **{n: getattr(jnp, n) for n in _JNP},
    **{n: getattr(jax.nn, n) for n in _NN},
    **{n: getattr(jsp, n) for n in _SPECIAL},
    "array": jnp.asarray,
    "stop_gradient": jax.lax.stop_gradient,
    "len": _len,
    "shape": _shape,
    "float": _float,
    "int": _int,
}

CONSTANTS: dict[str, Any] = {"pi": math.pi, "inf": math.inf}

# Calls handled by the compiler itself: (min, max) positional arguments (None: any number).
SPECIAL_FORMS: dict[str, tuple[int, int | None, str]] = {
    "sim": (1, None, "sim(family, *args) -> (choices, log_q): only in an objective"),
    "density": (2, None, "density(model, choices, *args) -> log_p: only in an objective"),
    "factor": (1, 1, "factor(log_weight): only in a model or guide"),
    "cost": (1, 1, "cost(c): add c to the objective's value; only in an objective"),
    "add_cost": (1, 1, "add_cost(c): add c to the objective's value; only in an objective"),
    "range": (1, 2, "range(n) / range(start, stop): only as the iterable of a for loop"),
}

# ---------------------------------------------------------------------------------------------- strategies

# From the registry (ppl.core.strategy.STRATEGIES): a value is used bare (`by enum`), a callable as a factory
# (`by baseline(b)`, `by reinforce(baseline=b)`, `by leave_one_out(8)`).
STRATEGY_VALUES: dict[str, Any] = {n: v for n, v in STRATEGIES.items() if isinstance(v, Strategy)}
STRATEGY_FACTORIES: dict[str, Any] = {n: v for n, v in STRATEGIES.items() if callable(v)}
STRATEGY_NAMES = sorted(set(STRATEGY_VALUES) | set(STRATEGY_FACTORIES))

# ---------------------------------------------------------------------------------------------- objectives

# name -> the parameters after (model, guide) that ``ppl.<name>(model, guide, data, *extra)`` takes.
LIBRARY_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "elbo": (),
    "iwae": ("K",),
    "vimco": ("K",),
    "dreg_iwae": ("K",),
    "renyi": ("K", "alpha"),
    "p_wake": ("N",),
    "q_wake": ("N",),
}


LIBRARY_FUNCTIONS: dict[str, Any] = {name: getattr(library, name) for name in LIBRARY_OBJECTIVES}


def library_signature(name: str) -> inspect.Signature:
    P = inspect.Parameter
    names = ("model", "guide", *LIBRARY_OBJECTIVES[name])
    return inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD) for n in names])


def signature(fn: Any) -> inspect.Signature | None:
    """``inspect.signature(fn)``, or ``None`` where Python cannot tell (then arity is checked at run time)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None
