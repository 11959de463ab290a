"""Save and load params, optimizer state and training records as one safetensors file.

A checkpoint is a single `safetensors <https://github.com/huggingface/safetensors>`_ file: raw little-endian
tensors plus a JSON header. Nothing in it is code, and loading never unpickles or evaluates anything, so a
checkpoint from an untrusted source can at worst be rejected. On disk:

=======================  ==========================================================================
tensor key               content
=======================  ==========================================================================
``params/<l>/w``         layer ``l``'s weights ``(n_in, n_out)``
``params/<l>/b``         layer ``l``'s bias ``(n_out,)`` (absent when ``bias=False``)
``opt_state/<i>``        leaf ``i`` of ``jax.tree_util.tree_flatten(opt_state)``
``arrays/<name>``        an extra named array (a PRNG key's ``key_data``, per-epoch history, ...)
=======================  ==========================================================================

The safetensors string metadata holds two entries: ``"fnn"``, one JSON blob with the format version, the
network's :meth:`~fnn.network.Network.describe`, the user ``metadata`` dict and the dtype and shape of every
stored leaf; and ``"fnn_sha256"``, a SHA-256 over that blob and every tensor, so a flipped bit anywhere that
matters is reported instead of silently loaded. Dtypes safetensors' numpy reader lacks (``bfloat16``, the
``float8`` family) are stored as an unsigned-integer view of the same width and viewed back on load, so every
leaf round-trips bit for bit. Typed PRNG keys (``jax.random.key``) are stored as their ``key_data`` and
re-wrapped with their implementation's name.

Writes are atomic: the bytes go to a temporary file in the target's directory, are flushed and ``fsync``-ed,
then ``os.replace``-d onto the path, so a crash mid-save leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy

from fnn._types import Array, Params, PyTree
from fnn.network import Network, mlp

__all__ = ["Checkpoint", "FORMAT_VERSION", "save", "load"]

#: The version written into every checkpoint; :func:`load` refuses any other.
FORMAT_VERSION = 1
_FORMAT_NAME = "fnn.checkpoint"
_META_KEY = "fnn"
_DIGEST_KEY = "fnn_sha256"
#: safetensors itself refuses headers above 100 MB; we check before reading anything else.
_MAX_HEADER_BYTES = 100_000_000

#: dtypes safetensors' numpy backend stores directly.
_NATIVE = {
    np.dtype(t).name: np.dtype(t)
    for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
              np.float16, np.float32, np.float64, np.complex64)
}
#: dtypes stored as an unsigned-integer view of the same width, the real dtype recorded in the JSON.
_VIEWED = {
    name: np.dtype(getattr(ml_dtypes, name))
    for name in ("bfloat16", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn",
                 "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(ml_dtypes, name)
}


class Checkpoint(NamedTuple):
    """What :func:`load` returns.

    Attributes:
      params: one ``{"w", "b"}`` dict of ``jax.Array`` per layer, in the saved dtypes.
      net: the :class:`~fnn.network.Network` (the one passed to :func:`load`, or rebuilt from the file).
      opt_state: the optimizer state rebuilt on ``opt_state_like``'s structure; the flat list of its leaves
        when no template was given; ``None`` when none was saved.
      metadata: the user's JSON metadata dict (``{}`` when none was saved).
      arrays: the extra named arrays, as numpy arrays (exact dtypes, never downcast), typed PRNG keys as keys.
    """

    params: Params
    net: Network
    opt_state: PyTree | list[Array] | None
    metadata: dict[str, Any]
    arrays: dict[str, Any]


def save(
    path: str | os.PathLike,
    params: Params,
    *,
    net: Network,
    opt_state: PyTree | None = None,
    metadata: Mapping[str, Any] | None = None,
    arrays: Mapping[str, Any] | None = None,
) -> Path:
    """Write params (and optionally optimizer state, metadata, extra arrays) atomically to one file.

    Args:
      path: the file to write; missing parent directories are created; an existing file is replaced only
        once the new one is completely on disk.
      params: one ``{"w": (n_in, n_out), "b": (n_out,)}`` dict per layer, checked against ``net``.
      net: the network the params belong to; its ``describe()`` is stored so :func:`load` can rebuild it.
      opt_state: any pytree of arrays, e.g. an optax state; its leaves are stored in
        ``jax.tree_util.tree_flatten`` order (rebuild it with ``load(..., opt_state_like=...)``).
      metadata: a dict with ``str`` keys and JSON-serialisable values (tuples come back as lists).
      arrays: extra named arrays, e.g. ``{"key": jax.random.key_data(key), "train_loss": history}``.

    Returns:
      The path written, as a ``pathlib.Path``.

    Raises:
      ValueError: params do not fit ``net`` (the message names the layer and the shapes).
      TypeError: metadata not JSON-serialisable (the message names the offending key), a bad array name,
        or a leaf of a dtype a checkpoint cannot hold (strings, objects, complex128).
      OSError: the file could not be written; any previous checkpoint at ``path`` is left as it was.

    Example:
      >>> import jax, optax, fnn
      >>> net = fnn.mlp([4, 8, 3])
      >>> params = net.init(jax.random.key(0))
      >>> opt = optax.adam(1e-3)
      >>> p = save("/tmp/fnn-doc.safetensors", params, net=net, opt_state=opt.init(params), metadata={"epoch": 3})
      >>> ckpt = load(p, opt_state_like=opt.init(params))
      >>> ckpt.metadata["epoch"], ckpt.net.sizes
      (3, (4, 8, 3))
    """
    path = Path(path)
    if not isinstance(net, Network):
        raise TypeError(f"save needs net=, the Network (from fnn.mlp) the params belong to; got {type(net).__name__}.")
    net.check_params(params)
    meta = _check_metadata(metadata)

    tensors: dict[str, np.ndarray] = {}
    params_info = []
    for l, layer in enumerate(params):
        layer_info = {}
        for name, leaf in layer.items():
            if leaf is None:
                continue
            tensors[f"params/{l}/{name}"], layer_info[name] = _encode(leaf, f"params[{l}][{name!r}]")
        params_info.append(layer_info)

    opt_info = None
    if opt_state is not None:
        leaves, treedef = jax.tree_util.tree_flatten(opt_state)
        leaves_info = []
        for i, leaf in enumerate(leaves):
            tensors[f"opt_state/{i}"], info = _encode(leaf, f"opt_state leaf {i}")
            leaves_info.append(info)
        opt_info = {"num_leaves": len(leaves), "leaves": leaves_info, "treedef": str(treedef)}

    arrays_info = {}
    for name, value in (arrays or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"arrays names must be non-empty str, got {name!r}.")
        tensors[f"arrays/{name}"], arrays_info[name] = _encode(value, f"arrays[{name!r}]")

    header = {
        "format": _FORMAT_NAME,
        "version": FORMAT_VERSION,
        "net": net.describe(),
        "params": params_info,
        "opt_state": opt_info,
        "arrays": arrays_info,
        "metadata": meta,
    }
    blob = json.dumps(header)
    data = safetensors.numpy.save(tensors, metadata={_META_KEY: blob, _DIGEST_KEY: _digest(blob, tensors)})
    _atomic_write(path, data)
    return path


def load(path: str | os.PathLike, net: Network | None = None, *, opt_state_like: PyTree | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save`, validating everything before trusting it.

    Loading parses JSON and raw tensor bytes only: no pickle, no ``eval``, no code from the file runs.
    Params come back as ``jax.Array`` in their saved dtypes (64-bit leaves become 32-bit, with JAX's warning,
    unless x64 is enabled).

    Args:
      path: a file written by :func:`save`.
      net: the network to load into. When given, its description and layer shapes must match the saved
        ones; when ``None`` the network is rebuilt with ``mlp(**description)``.
      opt_state_like: a template with the optimizer state's structure, e.g. ``optimizer.init(params)`` or
        ``jax.eval_shape(optimizer.init, params)``. Required to get the saved state back as a pytree: its
        leaf count, shapes and dtypes are checked and its treedef is used to unflatten the saved leaves.
        Without it, a saved state comes back as the flat list of its leaves (``tree_flatten`` order).

    Returns:
      A :class:`Checkpoint` ``(params, net, opt_state, metadata, arrays)``; ``opt_state`` is ``None`` when the
      checkpoint holds no optimizer state.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not a valid fnn checkpoint (truncated, corrupted, empty, junk, a pickle, a
        plain safetensors file without fnn metadata, a checksum mismatch, an unknown format version); the
        checkpoint does not match ``net`` (the message lists each difference); or the saved optimizer state
        does not match ``opt_state_like`` (the message names the leaf, expected and found).
    """
    path = Path(path)
    if net is not None and not isinstance(net, Network):
        raise TypeError(f"load's net must be None or a Network (from fnn.mlp), got {type(net).__name__}.")
    data, header_len = _read_checked(path)
    try:
        tensors = safetensors.numpy.load(data)
        st_meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises SafetensorError, KeyError (unknown dtype), ...
        raise _invalid(path, f"it is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if _META_KEY not in st_meta:
        raise ValueError(
            f"{path} is a safetensors file but not a valid fnn checkpoint: its metadata has no {_META_KEY!r} "
            f"entry (found {sorted(st_meta)})."
        )
    blob = st_meta[_META_KEY]
    try:
        info = json.loads(blob)
    except (ValueError, RecursionError) as e:
        raise _invalid(path, f"its {_META_KEY!r} metadata is not valid JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != _FORMAT_NAME:
        raise _invalid(path, f"its {_META_KEY!r} metadata does not describe an fnn checkpoint")
    if info.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported fnn checkpoint format version {info.get('version')!r}; "
            f"this fnn reads version {FORMAT_VERSION}."
        )
    if st_meta.get(_DIGEST_KEY) != _digest(blob, tensors):
        raise _invalid(path, "its SHA-256 checksum does not match its contents (the file is corrupted)")

    try:
        return _decode_checkpoint(path, info, tensors, net, opt_state_like)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise _invalid(path, f"its {_META_KEY!r} metadata is malformed ({type(e).__name__}: {e})") from e


def _decode_checkpoint(
    path: Path, info: dict, tensors: dict, net: Network | None, opt_state_like: PyTree
) -> Checkpoint:
    params_info, opt_info, arrays_info = info["params"], info["opt_state"], info["arrays"]
    expected_keys = {f"params/{l}/{name}" for l, layer in enumerate(params_info) for name in layer}
    expected_keys |= {f"arrays/{name}" for name in arrays_info}
    if opt_info is not None:
        if opt_info["num_leaves"] != len(opt_info["leaves"]):
            raise _invalid(path, "its optimizer-state leaf count disagrees with its leaf list")
        expected_keys |= {f"opt_state/{i}" for i in range(opt_info["num_leaves"])}
    if expected_keys != set(tensors):
        missing, extra = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
        raise _invalid(path, f"its tensors do not match its description (missing {missing}, unexpected {extra})")

    def decode(key: str, leaf_info: dict) -> Any:
        return _decode(path, key, tensors[key], leaf_info)

    desc = info["net"]
    if net is None:
        try:
            net = mlp(**desc)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: cannot rebuild the network from its description {desc}: {e} "
                             f"Pass the network explicitly with load(path, net).") from e
    else:
        differences = _differences(desc, params_info, net)
        if differences:
            raise ValueError(f"{path}: the checkpoint does not match the given network:\n  " + "\n  ".join(differences))

    params = [{name: jnp.asarray(decode(f"params/{l}/{name}", leaf)) for name, leaf in layer.items()}
              for l, layer in enumerate(params_info)]
    try:
        net.check_params(params)
    except (TypeError, ValueError) as e:
        raise _invalid(path, f"its params do not fit the network it describes ({e})") from e

    opt_state = None
    if opt_info is not None:
        leaves = [decode(f"opt_state/{i}", leaf) for i, leaf in enumerate(opt_info["leaves"])]
        if opt_state_like is None:
            opt_state = [jnp.asarray(leaf) for leaf in leaves]
        else:
            opt_state = _unflatten_like(path, leaves, opt_state_like, opt_info["treedef"])

    arrays = {name: decode(f"arrays/{name}", leaf) for name, leaf in arrays_info.items()}
    metadata = info["metadata"]
    if not isinstance(metadata, dict):
        raise _invalid(path, "its user metadata is not a dict")
    return Checkpoint(params, net, opt_state, metadata, arrays)


