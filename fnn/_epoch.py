"""The training core: one update, one step body and one chunked epoch, shared by fit, ensembles and data parallel.

Everything that runs inside a compiled epoch lives here, once:

* :func:`make_update` — ``update(params, opt_state, x, y, lr) -> (params, opt_state, loss, grads)``: the
  hand-written (or autodiff) gradient and the SGD/optax update; with ``axis_name`` the shard's loss and grads
  are ``lax.pmean``-ed over that mesh axis first (data parallelism, :mod:`fnn.parallel`).
* :func:`step_body` — the ``lax.scan`` body of one step (plain, or strict: freeze at the last finite params).
* :func:`epoch_order` / :func:`epoch_indices` — the shuffled order of an epoch.
* :func:`make_epoch` — one epoch as a ``lax.scan`` over chunks of mini-batches gathered from the on-device
  training set, with a ``rows`` hook that picks the rows of each batch a device owns.

:mod:`fnn.train` (``fit``, ``sgd_step``), :mod:`fnn.ensemble` (``jax.vmap`` of the same epoch) and
:mod:`fnn.parallel` (the same epoch inside ``shard_map``) all build on these functions and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import _layer
from fnn import losses as _losses
from fnn._types import Array, PRNGKey
from fnn.backprop import autodiff_in, backprop_in, prepare
from fnn.network import Network

__all__ = [
    "CHUNK_BYTES",
    "all_finite",
    "layer_finite",
    "make_update",
    "epoch_order",
    "epoch_indices",
    "batches_per_chunk",
    "step_body",
    "initial_carry",
    "unpack",
    "make_epoch",
    "DROPOUT_STREAM",
    "step_keys",
]

#: ``fold_in(epoch_key, DROPOUT_STREAM)`` is the key of an epoch's dropout masks: a stream of its own, so the
#: shuffle order (drawn from the epoch key itself) is the same with and without dropout.
DROPOUT_STREAM = 0x64726F70

#: Bytes of training data gathered per chunk of mini-batches (see :func:`make_epoch`): a chunk stays in a core's
#: L2 cache, and the epoch never allocates (and page-faults in) a shuffled copy of the whole training set.
CHUNK_BYTES = 1 << 19


def all_finite(tree) -> Array:
    """A scalar bool: every entry of every leaf of ``tree`` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in jax.tree_util.tree_leaves(tree)]))


def layer_finite(grads) -> Array:
    """``(num_layers,)`` booleans: every gradient leaf of layer ``l`` is finite (True for a layer without params)."""
    return jnp.stack([all_finite(layer) if jax.tree_util.tree_leaves(layer) else jnp.array(True) for layer in grads])


def step_keys(key: PRNGKey, num_batches: int) -> Array:
    """The dropout key of every step of the epoch whose key is ``key``: ``split(fold_in(key, DROPOUT_STREAM))``."""
    return jax.random.split(jax.random.fold_in(key, DROPOUT_STREAM), num_batches)


# --- the update -----------------------------------------------------------------------------------------

def _grad_fn(net: Network, loss: _losses.Loss, grads: str, axis_name: str | None, penalty):
    """``(params, x, y, key) -> (loss, grads)``; ``key`` None is inference mode (no dropout). For a net with
    state: ``(params, x, y, key, state) -> (loss, grads, new_state)``, in training mode (batch statistics)."""
    core = backprop_in if grads == "manual" else autodiff_in

    def grad_fn(p, x, y, key=None, state=None):
        _, x2, y2 = prepare(net, p, x, y, loss)
        rows = None
        if axis_name is not None and key is not None:  # dropout masks by the row's index in the global batch
            local = x2.shape[0]
            rows = jax.lax.axis_index(axis_name).astype(jnp.int32) * local + jnp.arange(local, dtype=jnp.int32)
        ctx = _layer.Context(key is not None or state is not None, key, axis_name, rows, state)
        out = core(net, p, x2, y2, loss, ctx, penalty)
        if state is None:
            return out[0], out[1]
        return out[0], out[1], (out[3].state if grads == "manual" else out[2])

    return grad_fn


