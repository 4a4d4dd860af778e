"""Saving a fit: ``FitResult.save(path)`` and ``FitResult.load(path)``.

One ``.npz`` file (written as ``fit``'s checkpoints are: to a temporary file, then renamed) holds the trained
arguments (``FitResult.args``: every array leaf, trained or not, with its dtype), the optimizer state, the value
history (``values``, ``skipped``), ``steps``, ``resumed_from``, ``wall_time``, ``trained``, the versions of ppl,
jax, numpyro, optax and numpy that wrote it, and your own JSON ``metadata``. It is read with ``np.load`` without
pickle: loading a file runs no code from it.

The *structure* of ``args`` and of the optimizer state is stored as JSON: tuples, lists, dicts (string or int keys),
named tuples (optax states; the class is found by name, in a module already imported or in ppl / optax / jax /
numpyro), ``None``, ``ppl.fixed(...)``, Python ints / floats / bools / strings and arrays (JAX, NumPy, typed PRNG
keys) — so ``FitResult.load(path)`` needs nothing else. Arguments holding anything else (a function, an
``eqx.Module``) are saved too, but loading them needs a template: ``FitResult.load(path, like=args)`` takes the
structure and the non-array leaves from ``like`` (e.g. the initial arguments of the run) and the arrays from the
file; ``like=`` may also be a ``FitResult``, a template for the optimizer state as well.

>>> import jax, jax.numpy as jnp, optax, os, tempfile, numpyro.distributions as dist, ppl
>>> @ppl.expectation
... def objective(theta, n):
...     x = ppl.sample("x", dist.Normal(theta["m"], 1.0))
...     return -((x - 3.0) ** 2) * n
>>> res = ppl.fit(objective, ({"m": jnp.asarray(0.0)}, 2), optimizer=optax.adam(0.1), num_steps=20,
...               key=jax.random.key(0), progress=False)
>>> path = os.path.join(tempfile.mkdtemp(), "fit.npz")
>>> res.save(path, metadata={"note": "a test"})
>>> back = ppl.FitResult.load(path)
>>> back.args[1], bool(back.args[0]["m"] == res.args[0]["m"]), back.steps
(2, True, 20)
>>> read_metadata(path)["metadata"]
{'note': 'a test'}

Sharp edges:
    * A file written by a later format version is an error; the format of this module is ``FORMAT`` (an int).
    * The optimizer itself is not saved (as in checkpoints), only its state.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import warnings
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.params import Fixed
from .fit import FitResult, _save

FORMAT = 1
_KIND = "ppl.FitResult"
_IMPORTABLE = ("ppl", "optax", "jax", "numpyro")

__all__ = ["save", "load", "read_metadata", "FORMAT"]


class _Unrepresentable(Exception):
    pass


# ---------------------------------------------------------------------------------------------- leaves


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _array_record(x: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The NumPy array to store and how to rebuild the leaf (``kind``: jax / numpy / scalar / key, ``dtype``)."""
    if _is_key(x):
        data = np.asarray(jax.random.key_data(x))
        return data, {"kind": "key", "impl": str(jax.random.key_impl(x)), "dtype": str(data.dtype)}
    a = np.asarray(x)
    kind = "jax" if isinstance(x, jax.Array) else "scalar" if isinstance(x, np.generic) else "numpy"
    return a, {"kind": kind, "dtype": str(a.dtype)}


def _rebuild(a: np.ndarray, rec: dict[str, Any]) -> Any:
    dtype = np.dtype(jnp.dtype(rec["dtype"]))  # bfloat16 & co. (ml_dtypes) come back as raw bytes: view them
    a = a if a.dtype == dtype else a.view(dtype)
    if rec["kind"] == "key":
        return jax.random.wrap_key_data(jnp.asarray(a), impl=rec["impl"])
    if rec["kind"] == "jax":
        return jnp.asarray(a, dtype=dtype)
    return a[()] if rec["kind"] == "scalar" else np.array(a)


