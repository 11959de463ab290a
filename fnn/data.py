"""Data: the shipped data sets, ``load_dataset`` by name, and the small helpers around them.

Everything here is NumPy in, NumPy out (plain ``np.ndarray``); the training code moves arrays to the device.
Images are returned flattened to ``(n, features)`` (or with ``flatten=False`` as NHWC images ``(n, rows, cols, 1)``)
float32 in [0, 1] and labels as int32 ``(n,)``.

Data sets:

==================  ===========================  =====================================================
name                loader                        where the data comes from
==================  ===========================  =====================================================
``iris``            :func:`iris`                  shipped: ``fnn/datasets/iris.csv`` (150 x 4, 3 classes)
``digits``          :func:`digits`                shipped: ``fnn/datasets/digits.csv.gz`` (1797 x 64, 10)
``mnist``           :func:`mnist`                 the user's folder of MNIST IDX files
``fashion-mnist``   :func:`fashion_mnist`         Debian ``dataset-fashion-mnist``, or the user's folder
==================  ===========================  =====================================================

The IDX reader and the MNIST-format loaders live in :mod:`fnn.idx` (:func:`load_idx` never trusts an IDX
header) and are re-exported here, so ``fnn.data.load_idx``, ``fnn.data.mnist`` and ``fnn.data.fashion_mnist``
keep working.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
from importlib.resources import files
from typing import NamedTuple, Optional

import jax
import numpy as np

from fnn import idx as _idx
from fnn._types import ArrayLike, DTypeLike, PRNGKey
from fnn.idx import FASHION_MNIST_DIR, PathLike, Split, fashion_mnist, load_idx, mnist

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "Standardizer",
    "apply_standardizer",
    "digits",
    "fashion_mnist",
    "fit_standardizer",
    "iris",
    "load_dataset",
    "load_idx",
    "mnist",
    "one_hot",
    "standardize",
    "train_test_split",
]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("iris", "digits", "mnist", "fashion-mnist")

# ----------------------------------------------------------------------------------------------- helpers


def one_hot(labels: ArrayLike, num_classes: int, *, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Encodes integer class labels as one-hot rows: ``out[i, labels[i]] = 1``, every other entry 0.

    Args:
      labels: integer labels, shape ``(n,)``, each in ``[0, num_classes)``. NumPy or JAX arrays or lists.
      num_classes: number of classes ``k`` (a positive integer).
      dtype: dtype of the result.

    Returns:
      ``np.ndarray`` of shape ``(n, k)``.

    Raises:
      ValueError: labels are not integers (e.g. a float array), not 1-D, or out of range; ``num_classes < 1``.

    Example:
      >>> one_hot([2, 0], 3)
      array([[0., 0., 1.],
             [1., 0., 0.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be a positive integer, got {num_classes!r}.")
    if labels.dtype.kind not in "iu":
        hint = " (cast with labels.astype(int) if they hold whole numbers)" if labels.dtype.kind == "f" else ""
        raise ValueError(f"one_hot: labels must be integers, got dtype {labels.dtype}{hint}.")
    if labels.ndim != 1:
        raise ValueError(f"one_hot: labels must be 1-D (n,), got shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"one_hot: labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got min {labels.min()} and max {labels.max()}."
        )
    out = np.zeros((labels.shape[0], int(num_classes)), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def train_test_split(x: ArrayLike, y: ArrayLike, *, test_fraction: float = 0.2, key: PRNGKey) -> Split:
    """Shuffles the rows of ``(x, y)`` with a JAX key and splits them into a training and a test part.

    The test part has ``round(n * test_fraction)`` rows. The order is ``jax.random.permutation(key, n)``, so the
    same key gives the same split on every machine; rows of ``x`` and ``y`` stay paired.

    Args:
      x: inputs, shape ``(n, ...)``.
      y: targets, shape ``(n, ...)``.
      test_fraction: fraction of rows in the test part, strictly between 0 and 1.
      key: a JAX PRNG key (keyword-only, required).

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` as ``np.ndarray``, ``x_train`` of shape ``(n - n_test, ...)``.

    Raises:
      ValueError: ``x`` and ``y`` differ in length, ``test_fraction`` is not in (0, 1), or a part would be empty.

    Example:
      >>> x, y = iris()
      >>> (x_train, y_train), (x_test, y_test) = train_test_split(x, y, test_fraction=0.2, key=jax.random.key(0))
      >>> x_train.shape, x_test.shape
      ((120, 4), (30, 4))
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"train_test_split: x and y need a leading row axis, got shapes {x.shape} and {y.shape}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"train_test_split: x and y must have the same number of rows, got {x.shape[0]} (x {x.shape}) "
            f"and {y.shape[0]} (y {y.shape})."
        )
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating)):
        raise TypeError(f"train_test_split: test_fraction must be a number in (0, 1), got {test_fraction!r}.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"train_test_split: test_fraction must be in (0, 1), got {test_fraction!r}.")
    n = x.shape[0]
    n_test = round(n * float(test_fraction))
    if n_test == 0 or n_test == n:
        raise ValueError(
            f"train_test_split: test_fraction={test_fraction} of {n} rows gives {n_test} test and "
            f"{n - n_test} training rows; both parts must be non-empty."
        )
    order = np.asarray(jax.random.permutation(key, n))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


class Standardizer(NamedTuple):
    """Per-feature statistics fitted on training data: ``x_std = (x - mean) / std``.

    Attributes:
      mean: shape ``x.shape[1:]``.
      std: shape ``x.shape[1:]``; constant features have ``std = 1`` so they map to 0, not NaN.
    """

    mean: np.ndarray
    std: np.ndarray


def _float_array(x: ArrayLike) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"expected numeric (bool, integer or float) data, got dtype {x.dtype} of shape {x.shape}.")
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def fit_standardizer(x: ArrayLike, *, eps: float = 1e-8) -> Standardizer:
    """Fits the mean and standard deviation of every feature over the rows of ``x``.

    Args:
      x: training inputs, shape ``(n, ...)`` with ``n >= 1``.
      eps: a feature whose standard deviation is ``<= eps`` is treated as constant and gets ``std = 1``.

    Returns:
      A :class:`Standardizer` with ``mean`` and ``std`` of shape ``x.shape[1:]`` and the dtype of ``x``
      (float32 for integer input).

    Raises:
      ValueError: ``x`` has no row axis or no rows.
    """
    x = _float_array(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"fit_standardizer: x must have shape (n, ...) with n >= 1, got {x.shape}.")
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std = np.where(std > eps, std, 1.0)
    return Standardizer(mean.astype(x.dtype), std.astype(x.dtype))


def apply_standardizer(s: Standardizer, x: ArrayLike) -> np.ndarray:
    """Returns ``(x - s.mean) / s.std`` for ``x`` of shape ``(m,) + s.mean.shape``.

    Raises:
      ValueError: the feature shape of ``x`` is not that of the fitted statistics.
    """
    x = _float_array(x)
    if x.shape[1:] != s.mean.shape:
        raise ValueError(
            f"apply_standardizer: expected x of shape (m, {', '.join(map(str, s.mean.shape))}) to match the "
            f"fitted features {s.mean.shape}, got {x.shape}."
        )
    return ((x - s.mean) / s.std).astype(x.dtype, copy=False)


def standardize(x_train: ArrayLike, *others: ArrayLike, eps: float = 1e-8) -> tuple[np.ndarray, ...]:
    """Standardizes every feature with the mean and std of ``x_train``, applied to ``x_train`` and ``others``.

    Only the training data is used to fit the statistics, so the test data sees no information from itself.

    Args:
      x_train: shape ``(n, ...)``; fitted with :func:`fit_standardizer`.
      *others: arrays of shape ``(m, ...)`` with the same feature shape (e.g. the test inputs).
      eps: see :func:`fit_standardizer` (constant features map to 0, never NaN).

    Returns:
      A tuple ``(x_train_std, *others_std)`` (a 1-tuple when no others are given).

    Example:
      >>> (x_train, _), (x_test, _) = load_dataset("iris")
      >>> x_train, x_test = standardize(x_train, x_test)
      >>> bool(np.abs(x_train.mean(axis=0)).max() < 1e-5), bool(np.allclose(x_train.std(axis=0), 1.0))
      (True, True)
    """
    s = fit_standardizer(x_train, eps=eps)
    return tuple(apply_standardizer(s, x) for x in (x_train, *others))


# ------------------------------------------------------------------------------------- shipped data sets


def _read_csv(name: str, *, gzipped: bool) -> tuple[list[str], np.ndarray]:
    with (files("fnn") / "datasets" / name).open("rb") as raw:
        binary = gzip.GzipFile(fileobj=raw) if gzipped else raw
        with io.TextIOWrapper(binary, encoding="ascii", newline="") as text:
            rows = list(csv.reader(text))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def iris() -> tuple[np.ndarray, np.ndarray]:
    """Fisher's iris data (1936), shipped with fnn: 150 flowers, 4 measurements in cm, 3 species.

    Returns:
      ``(x, y)``: ``x`` float32 ``(150, 4)`` (sepal length, sepal width, petal length, petal width in cm),
      ``y`` int32 ``(150,)`` with 0 = setosa, 1 = versicolor, 2 = virginica (50 each), in file order.
    """
    _, table = _read_csv("iris.csv", gzipped=False)
    return table[:, :4].astype(np.float32), table[:, 4].astype(np.int32)


def digits(*, flatten: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits (UCI optical digits test set, Alpaydin & Kaynak, CC BY 4.0), shipped with fnn.

    Args:
      flatten: rows ``(1797, 64)`` (default) or, with ``False``, NHWC images ``(1797, 8, 8, 1)``.

    Returns:
      ``(x, y)``: ``x`` float32 ``(1797, 64)``, row-major 8x8 pixel counts 0..16 divided by 16 (so in [0, 1]),
      ``y`` int32 ``(1797,)`` digits 0..9, in file order.
    """
    flatten = _idx.check_flatten(flatten)
    _, table = _read_csv("digits.csv.gz", gzipped=True)
    x = (table[:, :64] / 16.0).astype(np.float32)
    return (x if flatten else x.reshape(-1, 8, 8, 1)), table[:, 64].astype(np.int32)


def load_dataset(name: str, data_dir: Optional[PathLike] = None, *, flatten: bool = True) -> Split:
    """Loads a data set by name, already split into training and test parts.

    ``iris`` and ``digits`` are split 80/20 by :func:`train_test_split` with ``jax.random.key(0)`` (always the
    same split; ``data_dir`` is not used). ``mnist`` and ``fashion-mnist`` use their own train/t10k files.

    Args:
      name: one of :data:`DATASETS` (``"iris"``, ``"digits"``, ``"mnist"``, ``"fashion-mnist"``);
        case and ``_`` versus ``-`` do not matter.
      data_dir: folder of the IDX files; required for ``mnist``, optional for ``fashion-mnist``.
      flatten: ``False`` gives the image data sets as NHWC images ``(n, rows, cols, 1)`` (digits ``8×8``,
        MNIST and Fashion-MNIST ``28×28``) for convolutional nets; iris has no images.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``, ``x`` float32 ``(n, features)`` (or images), ``y`` int32 ``(n,)``.

    Raises:
      ValueError: unknown name (the message lists the valid names and the closest match), ``mnist``
        without ``data_dir``, or ``flatten=False`` for iris.

    Example:
      >>> (x_train, y_train), (x_test, y_test) = load_dataset("digits")
      >>> x_train.shape, y_train.shape, x_test.shape, y_test.dtype
      ((1438, 64), (1438,), (359, 64), dtype('int32'))
    """
    key = str(name).strip().lower().replace("_", "-")
    flatten = _idx.check_flatten(flatten)
    if key == "iris" and not flatten:
        raise ValueError("load_dataset('iris', flatten=False): iris is a table of 4 measurements, not images; "
                         "flatten=False applies to digits, mnist and fashion-mnist.")
    if key in ("iris", "digits"):
        x, y = iris() if key == "iris" else digits(flatten=flatten)
        return train_test_split(x, y, test_fraction=0.2, key=jax.random.key(0))
    if key == "mnist":
        if data_dir is None:
            raise ValueError("load_dataset('mnist') needs data_dir: the folder holding MNIST's four IDX files.")
        return mnist(data_dir, flatten=flatten)
    if key == "fashion-mnist":
        return fashion_mnist(data_dir, flatten=flatten)
    close = difflib.get_close_matches(key, DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown data set {name!r}; valid names: {', '.join(DATASETS)}.{hint}")
