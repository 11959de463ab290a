"""Tests for fnn/data.py: one_hot, train_test_split, standardize, the shipped data sets and load_dataset.

The IDX reader and the MNIST-format folders (re-exported by fnn.data) are tested in tests/test_idx.py.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from fnn import data as fdata

DATASETS_DIR = Path(fdata.__file__).parent / "datasets"


# ----------------------------------------------------------------------------------------------- one_hot


@pytest.mark.parametrize("convert", [np.asarray, jax.numpy.asarray, list])
def test_one_hot_values(convert):
    out = fdata.one_hot(convert([2, 0, 1, 2]), 4)
    expected = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    assert fdata.one_hot(np.array([1], dtype=np.uint8), 2, dtype=np.int32).dtype == np.int32
    assert fdata.one_hot(np.zeros(0, dtype=np.int64), 3).shape == (0, 3)


def test_one_hot_errors():
    with pytest.raises(ValueError, match="integers.*float32"):
        fdata.one_hot(np.array([0.0, 1.0], dtype=np.float32), 2)
    with pytest.raises(ValueError, match="1-D.*\\(2, 2\\)"):
        fdata.one_hot(np.zeros((2, 2), dtype=int), 2)
    with pytest.raises(ValueError, match=r"\[0, 3\).*min -1 and max 1"):
        fdata.one_hot([0, -1, 1], 3)
    with pytest.raises(ValueError, match=r"\[0, 3\).*min 0 and max 3"):
        fdata.one_hot([0, 3], 3)
    with pytest.raises(ValueError, match="num_classes"):
        fdata.one_hot([0], 0)


# -------------------------------------------------------------------------------------- train_test_split


def test_train_test_split_reproducible_disjoint_complete():
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    y = np.arange(25)
    (x_tr, y_tr), (x_te, y_te) = fdata.train_test_split(x, y, test_fraction=0.2, key=jax.random.key(3))
    again = fdata.train_test_split(x, y, test_fraction=0.2, key=jax.random.key(3))
    other = fdata.train_test_split(x, y, test_fraction=0.2, key=jax.random.key(4))
    assert (len(y_tr), len(y_te)) == (20, 5)
    np.testing.assert_array_equal(again[0][1], y_tr)
    np.testing.assert_array_equal(again[1][1], y_te)
    assert not np.array_equal(other[1][1], y_te)
    assert set(y_tr).isdisjoint(y_te) and sorted([*y_tr, *y_te]) == list(range(25))
    np.testing.assert_array_equal(x_tr[:, 0], 2 * y_tr)  # rows stay paired
    np.testing.assert_array_equal(x_te[:, 1], 2 * y_te + 1)
    perm = np.asarray(jax.random.permutation(jax.random.key(3), 25))
    np.testing.assert_array_equal(y_te, perm[:5])  # the documented order
    assert isinstance(x_tr, np.ndarray) and x_tr.dtype == np.float32


def test_train_test_split_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="same number of rows.*10.*9"):
        fdata.train_test_split(np.zeros((10, 2)), np.zeros(9), key=key)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction must be in"):
            fdata.train_test_split(np.zeros(10), np.zeros(10), test_fraction=bad, key=key)
    with pytest.raises(ValueError, match="non-empty"):
        fdata.train_test_split(np.zeros(3), np.zeros(3), test_fraction=0.1, key=key)
    with pytest.raises(ValueError, match="non-empty"):
        fdata.train_test_split(np.zeros(3), np.zeros(3), test_fraction=0.9, key=key)
    with pytest.raises(TypeError):
        fdata.train_test_split(np.zeros(3), np.zeros(3), 0.5, key)  # key is keyword-only


# ------------------------------------------------------------------------------------------- standardize


def test_standardize_train_mean0_std1_and_test_uses_train_stats():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 5.0, size=(200, 3)).astype(np.float32)
    x_train[:, 2] = 7.0  # constant feature
    x_test = rng.normal(3.0, 5.0, size=(10, 3)).astype(np.float32)
    s_train, s_test = fdata.standardize(x_train, x_test)
    assert s_train.dtype == np.float32 and not np.isnan(s_train).any() and not np.isnan(s_test).any()
    np.testing.assert_allclose(s_train[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s_train[:, :2].std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(s_train[:, 2], 0.0)
    mean, std = x_train.astype(np.float64).mean(0), x_train.astype(np.float64).std(0)
    np.testing.assert_allclose(s_test[:, :2], (x_test[:, :2] - mean[:2]) / std[:2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_test[:, 2], x_test[:, 2] - 7.0, rtol=1e-6)
    (only,) = fdata.standardize(x_train)
    np.testing.assert_array_equal(only, s_train)
    s = fdata.fit_standardizer(x_train)
    np.testing.assert_array_equal(fdata.apply_standardizer(s, x_test), s_test)
    with pytest.raises(ValueError, match=r"\(10, 2\)"):
        fdata.standardize(x_train, x_test[:, :2])


# ------------------------------------------------------------------------------------- shipped data sets


def _csv_rows(name: str) -> list[list[str]]:
    path = DATASETS_DIR / name
    with (gzip.open(path, "rt") if name.endswith(".gz") else open(path)) as f:
        return list(csv.reader(f))[1:]


def test_iris():
    x, y = fdata.iris()
    chex.assert_shape([x, y], [(150, 4), (150,)])
    chex.assert_type([x, y], [np.float32, np.int32])
    assert Counter(y.tolist()) == {0: 50, 1: 50, 2: 50}
    np.testing.assert_array_equal(x[0], np.array([5.1, 3.5, 1.4, 0.2], dtype=np.float32))
    assert 0.1 <= x.min() and x.max() <= 7.9
    rows = _csv_rows("iris.csv")
    np.testing.assert_allclose(x, np.array([[float(v) for v in r[:4]] for r in rows], dtype=np.float32))


def test_digits():
    x, y = fdata.digits()
    chex.assert_shape([x, y], [(1797, 64), (1797,)])
    chex.assert_type([x, y], [np.float32, np.int32])
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))  # counts 0..16, exactly representable
    rows = _csv_rows("digits.csv.gz")
    assert Counter(y.tolist()) == Counter(int(r[64]) for r in rows)
    assert Counter(y.tolist())[0] == 178
    assert int(y.sum()) == sum(int(r[64]) for r in rows)
    np.testing.assert_array_equal(x[5] * 16, [int(v) for v in rows[5][:64]])


def test_shipped_files_are_described():
    readme = (DATASETS_DIR / "README.md").read_text()
    assert "Fisher" in readme and "1936" in readme and "Alpaydin" in readme and "CC BY 4.0" in readme


# ---------------------------------------------------------------------------------------------- load_dataset


@pytest.fixture(scope="module")
def real_fashion_mnist():
    if not fdata.FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{fdata.FASHION_MNIST_DIR} absent (install Debian's dataset-fashion-mnist)")
    return fdata.fashion_mnist()


@pytest.mark.parametrize("name, n_train, n_test, features", [("iris", 120, 30, 4), ("Digits", 1438, 359, 64)])
def test_load_dataset_shipped(name, n_train, n_test, features):
    (x_tr, y_tr), (x_te, y_te) = fdata.load_dataset(name)
    chex.assert_shape([x_tr, x_te, y_tr, y_te], [(n_train, features), (n_test, features), (n_train,), (n_test,)])
    chex.assert_type([x_tr, x_te, y_tr, y_te], [np.float32, np.float32, np.int32, np.int32])
    x, y = fdata.iris() if name == "iris" else fdata.digits()
    split = fdata.train_test_split(x, y, test_fraction=0.2, key=jax.random.key(0))
    chex.assert_trees_all_equal(((x_tr, y_tr), (x_te, y_te)), split)  # the documented fixed split
    assert sorted([*y_tr.tolist(), *y_te.tolist()]) == sorted(y.tolist())


def test_load_dataset_fashion_mnist(real_fashion_mnist):
    (x_tr, y_tr), (x_te, y_te) = fdata.load_dataset("fashion_mnist")
    np.testing.assert_array_equal(y_te, real_fashion_mnist[1][1])
    assert x_tr.shape == (60000, 784)


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="iris, digits, mnist, fashion-mnist.*Did you mean 'fashion-mnist'"):
        fdata.load_dataset("fashon-mnist")
    with pytest.raises(ValueError, match="valid names") as info:
        fdata.load_dataset("cifar10")
    assert "Did you mean" not in str(info.value)
    with pytest.raises(ValueError, match="data_dir"):
        fdata.load_dataset("mnist")