def _structure(treedef: Any) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(treedef))


# ---------------------------------------------------------------------------------------------- layouts


def _encode(node: Any, leaves: list[Any], stored: dict[int, int]) -> Any:
    """JSON for the tree ``node`` whose leaves are indices into ``leaves`` (``tree_leaves`` order); ``stored``:
    leaf index -> index of its stored array."""
    if node is None:
        return None
    if isinstance(node, Fixed):
        return {"fixed": _encode(node.value, leaves, stored)}
    if isinstance(node, int) and not isinstance(node, bool):  # a leaf position
        x = leaves[node]
        if node in stored:
            return {"array": stored[node]}
        if x is None or isinstance(x, bool | int | float | str):
            return {"value": x}
        raise _Unrepresentable(f"a leaf of type {type(x).__name__}")
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        cls = type(node)
        items = [_encode(c, leaves, stored) for c in node]
        return {"namedtuple": f"{cls.__module__}:{cls.__qualname__}", "items": items}
    if isinstance(node, tuple | list):
        return {"tuple" if isinstance(node, tuple) else "list": [_encode(c, leaves, stored) for c in node]}
    if isinstance(node, dict):
        if not all(isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) for k in node):
            raise _Unrepresentable("a dict with keys other than strings and ints")
        return {"dict": [[k, _encode(v, leaves, stored)] for k, v in node.items()]}
    raise _Unrepresentable(f"a pytree node of type {type(node).__name__}")


def _namedtuple(name: str) -> type:
    module, _, qualname = name.partition(":")
    if module not in sys.modules and module.split(".")[0] in _IMPORTABLE:
        importlib.import_module(module)
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise ValueError(f"the named tuple {name} is not available (import its module first, or pass like=)")
    return obj


def _decode(js: Any, arrays: list[Any]) -> Any:
    if js is None:
        return None
    (tag, body), *_ = js.items()
    if tag == "array":
        return arrays[body]
    if tag == "value":
        return body
    if tag == "fixed":
        return Fixed(_decode(body, arrays))
    if tag == "tuple":
        return tuple(_decode(c, arrays) for c in body)
    if tag == "list":
        return [_decode(c, arrays) for c in body]
    if tag == "dict":
        return {k: _decode(v, arrays) for k, v in body}
    if tag == "namedtuple":
        return _namedtuple(body)(*(_decode(c, arrays) for c in js["items"]))
    raise ValueError(f"unknown layout entry {tag!r}")


