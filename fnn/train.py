"""Compiled mini-batch training: steps, whole epochs as one ``lax.scan``, ``fit`` and vmapped ensembles.

The seeds' algorithm — initialise, shuffle, forward, backpropagate, update every weight at once, repeat over
mini-batches, evaluate after each epoch — compiled end to end:

* :func:`sgd_step` is one jitted update ``W := W - α dW`` (or an optax update).
* An epoch is one compiled call: the training set lives on the device, is permuted there with
  :func:`epoch_order` of ``jax.random.fold_in(key, epoch)``, gathered a few mini-batches (about 512 KiB) at a time and scanned.
  **The last partial batch is dropped** (``n // batch_size`` steps per epoch); a fresh shuffle each epoch
  means every example is still used. No per-step Python and no host-to-device copy per epoch.
* :func:`fit` adds evaluation (jitted, in chunks), a progress bar, checkpoints and resume (bit-exact on CPU),
  divergence detection (returns the last finite params) and interrupt handling.
* :func:`fit_ensemble` trains K networks (different seeds and learning rates) in one vmapped program.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import losses as _losses
from fnn._registry import unknown_name
from fnn._types import Array, ArrayLike, Params, PRNGKey
from fnn.backprop import autodiff, backprop
from fnn.network import Network, check_input, check_params, forward

__all__ = [
    "sgd_step",
    "fit",
    "fit_ensemble",
    "evaluate",
    "make_optimizer",
    "DivergenceWarning",
    "TrainingInterrupted",
    "OPTIMIZERS",
    "CHECKPOINT_NAME",
]

OPTIMIZERS = ("sgd", "momentum", "adam")
CHECKPOINT_NAME = "checkpoint.safetensors"


class DivergenceWarning(RuntimeWarning):
    """Training produced a non-finite loss or gradient; ``fit`` stopped and returned the last finite params."""


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` was interrupted (Ctrl-C). Carries what was trained so far and where it was saved.

    Attributes:
      params: params after the last completed epoch.
      history: the history so far.
      checkpoint: path of the checkpoint written on interrupt, or None without ``checkpoint_dir``.
    """

    def __init__(self, message: str, params: Params, history: dict, checkpoint: Path | None):
        super().__init__(message)
        self.params, self.history, self.checkpoint = params, history, checkpoint


# --- validation -----------------------------------------------------------------------------------------

def _positive_number(name: str, value, *, integer: bool = False):
    kind = "int" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive {kind}, got {type(value).__name__} {value!r}.")
    if integer and not float(value).is_integer():
        raise TypeError(f"{name} must be a positive int, got {value!r}.")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive {kind}, got {value!r}.")
    return int(value) if integer else float(value)


def _check_grads_mode(grads: str) -> str:
    if grads not in ("manual", "autodiff"):
        raise unknown_name("grads mode", grads, ["manual", "autodiff"])
    return grads


