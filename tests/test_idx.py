"""Tests for fnn/idx.py: the IDX reader (round trips, malformed files, gzip bombs, fuzz) and MNIST-format folders."""

from __future__ import annotations

import contextlib
import gzip
import re
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import chex
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fnn import data as fdata
from fnn import idx as fidx

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written independently of fnn: header with struct, data as big-endian C-order bytes."""
    code = IDX_CODES[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes(order="C")


def write(path: Path, content: bytes, *, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def header(code: int, dims: tuple[int, ...], magic: bytes = b"\0\0") -> bytes:
    return magic + bytes([code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@contextlib.contextmanager
def raises_naming(path: Path, match: str):
    """pytest.raises(ValueError, match=match) that also checks that the message names the file."""
    with pytest.raises(ValueError, match=match) as info:
        yield info
    assert str(path) in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------- load_idx


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(7, dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int8).reshape(3, 4),
        np.array([[[-30000, 1, 258], [2, -1, 30000]]], dtype=np.int16),
        np.arange(-12, 12, dtype=np.int32).reshape(2, 3, 2, 2) * 100_000,
        np.linspace(-2.5, 3.5, 24, dtype=np.float32).reshape(2, 3, 4),
        np.array([np.pi, -1e300, 0.0], dtype=np.float64),
        np.zeros((0, 5), dtype=np.uint8),
    ],
    ids=lambda a: f"{a.dtype}-{a.ndim}d",
)
def test_load_idx_round_trip(tmp_path, array, gz):
    path = write(tmp_path / "data.bin", idx_bytes(array), gz=gz)  # name says nothing: magic bytes decide
    out = fidx.load_idx(path)
    chex.assert_shape(out, array.shape)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert fidx.load_idx(str(path)).shape == array.shape


def test_load_idx_reads_big_endian(tmp_path):
    path = write(tmp_path / "x", header(0x0B, (2,)) + b"\x01\x02\xff\xfe")
    np.testing.assert_array_equal(fidx.load_idx(path), [258, -2])


MALFORMED = {
    "empty": (b"", "empty file"),
    "short header": (b"\0\0\x08", "4-byte IDX header"),
    "bad magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"x", "magic bytes 00 00, found 01 00"),
    "unknown dtype": (header(0x0A, (1,)) + b"x", "unknown dtype code 0x0A"),
    "ndim 0": (b"\0\0\x08\x00", "1 to 16 dimensions, header says 0"),
    "ndim 200": (b"\0\0\x08\xc8" + b"\0" * 800, "header says 200"),
    "dims truncated": (b"\0\0\x08\x03" + struct.pack(">I", 5), "truncated.*12 bytes.*found 4"),
    "data truncated": (header(0x08, (2, 3)) + b"12345", "truncated.*6 bytes.*found only 5"),
    "lying header": (header(0x0E, (2**32 - 1, 2**32 - 1, 2**32 - 1)) + b"abc", "truncated.*found only 3"),
    "int16 odd": (header(0x0B, (3,)) + b"12345", "6 bytes.*found only 5"),
    "trailing": (header(0x08, (2, 2)) + b"12345", "4 bytes.*trailing"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_load_idx_malformed(tmp_path, case, gz):
    content, match = MALFORMED[case]
    path = write(tmp_path / f"{case.replace(' ', '_')}.idx", content, gz=gz)
    with raises_naming(path, match):
        fidx.load_idx(path)


def test_load_idx_raw_reports_exact_sizes(tmp_path):
    # A raw file's size is known before reading, so the message gives the exact counts.
    path = write(tmp_path / "long", header(0x0C, (2, 2)) + bytes(23))
    with raises_naming(path, r"shape \(2, 2\) of int32 = 16 bytes of data, found 23 bytes: 7 trailing bytes"):
        fidx.load_idx(path)


def test_load_idx_zero_size_but_absurd_shape(tmp_path):
    path = write(tmp_path / "zero", header(0x08, (0, 2**32 - 1, 2**32 - 1, 2**32 - 1)))
    with raises_naming(path, "cannot be a NumPy array"):
        fidx.load_idx(path)


def test_load_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    cases = {
        "truncated.gz": (good[: len(good) // 2], "valid gzip stream.*corrupt or truncated.*EOFError"),
        "bad_crc.gz": (good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:], "valid gzip.*corrupt or truncated.*CRC"),
        "only_magic.gz": (b"\x1f\x8b", "valid gzip stream.*corrupt or truncated"),
        "garbage.gz": (b"\x1f\x8b" + bytes(range(64)), "valid gzip stream.*corrupt or truncated"),
        "flipped.gz": (good[:20] + bytes([good[20] ^ 0xFF]) + good[21:], "IDX file"),  # gzip or size error
    }
    for name, (content, match) in cases.items():
        path = write(tmp_path / name, content)
        with raises_naming(path, match):
            fidx.load_idx(path)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        fidx.load_idx(tmp_path / "nope.idx")


def test_load_idx_gzip_bomb_is_not_read_to_the_end(tmp_path):
    # Header claims (10, 28, 28) uint8 = 7840 bytes; the stream then inflates to 1 GiB more. Multi-member gzip
    # keeps the file ~1 MB. A reader that decompresses everything would need 1 GiB and seconds.
    member = gzip.compress(bytes(1 << 24), compresslevel=9)
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(header(0x08, (10, 28, 28)) + bytes(7840)) + member * 64)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with raises_naming(path, "7840 bytes.*trailing"):
            fidx.load_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, peak
    assert time.perf_counter() - start < 5.0


@st.composite
def idx_files(draw):
    """Half well-formed files of small arrays, half anything: random magic, code, ndim, huge dims, cut headers."""
    if draw(st.booleans()):
        code = draw(st.sampled_from(sorted(fidx.IDX_DTYPES)))
        dims = draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
        length = int(np.prod(dims)) * fidx.IDX_DTYPES[code].itemsize
        head = b"\0\0" + bytes([code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
        return head, draw(st.binary(min_size=length, max_size=length)), draw(st.booleans())
    magic = draw(st.one_of(st.just(b"\0\0"), st.binary(min_size=2, max_size=2)))
    code = draw(st.one_of(st.sampled_from(sorted(fidx.IDX_DTYPES)), st.integers(0, 255)))
    ndim = draw(st.one_of(st.integers(1, 4), st.integers(0, 255)))
    dim = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1), st.sampled_from([2**31, 2**32 - 1]))
    dims = draw(st.lists(dim, min_size=min(ndim, 20), max_size=min(ndim, 20)))
    itemsize = fidx.IDX_DTYPES[code].itemsize if code in fidx.IDX_DTYPES else 1
    claimed = int(np.prod(dims, dtype=object)) * itemsize if dims else 0
    near = st.sampled_from([claimed, claimed + 1, max(claimed - 1, 0)])
    length = draw(st.one_of(st.integers(0, 600), near) if claimed <= 1024 else st.integers(0, 600))
    payload = draw(st.binary(min_size=length, max_size=length))
    head = magic + bytes([code, ndim]) + b"".join(struct.pack(">I", d) for d in dims)
    cut = draw(st.one_of(st.just(len(head)), st.integers(0, len(head))))  # sometimes a cut-off header
    return head[:cut], payload, draw(st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx_files())
def test_load_idx_fuzz_returns_exact_array_or_value_error(case):
    head, payload, gz = case
    content = head + payload
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / "fuzz", content, gz=gz)
        try:
            out = fidx.load_idx(path)  # anything but ValueError (MemoryError, zlib.error, ...) fails the test
        except ValueError as e:
            assert str(path) in str(e)
            event("ValueError")
            return
    event("array returned")
    ndim = content[3]
    assert isinstance(out, np.ndarray) and out.dtype.isnative
    assert out.shape == struct.unpack(f">{ndim}I", content[4 : 4 + 4 * ndim])
    assert out.nbytes == len(content) - 4 - 4 * ndim  # == len(payload) when the header was not cut
    expected = np.frombuffer(content[4 + 4 * ndim :], out.dtype.newbyteorder(">")).reshape(out.shape)
    np.testing.assert_array_equal(out, expected)  # NaN == NaN here


# ------------------------------------------------------------------------------------------ MNIST folders


def fake_mnist(folder: Path, n_train=5, n_test=3, *, gz=(False, True, False, True), rows=28, cols=28):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :2] = [0, 255]
    folder.mkdir(parents=True, exist_ok=True)
    for (name, array), compressed in zip(arrays.items(), gz, strict=True):
        write(folder / (name + ".gz" if compressed else name), idx_bytes(array), gz=compressed)
    return arrays


@pytest.mark.parametrize(
    "loader",
    [fidx.mnist, fidx.fashion_mnist, fdata.mnist, lambda d: fdata.load_dataset("mnist", d)],
    ids=["idx.mnist", "idx.fashion_mnist", "data.mnist", "data.load_dataset"],
)
def test_mnist_from_fake_folder(tmp_path, loader):
    arrays = fake_mnist(tmp_path)
    (x_tr, y_tr), (x_te, y_te) = loader(tmp_path)
    chex.assert_shape([x_tr, x_te, y_tr, y_te], [(5, 784), (3, 784), (5,), (3,)])
    chex.assert_type([x_tr, x_te, y_tr, y_te], [np.float32, np.float32, np.int32, np.int32])
    assert x_tr[0, 0] == 0.0 and x_tr[0, 1] == 1.0 and 0.0 <= x_te.min() and x_te.max() <= 1.0
    np.testing.assert_allclose(x_tr * 255, arrays["train-images-idx3-ubyte"].reshape(5, 784), atol=1e-4)
    np.testing.assert_allclose(x_te * 255, arrays["t10k-images-idx3-ubyte"].reshape(3, 784), atol=1e-4)
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(y_te, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_prefers_raw_over_gz(tmp_path):
    arrays = fake_mnist(tmp_path, gz=(False,) * 4)
    write(tmp_path / "train-labels-idx1-ubyte.gz", b"not used", gz=False)
    (_, y_tr), _ = fidx.mnist(tmp_path)
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte"])


def test_mnist_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write(labels, idx_bytes(np.zeros(4, dtype=np.uint8)), gz=True)
    with pytest.raises(ValueError, match="3 images.*4 labels") as info:
        fidx.mnist(tmp_path)
    assert str(labels) in str(info.value) and str(tmp_path / "t10k-images-idx3-ubyte") in str(info.value)


def test_mnist_wrong_ranks(tmp_path):
    fake_mnist(tmp_path, gz=(False,) * 4)
    images = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((5, 784), dtype=np.uint8)))
    with raises_naming(images, r"\(n, rows, cols\)"):
        fidx.mnist(tmp_path)
    fake_mnist(tmp_path, gz=(False,) * 4)
    labels = write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros((3, 1), dtype=np.uint8)))
    with raises_naming(labels, r"shape \(n,\)"):
        fidx.mnist(tmp_path)


def test_mnist_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*train-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        fidx.mnist(tmp_path / "absent")
    fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-images-idx3-ubyte\[\.gz\]") as info:
        fidx.mnist(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("loader, how", [
    (fidx.fashion_mnist, r"apt-get install dataset-fashion-mnist`.*github.com/zalandoresearch/fashion-mnist"),
    (fidx.mnist, r"download MNIST's four files"),
])
@pytest.mark.parametrize("state", ["absent", "empty", "partial"])
def test_a_missing_folder_says_how_to_get_it_and_names_each_file_once(tmp_path, loader, how, state):
    """The message says how to get the data and how to point fnn at it, and lists each of the four files once
    (it used to list the missing ones twice, and say nothing of where to get them)."""
    folder = tmp_path / "data"
    if state != "absent":
        folder.mkdir()
    if state == "partial":
        write(folder / "train-labels-idx1-ubyte.gz", b"", gz=True)
    with pytest.raises(FileNotFoundError) as info:
        loader(folder)
    message = str(info.value)
    assert re.search(how, message) and "data_dir (fnn train --data-dir DIR)" in message, message
    assert str(folder) in message
    for name in fidx.MNIST_FILES:
        assert message.count(name) == 1, (name, message)


def test_a_fifo_among_the_files_is_refused_without_blocking(tmp_path):
    """A FIFO used to block load_idx forever; in a folder it was reported as a missing file."""
    import os
    import signal

    fake_mnist(tmp_path, gz=(False,) * 4)
    fifo = tmp_path / "train-images-idx3-ubyte"
    fifo.unlink()
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO blocked"))
    signal.alarm(10)
    try:
        for load in (fidx.load_idx, lambda _: fidx.mnist(tmp_path)):
            with raises_naming(fifo, r"is a FIFO \(named pipe\), not a regular file"):
                load(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------- real data sets


@pytest.fixture(scope="module")
def real_fashion_mnist():
    if not fidx.FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{fidx.FASHION_MNIST_DIR} absent (install Debian's dataset-fashion-mnist)")
    return fidx.fashion_mnist()


def test_fashion_mnist_real(real_fashion_mnist):
    (x_tr, y_tr), (x_te, y_te) = real_fashion_mnist
    chex.assert_shape([x_tr, x_te, y_tr, y_te], [(60000, 784), (10000, 784), (60000,), (10000,)])
    chex.assert_type([x_tr, x_te, y_tr, y_te], [np.float32, np.float32, np.int32, np.int32])
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0 and x_te.min() == 0.0 and x_te.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y_tr), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_te), [1000] * 10)


def test_data_reexports_the_idx_names():
    """``fnn.data.load_idx`` etc. keep working after the split: they are the same objects."""
    for name in ("load_idx", "mnist", "fashion_mnist", "FASHION_MNIST_DIR"):
        assert getattr(fdata, name) is getattr(fidx, name), name
