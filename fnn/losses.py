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

**Second order** (for :mod:`fnn.curvature`). Per example, ``H_n = ∂²L/∂pred_n²`` (the ``1/N`` included), a
factor ``S_n`` with ``S_n S_nᵀ = H_n`` (the exact GGN backpropagates it) and sampled factors with
``E[S_n S_nᵀ] = H_n`` (``m`` gradients of ``-log p(ŷ | pred) / √(N m)``, ``ŷ`` drawn from the model; the Fisher,
equal to ``H_n`` for these likelihoods on their natural parameters)::

    mse            2 I / (N K)                            S = √(2/(N K)) I         sampled √(2/(N K)) ε / √m
    quadratic      I / N                                  S = I / √N               sampled ε / √(N m)
    bce            diag(y/p² + (1-y)/(1-p)²) / N          S = √H (diagonal)        (no sampled form)
    cce            diag(y / p²) / N                       S = √H (diagonal)        (no sampled form)
    sigmoid BCE    diag(s (1 - s)) / N,   s = sigmoid(z)  S = √H (diagonal)        sampled (s - ŷ) / √(N m)
    softmax CE     t (diag p - p pᵀ) / N, p = softmax(z)  S = √(t/N)(diag √p - p √pᵀ)  sampled √t (p - e_ŷ) / √(N m)

(``t = Σ_k y_k``, 1 for sparse labels; ``ε`` standard normal; ``ŷ ~ Bern(s)`` or ``Cat(p)``; the clipped
cross-entropies have ``H = 0`` where ``p`` is clipped, as their gradient.) For softmax, ``S Sᵀ`` is
``diag p - 2 p pᵀ + p (Σ p) pᵀ = diag p - p pᵀ``. A fused pair has the from-logits loss's fields, in ``z``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn import activations as _act
from fnn._registry import lookup
from fnn._targets import check_label_range, check_targets
from fnn._types import Array

__all__ = ["Loss", "Fused", "get", "names", "register", "fused", "natural_output", "check_targets", "check_label_range",
           "REGISTRY"]


