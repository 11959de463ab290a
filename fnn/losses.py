"""Loss functions, each with its hand-written gradient beside it.

A :class:`Loss` record holds ``value(pred, y) -> scalar`` and ``grad(pred, y) -> dL/dpred``. ``pred`` has
shape ``(batch, n_out)``; ``y`` has the same shape (dense targets) or shape ``(batch,)`` of integer labels
(sparse losses). Every loss is a **mean over the batch** ``N``; the exact formulas:

================================  ========================================================  ==========================
name                              L                                                         dL/dpred
================================  ========================================================  ==========================
mse                               (1/(N K)) Σ_n Σ_k (p - y)²       (mean over batch *and*   2 (p - y) / (N K)
                                                                    outputs, no ½)
quadratic                         (1/N) Σ_n ½ ‖p_n - y_n‖²          (the textbook cost)     (p - y) / N
binary_cross_entropy              -(1/N) Σ_n Σ_k [y log p + (1-y) log(1-p)]                 (p - y) / (p (1-p) N)
categorical_cross_entropy         -(1/N) Σ_n Σ_k y log p            (one-hot y)             -y / (p N)
sparse_categorical_cross_entropy  -(1/N) Σ_n log p[n, y_n]          (integer y)             -onehot(y) / (p N)
sigmoid_binary_cross_entropy      (1/N) Σ_n Σ_k [softplus(z) - z y]   (on logits z)         (sigmoid(z) - y) / N
softmax_cross_entropy             -(1/N) Σ_n Σ_k y log_softmax(z)     (on logits z)         (softmax(z) Σ_k y - y) / N
sparse_softmax_cross_entropy      -(1/N) Σ_n log_softmax(z)[n, y_n]   (on logits z)         (softmax(z) - onehot(y)) / N
================================  ========================================================  ==========================

Cross-entropies over probabilities clip ``p`` into ``[eps, 1 - eps]`` (``eps`` = the dtype's machine
epsilon, as Keras does) so that ``p = 0`` gives a large finite loss, not ``inf``; their gradient is zero where
the clip is active, exactly what ``jax.grad`` gives. Binary cross-entropy *sums* over outputs (each output is
its own Bernoulli log-likelihood), so with one output it is the usual mean over the batch.

The numerically dangerous pairs — softmax output + (sparse) categorical cross-entropy, sigmoid output +
binary cross-entropy — are fused by :func:`fused`: the loss is computed from the pre-activations
(log-softmax, softplus) and the output error term is the closed form ``(a - y) / N``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import activations as _act
from fnn._registry import lookup
from fnn._types import Array
from fnn.network import numeric_array

__all__ = ["Loss", "Fused", "get", "names", "register", "fused", "natural_output", "check_targets", "REGISTRY"]


class Loss(NamedTuple):
    """A loss and its hand-written gradient with respect to the prediction.

    Attributes:
      name: registry name.
      value: ``(pred, y) -> scalar`` mean over the batch, ``pred`` of shape ``(batch, n_out)``.
      grad: ``(pred, y) -> dL/dpred`` of shape ``(batch, n_out)``.
      sparse: True when ``y`` holds integer labels of shape ``(batch,)``.
      from_logits: True when ``pred`` is expected to be logits (use an ``identity`` output layer).
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    sparse: bool = False
    from_logits: bool = False

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


def _n(p):
    return p.shape[0]


def _eps(p):
    return jnp.finfo(p.dtype).eps


def _clip_low(p):
    return jnp.where(p > _eps(p), p, _eps(p))


def _inside_low(p):
    return p > _eps(p)


def _clip_both(p):
    e = _eps(p)
    return jnp.where(p > e, jnp.where(p < 1 - e, p, 1 - e), e)


def _inside_both(p):
    e = _eps(p)
    return (p > e) & (p < 1 - e)


def _labels_one_hot(y, like):
    return jax.nn.one_hot(y, like.shape[-1], dtype=like.dtype)


# --- value and gradient side by side ------------------------------------------------------------------

def _mse(p, y):
    return jnp.mean((p - y) ** 2)


def _d_mse(p, y):
    return 2 * (p - y) / p.size


def _quadratic(p, y):
    return 0.5 * jnp.sum((p - y) ** 2) / _n(p)


def _d_quadratic(p, y):
    return (p - y) / _n(p)


def _bce(p, y):
    q = _clip_both(p)
    return -jnp.sum(y * jnp.log(q) + (1 - y) * jnp.log1p(-q)) / _n(p)


def _d_bce(p, y):
    q = _clip_both(p)
    return jnp.where(_inside_both(p), (q - y) / (q * (1 - q)), 0) / _n(p)


def _cce(p, y):
    return -jnp.sum(y * jnp.log(_clip_low(p))) / _n(p)


def _d_cce(p, y):
    return jnp.where(_inside_low(p), -y / _clip_low(p), 0) / _n(p)


def _sparse_cce(p, y):
    return _cce(p, _labels_one_hot(y, p))


def _d_sparse_cce(p, y):
    return _d_cce(p, _labels_one_hot(y, p))


def _sigmoid_bce(z, y):
    # softplus(z) - z y = -[y log σ(z) + (1-y) log(1-σ(z))], with no overflow for any z.
    return jnp.sum(jnp.logaddexp(z, 0) - z * y) / _n(z)


def _d_sigmoid_bce(z, y):
    return (jax.lax.logistic(z) - y) / _n(z)