def make_update(net: Network, loss: _losses.Loss, grads: str, optimizer, *, axis_name: str | None = None,
                penalty=None):
    """``update(params, opt_state, x, y, lr, key=None) -> (params, opt_state, loss, grads)``; ``opt_state`` is
    ``()`` for SGD.

    Args:
      net: the network.
      loss: a loss record.
      grads: ``"manual"`` (:func:`fnn.backprop`) or ``"autodiff"`` (:func:`fnn.autodiff`).
      optimizer: None for plain SGD ``W := W - lr · dW`` (``lr`` an argument of ``update``), else an optax
        transformation (``lr`` is ignored; pass None).
      axis_name: inside ``shard_map``, the mesh axis the batch is split over. The shard's loss and grads are
        ``lax.pmean``-ed over it before the update: the mean of equal-size shard means is the batch mean. (The
        params are first cast to "varying" so that ``jax.grad`` gives the shard's own gradient instead of
        inserting the psum that shard_map's transpose adds for a replicated input.) Dropout masks are drawn by
        each example's row in the global batch, so N shards see the masks of one device.
      penalty: an :mod:`fnn.penalties` record added to the loss and the grads.

    ``key`` (training mode: dropout) is the step's key; None runs the step in inference mode. For a net with
    state (BatchNorm) the ``opt_state`` slot is the pair ``(opt_state, state)`` and every step runs in training
    mode, returning the updated state in the pair.
    """
    grad_fn = _grad_fn(net, loss, grads, axis_name, penalty)
    if axis_name is not None:
        shard_grad_fn = grad_fn

        def grad_fn(p, x, y, key=None, *state):
            p = jax.lax.pcast(p, axis_name, to="varying")
            out = shard_grad_fn(p, x, y, key, *state)
            # the new state is of the global batch already (synchronised statistics): the same on every device
            return (*jax.lax.pmean(out[:2], axis_name), *out[2:])

    apply = _parameter_step(optimizer)
    if net.stateful:  # the optimizer-state slot carries (opt_state, state); every step in training mode

        def update(params, carry, x, y, lr, key=None):
            opt_state, state = carry
            value, g, state = grad_fn(params, x, y, key, state)
            new, opt_state = apply(params, opt_state, g, lr)
            return new, (opt_state, state), value, g

    else:

        def update(params, opt_state, x, y, lr, key=None):
            value, g = grad_fn(params, x, y, key)
            new, opt_state = apply(params, opt_state, g, lr)
            return new, opt_state, value, g

    return update


