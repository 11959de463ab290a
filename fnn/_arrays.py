"""Validation of user arrays, of one layer's params and of a network's state (shared by :mod:`fnn.network` and
the training checks)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["numeric_array", "check_layer_params", "dtype_hint", "path_parts", "check_state"]


def path_parts(key_path) -> list[str]:
    """The parts of a ``jax.tree_util`` key path as strings, ``["3", "1", "w"]`` for ``params[3][1]["w"]`` (fnn
    names that leaf ``3.1.w``)."""
    return [str(getattr(k, "idx", getattr(k, "key", getattr(k, "name", k)))) for k in key_path]


def dtype_hint(dtype) -> str:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return "; fnn's networks are real-valued and JAX would drop the imaginary part (pass .real explicitly)"
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        return ("; it holds no numbers (an object or string column, e.g. from pandas, must be encoded as numbers "
                "first: df.to_numpy(dtype='float32'))")
    return ""


def numeric_array(name: str, value):
    """``value`` as an array of real numbers, without narrowing it: a JAX array (or tracer) as it is, anything
    else as a NumPy array at full width (``jnp.asarray`` turns int64 into int32 when JAX runs without x64,
    wrapping 2**31 to -2**31, so integers are checked and cast on the host first).

    Raises:
      TypeError: naming ``name`` and the dtype, for arrays of objects or strings (a stray pandas column, which
        JAX would refuse with "Error interpreting argument") and for complex numbers (whose imaginary part a
        cast to the params' dtype would drop with only a warning).
    """
    if not isinstance(value, jax.Array):  # tracers are jax.Arrays too: their dtype is checked, never converted
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as e:  # ragged nested lists
            raise TypeError(f"{name} must be an array of numbers, got a {type(value).__name__} NumPy cannot turn "
                            f"into one ({e}).") from None
    dtype = value.dtype
    real = jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    if not real:
        raise TypeError(f"{name} must be an array of real numbers, got dtype {dtype}{dtype_hint(dtype)}.")
    return value



def _where(path: str) -> str:
    return f"Layer {path}"


def check_layer_params(path: str, layer_params, expected) -> None:
    if isinstance(expected, list):
        if not isinstance(layer_params, (list, tuple)) or len(layer_params) != len(expected):
            got = f"{len(layer_params)} entries" if isinstance(layer_params, (list, tuple)) else \
                type(layer_params).__name__
            raise ValueError(f"{_where(path)}: expected params as a list of {len(expected)} inner-layer entries, "
                             f"got {got}.")
        for i, (p, e) in enumerate(zip(layer_params, expected, strict=True)):
            check_layer_params(f"{path}.{i}", p, e)
        return
    if not isinstance(layer_params, dict):
        raise TypeError(f"{_where(path)}: params must be a dict with keys {sorted(expected)}, "
                        f"got {type(layer_params).__name__}.")
    if "b" in layer_params and layer_params["b"] is None:
        raise ValueError(
            f'{_where(path)}: params have "b": None; a layer without bias has no "b" key (omit it, as '
            f"fnn.mlp(..., bias=False) does), and a layer with bias needs a bias array of shape "
            f"{expected.get('b', '(n_out,)')}."
        )
    got_keys = sorted(layer_params)
    if got_keys != sorted(expected):
        raise ValueError(f"{_where(path)}: expected params with keys {sorted(expected)}, got keys {got_keys}.")
    for name, shape in expected.items():
        actual = tuple(jnp.shape(layer_params[name]))
        if actual != shape:
            raise ValueError(f"{_where(path)}: expected {name} of shape {shape}, got {actual}.")
        dtype = getattr(layer_params[name], "dtype", None)
        dtype = np.asarray(layer_params[name]).dtype if dtype is None else dtype
        if not jnp.issubdtype(dtype, jnp.floating):  # complex is inexact, but not a real float
            index = "".join(f"[{i}]" for i in path.split("."))
            raise TypeError(f"{_where(path)}: expected {name} of a floating dtype (float16, bfloat16, float32 or "
                            f"float64), got params{index}[{name!r}] of dtype {dtype}{dtype_hint(dtype)}.")


def _first_stateful(layers, prefix: str):
    """``(path, kind)`` of the first layer with state, looking inside blocks."""
    for l, layer in enumerate(layers):
        if layer.init_state is not None:
            return _first_stateful(layer.children, f"{prefix}{l}.") if layer.children else (f"{prefix}{l}", layer.kind)
    return None


@functools.lru_cache(maxsize=64)
def _state_template(net):
    return jax.eval_shape(net.init_state)


def check_state(net, state):
    """``state`` validated against ``net.init_state()`` (one entry per layer, the same keys and shapes), or
    None. A net with state requires it; a net without state takes None or its (empty) ``init_state()``.

    Raises:
      ValueError / TypeError: a missing state for a net with BatchNorm (naming the layer), a state of another
        network (naming the entry and both shapes).
    """
    if state is None:
        if net.stateful:
            where, kind = _first_stateful(net.layers, "")
            raise ValueError(f"This network has state (layer {where}: {kind}'s running statistics), so every call "
                             f"needs state=: start from state = net.init_state() and pass the state each "
                             f"training-mode call returns.")
        return None
    want = _state_template(net)
    if not isinstance(state, (list, tuple)) or len(state) != len(want):
        got = f"{len(state)} entries" if isinstance(state, (list, tuple)) else f"a {type(state).__name__}"
        raise TypeError(f"state must be a list with one entry per layer ({len(want)}; {{}} for a layer without "
                        f"state), as net.init_state() gives; got {got}.")
    flat_want, tree_want = jax.tree_util.tree_flatten_with_path(want)
    flat_got, tree_got = jax.tree_util.tree_flatten_with_path(list(state))
    if tree_got != tree_want:
        raise ValueError(f"state does not match the network's: expected the structure of net.init_state() "
                         f"{tree_want}, got {tree_got}.")
    for (path, w), (_, g) in zip(flat_want, flat_got, strict=True):
        if np.shape(g) != w.shape:
            name = ".".join(path_parts(path))
            raise ValueError(f"state entry {name} has shape {np.shape(g)}, expected {w.shape}.")
    return list(state)