def make_optimizer(name: str, learning_rate: float, *, momentum: float = 0.9) -> optax.GradientTransformation:
    """An optax optimizer by name: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9) or ``"adam"``.

    Raises:
      ValueError: unknown name (lists the valid ones) or a non-positive learning rate.
    """
    learning_rate = _positive_number("learning_rate", learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "adam":
        return _state_in_float32(optax.adam(learning_rate))
    raise unknown_name("optimizer", name, list(OPTIMIZERS))


def _state_in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``inner`` on float16/bfloat16 params with float32 state and arithmetic (a no-op for float32/64).

    Adam's ``g²`` underflows float16 below ``|g| ≈ 2e-4`` and its ``eps = 1e-8`` rounds to 0, so a zero
    gradient gives ``0 / 0 = NaN`` at the first step; in float32 it does not.
    """
    up = lambda t: t.astype(jnp.promote_types(t.dtype, jnp.float32))  # noqa: E731

    def update(grads, state, params=None):
        params = None if params is None else jax.tree_util.tree_map(up, params)
        updates, state = inner.update(jax.tree_util.tree_map(up, grads), state, params)
        return jax.tree_util.tree_map(lambda u, g: u.astype(g.dtype), updates, grads), state

    return optax.GradientTransformation(lambda params: inner.init(jax.tree_util.tree_map(up, params)), update)


@functools.lru_cache(maxsize=64)
def _named_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """:func:`make_optimizer`, one object per ``(name, learning_rate)`` so compiled programs can be reused."""
    return make_optimizer(name, learning_rate)


def _resolve_optimizer(optimizer, learning_rate):
    """``(optax transformation or None, learning rate for plain SGD)``."""
    if optimizer is None:
        return None, _positive_number("learning_rate", learning_rate)
    if isinstance(optimizer, str):
        return _named_optimizer(optimizer, _positive_number("learning_rate", learning_rate)), None
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer, None
    raise TypeError(
        f"optimizer must be None (plain SGD), one of {list(OPTIMIZERS)} or an optax.GradientTransformation, "
        f"got {type(optimizer).__name__}."
    )


# --- the update -----------------------------------------------------------------------------------------

def _grad_fn(net: Network, loss: _losses.Loss, grads: str):
    if grads == "manual":
        return lambda p, x, y: backprop(net, p, x, y, loss)
    return lambda p, x, y: autodiff(net, p, x, y, loss)


def _make_update(net: Network, loss: _losses.Loss, grads: str, optimizer, *, axis_name: str | None = None):
    """``update(params, opt_state, x, y, lr) -> (params, opt_state, loss, grads)``; ``opt_state`` is ``()`` for SGD.

    With ``axis_name`` (inside ``shard_map``, see :mod:`fnn.parallel`) the shard's loss and grads are
    ``lax.pmean``-ed over that mesh axis before the update: the mean of equal-size shard means is the batch mean.
    (The params are first cast to "varying" so that ``jax.grad`` gives the shard's own gradient instead of
    inserting the psum that shard_map's transpose adds for a replicated input.)
    """
    grad_fn = _grad_fn(net, loss, grads)
    if axis_name is not None:
        shard_grad_fn = grad_fn

        def grad_fn(p, x, y):
            p = jax.lax.pcast(p, axis_name, to="varying")
            return jax.lax.pmean(shard_grad_fn(p, x, y), axis_name)

    if optimizer is None:

        def update(params, opt_state, x, y, lr):
            value, g = grad_fn(params, x, y)
            new = jax.tree_util.tree_map(lambda p, d: p - (lr * d).astype(p.dtype), params, g)
            return new, opt_state, value, g

    else:

        def update(params, opt_state, x, y, lr):
            value, g = grad_fn(params, x, y)
            updates, opt_state = optimizer.update(g, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value, g

    return update


def sgd_step(
    net: Network,
    loss,
    *,
    learning_rate: float | None = 0.1,
    grads: str = "manual",
    optimizer: str | optax.GradientTransformation | None = None,
    devices: int | Sequence[jax.Device] | None = None,
) -> Callable:
    """A jitted training step.

    Without an optimizer, plain SGD updates every weight and bias at once, ``W := W - α dW``::

        step(params, x, y) -> (params, loss)

    With an optimizer (a name in ``OPTIMIZERS`` or an optax transformation), the optimizer state is threaded
    (create it with ``optimizer.init(params)``; for a name, with ``fnn.make_optimizer(name, lr).init``)::

        step(params, opt_state, x, y) -> (params, opt_state, loss)

    Args:
      net: the network.
      loss: loss name or record.
      learning_rate: α for plain SGD and named optimizers; ignored (pass None) for an optax transformation.
      grads: ``"manual"`` (hand-written backprop, the default) or ``"autodiff"`` (``jax.grad``).
      optimizer: None, ``"sgd"``, ``"momentum"``, ``"adam"`` or an ``optax.GradientTransformation``.
      devices: data parallelism (:mod:`fnn.parallel`): a device count or a sequence of ``jax.Device``; each
        batch is split across them (its size must be divisible by their number, else ``ValueError``) and the
        grads are averaged with ``lax.pmean``. With several processes each passes its part of the batch.

    Returns:
      The jitted step; ``loss`` is the loss of the batch *before* the update. With a sparse loss, the step
      first checks that concrete labels lie in ``[0, n_out)`` (``ValueError`` otherwise: inside ``jit`` an
      out-of-range label would one-hot to zeros and silently drop out of the loss); under your own ``jit`` or
      ``lax.scan`` the labels are tracers and only their shape and dtype are checked.
    """
    loss = _losses.get(loss)
    optimizer, lr = _resolve_optimizer(optimizer, learning_rate)
    grads = _check_grads_mode(grads)
    stateful = optimizer is not None
    if devices is not None:  # data parallel over a device mesh
        from fnn import parallel

        mesh = parallel.make_mesh(devices)
        update = _make_update(net, loss, grads, optimizer, axis_name=parallel.DATA_AXIS)
        step = parallel.make_step(update, mesh, lr=lr, stateful=stateful)
    else:
        step = _jitted_step(_make_update(net, loss, grads, optimizer), lr, stateful=stateful)
    return _with_label_check(step, loss, net.sizes[-1], y_index=3 if stateful else 2)


def _jitted_step(update, lr, *, stateful: bool) -> Callable:
    if not stateful:

        @jax.jit
        def step(params, x, y):
            params, _, value, _ = update(params, (), x, y, lr)
            return params, value

    else:

        @jax.jit
        def step(params, opt_state, x, y):
            params, opt_state, value, _ = update(params, opt_state, x, y, None)
            return params, opt_state, value

    return step


def _with_label_check(step: Callable, loss: _losses.Loss, n_out: int, *, y_index: int) -> Callable:
    """``step`` that first checks the range of concrete sparse labels (inside ``jit`` they are tracers, and an
    out-of-range label would silently one-hot to a row of zeros). Costs a host copy of the labels per call;
    under the caller's own ``jit``/``scan`` the labels are tracers and the check is skipped."""
    if not loss.sparse:
        return step

    @functools.wraps(step)
    def checked(*args):
        y = args[y_index] if len(args) > y_index else None
        if y is not None and not isinstance(y, jax.core.Tracer):
            labels = np.asarray(y)
            if np.issubdtype(labels.dtype, np.integer):
                _losses.check_label_range(loss, labels, n_out)
        return step(*args)

    return checked


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in jax.tree_util.tree_leaves(tree)]))


