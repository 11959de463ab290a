"""Data: the shipped data sets, an IDX (MNIST format) reader, and the small helpers around them.

Everything here is NumPy in, NumPy out (plain ``np.ndarray``); the training code moves arrays to the device.
Images are returned flattened to ``(n, features)`` float32 in [0, 1] and labels as int32 ``(n,)``.

Data sets:

==================  ===========================  =====================================================
name                loader                        where the data comes from
==================  ===========================  =====================================================
``iris``            :func:`iris`                  shipped: ``fnn/datasets/iris.csv`` (150 x 4, 3 classes)
``digits``          :func:`digits`                shipped: ``fnn/datasets/digits.csv.gz`` (1797 x 64, 10)
``mnist``           :func:`mnist`                 the user's folder of MNIST IDX files
``fashion-mnist``   :func:`fashion_mnist`         Debian ``dataset-fashion-mnist``, or the user's folder
==================  ===========================  =====================================================

:func:`load_idx` never trusts an IDX header: the size it claims is checked against the bytes really present
before anything is allocated, and a gzip stream is decompressed with a bounded reader.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import math
import os
import zlib
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple, Optional, Union

import jax
import numpy as np

from fnn._types import ArrayLike, DTypeLike, PRNGKey

__all__ = [
    "DATASETS",
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

PathLike = Union[str, "os.PathLike[str]"]
Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("iris", "digits", "mnist", "fashion-mnist")
#: Where Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

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


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits (UCI optical digits test set, Alpaydin & Kaynak, CC BY 4.0), shipped with fnn.

    Returns:
      ``(x, y)``: ``x`` float32 ``(1797, 64)``, row-major 8x8 pixel counts 0..16 divided by 16 (so in [0, 1]),
      ``y`` int32 ``(1797,)`` digits 0..9, in file order.
    """
    _, table = _read_csv("digits.csv.gz", gzipped=True)
    return (table[:, :64] / 16.0).astype(np.float32), table[:, 64].astype(np.int32)


# --------------------------------------------------------------------------------------------- IDX files

#: IDX dtype codes (the third header byte). Multi-byte types are big-endian in the file.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_MAX_NDIM = 16
_CHUNK = 1 << 20


