"""Argument and data checks shared by the training modules (plain Python, before anything is compiled)."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from fnn import losses as _losses
from fnn._registry import unknown_name
from fnn.network import Network, check_input, numeric_array

__all__ = [
    "check_pair",
    "positive_number", "check_grads_mode", "prepare_data", "check_data", "check_fit_args", "tree_bytes",
    "available_memory", "check_memory",
]


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
    """``(x, y)`` as JAX arrays checked against the network and the loss: arrays of real numbers (``TypeError``
    for objects, strings or complex numbers), ``x`` of shape ``(n, *input_shape)``, matching example counts,
    targets of the loss's kind
    (sparse labels range-checked on the host before any narrowing cast), and finite values (a NaN in the data
    would otherwise look like a diverging run).
    ``what`` prefixes every message (``"train:"``, ``"test:"``, ``"evaluate:"``)."""
    x = numeric_array(f"{what} x", x)  # NumPy at full width (or a JAX array): int64 labels are not wrapped yet
    y = numeric_array(f"{what} y", y)
    if x.ndim != 1 + len(net.input_shape):
        raise ValueError(f"{what} x must have shape (n, {', '.join(map(str, net.input_shape))}), got shape {x.shape}.")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{what} x and y must have the same number of examples: x has {x.shape[0]}, y has shape {y.shape}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{what} needs at least one example, got x of shape {x.shape}.")
    try:
        x2, _ = check_input(net, params, x)
    except ValueError as e:  # say which data set
        raise ValueError(f"{what} {e}") from None
    y2 = _losses.check_targets(loss, y, net.output_shape[-1], x2.shape[0], None if loss.sparse else x2.dtype)
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
    test_xy = check_pair(net, params, loss_rec, test, "test")
    return loss_rec, x, y, test_xy


def check_pair(net: Network, params, loss: _losses.Loss, pair, name: str):
    """An optional ``(x, y)`` evaluation pair (``"test"``, ``"validation"``) prepared like the training data."""
    if pair is None:
        return None
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be a pair (x, y) or None, got {type(pair).__name__}.")
    return prepare_data(net, params, loss, *pair, f"{name}:")


def check_fit_args(x, batch_size, epochs) -> tuple[int, int]:
    """``(epochs, batch_size)`` as positive ints, the batch no larger than the training set."""
    epochs = positive_number("epochs", epochs, integer=True)
    batch_size = positive_number("batch_size", batch_size, integer=True)
    n = x.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} examples).")
    return epochs, batch_size


# --- memory -----------------------------------------------------------------------------------------------

def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e9:.2g} GB"


def tree_bytes(tree) -> int:
    """Bytes of every array leaf of ``tree`` (arrays, NumPy arrays or ``jax.ShapeDtypeStruct``): Σ size × itemsize,
    from shapes and dtypes only, so ``jax.eval_shape(net.init, key)`` sizes a network without allocating it."""
    return sum(math.prod(np.shape(leaf)) * jnp.dtype(leaf.dtype).itemsize
               for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "dtype"))


def _host_available() -> int | None:
    """Linux's MemAvailable (capped by a cgroup v2 limit, as in a container), else free pages × page size."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def available_memory(device=None) -> tuple[int, str] | None:
    """``(bytes free for new arrays, where)`` on ``device`` (default: JAX's first device), or None if unknown.

    An accelerator reports its allocator's ``bytes_limit - bytes_in_use`` (``Device.memory_stats()``); the CPU
    backend has no such stats, so its memory is the host's: Linux ``/proc/meminfo`` MemAvailable (capped by a
    cgroup v2 ``memory.max``), else ``os.sysconf`` free pages.
    """
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend implements it
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.platform} memory of {device}"
    host = _host_available()
    return None if host is None else (host, "host memory (MemAvailable)")


def check_memory(params, optimizer, *, strict: bool, what: str = "fit") -> None:
    """Refuse, before anything is allocated, a training run whose arrays cannot fit in memory (it would swap or
    hang rather than fail).

    Besides the given params, ``fit`` keeps about ``(2 + strict)`` more copies of them (the epoch's updated
    params and the gradients, and in strict mode the last finite params) and two of the optimizer state (its
    state and the epoch's update of it), sized with ``jax.eval_shape`` of ``optimizer.init`` (None: plain SGD,
    no state). A lower bound: XLA's temporaries and the data come on top.

    Raises:
      ValueError: that need exceeds :func:`available_memory`, with the sizes in GB.
    """
    param_bytes = tree_bytes(params)
    state_bytes = tree_bytes(jax.eval_shape(optimizer.init, params)) if optimizer is not None else 0
    copies = 2 + bool(strict)
    need = copies * param_bytes + 2 * state_bytes
    leaf = next((t for t in jax.tree_util.tree_leaves(params) if isinstance(t, jax.Array)), None)
    found = available_memory(next(iter(leaf.devices())) if leaf is not None else None)
    if found is None or need <= found[0]:
        return
    available, where = found
    kept = "updated params and gradients" + (", strict mode's last finite copy" if strict else "")
    state = f"; 2 × {_gb(state_bytes)} of optimizer state" if state_bytes else ""
    raise ValueError(
        f"{what}: the network is too large for this machine's memory: its params take {_gb(param_bytes)}, and "
        f"training needs about {_gb(need)} more ({copies} × the params: {kept}{state}), but only "
        f"{_gb(available)} of {where} is available. Use a smaller network or a lower-precision dtype."
    )