def _layer_finite(grads) -> Array:
    """``(num_layers,)`` booleans: every gradient leaf of layer ``l`` is finite."""
    return jnp.stack([_all_finite(layer) for layer in grads])


def epoch_order(key: PRNGKey, n: int) -> Array:
    """The shuffled order of one epoch: a uniformly random permutation of ``range(n)`` (int32) drawn from ``key``.

    ``fit`` visits epoch ``e`` in the order ``epoch_order(jax.random.fold_in(key, e), n)``, mini-batch ``s``
    being ``order[s * batch_size:(s + 1) * batch_size]`` (the last partial batch dropped). Replay it to
    reproduce a run step by step outside ``fit``.

    Each index gets two independent 32-bit random words from ``jax.random.bits`` and the indices are sorted by
    that 64-bit key in one ``lax.sort``: a tie has probability about ``n² / 2⁶⁵`` (2·10⁻¹⁰ at n = 60,000). It is
    a uniform permutation as ``jax.random.permutation`` is (which sorts by 32-bit keys in several rounds), with
    a different order, and it compiles in about 0.35 s less on 2 CPU cores (BENCHMARKS.md, "levers").

    Raises:
      ValueError: ``n`` is not a positive integer below 2³¹.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n < 2**31:
        raise ValueError(f"epoch_order: n must be a positive integer below 2**31, got {n!r}.")
    n = int(n)
    words = jax.random.bits(key, (2, n), jnp.uint32)
    return jax.lax.sort((words[0], words[1], jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]


def _epoch_permutation(key: PRNGKey, n: int, batch_size: int) -> Array:
    """The example order of one epoch: ``(n // batch_size) * batch_size`` indices, the last partial batch dropped.

    Shared by the compiled epochs (single-device and :mod:`fnn.parallel`), ``_diagnose`` and :mod:`fnn.bench`,
    whose peers replay exactly fit's order.
    """
    return epoch_order(key, n)[: (n // batch_size) * batch_size]


#: Bytes of training data gathered per chunk of mini-batches (see ``_make_epoch``): a chunk stays in a core's
#: L2 cache, and the epoch never allocates (and page-faults in) a shuffled copy of the whole training set.
_CHUNK_BYTES = 1 << 19


def _batches_per_chunk(num_batches: int, batch_size: int, row_bytes: int) -> int:
    """Mini-batches per gathered chunk: about ``_CHUNK_BYTES`` of data, preferably dividing ``num_batches``."""
    k = max(1, min(num_batches, _CHUNK_BYTES // max(1, batch_size * row_bytes)))
    for d in range(k, (k + 1) // 2 - 1, -1):  # a divisor in [k/2, k] leaves no tail loop
        if num_batches % d == 0:
            return d
    return k


def _step_body(update, lr, *, strict: bool):
    """The ``lax.scan`` body of one training step, shared by the single-device and data-parallel epochs.

    Plain: carry ``(params, opt_state)``, output the step's loss. Strict: carry ``(params, opt_state,
    healthy)``; a step whose loss, gradients or new params are not all finite freezes the carry at the last
    finite params for the rest of the epoch and outputs ``(loss or NaN, (num_layers,) finite flags)``.
    """

    def step(carry, batch):
        p, s = carry
        p, s, value, _ = update(p, s, batch[0], batch[1], lr)
        return (p, s), value

    def strict_step(carry, batch):
        p, s, healthy = carry
        new_p, new_s, value, g = update(p, s, batch[0], batch[1], lr)
        layer_ok = _layer_finite(g)
        good = healthy & jnp.isfinite(value) & jnp.all(layer_ok) & _all_finite(new_p)
        keep = lambda new, old: jnp.where(good, new, old)  # noqa: E731
        p = jax.tree_util.tree_map(keep, new_p, p)
        s = jax.tree_util.tree_map(keep, new_s, s)
        # A frozen step reports a NaN loss, so fit sees the divergence even when only a gradient or the
        # update (not the loss) went non-finite; the loss of a frozen step means nothing anyway.
        return (p, s, good), (jnp.where(good, value, jnp.nan), layer_ok)

    return strict_step if strict else step


def _initial_carry(params, opt_state, strict: bool):
    return (params, opt_state, jnp.array(True)) if strict else (params, opt_state)


def _unpack(carry, out, strict: bool):
    """``(params, opt_state, step_losses, layer_ok or None)`` from a scan over :func:`_step_body`."""
    if strict:
        (params, opt_state, _), (step_losses, layer_ok) = carry, out
        return params, opt_state, step_losses, layer_ok
    (params, opt_state), step_losses = carry, out
    return params, opt_state, step_losses, None


def _make_epoch(update, n: int, batch_size: int, *, strict: bool, unroll: int):
    """``epoch(params, opt_state, x, y, key, lr) -> (params, opt_state, step_losses, layer_ok)``.

    ``layer_ok`` is ``(num_batches, num_layers)`` finite flags per step in strict mode, else ``None``.

    Data layout: the permutation is drawn once per epoch, and the examples are gathered a chunk of ``k``
    mini-batches (about ``_CHUNK_BYTES``) at a time by an outer ``lax.scan`` whose body scans the ``k`` steps.
    Measured on 2 CPU cores with 60,000 MNIST-sized examples (BENCHMARKS.md): gathering the whole shuffled
    set at once writes a fresh 188 MB array every epoch (page faults and memory traffic that cost as much as
    thousands of small steps), and gathering every step separately adds a gather per step; chunks avoid both.
    The steps, their order and their results are exactly those of a single scan over the permuted data.
    """
    num_batches = n // batch_size

    def epoch(params, opt_state, x, y, key, lr):
        body = _step_body(update, lr, strict=strict)
        k = _batches_per_chunk(num_batches, batch_size, math.prod(x.shape[1:]) * x.dtype.itemsize)
        num_chunks, tail = divmod(num_batches, k)
        perm = _epoch_permutation(key, n, batch_size)

        def chunk(carry, idx):  # idx: the example indices of k (or, last, `tail`) consecutive mini-batches
            xb = jnp.take(x, idx, axis=0, mode="clip").reshape(-1, batch_size, *x.shape[1:])
            yb = jnp.take(y, idx, axis=0, mode="clip").reshape(-1, batch_size, *y.shape[1:])
            return jax.lax.scan(body, carry, (xb, yb), unroll=unroll)

        carry, out = jax.lax.scan(chunk, _initial_carry(params, opt_state, strict),
                                  perm[: num_chunks * k * batch_size].reshape(num_chunks, -1))
        out = jax.tree_util.tree_map(lambda o: o.reshape(num_chunks * k, *o.shape[2:]), out)
        if tail:
            carry, out_tail = chunk(carry, perm[num_chunks * k * batch_size:])
            out = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, out_tail)
        return _unpack(carry, out, strict)

    return epoch


# --- evaluation -----------------------------------------------------------------------------------------

def _is_classification(net: Network, loss: _losses.Loss) -> bool:
    return net.sizes[-1] > 1 or "cross_entropy" in loss.name


def _chunk_metrics(net: Network, loss: _losses.Loss, params, x, y):
    """``(loss summed over the chunk, number correct)`` for one chunk."""
    from fnn.backprop import _loss_value  # the same value backprop computes (fused pairs from z)

    zs, outs = forward(net, params, x)
    out = outs[-1]
    total = _loss_value(net, loss, zs[-1], out, y) * x.shape[0]
    if net.sizes[-1] > 1:
        pred = jnp.argmax(out, axis=-1)
        true = y if loss.sparse else jnp.argmax(y, axis=-1)
    else:
        threshold = 0.0 if loss.from_logits or net.output.name == "identity" and "cross_entropy" in loss.name else 0.5
        pred = out[:, 0] > threshold
        true = y[:, 0] > 0.5
    return total, jnp.sum(pred == true, dtype=jnp.int32)  # int32 as the scan's counter, also under x64


@functools.lru_cache(maxsize=64)
def _evaluator(net: Network, loss: _losses.Loss, chunk: int):
    metrics = functools.partial(_chunk_metrics, net, loss)

    @jax.jit
    def full_chunks(params, x, y):
        xs = x.reshape(-1, chunk, *x.shape[1:])
        ys = y.reshape(-1, chunk, *y.shape[1:])

        def body(acc, batch):
            total, correct = metrics(params, batch[0], batch[1])
            return (acc[0] + total, acc[1] + correct), None

        zero = (jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32))
        return jax.lax.scan(body, zero, (xs, ys))[0]

    return full_chunks, jax.jit(metrics)


def _prepare_data(net: Network, params: Params, loss: _losses.Loss, x, y, what: str):
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
    for name, arr in (("x", x2), ("y", y2)):  # else a NaN in the data is reported as a diverging run
        if jnp.issubdtype(arr.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(arr))):
            bad = np.argwhere(~np.isfinite(np.asarray(arr, np.float32)))
            raise ValueError(
                f"{what} {name} must be finite, got {len(bad)} NaN or inf value(s) in {arr.dtype} (first at index "
                f"{tuple(int(i) for i in bad[0])}); clean the data, or use a wider params dtype if it overflowed."
            )
    return x2, y2


def evaluate(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, batch_size: int = 4096) -> dict:
    """Loss and accuracy over a data set, jitted and in chunks of ``batch_size`` so memory stays bounded.

    Accuracy compares ``argmax`` of the output with the label (integer or one-hot); with one output it
    thresholds at 0.5 (0 for logits). It is ``None`` for single-output regression losses.

    Returns:
      ``{"loss": float, "accuracy": float | None}``.
    """
    loss = _losses.get(loss)
    batch_size = _positive_number("batch_size", batch_size, integer=True)
    x, y = _prepare_data(net, params, loss, x, y, "evaluate:")
    n = x.shape[0]
    chunk = min(batch_size, n)
    full_chunks, one_chunk = _evaluator(net, loss, chunk)
    m = (n // chunk) * chunk
    total, correct = full_chunks(params, x[:m], y[:m])
    if m < n:
        t2, c2 = one_chunk(params, x[m:], y[m:])
        total, correct = total + t2, correct + c2
    accuracy = float(correct) / n if _is_classification(net, loss) else None
    return {"loss": float(total) / n, "accuracy": accuracy}


# --- fit ------------------------------------------------------------------------------------------------

class _Setup(NamedTuple):
    loss: _losses.Loss
    optimizer: Any
    lr: float | None
    epoch: Callable
    update: Callable


def _setup(net, loss, grads, optimizer, learning_rate, n, batch_size, strict, unroll) -> _Setup:
    loss = _losses.get(loss)
    optimizer, lr = _resolve_optimizer(optimizer, learning_rate)
    args = (net, loss, _check_grads_mode(grads), optimizer, n, batch_size, strict, unroll)
    try:
        update, epoch = _programs(*args)
    except TypeError:  # an unhashable optax transformation: build the programs uncached
        update, epoch = _programs.__wrapped__(*args)
    return _Setup(loss, optimizer, lr, epoch, update)


@functools.lru_cache(maxsize=32)
def _programs(net, loss, grads, optimizer, n, batch_size, strict, unroll):
    """``(update, epoch)``: the same function objects for the same configuration, so that ``jax.jit``'s caches
    hit and a repeated ``fit`` (a sweep over learning rates or seeds, a resumed run) does not recompile its
    epoch. Plain SGD's learning rate is an argument of the compiled epoch, not part of this key."""
    update = _make_update(net, loss, grads, optimizer)
    return update, _make_epoch(update, n, batch_size, strict=strict, unroll=unroll)