class Loss(NamedTuple):
    """A loss and its hand-written gradient with respect to the prediction.

    Attributes:
      name: registry name.
      value: ``(pred, y) -> scalar`` mean over the batch, ``pred`` of shape ``(batch, n_out)``.
      grad: ``(pred, y) -> dL/dpred`` of shape ``(batch, n_out)``.
      sparse: True when ``y`` holds integer labels of shape ``(batch,)``.
      from_logits: True when ``pred`` is expected to be logits (use an ``identity`` output layer).
      hvp: ``(pred, y, v) -> (∂²L/∂pred²) v``, the Hessian of the loss with respect to the prediction applied to
        ``v`` (batch-shaped like ``pred``; the loss is a sum over examples, so the Hessian is block-diagonal).
      sqrt_hessian: ``(pred, y) -> S`` of shape ``(batch, n_out, C)`` with ``S_n S_nᵀ`` = example ``n``'s block
        of that Hessian (the batch mean's ``1/N`` included), the factor the exact GGN backpropagates.
      sample_sqrt_hessian: ``(key, pred, y, m) -> S`` of shape ``(batch, n_out, m)`` with ``E[S_n S_nᵀ]`` =
        the same block: ``m`` sampled gradients of the negative log-likelihood (targets drawn from the model's
        predictive distribution), for the Monte-Carlo GGN. None where the loss is no such likelihood on its
        input (the cross-entropies over probabilities: use the fused or from-logits forms).

    The second-order fields are None for a record registered without them; :mod:`fnn.curvature` then names
    the loss in a ``ValueError``.
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    sparse: bool = False
    from_logits: bool = False
    hvp: Callable[[Array, Array, Array], Array] | None = None
    sqrt_hessian: Callable[[Array, Array], Array] | None = None
    sample_sqrt_hessian: Callable | None = None

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


# --- second order: the Hessian with respect to the prediction, its factor, sampled factors (module docstring) ---

def _root(h, p):
    return jnp.sqrt(jnp.asarray(h, p.dtype))


def _constant(h):
    """``(hvp, sqrt_hessian, sample)`` of a loss whose Hessian is ``h(pred) · I`` (mse, quadratic)."""
    def hvp(p, y, v):
        return v * jnp.asarray(h(p), p.dtype)

    def sqrt_hessian(p, y):
        return jnp.broadcast_to(jnp.eye(p.shape[-1], dtype=p.dtype)[None] * _root(h(p), p), (*p.shape, p.shape[-1]))

    def sample(key, p, y, m):
        return jax.random.normal(key, (*p.shape, m), p.dtype) * _root(h(p) / m, p)
    return hvp, sqrt_hessian, sample


def _diagonal(h, one_hot=False):
    """``hvp`` and ``sqrt_hessian`` (``diag √h``) of a loss whose Hessian is ``diag h(pred, y)``."""
    fix = (lambda p, y: _labels_one_hot(y, p)) if one_hot else (lambda p, y: y)
    return ((lambda p, y, v: h(p, fix(p, y)) * v),
            (lambda p, y: jnp.sqrt(h(p, fix(p, y)))[:, :, None] * jnp.eye(p.shape[-1], dtype=p.dtype)[None]))


def _h_bce(p, y):
    q = _clip_both(p)
    return jnp.where(_inside_both(p), y / (q * q) + (1 - y) / ((1 - q) * (1 - q)), 0) / _n(p)


def _h_cce(p, y):
    q = _clip_low(p)
    return jnp.where(_inside_low(p), y / (q * q), 0) / _n(p)


def _h_sigmoid_bce(z, y):
    s = jax.lax.logistic(z)
    return s * (1 - s) / _n(z)


def _sample_sigmoid_bce(key, z, y, m):
    s = jax.lax.logistic(z)
    draws = jax.random.bernoulli(key, s[..., None], (*z.shape, m)).astype(z.dtype)
    return (s[..., None] - draws) / _root(_n(z) * m, z)


def _softmax(sparse):
    """``(hvp, sqrt_hessian, sample)`` of softmax cross-entropy on logits (``t = Σ_k y_k``, 1 when sparse)."""
    def total(z, y):
        return jnp.ones((z.shape[0], 1), z.dtype) if sparse else jnp.sum(y, axis=-1, keepdims=True)

    def hvp(z, y, v):
        p = _act.softmax.forward(z)
        return total(z, y) * (p * v - p * jnp.sum(p * v, axis=-1, keepdims=True)) / _n(z)

    def sqrt_hessian(z, y):
        p = _act.softmax.forward(z)
        s = jnp.sqrt(p)[:, :, None] * jnp.eye(z.shape[-1], dtype=z.dtype)[None] - p[:, :, None] * jnp.sqrt(p)[:, None]
        return s * jnp.sqrt(total(z, y) / _n(z))[:, :, None]

    def sample(key, z, y, m):
        draws = jax.random.categorical(key, z[:, None, :], axis=-1, shape=(z.shape[0], m))  # (N, m)
        one_hot = jax.nn.one_hot(draws, z.shape[-1], dtype=z.dtype, axis=1)  # (N, K, m)
        return (_act.softmax.forward(z)[:, :, None] - one_hot) * jnp.sqrt(total(z, y) / (_n(z) * m))[:, :, None]
    return hvp, sqrt_hessian, sample


_SECOND = {  # name: (hvp, sqrt_hessian, sample_sqrt_hessian)
    "mse": _constant(lambda p: 2 / p.size),
    "quadratic": _constant(lambda p: 1 / _n(p)),
    "binary_cross_entropy": (*_diagonal(_h_bce), None),
    "categorical_cross_entropy": (*_diagonal(_h_cce), None),
    "sparse_categorical_cross_entropy": (*_diagonal(_h_cce, one_hot=True), None),
    "sigmoid_binary_cross_entropy": (*_diagonal(_h_sigmoid_bce), _sample_sigmoid_bce),
    "softmax_cross_entropy": _softmax(False),
    "sparse_softmax_cross_entropy": _softmax(True),
}


REGISTRY: dict[str, Loss] = {}


def register(loss: Loss, *aliases: str) -> Loss:
    """Add a loss record to the registry under its name and any aliases."""
    if not isinstance(loss, Loss):
        raise TypeError(f"register expects a Loss record, got {type(loss).__name__}.")
    for key in (loss.name, *aliases):
        REGISTRY[key] = loss
    return loss


mse = register(Loss("mse", _mse, _d_mse, False, False, *_SECOND["mse"]))
quadratic = register(Loss("quadratic", _quadratic, _d_quadratic, False, False, *_SECOND["quadratic"]))
binary_cross_entropy = register(Loss("binary_cross_entropy", _bce, _d_bce, False, False,
                                          *_SECOND["binary_cross_entropy"]), "bce")
categorical_cross_entropy = register(Loss("categorical_cross_entropy", _cce, _d_cce, False, False,
                                       *_SECOND["categorical_cross_entropy"]), "cce")
sparse_categorical_cross_entropy = register(
    Loss("sparse_categorical_cross_entropy", _sparse_cce, _d_sparse_cce, True, False,
         *_SECOND["sparse_categorical_cross_entropy"])
)
sigmoid_binary_cross_entropy = register(
    Loss("sigmoid_binary_cross_entropy", _sigmoid_bce, _d_sigmoid_bce, False, True,
         *_SECOND["sigmoid_binary_cross_entropy"])
)
softmax_cross_entropy = register(Loss("softmax_cross_entropy", _softmax_ce, _d_softmax_ce, False, True,
                                        *_SECOND["softmax_cross_entropy"]))
sparse_softmax_cross_entropy = register(
    Loss("sparse_softmax_cross_entropy", _sparse_softmax_ce, _d_sparse_softmax_ce, True, True,
         *_SECOND["sparse_softmax_cross_entropy"])
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
      hvp, sqrt_hessian, sample_sqrt_hessian: the second-order fields of :class:`Loss`, with respect to ``z``
        (those of the from-logits loss the pair equals: the GGN of a fused pair linearises at the logits).
    """

    value: Callable[[Array, Array], Array]
    delta: Callable[[Array, Array, Array], Array]
    hvp: Callable[[Array, Array, Array], Array] | None = None
    sqrt_hessian: Callable[[Array, Array], Array] | None = None
    sample_sqrt_hessian: Callable | None = None


def _delta_softmax_ce(z, a, y):
    return (a * jnp.sum(y, axis=-1, keepdims=True) - y) / _n(z)


def _delta_sparse_softmax_ce(z, a, y):
    return (a - _labels_one_hot(y, a)) / _n(z)


def _delta_sigmoid_bce(z, a, y):
    return (a - y) / _n(z)


_FUSED = {
    ("softmax", "categorical_cross_entropy"): Fused(_softmax_ce, _delta_softmax_ce, *_SECOND["softmax_cross_entropy"]),
    ("softmax", "sparse_categorical_cross_entropy"): Fused(_sparse_softmax_ce, _delta_sparse_softmax_ce,
                                                           *_SECOND["sparse_softmax_cross_entropy"]),
    ("sigmoid", "binary_cross_entropy"): Fused(_sigmoid_bce, _delta_sigmoid_bce,
                                               *_SECOND["sigmoid_binary_cross_entropy"]),
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
    for, so a network built with this output gets the stable fused loss and delta. ``loss``: a name (aliases
    such as ``"bce"`` work) or a :class:`Loss` record; an unknown name is a ValueError.

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
