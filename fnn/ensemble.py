"""Ensembles: K networks trained at once, ``jax.vmap`` of the very epoch program ``fit`` runs."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import divergence
from fnn._checks import check_data, check_fit_args, check_memory, positive_number
from fnn._epoch import all_finite
from fnn._history import new_history, progress_bar, record_epoch, show_epoch
from fnn._program import program
from fnn._types import Array, ArrayLike, Params, PRNGKey
from fnn.divergence import DivergenceWarning
from fnn.evaluation import evaluate_checked
from fnn.network import Network, check_params, check_state
from fnn.optim import default_learning_rate, is_schedule, resolve_optimizer

__all__ = ["fit_ensemble"]


def _where_members(keep: Array, new, old):
    """Member ``k`` of ``new`` where ``keep[k]``, else of ``old`` (stacked pytrees)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(keep.reshape(-1, *(1,) * (a.ndim - 1)), a, b), new, old)


@functools.lru_cache(maxsize=32)
def _member_epochs(epoch: Callable, stateful: bool, optax_lr: bool):
    """``jax.jit(jax.vmap(epoch))`` over members: params, optimizer (and network) state when ``stateful``, epoch
    key and learning rate are per member (``optax_lr``: the optimizer carries its rate); the training set is
    shared."""
    state_axes = 0 if stateful else None

    def member_epoch(p, s, x, y, key, lr):
        return epoch(p, s, x, y, key, None if optax_lr else lr)

    return jax.jit(jax.vmap(member_epoch, in_axes=(0, state_axes, None, None, 0, 0),
                            out_axes=(0, state_axes, 0, 0)))


def _check_stacked(net: Network, params) -> int:
    """The member count K of stacked params, validated against ``net``: every leaf is the net's leaf with one
    leading member axis of the same K (the first leaf that is not names its layer path, e.g. ``3.1``)."""
    expected = _shapes_by_path(net.param_shapes(), ())
    got = _leaf_shapes(params, ()) if isinstance(params, (list, tuple)) and params else None
    if got is None or not got:
        raise ValueError(f"fit_ensemble expects stacked params with a leading member axis, e.g. "
                         f"jax.vmap(net.init)(keys): a list with one entry per layer, got {type(params).__name__}.")
    k = None
    for path, shape in expected:
        actual = got.get(path)
        if actual is None:
            continue  # a missing leaf: check_params below names it
        if len(actual) != len(shape) + 1 or (k is not None and actual[0] != k):
            where = ".".join(map(str, path[:-1]))
            want = ", ".join(["K" if k is None else str(k), *map(str, shape)])
            raise ValueError(
                f"fit_ensemble expects stacked params with a leading member axis, e.g. jax.vmap(net.init)(keys): "
                f"layer {where}'s {path[-1]} of shape ({want}), got {actual}."
            )
        k = actual[0] if k is None else k
    if k is None:
        raise ValueError("fit_ensemble needs a network with params (every member is trained by its own params).")
    check_params(net, jax.tree_util.tree_map(lambda t: t[0], params))
    return k


def _shapes_by_path(node, path: tuple) -> list[tuple[tuple, tuple]]:
    """``(path, shape)`` of every leaf of ``net.param_shapes()``, in order (paths like ``(3, 1, "w")``)."""
    if isinstance(node, list):
        return [item for i, child in enumerate(node) for item in _shapes_by_path(child, (*path, i))]
    return [((*path, name), tuple(shape)) for name, shape in node.items()]


def _leaf_shapes(node, path: tuple) -> dict[tuple, tuple]:
    """``{path: shape}`` of every array leaf of a params-like tree of lists and dicts."""
    if isinstance(node, (list, tuple)):
        return {p: s for i, child in enumerate(node) for p, s in _leaf_shapes(child, (*path, i)).items()}
    if isinstance(node, dict):
        return {p: s for name, child in node.items() for p, s in _leaf_shapes(child, (*path, name)).items()}
    return {path: tuple(jnp.shape(node))} if node is not None else {}


