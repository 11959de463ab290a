"""Divergence: what ``fit`` reports when a loss, gradient or parameter goes non-finite, and where it happened."""

from __future__ import annotations

import jax
import numpy as np

from fnn._epoch import all_finite, epoch_indices, layer_finite, step_keys

__all__ = ["DivergenceWarning", "locate", "replay", "broken_at_start", "message"]


class DivergenceWarning(RuntimeWarning):
    """Training produced a non-finite loss or gradient; ``fit`` stopped and returned the last finite params."""


def locate(step_losses, layer_ok) -> tuple[int, int | None]:
    """``(first bad step, deepest layer whose grads were non-finite there)`` from a strict epoch's per-step
    flags (``layer_ok``: ``(steps, layers)`` booleans); the layer is None when only the loss or update broke."""
    layer_ok = np.asarray(layer_ok)
    bad_steps = np.nonzero(~(layer_ok.all(axis=1) & np.isfinite(step_losses)))[0]
    step = int(bad_steps[0]) if bad_steps.size else len(step_losses) - 1
    bad_layers = np.nonzero(~layer_ok[step])[0]
    return step, (int(bad_layers.max()) if bad_layers.size else None)


def replay(update, lr, params, opt_state, x, y, key, batch_size: int, keyed: bool = False) -> tuple[int, int | None]:
    """Replay a diverged epoch step by step from its starting state: ``(first bad step, layer)`` (with ``keyed``,
    each step gets the dropout key the epoch gave it).

    The layer is the deepest one whose grads went non-finite (the backward pass runs output first, the order
    in which a bad delta spreads), or None when the loss or the updated params went non-finite first.
    """
    n = x.shape[0]
    num_batches = n // batch_size
    perm = np.asarray(epoch_indices(key, n, batch_size)).reshape(num_batches, batch_size)
    step = jax.jit(update)
    keys = step_keys(key, num_batches) if keyed else None
    for s in range(num_batches):
        args = (params, opt_state, x[perm[s]], y[perm[s]], lr) + (() if keys is None else (keys[s],))
        params_new, opt_state, value, grads = step(*args)
        layer_ok = np.asarray(layer_finite(grads))
        if not layer_ok.all() or not np.isfinite(float(value)):
            bad = [l for l in range(len(layer_ok)) if not layer_ok[l]]
            return s, (max(bad) if bad else None)
        if not bool(all_finite(params_new)):
            return s, None
        params = params_new
    return num_batches - 1, None


def broken_at_start(update, lr, params, opt_state, x, y, key, batch_size: int, keyed: bool = False) -> bool:
    """True when the very first step's loss (computed before its update) is already non-finite, or the params
    are: then no learning rate is to blame — the params or the data are."""
    first = np.asarray(epoch_indices(key, x.shape[0], batch_size)[:batch_size])
    extra = (step_keys(key, x.shape[0] // batch_size)[0],) if keyed else ()
    value = jax.jit(update)(params, opt_state, x[first], y[first], lr, *extra)[2]
    return not (np.isfinite(float(value)) and bool(all_finite(params)))


def message(epoch: int, epochs_done: int, step: int, layer: int | None, *, strict: bool,
            at_start: bool = False) -> str:
    """The warning text: where training diverged (epoch counted from 1, step and layer from 0), what is kept,
    and what to try: a smaller learning rate, or — when the loss was non-finite before any update
    (``at_start``) — other params or data."""
    where = (f"layer {layer}'s gradient was the first to go non-finite" if layer is not None
             else "the loss or the updated params went non-finite")
    kept = f"after epoch {epochs_done}" + (f" and {step} steps" if strict else "")
    advice = ("The loss was already non-finite at the params training started from, before any update: the "
              "params or the data are the problem (values too large for the dtype, NaN or inf), not the learning "
              "rate." if at_start else "Try a smaller learning rate.")
    return (f"Training diverged in epoch {epoch} at step {step}: {where}. Returning the last finite params "
            f"({kept}). {advice}")
