"""The parameter rule: which leaves of the arguments are differentiated and trained — one rule for
``grad_estimate``, ``jvp_estimate``, ``value_and_grad_estimate``, ``fit``, ``compare_estimators``, the language and
the command line.

**The parameters are the floating-point leaves of the arguments — JAX and NumPy float arrays and Python floats —
except inside** ``ppl.fixed(...)``. Every other leaf is a constant: Python ints and bools (static: a loop length),
integer and boolean arrays, strings, ``None``, functions. Observed data has its own place and is never a parameter:
an objective's data mapping, its ``obs`` argument, ``fit(data=...)``; data (or a hyperparameter) that a model takes
as an *argument* is wrapped in ``ppl.fixed(x)``, which the program sees as ``x`` itself. Any other leaf (an object
``ppl`` cannot classify) is an error naming its path.

>>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
>>> @ppl.expectation
... def f(theta, y, n):
...     x = ppl.sample("x", dist.Normal(theta, 1.0))
...     return -jnp.sum((x - y) ** 2) * n
>>> g = f.grad_estimate(jax.random.key(0), jnp.asarray(0.5), ppl.fixed(jnp.ones(3)), 2)
>>> g[1] is None and g[2] is None          # y is fixed data, n an int: neither is a parameter
True

Sharp edges:
    * A Python float is a parameter like a float array (``{"mu": 0.0}`` is trained by ``fit``, which returns it as
      an array). A float that must stay constant is ``ppl.fixed(0.5)``, or closed over by the function.
    * ``fit(trainable=...)`` freezes parameters on top of the rule; it cannot make a constant trainable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .primitives import PPLError

__all__ = [
    "fixed",
    "Fixed",
    "is_parameter",
    "parameter_mask",
    "unwrap",
    "describe",
    "argument_names",
    "trained_summary",
]


@dataclass(frozen=True)
class _FixedKey:
    def __str__(self) -> str:
        return ".fixed"


@jax.tree_util.register_pytree_with_keys_class
class Fixed:
    """``ppl.fixed(x)``: ``x`` as an argument that is never a parameter (see the module docstring)."""

    def __init__(self, value: Any):
        self.value = value

    def tree_flatten_with_keys(self):
        return ((_FixedKey(), self.value),), None

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux: Any, children: Any) -> Fixed:
        return cls(children[0])

    def __repr__(self) -> str:
        return f"ppl.fixed({self.value!r})"


def fixed(x: Any) -> Fixed:
    """Mark ``x`` (any pytree: data, a hyperparameter) as never differentiated or trained; programs see ``x``."""
    return x if isinstance(x, Fixed) else Fixed(x)


def _is_float(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, float):
        return True
    return isinstance(x, jax.Array | np.ndarray | np.generic) and jnp.issubdtype(x.dtype, jnp.inexact)


def _is_constant(x: Any) -> bool:
    return (
        x is None
        or isinstance(x, bool | int | str | bytes | complex | Callable)
        or isinstance(x, jax.Array | np.ndarray | np.generic)
        or type(x).__module__.startswith(("jax", "numpy"))  # dtypes, shardings, keys...
        or hasattr(x, "aval")  # tracers of a surrounding transformation
    )


def is_parameter(path: tuple[Any, ...], leaf: Any) -> bool:
    """The rule for one leaf at ``path`` (from ``jax.tree_util.tree_flatten_with_path``)."""
    if any(isinstance(k, _FixedKey) for k in path):
        return False
    if _is_float(leaf) or (hasattr(leaf, "aval") and jnp.issubdtype(leaf.aval.dtype, jnp.inexact)):
        return True
    if _is_constant(leaf):
        return False
    raise PPLError(
        f"argument leaf {describe(path)} is a {type(leaf).__name__}, which ppl cannot classify as a parameter "
        "(float arrays and Python floats) or a constant (ints, bools, integer arrays, strings, functions): pass an "
        "array, or wrap it in ppl.fixed(...) (or make its type a JAX pytree)"
    )


def parameter_mask(args: Any) -> list[bool]:
    """One bool per leaf of ``args`` (in ``jax.tree_util.tree_leaves`` order): is it a parameter?"""
    return [is_parameter(p, x) for p, x in jax.tree_util.tree_flatten_with_path(args)[0]]


def unwrap(tree: Any) -> Any:
    """``tree`` with every ``ppl.fixed(x)`` replaced by ``x`` (what a program sees)."""
    return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, Fixed) else x, tree, is_leaf=_is_fixed)


def _is_fixed(x: Any) -> bool:
    return isinstance(x, Fixed)


def describe(path: tuple[Any, ...], names: list[str] | None = None) -> str:
    """``args[1]['m']``-style name of a leaf path (``names``: the names of the top-level arguments)."""
    if not path:
        return "the argument"
    head, rest = path[0], path[1:]
    idx = getattr(head, "idx", None)
    first = names[idx] if names is not None and idx is not None and idx < len(names) else f"args[{idx}]"
    return (first if idx is not None else "args" + jax.tree_util.keystr((head,))) + jax.tree_util.keystr(rest)


def argument_names(fn: Any, n: int) -> list[str]:
    """The positional parameter names of ``fn`` (an objective: ``model_args``, ``guide_args``...), or ``args[i]``."""
    try:
        params = list(inspect.signature(getattr(fn, "fn", fn)).parameters.values())
    except (TypeError, ValueError):
        params = []
    pos = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return pos[:n] if len(pos) >= n else [f"args[{i}]" for i in range(n)]


def trained_summary(args: Any, mask: list[bool], names: list[str] | None = None) -> str:
    """``"guide_args[0]['m'] (3,), ... — 12 numbers"``: the leaves ``mask`` selects, for ``fit``'s report."""
    parts, total = [], 0
    for (path, x), m in zip(jax.tree_util.tree_flatten_with_path(args)[0], mask, strict=True):
        if m:
            shape = tuple(np.shape(x))
            total += int(np.prod(shape, dtype=np.int64))
            parts.append(f"{describe(path, names)} {shape}")
    return f"{', '.join(parts)} — {total} number{'s' if total != 1 else ''}"