def _check_data(net: Network, params: Params, loss, train, test):
    """``(loss record, x, y, (x_test, y_test) or None)``: the data checks shared by ``fit`` and ``fit_ensemble``."""
    for name, pair in (("train", train), ("test", test)):
        if (pair is not None or name == "train") and (not isinstance(pair, (tuple, list)) or len(pair) != 2):
            or_none = " or None" if name == "test" else ""
            raise TypeError(f"{name} must be a pair (x, y){or_none}, got {type(pair).__name__}.")
    loss_rec = _losses.get(loss)
    x, y = _prepare_data(net, params, loss_rec, *train, "train:")
    test_xy = _prepare_data(net, params, loss_rec, *test, "test:") if test is not None else None
    return loss_rec, x, y, test_xy


def _check_fit_args(x, batch_size, epochs):
    epochs = _positive_number("epochs", epochs, integer=True)
    batch_size = _positive_number("batch_size", batch_size, integer=True)
    n = x.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} examples).")
    return epochs, batch_size


def _diagnose(setup: _Setup, net, params, opt_state, x, y, key, batch_size) -> tuple[int, int | None]:
    """Replay a diverged epoch step by step: ``(first bad step, first layer whose grads went non-finite)``.

    Layers are searched in backward-pass order (output first), the order in which a bad delta spreads.
    """
    n = x.shape[0]
    num_batches = n // batch_size
    perm = np.asarray(_epoch_permutation(key, n, batch_size)).reshape(num_batches, batch_size)
    step = jax.jit(setup.update)
    for s in range(num_batches):
        params_new, opt_state, value, grads = step(params, opt_state, x[perm[s]], y[perm[s]], setup.lr)
        layer_ok = np.asarray(_layer_finite(grads))
        if not layer_ok.all() or not np.isfinite(float(value)):
            bad = [l for l in range(len(layer_ok)) if not layer_ok[l]]
            return s, (max(bad) if bad else None)
        if not bool(_all_finite(params_new)):
            return s, None
        params = params_new
    return num_batches - 1, None