def _member_rates(learning_rate, k: int, dtype, optimizer) -> Array:
    try:
        lr = jnp.asarray(learning_rate, dtype=dtype)
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
    return lr


def fit_ensemble(
    net: Network,
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    loss,
    epochs: int,
    batch_size: int,
    learning_rate: float | Sequence[float] | ArrayLike | None = None,
    optimizer: str | optax.GradientTransformation | None = None,
    grads: str = "manual",
    keys: PRNGKey,
    progress: bool = False,
    strict: bool = False,
    eval_batch_size: int = 4096,
    unroll: int = 1,
    callback: Callable[[int, dict], None] | None = None,
    penalty=None,
    state=None,
) -> tuple:
    """Train K networks at once: ``jax.vmap`` of the compiled epoch :func:`fnn.fit` runs.

    Member ``k`` starts from ``params[k]`` (stacked params, e.g. ``jax.vmap(net.init)(init_keys)``), shuffles
    with ``keys[k]`` (epoch ``e`` with ``fold_in(keys[k], e)``, as ``fit``) and uses ``learning_rate[k]`` (or a
    shared scalar); the result equals training each member alone with :func:`fit` and the same key. Per-member
    learning rates need plain SGD (``optimizer=None``); an optax optimizer is shared by all members (its state
    is vmapped). Evaluation is ``fit``'s, chunked and vmapped over the members.

    Args:
      net, params: the network and the stacked initial params (a leading member axis on every leaf).
      train, test, loss, epochs, batch_size, optimizer, grads, unroll, eval_batch_size: as in :func:`fnn.fit`.
      learning_rate: a scalar or one per member; None takes the optimizer's default as in ``fit`` (plain SGD 0.1);
        must be None beside an optax transformation. A schedule (``count -> rate``, :mod:`fnn.optim`) is
        shared by every member.
      keys: ``(K,)`` PRNG keys, one per member.
      progress: a tqdm progress bar over epochs (showing member 0's loss and accuracy).
      strict: ``fit``'s strict mode per member: a step that goes non-finite freezes that member at its last
        finite params inside the compiled epoch.
      callback: ``callback(epoch, history)`` after every epoch.
      penalty: an :mod:`fnn.penalties` record added to every member's loss and grads, as in ``fit``.
      state: one network state per member, stacked (``jax.vmap(lambda _: net.init_state())(jnp.arange(K))``),
        required for a net with BatchNorm; each member carries its own running statistics, as ``fit`` does.

    A net with dropout draws member ``k``'s masks from its own epoch keys, exactly as ``fit`` with ``keys[k]``.

    Returns:
      ``(stacked params, history)`` (with ``state=``: ``(stacked params, stacked state, history)``): ``history``
      has ``fit``'s per-epoch lists (``epoch``, ``epoch_time``, and
      ``train_loss``, ``test_loss``, ``test_accuracy`` as length-K lists per epoch; ``test_accuracy`` is None
      for regression, as in ``fit``). A member whose loss or params go non-finite is frozen (at its params from
      the end of the previous epoch, or with ``strict`` at its last finite step), its later ``train_loss``
      entries are NaN, a :class:`~fnn.divergence.DivergenceWarning` names it, and ``history["diverged"][k]``
      holds its ``epoch`` and ``message``; the other members are unaffected.

    Raises:
      ValueError / TypeError: unstacked params, one key or learning rate too few, bad data or hyper-parameters.
    """
    k = _check_stacked(net, params)
    member0 = jax.tree_util.tree_map(lambda t: t[0], params)
    loss_rec, x, y, test_xy = check_data(net, member0, loss, train, test)
    epochs, batch_size = check_fit_args(x, batch_size, epochs)
    eval_batch_size = positive_number("eval_batch_size", eval_batch_size, integer=True)
    unroll = positive_number("unroll", unroll, integer=True)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    if isinstance(optimizer, optax.GradientTransformation) or is_schedule(learning_rate):
        # it carries its own rate (a schedule: one for every member, in the optimizer state); lr is not used
        resolve_optimizer(optimizer, learning_rate)  # refuses a learning_rate beside an optax object
        lr, rate = jnp.ones((k,), dtype), (None if isinstance(optimizer, optax.GradientTransformation)
                                            else learning_rate)
    else:
        default = learning_rate is None
        lr = _member_rates(default_learning_rate(optimizer) if default else learning_rate, k, dtype, optimizer)
        rate = float(lr[0])
    keys = jnp.asarray(keys)
    if keys.shape[:1] != (k,):
        raise ValueError(f"keys must hold one PRNG key per member ({k}), got shape {keys.shape}.")
    prog = program(net, loss_rec, grads, optimizer, rate, x.shape[0], batch_size, strict=strict, unroll=unroll,
                   penalty=penalty)
    check_memory(params, prog.optimizer, strict=strict, what="fit_ensemble")  # before anything is allocated
    given_state = state is not None
    if given_state or net.stateful:
        _check_members("state", state, k)
        check_state(net, None if state is None else jax.tree_util.tree_map(lambda t: t[0], state))
    stateful = prog.optimizer is not None or given_state
    opt_state = jax.vmap(prog.optimizer.init)(params) if prog.optimizer is not None else ()
    opt_state = (opt_state, list(state)) if given_state else opt_state
    epoch_fn = _member_epochs(prog.epoch, stateful, prog.optimizer is not None)
    history = new_history(with_test=test is not None)
    alive = np.ones(k, bool)  # members that have not diverged
    bar = progress_bar(progress, total=epochs, desc="fit_ensemble")
    try:
        for e in range(epochs):
            t0 = time.perf_counter()
            epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, e)
            new_params, new_state, step_losses, layer_ok = epoch_fn(params, opt_state, x, y, epoch_keys, lr)
            step_losses = np.asarray(step_losses)
            finite = np.isfinite(step_losses).all(axis=1) & np.asarray(jax.vmap(all_finite)(new_params))
            newly = alive & ~finite
            # Strict: a newly diverged member keeps the last finite step the scan froze it at; else its params
            # from the end of the previous epoch. Members that diverged earlier stay frozen.
            keep = alive if strict else alive & finite
            if keep.all():  # the usual epoch: no per-leaf select
                params, opt_state = new_params, new_state
            else:
                keep = jnp.asarray(keep)
                params = _where_members(keep, new_params, params)
                opt_state = _where_members(keep, new_state, opt_state)
            alive &= finite
            for m in np.flatnonzero(newly).tolist():
                _warn_member(history, m, float(lr[m]), e + 1,
                             None if layer_ok is None else divergence.locate(step_losses[m], layer_ok[m]))
            epoch_time = time.perf_counter() - t0
            test_metrics = None if test_xy is None else evaluate_checked(
                net, loss_rec, params, *test_xy, batch_size=eval_batch_size, stacked=True,
                state=opt_state[1] if given_state else None)
            record_epoch(history, e + 1, np.where(alive, step_losses.mean(axis=1), np.nan).tolist(), epoch_time,
                         test_metrics)
            show_epoch(bar, history)
            if callback is not None:
                callback(e + 1, history)
    finally:
        if bar is not None:
            bar.close()
    return (params, opt_state[1], history) if given_state else (params, history)


def _check_members(what: str, tree, k: int) -> None:
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != k:
            raise ValueError(f"fit_ensemble: {what} must be stacked, one per member ({k}) on a leading axis; got a "
                             f"leaf of shape {jnp.shape(leaf)}.")


def _warn_member(history: dict, member: int, lr: float, epoch: int, where) -> None:
    kept = (f"its params from the end of epoch {epoch - 1}" if where is None
            else f"its last finite params (step {where[0]} of epoch {epoch})")
    message = (f"Ensemble member {member} (learning rate {lr:g}) diverged in epoch {epoch}: a non-finite loss or "
               f"param. Keeping {kept}; the other members train on. Try a smaller learning rate for it.")
    history.setdefault("diverged", {})[member] = {"epoch": epoch, "message": message}
    warnings.warn(message, DivergenceWarning, stacklevel=3)