def _unflatten_like(path: Path, leaves: list, template: PyTree, saved_treedef: str) -> PyTree:
    """Check saved leaves against the template's, leaf by leaf, then unflatten with the template's treedef."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(with_path) != len(leaves):
        raise ValueError(
            f"{path}: the checkpoint's optimizer state has {len(leaves)} leaves but opt_state_like has "
            f"{len(with_path)}; was it made by the same optimizer?\n  checkpoint: {saved_treedef}\n  "
            f"template:   {treedef}"
        )
    problems = []
    for i, ((key_path, like), leaf) in enumerate(zip(with_path, leaves)):
        like_shape = tuple(np.shape(like))
        like_dtype = like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype
        if tuple(leaf.shape) != like_shape or leaf.dtype != like_dtype:
            problems.append(
                f"leaf {i} {jax.tree_util.keystr(key_path)}: expected shape {like_shape} dtype {like_dtype} "
                f"(opt_state_like), found shape {tuple(leaf.shape)} dtype {leaf.dtype} (checkpoint)"
            )
    if problems:
        raise ValueError(f"{path}: the optimizer state does not match opt_state_like:\n  " + "\n  ".join(problems))
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def _differences(desc: dict, params_info: list, net: Network) -> list[str]:
    """Every way the saved description and layer shapes differ from ``net``, one readable line each."""
    mine = net.describe()
    out = [
        f"{key}: checkpoint has {desc.get(key)!r}, network has {mine.get(key)!r}"
        for key in [*mine, *(k for k in desc if k not in mine)]
        if desc.get(key) != mine.get(key)
    ]
    net_shapes = net.param_shapes()
    for l in range(max(len(params_info), len(net_shapes))):
        saved = {name: tuple(leaf["shape"]) for name, leaf in params_info[l].items()} if l < len(params_info) else {}
        expected = net_shapes[l] if l < len(net_shapes) else {}
        for name in sorted(set(saved) | set(expected), key=lambda n: (n != "w", n)):
            got, want = saved.get(name, "none"), expected.get(name, "none")
            if got != want:
                out.append(f"layer {l} {name}: checkpoint {got}, network {want}")
    return out


def _encode(leaf: Any, where: str) -> tuple[np.ndarray, dict]:
    """A leaf as the numpy array to store and its JSON record ``{"dtype", "shape"[, "prng_impl"]}``."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        stored, info = _encode(jax.random.key_data(leaf), where)
        return stored, {**info, "prng_impl": str(jax.random.key_impl(leaf))}
    arr = np.asarray(leaf)
    name = arr.dtype.name
    if name in _NATIVE:
        stored = arr
    elif name in _VIEWED:
        stored = arr.view(np.dtype(f"uint{8 * arr.dtype.itemsize}"))
    else:
        raise TypeError(
            f"{where} has dtype {name}, which a checkpoint cannot hold; supported: "
            f"{sorted(_NATIVE) + sorted(_VIEWED)}."
        )
    if not stored.flags.c_contiguous:  # 0-d arrays are always contiguous, so their shape () survives
        stored = np.ascontiguousarray(stored)
    return stored, {"dtype": name, "shape": list(arr.shape)}