def fit(
    net: Network,
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    loss,
    epochs: int,
    batch_size: int,
    learning_rate: float | None = 0.1,
    optimizer: str | optax.GradientTransformation | None = None,
    grads: str = "manual",
    key: PRNGKey,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    strict: bool = False,
    eval_batch_size: int = 4096,
    unroll: int = 1,
    callback: Callable[[int, dict], None] | None = None,
    devices: int | Sequence[jax.Device] | None = None,
) -> tuple[Params, dict]:
    """Train with mini-batch SGD (or an optax optimizer), one compiled ``lax.scan`` per epoch.

    Args:
      net, params: the network and its initial params.
      train: ``(x, y)`` training data, ``x`` of shape ``(n, n_in)``.
      test: optional ``(x, y)`` evaluated after every epoch (loss and accuracy).
      loss: loss name or record.
      epochs: number of epochs (total, counting those restored by ``resume``).
      batch_size: mini-batch size; each epoch runs ``n // batch_size`` steps (the last partial batch of
        each shuffle is dropped).
      learning_rate: α for plain SGD and named optimizers.
      optimizer: None (plain SGD), ``"sgd"``, ``"momentum"``, ``"adam"`` or an optax transformation.
      grads: ``"manual"`` (hand-written backprop) or ``"autodiff"``.
      key: PRNG key; epoch ``e`` shuffles with ``jax.random.fold_in(key, e)``.
      progress: show a tqdm progress bar over epochs.
      checkpoint_dir: folder for ``checkpoint.safetensors`` (params, optimizer state, epoch, history, key),
        written atomically every ``checkpoint_every`` epochs, on interrupt and on divergence.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one; the continued run is
        bit-identical to an uninterrupted one on CPU.
      strict: check every step for a non-finite loss/gradient/param inside the compiled epoch and freeze the
        params at the last finite step. Costs one finiteness reduction over the gradients and params per step
        (about ``2 · n_params`` comparisons, small next to the ``6 · n_params · batch`` FLOPs of a step) and
        keeps a second copy of params live; measured on CPU, about +5 % per epoch for [64, 128, 10] at batch 32
        and +10-40 % for [784, 256, 10] at batch 128 (RELIABILITY.md). Without it, divergence is detected once
        per epoch and the params of the previous epoch are returned.
      eval_batch_size: chunk size of the jitted evaluation.
      unroll: ``lax.scan`` unroll factor of the epoch loop.
      callback: ``callback(epoch, history)`` after every epoch (on the host).
      devices: data parallelism (:mod:`fnn.parallel`): a device count or a sequence of ``jax.Device``; every
        batch is split across them (``batch_size`` must be divisible by their number, else ``ValueError``),
        grads are averaged with ``lax.pmean`` and the params come back replicated on them. Same batches and,
        up to float rounding, the same result as one device.

    Returns:
      ``(params, history)``; ``history`` is a dict of per-epoch lists: ``epoch``, ``train_loss``,
      ``epoch_time`` and, with ``test``, ``test_loss`` and ``test_accuracy``; ``diverged`` is set (a dict with
      ``epoch``, ``step``, ``layer`` and ``message``) when training stopped on a non-finite value. A resumed
      run continues the saved history: a ``diverged`` record of the run that saved the checkpoint moves to
      ``earlier_divergences``, and test metrics of epochs that ran without a test set are ``None``.

    Raises:
      ValueError / TypeError: bad data, shapes or hyper-parameters (checked before anything is compiled).
      TrainingInterrupted: on Ctrl-C, after saving a checkpoint when ``checkpoint_dir`` is set.

    Example:
      >>> net = fnn.mlp([64, 32, 10], hidden="relu", output="softmax")          # doctest: +SKIP
      >>> params, hist = fnn.fit(net, net.init(k0), (x, y), loss="sparse_categorical_cross_entropy",
      ...                        epochs=10, batch_size=32, learning_rate=0.1, key=k1)
    """
    check_params(net, params)
    loss_rec, x, y, test_xy = _check_data(net, params, loss, train, test)
    epochs, batch_size = _check_fit_args(x, batch_size, epochs)
    checkpoint_every = _positive_number("checkpoint_every", checkpoint_every, integer=True)
    unroll = _positive_number("unroll", unroll, integer=True)
    eval_batch_size = _positive_number("eval_batch_size", eval_batch_size, integer=True)
    setup = _setup(net, loss_rec, grads, optimizer, learning_rate, x.shape[0], batch_size, strict, unroll)
    epoch_fn = jax.jit(setup.epoch)
    if devices is not None:  # data parallel over a device mesh: the same batches, split across the devices
        from fnn import parallel

        mesh = parallel.make_mesh(devices)
        update = _make_update(net, setup.loss, grads, setup.optimizer, axis_name=parallel.DATA_AXIS)
        epoch_fn = parallel.make_epoch(update, mesh, x.shape[0], batch_size, strict=strict, unroll=unroll)
        x, y = parallel.replicate(mesh, (x, y))
    opt_state = setup.optimizer.init(params) if setup.optimizer is not None else ()
    history: dict = {"epoch": [], "train_loss": [], "epoch_time": []}
    if test is not None:
        history.update(test_loss=[], test_accuracy=[])

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    # A named optimizer bakes its learning rate into the transformation (setup.lr is None), so record both;
    # an optax object is recorded by kind only (its hyper-parameters are not inspectable).
    config = {"loss": loss_rec.name, "batch_size": batch_size, "grads": grads, "strict": strict,
              "optimizer": optimizer if optimizer is None or isinstance(optimizer, str) else "optax",
              "lr": float(learning_rate) if isinstance(optimizer, str) else setup.lr}
    start = 0
    if resume:
        if ckpt_path is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder holding checkpoint.safetensors.")
        if ckpt_path.exists():
            params, opt_state, start, history, key = _restore(ckpt_path, net, opt_state, config)
            history = _continued_history(history, with_test=test is not None)

    def save(epoch_done: int, p, s) -> Path | None:
        if ckpt_path is None:
            return None
        from fnn import checkpoint

        return checkpoint.save(
            ckpt_path, p, net=net, opt_state=s if setup.optimizer is not None else None,
            metadata={"epoch": epoch_done, "history": history, "config": config},
            arrays={"key": jax.random.key_data(key)},
        )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc="fit", unit="epoch", leave=True)
    try:
        for e in range(start, epochs):
            t0 = time.perf_counter()
            epoch_key = jax.random.fold_in(key, e)
            new_params, new_state, step_losses, layer_ok = epoch_fn(params, opt_state, x, y, epoch_key, setup.lr)
            step_losses = np.asarray(step_losses)
            finite = np.isfinite(step_losses).all() and bool(_all_finite(new_params))
            if not finite:
                return _diverged(setup, net, params, opt_state, new_params, x, y, epoch_key, batch_size, e,
                                 step_losses, layer_ok, history, save)
            params, opt_state = new_params, new_state
            history["epoch"].append(e + 1)
            history["train_loss"].append(float(step_losses.mean()))
            history["epoch_time"].append(time.perf_counter() - t0)
            postfix = {"loss": f"{history['train_loss'][-1]:.4f}"}
            if test is not None:
                metrics = evaluate(net, params, *test_xy, loss_rec, batch_size=eval_batch_size)
                history["test_loss"].append(metrics["loss"])
                history["test_accuracy"].append(metrics["accuracy"])
                if metrics["accuracy"] is not None:
                    postfix["acc"] = f"{metrics['accuracy']:.4f}"
            elif "test_loss" in history:  # resumed without the test set of the run that saved the checkpoint
                history["test_loss"].append(None)
                history["test_accuracy"].append(None)
            if bar is not None:
                bar.set_postfix(postfix)
                bar.update(1)
            if (e + 1) % checkpoint_every == 0 or e + 1 == epochs:
                save(e + 1, params, opt_state)
            if callback is not None:
                callback(e + 1, history)
    except KeyboardInterrupt as interrupt:
        done = len(history["epoch"])
        path = save(done, params, opt_state)
        if path is not None:
            msg = (f"Training interrupted after {done} epoch(s); checkpoint saved to {path}. Resume with "
                   f"fit(..., checkpoint_dir={str(Path(checkpoint_dir))!r}, resume=True) or `fnn train --resume {checkpoint_dir}`.")
        else:
            msg = f"Training interrupted after {done} epoch(s); pass checkpoint_dir to keep a checkpoint."
        raise TrainingInterrupted(msg, params, history, path) from interrupt
    finally:
        if bar is not None:
            bar.close()
    return params, history


