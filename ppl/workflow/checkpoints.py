"""``fit``'s checkpoints: one ``.npz`` file (parameters, optimizer state, value history, skipped steps) plus JSON
metadata that says what it was made from, written atomically; a resume checks the metadata against the run."""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _key_data(key: jax.Array) -> list[int]:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.asarray(data).ravel().tolist()


def _signature(tree: Any) -> dict[str, Any]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return {
        "structure": re.sub(r" at 0x[0-9a-fA-F]+", "", str(treedef)),  # no per-process addresses
        "shapes": [list(np.shape(x)) for x in leaves],
        "dtypes": [str(x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype) for x in leaves],
    }


def _save(path: str, meta: dict[str, Any], params: Any, opt_state: Any, values: np.ndarray, skipped: np.ndarray):
    arrays = {"meta": np.array(json.dumps(meta)), "values": values, "skipped": skipped}
    for name, tree in (("p", params), ("o", opt_state)):
        for j, x in enumerate(jax.tree_util.tree_leaves(tree)):
            arrays[f"{name}{j}"] = np.asarray(x)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_leaves(data: Any, name: str, template: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    out = []
    for j, t in enumerate(leaves):
        a, dtype = data[f"{name}{j}"], jnp.asarray(t).dtype
        out.append(jnp.asarray(a if a.dtype == dtype else a.view(dtype)))
    return jax.tree_util.tree_unflatten(treedef, out)


def _load(path: str, meta: dict[str, Any], params: Any, opt_state: Any):
    try:
        return _read_checkpoint(path, meta, params, opt_state)
    except ValueError as e:
        if str(e).startswith("fit: "):
            raise
        raise ValueError(f"fit: the checkpoint {path} cannot be read ({e}); delete it to start over") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"fit: the checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to start over"
        ) from None


def _read_checkpoint(path: str, meta: dict[str, Any], params: Any, opt_state: Any):
    # the file opened here, not by np.load: np.load leaks its own handle when the file is not a zip (truncated)
    with open(path, "rb") as f, np.load(f) as data:
        saved = json.loads(str(data["meta"]))
        for what in ("params", "opt_state", "key", "num_particles", "data", "batch_size"):
            if saved.get(what) != meta[what]:
                raise ValueError(
                    f"fit: the checkpoint {path} was written for a different run ({what} differ: saved "
                    f"{saved.get(what)!r}, now {meta[what]!r}). Delete it or use another checkpoint directory."
                )
        step = int(saved["step"])
        return (
            step,
            _load_leaves(data, "p", params),
            _load_leaves(data, "o", opt_state),
            np.array(data["values"][:step]),
            np.array(data["skipped"][:step]),
        )