def _decode(path: Path, key: str, stored: np.ndarray, info: dict) -> Any:
    """Undo :func:`_encode`, checking the stored tensor against its JSON record."""
    name = info["dtype"]
    if name in _NATIVE:
        real, storage = _NATIVE[name], _NATIVE[name]
    elif name in _VIEWED:
        real = _VIEWED[name]
        storage = np.dtype(f"uint{8 * real.itemsize}")
    else:
        raise _invalid(path, f"tensor {key!r} is recorded with unsupported dtype {name!r}")
    if stored.dtype != storage or list(stored.shape) != list(info["shape"]):
        raise _invalid(
            path,
            f"tensor {key!r} is stored as {stored.dtype}{list(stored.shape)} but recorded as {name}{info['shape']}",
        )
    arr = stored.view(real)
    if "prng_impl" in info:
        try:
            return jax.random.wrap_key_data(arr, impl=str(info["prng_impl"]))
        except (TypeError, ValueError) as e:
            raise _invalid(path, f"tensor {key!r} is not valid data for PRNG key {info['prng_impl']!r} ({e})") from e
    return arr


def _digest(blob: str, tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the JSON blob and every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256(blob.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"\0{key}\0{t.dtype.name}\0{t.shape}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
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


def _invalid(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path} is not a valid fnn checkpoint: {reason}.")


def _read_checked(path: Path) -> tuple[bytes, int]:
    """The file's bytes and header length, after checking the 8-byte header length against the file size."""
    try:
        f = open(path, "rb")
    except FileNotFoundError as e:
        raise FileNotFoundError(e.errno, f"No checkpoint file at {path}", str(path)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _invalid(path, f"the file has {size} bytes, fewer than the 8-byte safetensors header length")
        header_len = int.from_bytes(head, "little")
        if not 2 <= header_len <= min(size - 8, _MAX_HEADER_BYTES):
            raise _invalid(path, f"its header claims {header_len} bytes but the file has {size} bytes in all")
        data = head + f.read(size - 8)
    if len(data) != size:
        raise _invalid(path, f"the file changed size while being read ({size} -> {len(data)} bytes)")
    return data, header_len


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
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


def _file_mode(path: Path) -> int | None:
    """The permission bits to give the new file: the old file's, else 0o666 minus the umask (None: keep 0o600)."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_mode & 0o777
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    return None
