"""The on-disk format of fnn checkpoints: dtype encoding, the SHA-256 digest, bounded reading, atomic writes.

Private helpers of :mod:`fnn.checkpoint` (whose docstring describes the file layout); nothing here is public API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from fnn._files import open_regular

__all__ = [
    "DIGEST_KEY", "FORMAT_NAME", "MAX_HEADER_BYTES", "MAX_TENSORS", "META_KEY", "NATIVE", "VIEWED",
    "atomic_write", "check_metadata", "decode", "digest", "encode", "invalid", "read_checked",
]

FORMAT_NAME = "fnn.checkpoint"
META_KEY = "fnn"
DIGEST_KEY = "fnn_sha256"
#: The largest safetensors header (JSON) an fnn checkpoint may have, checked before anything else is read. A
#: checkpoint's header grows with its tensors (about 100 bytes each) and with fit's history in the metadata
#: (about 100 bytes per epoch), so 64 MiB holds some 600,000 epochs; safetensors itself stops at 100 MB.
MAX_HEADER_BYTES = 64 * 2**20
#: The most tensors an fnn checkpoint may declare: 2 per layer, 2 more per layer for adam's moments, a few
#: arrays, so 65,536 allows a network of over 10,000 layers. A header declaring more is refused before parsing.
MAX_TENSORS = 65_536

#: dtypes safetensors' numpy backend stores directly.
NATIVE = {
    np.dtype(t).name: np.dtype(t)
    for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
              np.float16, np.float32, np.float64, np.complex64)
}
#: dtypes stored as an unsigned-integer view of the same width, the real dtype recorded in the JSON.
VIEWED = {
    name: np.dtype(getattr(ml_dtypes, name))
    for name in ("bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn",
                 "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(ml_dtypes, name)
}


def encode(leaf: Any, where: str) -> tuple[np.ndarray, dict]:
    """A leaf as the numpy array to store and its JSON record ``{"dtype", "shape"[, "prng_impl"]}``."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        stored, info = encode(jax.random.key_data(leaf), where)
        return stored, {**info, "prng_impl": str(jax.random.key_impl(leaf))}
    arr = np.asarray(leaf)
    name = arr.dtype.name
    if name in NATIVE:
        stored = arr
    elif name in VIEWED:
        stored = arr.view(np.dtype(f"uint{8 * arr.dtype.itemsize}"))
    else:
        raise TypeError(
            f"{where} has dtype {name}, which a checkpoint cannot hold; supported: "
            f"{sorted(NATIVE) + sorted(VIEWED)}."
        )
    if not stored.flags.c_contiguous:  # 0-d arrays are always contiguous, so their shape () survives
        stored = np.ascontiguousarray(stored)
    return stored, {"dtype": name, "shape": list(arr.shape)}


def decode(path: Path, key: str, stored: np.ndarray, info: dict) -> Any:
    """Undo :func:`encode`, checking the stored tensor against its JSON record."""
    name = info["dtype"]
    if name in NATIVE:
        real, storage = NATIVE[name], NATIVE[name]
    elif name in VIEWED:
        real = VIEWED[name]
        storage = np.dtype(f"uint{8 * real.itemsize}")
    else:
        raise invalid(path, f"tensor {key!r} is recorded with unsupported dtype {name!r}")
    if stored.dtype != storage or list(stored.shape) != list(info["shape"]):
        raise invalid(
            path,
            f"tensor {key!r} is stored as {stored.dtype}{list(stored.shape)} but recorded as {name}{info['shape']}",
        )
    arr = stored.view(real)
    if "prng_impl" in info:
        try:
            return jax.random.wrap_key_data(arr, impl=str(info["prng_impl"]))
        except (TypeError, ValueError) as e:
            raise invalid(path, f"tensor {key!r} is not valid data for PRNG key {info['prng_impl']!r} ({e})") from e
    return arr


def digest(blob: str, tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the JSON blob and every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256(blob.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"\0{key}\0{t.dtype.name}\0{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``metadata`` as a dict, or raise TypeError naming the first key whose value JSON cannot hold."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata must be a dict with str keys and JSON-serialisable values, got {type(metadata).__name__}."
        )

    def find_bad(value: Any, where: str) -> str | None:
        if value is None or isinstance(value, (bool, int, float, str)):
            return None
        if isinstance(value, (list, tuple)):
            return next((bad for i, v in enumerate(value) if (bad := find_bad(v, f"{where}[{i}]"))), None)
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    return f"{where} has a key {k!r} of type {type(k).__name__} (keys must be str)"
                if bad := find_bad(v, f"{where}[{k!r}]"):
                    return bad
            return None
        return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"

    bad = find_bad(dict(metadata), "metadata")
    if bad:
        raise TypeError(
            f"metadata must be JSON-serialisable: {bad}. Convert it (float(x), x.tolist()) or pass arrays "
            f"through arrays=."
        )
    return dict(metadata)


def invalid(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path} is not a valid fnn checkpoint: {reason}.")


def read_checked(path: Path) -> tuple[bytes, int, dict]:
    """The file's bytes, header length and parsed safetensors header, after bounding what the file claims.

    Only a regular file is opened (a FIFO would block, a dangling symbolic link is not "no checkpoint"). The
    8-byte header length is checked against the file size and :data:`MAX_HEADER_BYTES`, and the number of
    tensors the header declares against :data:`MAX_TENSORS` (counted on the raw bytes first, then on the parsed
    header), all before safetensors parses anything: a hostile header of a million tensors is refused in
    milliseconds instead of costing seconds and gigabytes.
    """
    try:
        f = open_regular(path, "a checkpoint")
    except FileNotFoundError as e:
        if os.path.islink(path):  # dangling: check_regular_file's message gives the link's target
            raise
        raise FileNotFoundError(e.errno, f"No checkpoint file at {path}", str(path)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise invalid(path, f"the file has {size} bytes, fewer than the 8-byte safetensors header length")
        header_len = int.from_bytes(head, "little")
        if not 2 <= header_len <= size - 8:
            raise invalid(path, f"its header claims {header_len} bytes but the file has {size} bytes in all")
        if header_len > MAX_HEADER_BYTES:
            raise invalid(path, f"its header claims {header_len} bytes, more than the {MAX_HEADER_BYTES} an fnn "
                                f"checkpoint's header may have")
        raw = f.read(header_len)
        _check_tensor_count(path, raw.count(b'"data_offsets"'))  # cheap upper bound, before any parsing
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise invalid(path, f"its safetensors header is not valid JSON ({type(e).__name__}: {e})") from e
        if not isinstance(header, dict):
            raise invalid(path, f"its safetensors header is a JSON {type(header).__name__}, not an object")
        _check_tensor_count(path, sum(k != "__metadata__" for k in header))
        data = b"".join((head, raw, f.read(size - 8 - header_len)))  # the tensors are read only now
    if len(data) != size:
        raise invalid(path, f"the file changed size while being read ({size} -> {len(data)} bytes)")
    return data, header_len, header


def _check_tensor_count(path: Path, count: int) -> None:
    if count > MAX_TENSORS:
        raise invalid(path, f"its header declares {count} tensors, more than the {MAX_TENSORS} an fnn checkpoint "
                            f"may hold")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; not possible everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def file_mode(path: Path) -> int | None:
    """The permission bits to give the new file: the old file's, else 0o666 minus the umask (None: keep 0o600)."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_mode & 0o777
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    return None