def _continued_history(history: dict, *, with_test: bool) -> dict:
    """A restored history, ready to be continued: every per-epoch list as long as ``history["epoch"]``.

    A ``diverged`` record of the run that saved the checkpoint moves to ``earlier_divergences`` (the resumed
    run has not diverged); test metrics of epochs run without a test set are ``None``.
    """
    history = dict(history)
    earlier = history.pop("diverged", None)
    if earlier is not None:
        history["earlier_divergences"] = [*history.get("earlier_divergences", []), earlier]
    done = len(history["epoch"])
    if with_test:
        for name in ("test_loss", "test_accuracy"):
            history[name] = list(history.get(name, [None] * done))
    return history


def _restore(path: Path, net, opt_state_like, config):
    from fnn import checkpoint

    ckpt = checkpoint.load(path, net, opt_state_like=opt_state_like if opt_state_like != () else None)
    saved = ckpt.metadata.get("config", {})
    differ = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
    if differ:
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"Cannot resume from {path}: the training configuration differs ({detail}).")
    key = jax.random.wrap_key_data(jnp.asarray(ckpt.arrays["key"]))
    opt_state = ckpt.opt_state if ckpt.opt_state is not None else ()
    return ckpt.params, opt_state, int(ckpt.metadata["epoch"]), ckpt.metadata["history"], key