def _parameter_step(optimizer):
    """``(params, opt_state, grads, lr) -> (params, opt_state)``: plain SGD ``W := W - lr · dW`` without an
    optimizer, else the optax update (``lr`` unused). With the network's state in the optimizer-state slot, the
    step body, the epoch scan, the strict freeze, ensembles (vmap) and meshes (replicated) carry it exactly as
    they carry an optimizer's."""
    if optimizer is None:

        def step(params, opt_state, g, lr):
            return jax.tree_util.tree_map(lambda p, d: p - (lr * d).astype(p.dtype), params, g), opt_state

    else:

        def step(params, opt_state, g, lr):
            updates, opt_state = optimizer.update(g, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

    return step


# --- the order of an epoch ------------------------------------------------------------------------------

def epoch_order(key: PRNGKey, n: int) -> Array:
    """The shuffled order of one epoch: a uniformly random permutation of ``range(n)`` (int32) drawn from ``key``.

    ``fit`` visits epoch ``e`` in the order ``epoch_order(jax.random.fold_in(key, e), n)``, mini-batch ``s``
    being ``order[s * batch_size:(s + 1) * batch_size]`` (the last partial batch dropped). Replay it to
    reproduce a run step by step outside ``fit``.

    Each index gets two independent 32-bit random words from ``jax.random.bits`` and the indices are sorted by
    that 64-bit key in one ``lax.sort``: a tie has probability about ``n² / 2⁶⁵`` (2·10⁻¹⁰ at n = 60,000). It is
    a uniform permutation as ``jax.random.permutation`` is (which sorts by 32-bit keys in several rounds), with
    a different order, and it compiles faster (BENCHMARKS.md, "levers").

    Raises:
      ValueError: ``n`` is not a positive integer below 2³¹.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n < 2**31:
        raise ValueError(f"epoch_order: n must be a positive integer below 2**31, got {n!r}.")
    n = int(n)
    words = jax.random.bits(key, (2, n), jnp.uint32)
    return jax.lax.sort((words[0], words[1], jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]


def epoch_indices(key: PRNGKey, n: int, batch_size: int) -> Array:
    """The example order of one epoch: ``(n // batch_size) * batch_size`` indices, the last partial batch dropped."""
    return epoch_order(key, n)[: (n // batch_size) * batch_size]


def batches_per_chunk(num_batches: int, batch_size: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Mini-batches per gathered chunk: about ``chunk_bytes`` of data, preferably dividing ``num_batches``."""
    k = max(1, min(num_batches, chunk_bytes // max(1, batch_size * row_bytes)))
    for d in range(k, (k + 1) // 2 - 1, -1):  # a divisor in [k/2, k] leaves no tail loop
        if num_batches % d == 0:
            return d
    return k


# --- the step and the epoch -----------------------------------------------------------------------------

def step_body(update, lr, *, strict: bool):
    """The ``lax.scan`` body of one training step, shared by every epoch (single device, vmapped, sharded).

    Plain: carry ``(params, opt_state)``, output the step's loss. Strict: carry ``(params, opt_state,
    healthy)``; a step whose loss, gradients or new params are not all finite freezes the carry at the last
    finite params for the rest of the epoch and outputs ``(loss or NaN, (num_layers,) finite flags)``.
    """

    def step(carry, batch):  # batch: (x, y) or, with dropout, (x, y, key)
        p, s = carry
        p, s, value, _ = update(p, s, batch[0], batch[1], lr, *batch[2:])
        return (p, s), value

    def strict_step(carry, batch):
        p, s, healthy = carry
        new_p, new_s, value, g = update(p, s, batch[0], batch[1], lr, *batch[2:])
        layer_ok = layer_finite(g)
        good = healthy & jnp.isfinite(value) & jnp.all(layer_ok) & all_finite(new_p)
        keep = lambda new, old: jnp.where(good, new, old)
        p = jax.tree_util.tree_map(keep, new_p, p)
        s = jax.tree_util.tree_map(keep, new_s, s)
        # A frozen step reports a NaN loss, so fit sees the divergence even when only a gradient or the
        # update (not the loss) went non-finite; the loss of a frozen step means nothing anyway.
        return (p, s, good), (jnp.where(good, value, jnp.nan), layer_ok)

    return strict_step if strict else step


def initial_carry(params, opt_state, strict: bool):
    """The scan carry :func:`step_body` expects."""
    return (params, opt_state, jnp.array(True)) if strict else (params, opt_state)


def unpack(carry, out, strict: bool):
    """``(params, opt_state, step_losses, layer_ok or None)`` from a scan over :func:`step_body`."""
    if strict:
        (params, opt_state, _), (step_losses, layer_ok) = carry, out
        return params, opt_state, step_losses, layer_ok
    (params, opt_state), step_losses = carry, out
    return params, opt_state, step_losses, None


def make_epoch(update, n: int, batch_size: int, *, strict: bool, unroll: int,
               rows: Callable[[Array], Array] | None = None, local_batch: int | None = None,
               chunk_bytes: int = CHUNK_BYTES, keyed: bool = False) -> Callable:
    """``epoch(params, opt_state, x, y, key, lr) -> (params, opt_state, step_losses, layer_ok)``.

    ``layer_ok`` is ``(num_batches, num_layers)`` finite flags per step in strict mode, else ``None``.

    Data layout: the permutation (:func:`epoch_indices`) is drawn once per epoch, and the examples are gathered
    a chunk of ``k`` mini-batches (about ``chunk_bytes``) at a time by an outer ``lax.scan`` whose body scans the
    ``k`` steps. Gathering the whole shuffled set at once writes a fresh copy of the training set every epoch
    (page faults and memory traffic that cost as much as thousands of small steps), and gathering every step
    separately adds a gather per step; chunks avoid both (BENCHMARKS.md). The steps, their order and their
    results are exactly those of a single scan over the permuted data.

    Args:
      update: from :func:`make_update`.
      n: number of training examples.
      batch_size: the (global) mini-batch size.
      strict: use the strict step body (see :func:`step_body`).
      unroll: ``lax.scan`` unroll factor of the inner loop.
      rows: the hook for data parallelism: maps a chunk's indices of shape ``(k, batch_size)`` to the indices
        this device gathers, ``(k, local_batch)`` (inside ``shard_map``; :mod:`fnn.parallel`). None: all rows.
      local_batch: the rows of each batch ``rows`` keeps (default ``batch_size``).
      chunk_bytes: data gathered per chunk (a tuning knob; results do not depend on it).
      keyed: pass step ``s`` its dropout key ``step_keys(key, num_batches)[s]`` (training mode); without it the
        program is exactly the one of a net without dropout.
    """
    num_batches = n // batch_size
    local_batch = batch_size if local_batch is None else local_batch

    def epoch(params, opt_state, x, y, key, lr):
        body = step_body(update, lr, strict=strict)
        k = batches_per_chunk(num_batches, local_batch, math.prod(x.shape[1:]) * x.dtype.itemsize, chunk_bytes)
        num_chunks, tail = divmod(num_batches, k)
        perm = epoch_indices(key, n, batch_size)
        keys = step_keys(key, num_batches) if keyed else None

        def chunk(carry, xs):  # xs[0]: the example indices of k (or, last, `tail`) consecutive mini-batches
            idx = xs[0]
            if rows is not None:
                idx = rows(idx.reshape(-1, batch_size)).reshape(-1)
            xb = jnp.take(x, idx, axis=0, mode="clip").reshape(-1, local_batch, *x.shape[1:])
            yb = jnp.take(y, idx, axis=0, mode="clip").reshape(-1, local_batch, *y.shape[1:])
            return jax.lax.scan(body, carry, (xb, yb, *xs[1:]), unroll=unroll)

        head = num_chunks * k
        xs = (perm[: head * batch_size].reshape(num_chunks, -1),)
        if keyed:
            xs += (keys[:head].reshape(num_chunks, k),)
        carry, out = jax.lax.scan(chunk, initial_carry(params, opt_state, strict), xs)
        out = jax.tree_util.tree_map(lambda o: o.reshape(num_chunks * k, *o.shape[2:]), out)
        if tail:
            carry, out_tail = chunk(carry, (perm[head * batch_size:], *(() if keys is None else (keys[head:],))))
            out = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, out_tail)
        return unpack(carry, out, strict)

    return epoch
