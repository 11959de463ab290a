"""Save and load params, optimizer state and training records as one safetensors file.

A checkpoint is a single `safetensors <https://github.com/huggingface/safetensors>`_ file: raw little-endian
tensors plus a JSON header. Nothing in it is code, and loading never unpickles or evaluates anything, so a
checkpoint from an untrusted source can at worst be rejected. On disk:

=======================  ==========================================================================
tensor key               content
=======================  ==========================================================================
``params/<l>/w``         layer ``l``'s weights ``(n_in, n_out)``
``params/<l>/b``         layer ``l``'s bias ``(n_out,)`` (absent when ``bias=False``)
``params/<l>/<i>/w``     inner layer ``i`` of block ``l`` (a Residual); paths nest as params do
``state/<l>/<name>``     layer ``l``'s state (e.g. running statistics), laid out like params (optional)
``opt_state/<i>``        leaf ``i`` of ``jax.tree_util.tree_flatten(opt_state)``
``arrays/<name>``        an extra named array (a PRNG key's ``key_data``, per-epoch history, ...)
=======================  ==========================================================================

The JSON's ``"params"`` (and ``"state"``) mirrors the pytree: a list per list (one entry per layer, or per
inner layer of a block), a dict per dict, and each leaf's ``{"dtype", "shape"}``. Format version 2 (serial
networks, ``state``) differs from version 1 only in what it may hold: a version-1 file (``fnn.mlp`` networks,
their description in ``fnn.mlp``'s form, no ``"state"``) is a valid version-2 file once its version is read,
and :func:`load` reads both.

The safetensors string metadata holds two entries: ``"fnn"``, one JSON blob with the format version, the
network's :meth:`~fnn.network.Network.describe`, the user ``metadata`` dict and the dtype and shape of every
stored leaf; and ``"fnn_sha256"``, a SHA-256 over that blob and every tensor, so a flipped bit anywhere that
matters is reported instead of silently loaded. Dtypes safetensors' numpy reader lacks (``bfloat16``, the
``float8`` family) are stored as an unsigned-integer view of the same width and viewed back on load, so every
leaf round-trips bit for bit. Typed PRNG keys (``jax.random.key``) are stored as their ``key_data`` and
re-wrapped with their implementation's name.

Writes are atomic: the bytes go to a temporary file in the target's directory, are flushed and ``fsync``-ed,
then ``os.replace``-d onto the path, so a crash mid-save leaves the previous checkpoint untouched. The encoding,
the digest, the bounded reading and the atomic write live in ``fnn/_checkpoint_format.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from fnn import _checkpoint_format as fmt
from fnn import _checkpoint_tree as tree
from fnn._types import Array, Params, PyTree
from fnn.network import Network, from_description

__all__ = ["Checkpoint", "FORMAT_VERSION", "READABLE_VERSIONS", "save", "load"]

#: The version written into every checkpoint (2: serial networks, nested params, ``state``).
FORMAT_VERSION = 2
#: The versions :func:`load` reads; it refuses any other.
READABLE_VERSIONS = (1, 2)


class Checkpoint(NamedTuple):
    """What :func:`load` returns.

    Attributes:
      params: one entry of ``jax.Array`` per layer, in the saved dtypes (``{"w", "b"}`` for Dense, ``{}`` for a
        layer without params, a list for a Residual block), the structure :func:`save` was given.
      net: the :class:`~fnn.network.Network` (the one passed to :func:`load`, or rebuilt from the file).
      opt_state: the optimizer state rebuilt on ``opt_state_like``'s structure; the flat list of its leaves
        when no template was given; ``None`` when none was saved.
      metadata: the user's JSON metadata dict (``{}`` when none was saved).
      arrays: the extra named arrays, as numpy arrays (exact dtypes, never downcast), typed PRNG keys as keys.
      state: the layers' state saved with ``state=`` (one entry per layer, laid out like params, of
        ``jax.Array``), or ``None`` when none was saved (every version-1 file).
    """

    params: Params
    net: Network
    opt_state: PyTree | list[Array] | None
    metadata: dict[str, Any]
    arrays: dict[str, Any]
    state: PyTree | None = None


def save(
    path: str | os.PathLike,
    params: Params,
    *,
    net: Network,
    opt_state: PyTree | None = None,
    metadata: Mapping[str, Any] | None = None,
    arrays: Mapping[str, Any] | None = None,
    state: PyTree | None = None,
) -> Path:
    """Write params (and optionally optimizer state, metadata, extra arrays) atomically to one file.

    Args:
      path: the file to write; missing parent directories are created; an existing file is replaced only
        once the new one is completely on disk.
      params: one entry per layer (``{"w": (n_in, n_out), "b": (n_out,)}`` for Dense, ``{}`` without params, a
        list of inner entries for a Residual), checked against ``net``.
      net: the network the params belong to; its ``describe()`` is stored so :func:`load` can rebuild it.
      opt_state: any pytree of arrays, e.g. an optax state; its leaves are stored in
        ``jax.tree_util.tree_flatten`` order (rebuild it with ``load(..., opt_state_like=...)``).
      metadata: a dict with ``str`` keys and JSON-serialisable values (tuples come back as lists).
      arrays: extra named arrays, e.g. ``{"key": jax.random.key_data(key), "train_loss": history}``.
      state: the layers' state (e.g. running statistics): a list with one entry per layer, each a dict of
        arrays (``{}`` for a stateless layer) or a list for a block, like params; stored under ``state/...``
        and given back as :attr:`Checkpoint.state` (tuples come back as lists).

    Returns:
      The path written, as a ``pathlib.Path``.

    Raises:
      ValueError: params do not fit ``net`` (the message names the layer and the shapes); ``state`` has not
        one entry per layer.
      TypeError: metadata not JSON-serialisable (the message names the offending key), a bad array name or
        state key, or a leaf of a dtype a checkpoint cannot hold (strings, objects, complex128).
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
        raise TypeError(f"save needs net=, the Network (from fnn.mlp or fnn.serial) the params belong to; got "
                        f"{type(net).__name__}.")
    net.check_params(params)
    meta = fmt.check_metadata(metadata)
    if state is not None and (not isinstance(state, (list, tuple)) or len(state) != net.num_layers):
        got = f"{len(state)} entries" if isinstance(state, (list, tuple)) else f"a {type(state).__name__}"
        raise ValueError(f"state must be a list with one entry per layer ({net.num_layers}; {{}} for a layer "
                         f"without state), got {got}.")

    tensors: dict[str, np.ndarray] = {}
    params_info = tree.encode_tree(params, "params", tensors)
    state_info = None if state is None else tree.encode_tree(state, "state", tensors)

    opt_info = None
    if opt_state is not None:
        leaves, treedef = jax.tree_util.tree_flatten(opt_state)
        leaves_info = []
        for i, leaf in enumerate(leaves):
            tensors[f"opt_state/{i}"], info = fmt.encode(leaf, f"opt_state leaf {i}")
            leaves_info.append(info)
        opt_info = {"num_leaves": len(leaves), "leaves": leaves_info, "treedef": str(treedef)}

    arrays_info = {}
    for name, value in (arrays or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"arrays names must be non-empty str, got {name!r}.")
        tensors[f"arrays/{name}"], arrays_info[name] = fmt.encode(value, f"arrays[{name!r}]")

    header = {
        "format": fmt.FORMAT_NAME,
        "version": FORMAT_VERSION,
        "net": net.describe(),
        "params": params_info,
        "state": state_info,
        "opt_state": opt_info,
        "arrays": arrays_info,
        "metadata": meta,
    }
    blob = json.dumps(header)
    data = safetensors.numpy.save(tensors, metadata={fmt.META_KEY: blob, fmt.DIGEST_KEY: fmt.digest(blob, tensors)})
    fmt.atomic_write(path, data)
    return path