def _diverged(setup, net, params, opt_state, new_params, x, y, epoch_key, batch_size, e, step_losses,
              layer_ok, history, save):
    if layer_ok is not None:  # strict mode: the scan recorded per-step, per-layer finiteness
        layer_ok = np.asarray(layer_ok)
        bad_steps = np.nonzero(~(layer_ok.all(axis=1) & np.isfinite(step_losses)))[0]
        step = int(bad_steps[0]) if bad_steps.size else len(step_losses) - 1
        bad_layers = np.nonzero(~layer_ok[step])[0]
        layer = int(bad_layers.max()) if bad_layers.size else None
        params = new_params  # frozen at the last finite step inside the scan
    else:
        step, layer = _diagnose(setup, net, params, opt_state, x, y, epoch_key, batch_size)
    where = f"layer {layer}'s gradient was the first to go non-finite" if layer is not None else "the loss or the updated params went non-finite"
    message = (f"Training diverged in epoch {e + 1} at step {step}: {where}. Returning the last finite params "
               f"(after epoch {len(history['epoch'])}{' and ' + str(step) + ' steps' if layer_ok is not None else ''}). "
               "Try a smaller learning rate.")
    history["diverged"] = {"epoch": e + 1, "step": step, "layer": layer, "message": message}
    path = save(len(history["epoch"]), params, opt_state) if layer_ok is None else None
    if path is not None:
        message += f" Last finite checkpoint kept at {path}."
        history["diverged"]["message"] = message
    warnings.warn(message, DivergenceWarning, stacklevel=3)
    return params, history


# --- ensembles ------------------------------------------------------------------------------------------