def _read_up_to(stream: io.BufferedIOBase, n: int) -> bytearray:
    """Reads at most ``n`` bytes, in chunks, so memory grows only with the bytes really there."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_idx(stream: io.BufferedIOBase, path: str, size: Optional[int]) -> np.ndarray:
    """Parses an IDX stream. ``size`` is the file's byte count when known (raw files), else None (gzip)."""
    where = f"IDX file {path}" + ("" if size is not None else " (after gunzip)")
    head = _read_up_to(stream, 4)
    if not head:
        raise ValueError(f"{where}: expected an IDX header, found an empty file.")
    if len(head) < 4:
        raise ValueError(f"{where}: expected a 4-byte IDX header, found only {len(head)} bytes.")
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"{where}: expected magic bytes 00 00, found {head[0]:02x} {head[1]:02x}; not an IDX file.")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in _IDX_DTYPES.items())
        raise ValueError(f"{where}: unknown dtype code 0x{code:02X}; expected one of {known}.")
    if not 1 <= ndim <= _IDX_MAX_NDIM:
        raise ValueError(f"{where}: expected 1 to {_IDX_MAX_NDIM} dimensions, header says {ndim}.")
    dims_bytes = _read_up_to(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(
            f"{where}: header is truncated: expected {ndim} 4-byte dimension sizes ({4 * ndim} bytes), "
            f"found {len(dims_bytes)} bytes."
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, nothing allocated yet
    claim = f"the header claims shape {shape} of {dtype.name} = {expected} bytes of data"
    if size is not None:  # raw file: compare with the real byte count before reading anything
        found = size - 4 - 4 * ndim
        if found < expected:
            raise ValueError(f"{where}: data is truncated: {claim}, found only {found} bytes.")
        if found > expected:
            raise ValueError(f"{where}: {claim}, found {found} bytes: {found - expected} trailing bytes.")
    data = _read_up_to(stream, expected + 1)  # bounded: a lying header or a gzip bomb stops here
    if len(data) < expected:
        raise ValueError(f"{where}: data is truncated: {claim}, found only {len(data)} bytes.")
    if len(data) > expected:
        raise ValueError(f"{where}: {claim}, found more than that (trailing data after the last element).")
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as e:  # e.g. shape (0, 2**32-1, 2**32-1, 2**32-1): no data, yet too big for NumPy
        raise ValueError(f"{where}: shape {shape} cannot be a NumPy array: {e}") from None
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def load_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (the format of MNIST), raw or gzip-compressed, into a NumPy array.

    Format: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64, all big-endian), the number of dimensions, one big-endian uint32 per dimension, then the
    data in C order. Compression is detected by the gzip magic bytes ``1f 8b``, not by the file name.

    The header is never trusted: the data size it claims is compared with the bytes really present before
    the array is allocated, and gzip data is decompressed in 1 MiB chunks, stopping one byte past the claimed
    size: memory stays within the smaller of the claimed and the real data size, so a gzip bomb behind a
    small header is rejected after a few kilobytes and a header that lies about a huge size costs nothing.

    Args:
      path: the file.

    Returns:
      ``np.ndarray`` with the header's shape and dtype, in native byte order.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is empty, not IDX (wrong magic), has an unknown dtype code or a number of
        dimensions outside 1..16, is truncated, has trailing bytes, or is a corrupt gzip stream. The message
        names the file and says what was expected and what was found.

    Example:
      >>> labels = load_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
      >>> labels.shape, labels.dtype  # doctest: +SKIP
      ((10000,), dtype('uint8'))
    """
    name = os.fspath(path)
    with open(name, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raw.seek(0)
            return _read_idx(raw, name, os.fstat(raw.fileno()).st_size)
        raw.seek(0)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _read_idx(stream, name, None)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"IDX file {name}: expected a valid gzip stream (it starts with 1f 8b), "
                f"found a corrupt or truncated one: {type(e).__name__}: {e}"
            ) from e


# ------------------------------------------------------------------------------------ MNIST-format folders

_MNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _candidates(stem: str) -> list[str]:
    # Raw first (no decompression), then gzip as distributed (Debian installs the .gz names);
    # then the "train-images.idx3-ubyte" spelling some mirrors use.
    dotted = stem.replace("-idx", ".idx", 1)
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find_mnist_files(folder: Path, what: str) -> dict[str, Path]:
    found, missing = {}, []
    for part, stem in _MNIST_STEMS.items():
        hit = next((folder / c for c in _candidates(stem) if (folder / c).is_file()), None)
        if hit is None:
            missing.append(stem)
        else:
            found[part] = hit
    if missing:
        expected = ", ".join(f"{s}[.gz]" for s in _MNIST_STEMS.values())
        state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(f'{m}[.gz]' for m in missing)}"
        raise FileNotFoundError(f"{what}: folder {folder} {state}; expected the files {expected} in it.")
    return found


def _images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_idx(images_path), load_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (n, rows, cols), got {images.dtype} {images.shape}."
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path}: expected integer labels of shape (n,), got {labels.dtype} {labels.shape}.")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image and label counts differ: {images_path} holds {images.shape[0]} images, "
            f"{labels_path} holds {labels.shape[0]} labels."
        )
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int32)


def _load_mnist_folder(data_dir: PathLike, what: str) -> Split:
    paths = _find_mnist_files(Path(data_dir), what)
    train = _images_and_labels(paths["train_images"], paths["train_labels"])
    test = _images_and_labels(paths["test_images"], paths["test_labels"])
    return train, test


def mnist(data_dir: PathLike) -> Split:
    """Loads MNIST from a folder holding its four IDX files (raw or ``.gz``; raw is used when both exist).

    Expected files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (also accepted: the ``train-images.idx3-ubyte`` spelling).

    Args:
      data_dir: the folder.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 ``(n, rows * cols)`` = ``(n, 784)`` in [0, 1]
      (pixel / 255), ``y`` int32 ``(n,)``. For MNIST n is 60000 and 10000.

    Raises:
      FileNotFoundError: the folder or a file is missing; the message lists the expected files.
      ValueError: a file is malformed (see :func:`load_idx`), images are not 3-D uint8, labels are not 1-D,
        or the image and label counts differ.
    """
    return _load_mnist_folder(data_dir, "mnist")


def fashion_mnist(data_dir: Optional[PathLike] = None) -> Split:
    """Loads Fashion-MNIST (Zalando, MIT licence): the same format, shapes and files as :func:`mnist`.

    Args:
      data_dir: folder of the four IDX files; default ``/usr/share/datasets/fashion-mnist/``, where Debian's
        ``dataset-fashion-mnist`` package installs ``train-images-idx3-ubyte.gz`` and its three siblings.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 ``(60000, 784)`` and ``(10000, 784)`` in [0, 1],
      ``y`` int32 class ids 0..9 (6000 and 1000 per class).

    Raises:
      FileNotFoundError, ValueError: as :func:`mnist`.
    """
    return _load_mnist_folder(FASHION_MNIST_DIR if data_dir is None else data_dir, "fashion_mnist")


def load_dataset(name: str, data_dir: Optional[PathLike] = None) -> Split:
    """Loads a data set by name, already split into training and test parts.

    ``iris`` and ``digits`` are split 80/20 by :func:`train_test_split` with ``jax.random.key(0)`` (always the
    same split; ``data_dir`` is not used). ``mnist`` and ``fashion-mnist`` use their own train/t10k files.

    Args:
      name: one of :data:`DATASETS` (``"iris"``, ``"digits"``, ``"mnist"``, ``"fashion-mnist"``);
        case and ``_`` versus ``-`` do not matter.
      data_dir: folder of the IDX files; required for ``mnist``, optional for ``fashion-mnist``.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``, ``x`` float32 ``(n, features)``, ``y`` int32 ``(n,)``.

    Raises:
      ValueError: unknown name (the message lists the valid names and the closest match), or ``mnist``
        without ``data_dir``.

    Example:
      >>> (x_train, y_train), (x_test, y_test) = load_dataset("digits")
      >>> x_train.shape, y_train.shape, x_test.shape, y_test.dtype
      ((1438, 64), (1438,), (359, 64), dtype('int32'))
    """
    key = str(name).strip().lower().replace("_", "-")
    if key in ("iris", "digits"):
        x, y = iris() if key == "iris" else digits()
        return train_test_split(x, y, test_fraction=0.2, key=jax.random.key(0))
    if key == "mnist":
        if data_dir is None:
            raise ValueError("load_dataset('mnist') needs data_dir: the folder holding MNIST's four IDX files.")
        return mnist(data_dir)
    if key == "fashion-mnist":
        return fashion_mnist(data_dir)
    close = difflib.get_close_matches(key, DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown data set {name!r}; valid names: {', '.join(DATASETS)}.{hint}")