def _pack(tree: Any, what: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The arrays of ``tree`` and its JSON description (``layout`` is ``None`` when not representable)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    stored, records = [], []
    for i, x in enumerate(leaves):
        if _is_array(x):
            a, rec = _array_record(x)
            stored.append(a)
            records.append({"leaf": i, "shape": list(a.shape), **rec})
    index = jax.tree_util.tree_unflatten(treedef, list(range(len(leaves))))
    try:
        layout, why = _encode(index, leaves, {r["leaf"]: j for j, r in enumerate(records)}), None
    except _Unrepresentable as e:
        layout, why = None, f"{what} holds {e}"
    return stored, {"structure": _structure(treedef), "arrays": records, "layout": layout, "why": why}


def _unpack(data: Any, prefix: str, desc: dict[str, Any], like: Any, what: str, path: str) -> Any:
    arrays = [_rebuild(data[f"{prefix}{j}"], rec) for j, rec in enumerate(desc["arrays"])]
    if like is None:
        if desc["layout"] is None:
            raise ValueError(
                f"{path}: the {what} cannot be rebuilt from the file ({desc['why']}): pass like= (a template with the "
                f"same structure: the initial arguments of the run, or a FitResult)"
            )
        return _decode(desc["layout"], arrays)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    if _structure(treedef) != desc["structure"]:
        raise ValueError(
            f"{path}: like= does not have the structure of the saved {what}: {_structure(treedef)} vs "
            f"{desc['structure']}"
        )
    for rec, a in zip(desc["arrays"], arrays, strict=True):
        i = rec["leaf"]
        if not _is_array(leaves[i]) or tuple(np.shape(leaves[i])) != tuple(rec["shape"]):
            raise ValueError(
                f"{path}: leaf {i} of like= ({type(leaves[i]).__name__} of shape {np.shape(leaves[i])}) is not the "
                f"saved array of shape {tuple(rec['shape'])}"
            )
        leaves[i] = a
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------- save / load


def versions() -> dict[str, str]:
    """The versions of ppl and of the libraries that shape its results."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"ppl": __version__}
    for name in ("jax", "jaxlib", "numpyro", "optax", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


def save(result: FitResult, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write ``result`` to ``path`` (``.npz``; see the module docstring). ``metadata``: your own JSON object."""
    if not isinstance(result, FitResult):
        raise TypeError(f"save: expected a FitResult, got {type(result).__name__}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: metadata must be JSON-serializable: {e}") from None
    arg_arrays, arg_desc = _pack(result.args, "args")
    opt_arrays, opt_desc = _pack(result.opt_state, "opt_state")
    meta = {
        "kind": _KIND,
        "format": FORMAT,
        "versions": versions(),
        "args": arg_desc,
        "opt_state": opt_desc,
        "steps": int(result.steps),
        "resumed_from": int(result.resumed_from),
        "num_skipped": int(result.num_skipped),
        "wall_time": float(result.wall_time),
        "trained": result.trained,
        "metadata": metadata,
    }
    # fit's checkpoint writer: "p{j}" / "o{j}" arrays, "values", "skipped", "meta" (JSON); atomic rename.
    _save(os.fspath(path), meta, arg_arrays, opt_arrays, np.asarray(result.values), np.asarray(result.skipped))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON part of a saved fit: ``format``, ``versions``, ``steps``, ``trained``, ``metadata`` (yours), ..."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a saved ppl fit (not an .npz file)")
    with open(path, "rb") as f, np.load(f) as data:  # our handle: np.load leaks its own when it fails to read
        if "meta" not in data.files:
            raise ValueError(f"{path} is not a saved ppl fit (no metadata)")
        meta = json.loads(str(data["meta"]))
    if meta.get("kind") != _KIND:
        raise ValueError(f"{path} is not a saved ppl fit (a fit checkpoint? those resume with fit(checkpoint=))")
    if int(meta.get("format", 0)) > FORMAT:
        raise ValueError(f"{path} was written by a newer ppl (format {meta['format']}; this one reads {FORMAT})")
    return meta


def load(path: str | os.PathLike[str], like: Any = None) -> FitResult:
    """Read a fit written by :func:`save`. ``like``: a template of ``args`` (or a ``FitResult``, a template of
    ``args`` and ``opt_state``) for structures that JSON cannot describe; otherwise the file alone suffices."""
    path = os.fspath(path)
    meta = read_metadata(path)
    like_args, like_opt = (like.args, like.opt_state) if isinstance(like, FitResult) else (like, None)
    with open(path, "rb") as f, np.load(f) as data:
        args = _unpack(data, "p", meta["args"], like_args, "args", path)
        try:
            opt_state = _unpack(data, "o", meta["opt_state"], like_opt, "optimizer state", path)
        except ValueError as e:
            if like_opt is not None:
                raise
            warnings.warn(f"{e}; opt_state is None", stacklevel=2)
            opt_state = None
        values, skipped = np.array(data["values"]), np.array(data["skipped"])
    return FitResult(
        args=args,
        values=values,
        skipped=skipped,
        num_skipped=int(meta["num_skipped"]),
        opt_state=opt_state,
        steps=int(meta["steps"]),
        resumed_from=int(meta["resumed_from"]),
        wall_time=float(meta["wall_time"]),
        trained=meta["trained"],
    )