def _softmax_ce(z, y):
    return -jnp.sum(y * _act.log_softmax.forward(z)) / _n(z)


def _d_softmax_ce(z, y):
    return (_act.softmax.forward(z) * jnp.sum(y, axis=-1, keepdims=True) - y) / _n(z)


def _sparse_softmax_ce(z, y):
    return _softmax_ce(z, _labels_one_hot(y, z))


def _d_sparse_softmax_ce(z, y):
    return _d_softmax_ce(z, _labels_one_hot(y, z))


REGISTRY: dict[str, Loss] = {}


def register(loss: Loss, *aliases: str) -> Loss:
    """Add a loss record to the registry under its name and any aliases."""
    if not isinstance(loss, Loss):
        raise TypeError(f"register expects a Loss record, got {type(loss).__name__}.")
    for key in (loss.name, *aliases):
        REGISTRY[key] = loss
    return loss


mse = register(Loss("mse", _mse, _d_mse))
quadratic = register(Loss("quadratic", _quadratic, _d_quadratic))
binary_cross_entropy = register(Loss("binary_cross_entropy", _bce, _d_bce), "bce")
categorical_cross_entropy = register(Loss("categorical_cross_entropy", _cce, _d_cce), "cce")
sparse_categorical_cross_entropy = register(
    Loss("sparse_categorical_cross_entropy", _sparse_cce, _d_sparse_cce, sparse=True)
)
sigmoid_binary_cross_entropy = register(
    Loss("sigmoid_binary_cross_entropy", _sigmoid_bce, _d_sigmoid_bce, from_logits=True)
)
softmax_cross_entropy = register(Loss("softmax_cross_entropy", _softmax_ce, _d_softmax_ce, from_logits=True))
sparse_softmax_cross_entropy = register(
    Loss("sparse_softmax_cross_entropy", _sparse_softmax_ce, _d_sparse_softmax_ce, sparse=True, from_logits=True)
)


def get(loss: str | Loss) -> Loss:
    """Return the :class:`Loss` record for a name (or the record itself).

    Raises:
      ValueError: for an unknown name; the message lists the valid names and the closest match.
      TypeError: for anything that is neither a string nor a record.
    """
    return lookup("loss", loss, REGISTRY, Loss)


def names() -> list[str]:
    """The canonical loss names (aliases such as ``bce`` excluded)."""
    return sorted({loss.name for loss in REGISTRY.values()})


# --- closed forms for the dangerous output/loss pairs -------------------------------------------------

class Fused(NamedTuple):
    """An output activation fused with its loss.

    Attributes:
      value: ``(z, y) -> scalar``, the loss computed from the output pre-activations ``z``.
      delta: ``(z, a, y) -> dL/dz``, the closed-form output error term (``a = activation(z)``).
    """

    value: Callable[[Array, Array], Array]
    delta: Callable[[Array, Array, Array], Array]


def _delta_softmax_ce(z, a, y):
    return (a * jnp.sum(y, axis=-1, keepdims=True) - y) / _n(z)


def _delta_sparse_softmax_ce(z, a, y):
    return (a - _labels_one_hot(y, a)) / _n(z)


def _delta_sigmoid_bce(z, a, y):
    return (a - y) / _n(z)


_FUSED = {
    ("softmax", "categorical_cross_entropy"): Fused(_softmax_ce, _delta_softmax_ce),
    ("softmax", "sparse_categorical_cross_entropy"): Fused(_sparse_softmax_ce, _delta_sparse_softmax_ce),
    ("sigmoid", "binary_cross_entropy"): Fused(_sigmoid_bce, _delta_sigmoid_bce),
}


def fused(activation: _act.Activation, loss: Loss) -> Fused | None:
    """The closed form for ``loss(activation(z), y)``, or None when the pair has none.

    Pairs: softmax + categorical_cross_entropy, softmax + sparse_categorical_cross_entropy (both
    ``delta = (a - y) / N`` for one-hot ``y``) and sigmoid + binary_cross_entropy (``delta = (a - y) / N``).
    """
    return _FUSED.get((activation.name, loss.name))


def natural_output(loss: str | Loss) -> str | None:
    """The output activation a loss is naturally paired with, or None when any activation fits.

    * ``"identity"`` for every loss on logits (sigmoid_binary_cross_entropy, softmax_cross_entropy,
      sparse_softmax_cross_entropy): the output layer emits the logits;
    * ``"sigmoid"`` for binary_cross_entropy;
    * ``"softmax"`` for categorical_cross_entropy and sparse_categorical_cross_entropy;
    * None for mse and quadratic (and any other loss on values): any output activation fits.

    The cross-entropies over probabilities are paired with the activation :func:`fused` has a closed form
    for, so a network built with this output gets the stable fused loss and delta.

    Args:
      loss: a loss name (aliases such as ``"bce"`` work) or a :class:`Loss` record.

    Returns:
      The activation name, or None.

    Raises:
      ValueError: for an unknown loss name.

    Example:
      >>> natural_output("sparse_categorical_cross_entropy")
      'softmax'
      >>> natural_output("mse") is None
      True
    """
    loss = get(loss)
    if loss.from_logits:
        return "identity"
    return next((act for act, name in _FUSED if name == loss.name), None)


def check_label_range(loss: Loss, labels: np.ndarray, n_out: int) -> None:
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


def check_targets(loss: Loss, y, n_out: int, batch: int, dtype=None) -> Array:
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
