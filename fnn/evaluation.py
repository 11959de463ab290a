"""Evaluation: a data set's loss and accuracy, jitted and in chunks so memory stays bounded (one net or a stack)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _layer
from fnn import losses as _losses
from fnn._checks import positive_number, prepare_data
from fnn._types import ArrayLike, Params
from fnn.backprop import loss_value
from fnn.network import Network, check_state, forward

__all__ = ["evaluate", "evaluate_checked", "is_classification", "totals", "metrics"]


def is_classification(net: Network, loss: _losses.Loss) -> bool:
    """True when accuracy means something: several outputs, or a cross-entropy loss on one output."""
    return net.output_shape[-1] > 1 or "cross_entropy" in loss.name


def _chunk_metrics(net: Network, loss: _losses.Loss, params, x, y, state=None):
    """``(loss summed over the chunk, number correct)`` for one chunk; the loss is the one backprop computes, in
    inference mode (BatchNorm with the running statistics of ``state``)."""
    zs, outs = forward(net, params, x, None if state is None else _layer.Context(state=state))
    out = outs[-1]
    total = loss_value(net, loss, zs[-1], out, y) * x.shape[0]
    if net.output_shape[-1] > 1:
        pred = jnp.argmax(out, axis=-1)
        true = y if loss.sparse else jnp.argmax(y, axis=-1)
    else:
        threshold = 0.0 if loss.from_logits or net.output.name == "identity" and "cross_entropy" in loss.name else 0.5
        pred = out[:, 0] > threshold
        true = y[:, 0] > 0.5
    return total, jnp.sum(pred == true, dtype=jnp.int32)  # int32 as the scan's counter, also under x64


@functools.lru_cache(maxsize=64)
def _programs(net: Network, loss: _losses.Loss, chunk: int, stacked: bool):
    """``(full_chunks, one_chunk)``, jitted: a scan over equal chunks, and one (tail) chunk. With ``stacked``
    both are ``jax.vmap``-ed over a leading member axis of the params (the data are shared)."""
    one = functools.partial(_chunk_metrics, net, loss)

    def full_chunks(params, x, y, state=None):
        xs = x.reshape(-1, chunk, *x.shape[1:])
        ys = y.reshape(-1, chunk, *y.shape[1:])

        def body(acc, batch):
            total, correct = one(params, batch[0], batch[1], state)
            return (acc[0] + total, acc[1] + correct), None

        zero = (jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32))
        return jax.lax.scan(body, zero, (xs, ys))[0]

    if not stacked:
        return jax.jit(full_chunks), jax.jit(one)
    per_member = lambda f: jax.jit(jax.vmap(f, in_axes=(0, None, None, 0)))
    return per_member(full_chunks), per_member(one)


def totals(net: Network, loss: _losses.Loss, params: Params, x, y, *, batch_size: int, stacked: bool = False,
           state=None):
    """``(summed loss, number correct)`` over checked data ``x, y`` (see :func:`fnn._checks.prepare_data`), in
    chunks of at most ``batch_size`` examples; arrays of shape ``(K,)`` for ``stacked`` params (and state) of K
    members."""
    n = x.shape[0]
    chunk = min(batch_size, n)
    full_chunks, one_chunk = _programs(net, loss, chunk, stacked)
    m = (n // chunk) * chunk
    total, correct = full_chunks(params, x[:m], y[:m], state)
    if m < n:
        t2, c2 = one_chunk(params, x[m:], y[m:], state)
        total, correct = total + t2, correct + c2
    return total, correct


def metrics(net: Network, loss: _losses.Loss, total, correct, n: int) -> dict:
    """``{"loss": mean loss, "accuracy": fraction correct or None}`` from :func:`totals` (floats, or lists of
    floats for a stack of members); accuracy is None unless :func:`is_classification`."""
    as_python = lambda a: (np.asarray(a, np.float64) / n).tolist()  # a Python float (list) per member
    accuracy = as_python(correct) if is_classification(net, loss) else None
    return {"loss": as_python(total), "accuracy": accuracy}


def evaluate_checked(net: Network, loss: _losses.Loss, params: Params, x, y, *, batch_size: int,
                     stacked: bool = False, state=None) -> dict:
    """:func:`evaluate` on data already checked by :func:`fnn._checks.prepare_data` (fit's test set, checked once
    before the first epoch); with ``stacked`` params of K members, ``loss`` and ``accuracy`` are lists of K."""
    return metrics(net, loss, *totals(net, loss, params, x, y, batch_size=batch_size, stacked=stacked, state=state),
                   x.shape[0])


def evaluate(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, batch_size: int = 4096,
             state=None) -> dict:
    """Loss and accuracy over a data set, jitted and in chunks of ``batch_size`` so memory stays bounded.

    The loss is the one :func:`fnn.backprop` computes (a mean over the examples; fused output/loss pairs from
    the pre-activations). Accuracy compares ``argmax`` of the output with the label (integer or one-hot); with
    one output it thresholds at 0.5 (0 for logits). It is ``None`` for single-output regression losses.

    Inference mode: a net with BatchNorm takes ``state=`` (its running statistics; required).

    Returns:
      ``{"loss": float, "accuracy": float | None}``.

    Raises:
      ValueError / TypeError: data that do not fit the network or the loss, a non-positive ``batch_size``.
    """
    loss = _losses.get(loss)
    batch_size = positive_number("batch_size", batch_size, integer=True)
    x, y = prepare_data(net, params, loss, x, y, "evaluate:")
    return evaluate_checked(net, loss, params, x, y, batch_size=batch_size, state=check_state(net, state))
