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
    params_info = _encode_tree(params, "params", tensors)
    state_info = None if state is None else _encode_tree(state, "state", tensors)

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
    expected_keys = set(_tree_keys(params_info, "params"))
    expected_keys |= set() if state_info is None else set(_tree_keys(state_info, "state"))
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
        differences = _differences(desc, params_info, net)
        if differences:
            raise ValueError(f"{path}: the checkpoint does not match the given network:\n  " + "\n  ".join(differences))

    params = _decode_tree(params_info, "params", decode)
    try:
        net.check_params(params)
    except (TypeError, ValueError) as e:
        raise fmt.invalid(path, f"its params do not fit the network it describes ({e})") from e
    state = None if state_info is None else _decode_tree(state_info, "state", decode)
    if state is not None and len(state) != net.num_layers:
        raise fmt.invalid(path, f"its state has {len(state)} entries, its network {net.num_layers} layers")

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
        raise fmt.invalid(path, "its user metadata is not a dict")
    return Checkpoint(params, net, opt_state, metadata, arrays, state)


# --- nested params and state: tensor keys "params/3/1/w", JSON info mirroring the pytree ---------------------

def _encode_tree(tree: PyTree, key: str, tensors: dict[str, np.ndarray]) -> Any:
    """Store every leaf of ``tree`` (lists and dicts of arrays) under ``key/<index or name>/...``; return the
    JSON info with the same structure, each leaf's ``{"dtype", "shape"}`` in its place."""
    def walk(node, key: str, where: str):
        if isinstance(node, (list, tuple)):
            return [walk(child, f"{key}/{i}", f"{where}[{i}]") for i, child in enumerate(node)]
        if isinstance(node, Mapping):
            out = {}
            for name, child in node.items():
                if not isinstance(name, str) or not name or "/" in name:
                    raise TypeError(f"{where} has a key {name!r}; keys of params and state must be non-empty str "
                                    f"without '/'.")
                out[name] = walk(child, f"{key}/{name}", f"{where}[{name!r}]")
            return out
        tensors[key], info = fmt.encode(node, where)
        return info
    return walk(tree, key, key)


def _is_leaf_info(node: Any) -> bool:
    """A leaf's JSON record (its ``"dtype"`` is a str; a dict of leaves has records as values instead)."""
    return isinstance(node, dict) and isinstance(node.get("dtype"), str)


def _tree_keys(info: Any, key: str) -> list[str]:
    """The tensor keys an info tree (from :func:`_encode_tree`) names."""
    if isinstance(info, list):
        return [k for i, child in enumerate(info) for k in _tree_keys(child, f"{key}/{i}")]
    if _is_leaf_info(info):
        return [key]
    return [k for name, child in info.items() for k in _tree_keys(child, f"{key}/{name}")]


def _decode_tree(info: Any, key: str, decode) -> Any:
    """Undo :func:`_encode_tree`: the same structure of lists and dicts, each leaf a ``jax.Array``."""
    if isinstance(info, list):
        return [_decode_tree(child, f"{key}/{i}", decode) for i, child in enumerate(info)]
    if _is_leaf_info(info):
        return jnp.asarray(decode(key, info))
    return {name: _decode_tree(child, f"{key}/{name}", decode) for name, child in info.items()}


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
    for i, ((key_path, like), leaf) in enumerate(zip(with_path, leaves, strict=True)):
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
    """Every way the saved description and layer shapes differ from ``net``, one readable line each.

    Two ``fnn.mlp`` descriptions are compared entry by entry (``sizes: checkpoint has [...], network has
    [...]``); otherwise both are compared layer by layer, nested layers by path (``layer 3.1 activation:
    checkpoint has 'tanh', network has 'relu'``). Then every leaf's shape (``layer 3.1 w: checkpoint (8, 8),
    network none``).
    """
    mine = net.describe()
    if isinstance(desc, dict) and "sizes" in desc and "sizes" in mine:
        out = [
            f"{key}: checkpoint has {desc.get(key)!r}, network has {mine.get(key)!r}"
            for key in [*mine, *(k for k in desc if k not in mine)]
            if desc.get(key) != mine.get(key)
        ]
    else:
        saved, now = _as_layers(desc), _as_layers(mine)
        keys = [k for k in [*now, *(k for k in saved if k not in now)] if k != "layers"]
        out = [f"{key}: checkpoint has {saved.get(key)!r}, network has {now.get(key)!r}"
               for key in keys if saved.get(key) != now.get(key)]
        layers = saved.get("layers")
        out += _layer_differences(layers if isinstance(layers, list) else [], now["layers"], "")
    saved_shapes = dict(_info_shapes(params_info, ()))
    net_shapes = dict(_info_shapes(net.param_shapes(), ()))
    order = lambda path: (tuple(int(p) for p in path[:-1] if str(p).isdigit()), path[-1] != "w", str(path[-1]))
    for leaf in sorted(set(saved_shapes) | set(net_shapes), key=order):
        got, want = saved_shapes.get(leaf, "none"), net_shapes.get(leaf, "none")
        if got != want:
            out.append(f"layer {'.'.join(map(str, leaf[:-1]))} {leaf[-1]}: checkpoint {got}, network {want}")
    return out


