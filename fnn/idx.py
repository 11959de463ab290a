"""IDX files (the MNIST format): a reader that never trusts a header, and the MNIST/Fashion-MNIST loaders.

:func:`load_idx` checks the size a header claims against the bytes really present before anything is
allocated, and decompresses a gzip stream with a bounded reader. :func:`mnist` and :func:`fashion_mnist` read
a folder of the four IDX files and return images flattened to ``(n, rows * cols)`` (or, with
``flatten=False``, as NHWC images ``(n, rows, cols, 1)``) float32 in [0, 1] and labels as int32 ``(n,)``, as plain
NumPy arrays. (They are also reachable as ``fnn.data.load_idx``,
``fnn.data.mnist`` and ``fnn.data.fashion_mnist``.)
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np

from fnn._files import open_regular

__all__ = ["FASHION_MNIST_DIR", "IDX_DTYPES", "MNIST_FILES", "PathLike", "Split", "fashion_mnist", "load_idx", "mnist"]

PathLike = Union[str, "os.PathLike[str]"]
#: ``((x_train, y_train), (x_test, y_test))``.
Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: Where Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: IDX dtype codes (the third header byte). Multi-byte types are big-endian in the file.
IDX_DTYPES = {
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
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in IDX_DTYPES.items())
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
    dtype = IDX_DTYPES[code]
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
      FileNotFoundError: ``path`` does not exist or is a dangling symbolic link.
      IsADirectoryError: ``path`` is a folder.
      ValueError: ``path`` is a FIFO, socket or device (refused before it is opened, so it cannot block); the file
        is empty, not IDX (wrong magic), has an unknown dtype code or a number of
        dimensions outside 1..16, is truncated, has trailing bytes, or is a corrupt gzip stream. The message
        names the file and says what was expected and what was found.

    Example:
      >>> labels = load_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
      >>> labels.shape, labels.dtype  # doctest: +SKIP
      ((10000,), dtype('uint8'))
    """
    name = os.fspath(path)
    with open_regular(name, "an IDX file") as raw:  # a FIFO or device would block or never end
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
#: The four files of an MNIST-format folder (each raw or ``.gz``).
MNIST_FILES = tuple(_MNIST_STEMS.values())


def _candidates(stem: str) -> list[str]:
    # Raw first (no decompression), then gzip as distributed (Debian installs the .gz names);
    # then the "train-images.idx3-ubyte" spelling some mirrors use.
    dotted = stem.replace("-idx", ".idx", 1)
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


#: How to get each data set's four files, for the message about a missing folder.
_WHERE = "pass their folder as data_dir (fnn train --data-dir DIR)"
_HOW_TO_GET = {
    "mnist": f"download MNIST's four files (yann.lecun.com/exdb/mnist or one of its mirrors) and {_WHERE}",
    "fashion_mnist": f"install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; into "
                     f"{FASHION_MNIST_DIR}, the default folder), or download them from "
                     f"github.com/zalandoresearch/fashion-mnist and {_WHERE}",
}


def _find_mnist_files(folder: Path, what: str) -> dict[str, Path]:
    # lexists, not is_file: a FIFO or a dangling link is found here and refused by load_idx with its reason,
    # instead of being reported as missing (or, for a FIFO, blocking the read).
    found = {part: next((folder / c for c in _candidates(stem) if os.path.lexists(folder / c)), None)
             for part, stem in _MNIST_STEMS.items()}
    if all(found.values()):
        return found
    names = {part: f"{stem}[.gz]" for part, stem in _MNIST_STEMS.items()}
    missing = ", ".join(names[part] for part, hit in found.items() if hit is None)
    present = ", ".join(hit.name for hit in found.values() if hit is not None)
    if not folder.is_dir():
        state = f"does not exist; it should hold the four files {', '.join(names.values())}"
    elif not present:
        state = f"holds none of the four files {missing}"
    else:
        state = f"has {present} but lacks {missing}"
    raise FileNotFoundError(f"{what}: folder {folder} {state}. To get them, {_HOW_TO_GET[what]}.")


def check_flatten(flatten) -> bool:
    """``flatten`` must be a bool (``flatten="no"`` would be truthy)."""
    if not isinstance(flatten, (bool, np.bool_)):
        raise TypeError(f"flatten must be True (images as (n, rows * cols)) or False (images as (n, rows, cols, 1), "
                        f"NHWC), got {flatten!r}.")
    return bool(flatten)


def _images_and_labels(images_path: Path, labels_path: Path, flatten: bool) -> tuple[np.ndarray, np.ndarray]:
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
    shape = (images.shape[0], -1) if flatten else (*images.shape, 1)
    x = images.reshape(shape).astype(np.float32) / np.float32(255)
    return x, labels.astype(np.int32)


def _load_mnist_folder(data_dir: PathLike, what: str, flatten: bool) -> Split:
    flatten = check_flatten(flatten)
    paths = _find_mnist_files(Path(data_dir), what)
    train = _images_and_labels(paths["train_images"], paths["train_labels"], flatten)
    test = _images_and_labels(paths["test_images"], paths["test_labels"], flatten)
    return train, test


def mnist(data_dir: PathLike, *, flatten: bool = True) -> Split:
    """Loads MNIST from a folder holding its four IDX files (raw or ``.gz``; raw is used when both exist).

    Expected files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (also accepted: the ``train-images.idx3-ubyte`` spelling).

    Args:
      data_dir: the folder.
      flatten: images as rows ``(n, rows * cols)`` (default, for Dense nets) or, with ``False``, as NHWC images
        ``(n, rows, cols, 1)`` (for ``fnn.layers.Conv2D``).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 ``(n, rows * cols)`` = ``(n, 784)`` (or
      ``(n, 28, 28, 1)``) in [0, 1] (pixel / 255), ``y`` int32 ``(n,)``. For MNIST n is 60000 and 10000.

    Raises:
      FileNotFoundError: the folder or a file is missing; the message lists the expected files.
      ValueError: a file is malformed (see :func:`load_idx`), images are not 3-D uint8, labels are not 1-D,
        or the image and label counts differ.
    """
    return _load_mnist_folder(data_dir, "mnist", flatten)


def fashion_mnist(data_dir: Optional[PathLike] = None, *, flatten: bool = True) -> Split:
    """Loads Fashion-MNIST (Zalando, MIT licence): the same format, shapes and files as :func:`mnist`.

    Args:
      data_dir: folder of the four IDX files; default ``/usr/share/datasets/fashion-mnist/``, where Debian's
        ``dataset-fashion-mnist`` package installs ``train-images-idx3-ubyte.gz`` and its three siblings.
      flatten: as :func:`mnist` (``False``: NHWC images ``(n, 28, 28, 1)``).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: ``x`` float32 ``(60000, 784)`` and ``(10000, 784)`` in [0, 1],
      ``y`` int32 class ids 0..9 (6000 and 1000 per class).

    Raises:
      FileNotFoundError, ValueError: as :func:`mnist`.
    """
    return _load_mnist_folder(FASHION_MNIST_DIR if data_dir is None else data_dir, "fashion_mnist", flatten)
