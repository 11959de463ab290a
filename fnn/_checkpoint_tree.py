"""The pytrees of a checkpoint: nested params and state stored as tensors ``params/3/1/w`` with a JSON info that
mirrors the tree, the optimizer state checked against a template, and the readable list of how a checkpoint's
network differs from a given one (:mod:`fnn.checkpoint` reads and writes the files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _checkpoint_format as fmt
from fnn._types import PyTree
from fnn.network import Network

__all__ = ["encode_tree", "tree_keys", "decode_tree", "is_leaf_info", "unflatten_like", "differences"]


# --- nested params and state: tensor keys "params/3/1/w", JSON info mirroring the pytree ---------------------

def encode_tree(tree: PyTree, key: str, tensors: dict[str, np.ndarray]) -> Any:
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


def is_leaf_info(node: Any) -> bool:
    """A leaf's JSON record (its ``"dtype"`` is a str; a dict of leaves has records as values instead)."""
    return isinstance(node, dict) and isinstance(node.get("dtype"), str)


def tree_keys(info: Any, key: str) -> list[str]:
    """The tensor keys an info tree (from :func:`encode_tree`) names."""
    if isinstance(info, list):
        return [k for i, child in enumerate(info) for k in tree_keys(child, f"{key}/{i}")]
    if is_leaf_info(info):
        return [key]
    return [k for name, child in info.items() for k in tree_keys(child, f"{key}/{name}")]


def decode_tree(info: Any, key: str, decode) -> Any:
    """Undo :func:`encode_tree`: the same structure of lists and dicts, each leaf a ``jax.Array``."""
    if isinstance(info, list):
        return [decode_tree(child, f"{key}/{i}", decode) for i, child in enumerate(info)]
    if is_leaf_info(info):
        return jnp.asarray(decode(key, info))
    return {name: decode_tree(child, f"{key}/{name}", decode) for name, child in info.items()}


def unflatten_like(path: Path, leaves: list, template: PyTree, saved_treedef: str) -> PyTree:
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


def differences(desc: dict, params_info: list, net: Network) -> list[str]:
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
    if not isinstance(node, dict) or is_leaf_info(node):
        return []
    out = []
    for name, child in node.items():
        if isinstance(child, tuple):  # net.param_shapes(): a shape
            out.append(((*path, name), child))
        elif is_leaf_info(child):
            out.append(((*path, name), tuple(child.get("shape", ()))))
        else:
            out += _info_shapes(child, (*path, name))
    return out