def _as_layers(desc: dict) -> dict:
    """A description in the layer-list form (an ``fnn.mlp`` description becomes its Dense layers)."""
    if "sizes" not in desc:
        return desc
    try:
        layers = [{"kind": "Dense", "units": n, "activation": a, "bias": desc.get("bias", True),
                   "init": desc.get("init", "glorot_uniform")}
                  for n, a in zip(desc["sizes"][1:], desc["activations"], strict=True)]
        return {"input_shape": [desc["sizes"][0]], "layers": layers, "dtype": desc.get("dtype")}
    except (KeyError, TypeError, ValueError, IndexError):
        return {**desc, "layers": []}


def _show(layer: Any) -> str:
    """``Dense(units=8, activation='tanh', ...)``, ``Residual(Dense(...))``, or ``none``."""
    if not isinstance(layer, dict):
        return "none" if layer is None else repr(layer)
    if isinstance(layer.get("layers"), list):
        return f"{layer.get('kind')}({', '.join(_show(child) for child in layer['layers'])})"
    return f"{layer.get('kind')}({', '.join(f'{k}={v!r}' for k, v in layer.items() if k != 'kind')})"


def _layer_differences(saved: list, mine: list, prefix: str) -> list[str]:
    where = f"layer {prefix[:-1]}" if prefix else "network"
    out = [f"{where}: checkpoint has {len(saved)} layer(s), network has {len(mine)}"] if len(saved) != len(mine) else []
    for i in range(max(len(saved), len(mine))):
        a = saved[i] if i < len(saved) else None
        b = mine[i] if i < len(mine) else None
        path = f"{prefix}{i}"
        if a == b:
            continue
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.get("kind") != b.get("kind"):
            out.append(f"layer {path}: checkpoint {_show(a)}, network {_show(b)}")
        elif isinstance(a.get("layers"), list) and isinstance(b.get("layers"), list):
            out += _layer_differences(a["layers"], b["layers"], f"{path}.")
        else:
            out += [f"layer {path} {key}: checkpoint has {a.get(key)!r}, network has {b.get(key)!r}"
                    for key in [*b, *(k for k in a if k not in b)] if a.get(key) != b.get(key)]
    return out


def _info_shapes(node: Any, path: tuple) -> list[tuple[tuple, tuple]]:
    """``(path, shape)`` of every leaf of a params info tree or of ``net.param_shapes()``."""
    if isinstance(node, list):
        return [item for i, child in enumerate(node) for item in _info_shapes(child, (*path, i))]
    if not isinstance(node, dict) or _is_leaf_info(node):
        return []
    out = []
    for name, child in node.items():
        if isinstance(child, tuple):  # net.param_shapes(): a shape
            out.append(((*path, name), child))
        elif _is_leaf_info(child):
            out.append(((*path, name), tuple(child.get("shape", ()))))
        else:
            out += _info_shapes(child, (*path, name))
    return out