def _where_members(keep: Array, new, old):
    """Member ``k`` of ``new`` where ``keep[k]``, else of ``old`` (stacked pytrees)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(keep.reshape(-1, *(1,) * (a.ndim - 1)), a, b), new, old)


def fit_ensemble(
    net: Network,
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    loss,
    epochs: int,
    batch_size: int,
    learning_rate: float | Sequence[float] | ArrayLike = 0.1,
    optimizer: str | optax.GradientTransformation | None = None,
    grads: str = "manual",
    keys: PRNGKey,
    progress: bool = False,
    unroll: int = 1,
) -> tuple[Params, dict]:
    """Train K networks at once in one vmapped, compiled program.

    Member ``k`` starts from ``params[k]`` (stacked params, e.g. ``jax.vmap(net.init)(init_keys)``), shuffles
    with ``keys[k]`` and uses ``learning_rate[k]`` (or a shared scalar); the result equals training each member
    alone with :func:`fit` and the same key. Per-member learning rates need plain SGD (``optimizer=None``);
    an optax optimizer is shared by all members (its state is vmapped).

    Returns:
      ``(stacked params, history)`` where each history entry is a list over epochs of length-K lists. A
      member whose loss or params go non-finite in an epoch is frozen at its params from the end of the
      previous epoch (its later ``train_loss`` entries are NaN), a :class:`DivergenceWarning` names it, and
      ``history["diverged"][k]`` holds its ``epoch`` and ``message``; the other members are unaffected.
    """
    leaves = jax.tree_util.tree_leaves(params)
    if not isinstance(params, (list, tuple)) or not params or not isinstance(params[0], dict) \
            or jnp.ndim(params[0].get("w")) != 3:
        got = jnp.shape(params[0].get("w")) if isinstance(params, (list, tuple)) and params \
            and isinstance(params[0], dict) else type(params).__name__
        raise ValueError(
            f"fit_ensemble expects stacked params with a leading member axis, e.g. jax.vmap(net.init)(keys): "
            f"layer 0's w of shape (K, {net.sizes[0]}, {net.sizes[1]}), got {got}."
        )
    k = leaves[0].shape[0]
    member0 = jax.tree_util.tree_map(lambda t: t[0], params)
    check_params(net, member0)
    loss_rec, x, y, test_xy = _check_data(net, member0, loss, train, test)
    epochs, batch_size = _check_fit_args(x, batch_size, epochs)
    try:
        lr = jnp.asarray(learning_rate, dtype=leaves[0].dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"learning_rate must be a positive number or one per member, got {learning_rate!r}.") from e
    if lr.ndim == 0:
        lr = jnp.full((k,), lr)
    if lr.shape != (k,):
        raise ValueError(f"learning_rate must be a scalar or have one entry per member ({k}), got shape {lr.shape}.")
    if optimizer is not None and not bool(jnp.all(lr == lr[0])):
        raise ValueError("Per-member learning rates need plain SGD (optimizer=None); an optax optimizer is shared.")
    if not bool(jnp.all(lr > 0)):
        raise ValueError(f"learning_rate must be positive for every member, got {np.asarray(lr).tolist()}.")
    keys = jnp.asarray(keys)
    if keys.shape[:1] != (k,):
        raise ValueError(f"keys must hold one PRNG key per member ({k}), got shape {keys.shape}.")
    setup = _setup(net, loss_rec, grads, optimizer, float(lr[0]), x.shape[0], batch_size, False, unroll)
    opt_state = jax.vmap(setup.optimizer.init)(params) if setup.optimizer is not None else ()
    state_axes = 0 if setup.optimizer is not None else None

    def member_epoch(p, s, key, lr_k, e):
        return setup.epoch(p, s, x, y, jax.random.fold_in(key, e), lr_k if setup.optimizer is None else None)[:3]

    epoch_fn = jax.jit(jax.vmap(member_epoch, in_axes=(0, state_axes, 0, 0, None), out_axes=(0, state_axes, 0)))
    eval_fn = jax.jit(jax.vmap(lambda p, xt, yt: _chunk_metrics(net, loss_rec, p, xt, yt), in_axes=(0, None, None)))
    history: dict = {"epoch": [], "train_loss": []}
    if test is not None:
        history.update(test_loss=[], test_accuracy=[])
    alive = np.ones(k, bool)  # members that have not diverged
    for e in range(epochs):
        new_params, new_state, step_losses = epoch_fn(params, opt_state, keys, lr, e)
        step_losses = np.asarray(step_losses)
        finite = np.isfinite(step_losses).all(axis=1) & np.asarray(jax.vmap(_all_finite)(new_params))
        newly = alive & ~finite
        alive &= finite
        if alive.all():
            params, opt_state = new_params, new_state
        else:  # freeze the diverged members at their last finite params; the others train on
            keep = jnp.asarray(alive)
            params = _where_members(keep, new_params, params)
            opt_state = _where_members(keep, new_state, opt_state)
        for m in np.flatnonzero(newly).tolist():
            message = (f"Ensemble member {m} (learning rate {float(lr[m]):g}) diverged in epoch {e + 1}: a "
                       f"non-finite loss or param. Keeping its params from the end of epoch {e}; the other "
                       f"members train on. Try a smaller learning rate for it.")
            history.setdefault("diverged", {})[m] = {"epoch": e + 1, "message": message}
            warnings.warn(message, DivergenceWarning, stacklevel=2)
        history["epoch"].append(e + 1)
        history["train_loss"].append(np.where(alive, step_losses.mean(axis=1), np.nan).tolist())
        if test is not None:
            total, correct = eval_fn(params, *test_xy)
            history["test_loss"].append((np.asarray(total) / test_xy[0].shape[0]).tolist())
            history["test_accuracy"].append((np.asarray(correct) / test_xy[0].shape[0]).tolist())
        if progress:
            print(f"epoch {e + 1}: train loss {history['train_loss'][-1]}")
    return params, history