def load(path: str | os.PathLike, net: Network | None = None, *, opt_state_like: PyTree | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save`, validating everything before trusting it.

    Loading parses JSON and raw tensor bytes only: no pickle, no ``eval``, no code from the file runs.
    Params come back as ``jax.Array`` in their saved dtypes (64-bit leaves become 32-bit, with JAX's warning,
    unless x64 is enabled).

    Args:
      path: a file written by :func:`save`.
      net: the network to load into. When given, its description and layer shapes must match the saved
        ones; when ``None`` the network is rebuilt with :func:`fnn.network.from_description` (either form).
      opt_state_like: a template with the optimizer state's structure, e.g. ``optimizer.init(params)`` or
        ``jax.eval_shape(optimizer.init, params)``. Required to get the saved state back as a pytree: its
        leaf count, shapes and dtypes are checked and its treedef is used to unflatten the saved leaves.
        Without it, a saved state comes back as the flat list of its leaves (``tree_flatten`` order).

    Returns:
      A :class:`Checkpoint` ``(params, net, opt_state, metadata, arrays, state)``; ``opt_state`` (``state``)
      is ``None`` when the checkpoint holds no optimizer state (no layer state). Version-1 files load as well.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not a valid fnn checkpoint (truncated, corrupted, empty, junk, a pickle, a
        plain safetensors file without fnn metadata, a checksum mismatch, an unknown format version); the
        checkpoint does not match ``net`` (the message lists each difference); or the saved optimizer state
        does not match ``opt_state_like`` (the message names the leaf, expected and found).
    """
    path = Path(path)
    if net is not None and not isinstance(net, Network):
        raise TypeError(f"load's net must be None or a Network (from fnn.mlp or fnn.serial), got "
                        f"{type(net).__name__}.")
    data, _, header = fmt.read_checked(path)  # regular file, bounded header size and tensor count
    try:
        tensors = safetensors.numpy.load(data)
        st_meta = header.get("__metadata__") or {}
        if not isinstance(st_meta, dict):
            raise TypeError(f"__metadata__ is a {type(st_meta).__name__}")
    except Exception as e:  # safetensors raises SafetensorError, KeyError (unknown dtype), ...
        raise fmt.invalid(path, f"it is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if fmt.META_KEY not in st_meta:
        raise ValueError(
            f"{path} is a safetensors file but not a valid fnn checkpoint: its metadata has no {fmt.META_KEY!r} "
            f"entry (found {sorted(st_meta)})."
        )
    blob = st_meta[fmt.META_KEY]
    try:
        info = json.loads(blob)
    except (ValueError, RecursionError) as e:
        raise fmt.invalid(path, f"its {fmt.META_KEY!r} metadata is not valid JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != fmt.FORMAT_NAME:
        raise fmt.invalid(path, f"its {fmt.META_KEY!r} metadata does not describe an fnn checkpoint")
    version = info.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: unsupported fnn checkpoint format version {version!r}; "
            f"this fnn reads versions {' and '.join(map(str, READABLE_VERSIONS))}."
        )
    if st_meta.get(fmt.DIGEST_KEY) != fmt.digest(blob, tensors):
        raise fmt.invalid(path, "its SHA-256 checksum does not match its contents (the file is corrupted)")

    try:
        return _decode_checkpoint(path, info, tensors, net, opt_state_like)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise fmt.invalid(path, f"its {fmt.META_KEY!r} metadata is malformed ({type(e).__name__}: {e})") from e


def _decode_checkpoint(
    path: Path, info: dict, tensors: dict, net: Network | None, opt_state_like: PyTree
) -> Checkpoint:
    params_info, opt_info, arrays_info = info["params"], info["opt_state"], info["arrays"]
    state_info = info.get("state") if info["version"] >= 2 else None  # version 1 had no state
    if not isinstance(params_info, list) or not (state_info is None or isinstance(state_info, list)):
        raise fmt.invalid(path, "its params (or state) are not described as a list of layers")
    expected_keys = set(tree.tree_keys(params_info, "params"))
    expected_keys |= set() if state_info is None else set(tree.tree_keys(state_info, "state"))
    expected_keys |= {f"arrays/{name}" for name in arrays_info}
    if opt_info is not None:
        if opt_info["num_leaves"] != len(opt_info["leaves"]):
            raise fmt.invalid(path, "its optimizer-state leaf count disagrees with its leaf list")
        expected_keys |= {f"opt_state/{i}" for i in range(opt_info["num_leaves"])}
    if expected_keys != set(tensors):
        missing, extra = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
        raise fmt.invalid(path, f"its tensors do not match its description (missing {missing}, unexpected {extra})")

    def decode(key: str, leaf_info: dict) -> Any:
        return fmt.decode(path, key, tensors[key], leaf_info)

    desc = info["net"]
    if net is None:
        try:
            net = from_description(desc)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: cannot rebuild the network from its description {desc}: {e} "
                             f"Pass the network explicitly with load(path, net).") from e
    else:
        differences = tree.differences(desc, params_info, net)
        if differences:
            raise ValueError(f"{path}: the checkpoint does not match the given network:\n  " + "\n  ".join(differences))

    params = tree.decode_tree(params_info, "params", decode)
    try:
        net.check_params(params)
    except (TypeError, ValueError) as e:
        raise fmt.invalid(path, f"its params do not fit the network it describes ({e})") from e
    state = None if state_info is None else tree.decode_tree(state_info, "state", decode)
    if state is not None and len(state) != net.num_layers:
        raise fmt.invalid(path, f"its state has {len(state)} entries, its network {net.num_layers} layers")

    opt_state = None
    if opt_info is not None:
        leaves = [decode(f"opt_state/{i}", leaf) for i, leaf in enumerate(opt_info["leaves"])]
        if opt_state_like is None:
            opt_state = [jnp.asarray(leaf) for leaf in leaves]
        else:
            opt_state = tree.unflatten_like(path, leaves, opt_state_like, opt_info["treedef"])

    arrays = {name: decode(f"arrays/{name}", leaf) for name, leaf in arrays_info.items()}
    metadata = info["metadata"]
    if not isinstance(metadata, dict):
        raise fmt.invalid(path, "its user metadata is not a dict")
    return Checkpoint(params, net, opt_state, metadata, arrays, state)
