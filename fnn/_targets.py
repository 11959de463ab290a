"""Target validation for the losses: shapes, dtypes and label ranges (re-exported by :mod:`fnn.losses`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn._types import Array
from fnn.network import numeric_array

__all__ = ["check_label_range", "check_targets"]


def check_label_range(loss, labels: np.ndarray, n_out: int) -> None:
    """Raise ``ValueError`` unless the concrete integer ``labels`` of a sparse loss lie in ``[0, n_out)``, naming
    the first label outside it and its index. Check host labels before any cast: int64 labels of 2**31 and
    above would wrap into the range (4294967297 -> 1) in JAX without x64."""
    labels = np.asarray(labels)
    outside = (labels < 0) | (labels >= n_out)
    if labels.size and outside.any():
        first = np.unravel_index(np.argmax(outside), labels.shape)
        index = first[0] if len(first) == 1 else tuple(int(i) for i in first)
        raise ValueError(
            f"Loss {loss.name!r}: labels must lie in [0, {n_out}) for a network with {n_out} outputs, "
            f"got label {labels[first]} at index {index} ({int(outside.sum())} outside; labels from "
            f"{labels.min()} to {labels.max()})."
        )


def check_targets(loss, y, n_out: int, batch: int, dtype=None) -> Array:
    """Validate targets against a network output and return them as an array of the canonical shape.

    Dense losses take ``y`` of shape ``(batch, n_out)``, or ``(batch,)`` when ``n_out == 1``. Sparse losses
    take integer labels of shape ``(batch,)`` in ``[0, n_out)``; the range is checked when the labels are
    concrete, on the host at their own width (int64 labels of 2**31 and above are refused, not wrapped by a
    cast to int32); labels that are JAX tracers (under the caller's ``jit``) cannot be checked. Dense targets
    are cast to ``dtype`` (the network's) when it is given; integer ones on the host, at full width.

    Raises:
      ValueError: wrong shape, batch size or one-hot width, or labels out of range.
      TypeError: float labels for a sparse loss; targets of objects, strings or complex numbers.
    """
    y = numeric_array("y", y)  # NumPy (full width) or a JAX array: nothing narrowed yet
    if loss.sparse:
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(
                f"Loss {loss.name!r} expects integer class labels of shape ({batch},), got dtype {y.dtype} "
                f"with shape {y.shape}. Use the dense loss with one-hot targets, or cast labels to int."
            )
        if y.shape != (batch,):
            raise ValueError(
                f"Loss {loss.name!r} expects integer labels of shape ({batch},) (one per example), got shape {y.shape}."
            )
        try:
            labels = np.asarray(y)
        except jax.errors.TracerArrayConversionError:
            return y
        check_label_range(loss, labels, n_out)
        return jnp.asarray(y)  # in [0, n_out) now, so a cast to int32 cannot wrap
    if y.ndim == 1 and n_out == 1 and y.shape[0] == batch:
        y = y[:, None]
    if y.shape != (batch, n_out):
        raise ValueError(
            f"Loss {loss.name!r} expects targets of shape ({batch}, {n_out}) to match the network output "
            f"(batch {batch}, {n_out} outputs), got shape {y.shape}."
        )
    if isinstance(y, np.ndarray) and not jnp.issubdtype(y.dtype, jnp.inexact):
        y = y.astype(jnp.result_type(float) if dtype is None else dtype)  # on the host: int64 would wrap in JAX
    y = jnp.asarray(y)
    if dtype is not None:
        y = y.astype(dtype)
    elif not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(float))
    return y
