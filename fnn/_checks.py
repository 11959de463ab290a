"""Argument and data checks shared by the training modules (plain Python, before anything is compiled)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from fnn import losses as _losses
from fnn._registry import unknown_name
from fnn.network import Network, check_input

__all__ = ["positive_number", "check_grads_mode", "prepare_data", "check_data", "check_fit_args"]


def positive_number(name: str, value, *, integer: bool = False):
    """``value`` as a positive float (or int); ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    kind = "int" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive {kind}, got {type(value).__name__} {value!r}.")
    if integer and not float(value).is_integer():
        raise TypeError(f"{name} must be a positive int, got {value!r}.")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive {kind}, got {value!r}.")
    return int(value) if integer else float(value)


def check_grads_mode(grads: str) -> str:
    """``grads`` if it is ``"manual"`` or ``"autodiff"``, else a ``ValueError`` listing both."""
    if grads not in ("manual", "autodiff"):
        raise unknown_name("grads mode", grads, ["manual", "autodiff"])
    return grads


def prepare_data(net: Network, params, loss: _losses.Loss, x, y, what: str):
    """``(x, y)`` as JAX arrays checked against the network and the loss: 2-D ``x``, matching example counts,
    targets of the loss's kind, and finite values (a NaN in the data would otherwise look like a diverging run).
    ``what`` prefixes every message (``"train:"``, ``"test:"``, ``"evaluate:"``)."""
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"{what} x must have shape (n, {net.sizes[0]}), got shape {x.shape}.")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{what} x and y must have the same number of examples: x has {x.shape[0]}, y has shape {y.shape}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{what} needs at least one example, got x of shape {x.shape}.")
    x2, _ = check_input(net, params, x)
    y2 = _losses.check_targets(loss, y, net.sizes[-1], x2.shape[0], None if loss.sparse else x2.dtype)
    for name, arr in (("x", x2), ("y", y2)):
        if jnp.issubdtype(arr.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(arr))):
            bad = np.argwhere(~np.isfinite(np.asarray(arr, np.float32)))
            raise ValueError(
                f"{what} {name} must be finite, got {len(bad)} NaN or inf value(s) in {arr.dtype} (first at index "
                f"{tuple(int(i) for i in bad[0])}); clean the data, or use a wider params dtype if it overflowed."
            )
    return x2, y2


def check_data(net: Network, params, loss, train, test):
    """``(loss record, x, y, (x_test, y_test) or None)``: the data checks shared by ``fit`` and ``fit_ensemble``."""
    for name, pair in (("train", train), ("test", test)):
        if (pair is not None or name == "train") and (not isinstance(pair, (tuple, list)) or len(pair) != 2):
            or_none = " or None" if name == "test" else ""
            raise TypeError(f"{name} must be a pair (x, y){or_none}, got {type(pair).__name__}.")
    loss_rec = _losses.get(loss)
    x, y = prepare_data(net, params, loss_rec, *train, "train:")
    test_xy = prepare_data(net, params, loss_rec, *test, "test:") if test is not None else None
    return loss_rec, x, y, test_xy


def check_fit_args(x, batch_size, epochs) -> tuple[int, int]:
    """``(epochs, batch_size)`` as positive ints, the batch no larger than the training set."""
    epochs = positive_number("epochs", epochs, integer=True)
    batch_size = positive_number("batch_size", batch_size, integer=True)
    n = x.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} examples).")
    return epochs, batch_size
