"""The jitted training step, ``sgd_step``: one update ``W := W - α dW`` (or an optax update) of the training core
(:mod:`fnn._epoch`), with the host-side input checks a step called from Python needs. Re-exported by
:mod:`fnn.train` and the package."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax

from fnn import _epoch, parallel, penalties
from fnn import losses as _losses
from fnn._checks import check_grads_mode
from fnn.network import Network, check_params_type, check_state, numeric_array
from fnn.optim import resolve_optimizer

__all__ = ["sgd_step"]


def sgd_step(
    net: Network,
    loss,
    *,
    learning_rate=None,
    grads: str = "manual",
    optimizer: str | optax.GradientTransformation | None = None,
    devices: int | Sequence[jax.Device] | None = None,
    penalty=None,
) -> Callable:
    """A jitted training step.

    Without an optimizer, plain SGD updates every weight and bias at once, ``W := W - α dW``::

        step(params, x, y) -> (params, loss)

    With an optimizer (a name in ``OPTIMIZERS`` or an optax transformation), the optimizer state is threaded
    (create it with ``optimizer.init(params)``; for a name, with ``fnn.make_optimizer(name, lr).init``)::

        step(params, opt_state, x, y) -> (params, opt_state, loss)

    With a schedule (``learning_rate`` a callable ``count -> rate``, :mod:`fnn.optim`) plain SGD is
    ``optax.sgd(schedule)`` and its step threads that state (the step count; create it with
    ``optax.sgd(schedule).init(params)``): ``step(params, opt_state, x, y)``.

    For a net with dropout the step takes a last argument ``key`` (the step's dropout masks; required). A net
    with state (BatchNorm) takes and returns it after the optimizer state, every step in training mode::

        step(params, state, x, y) -> (params, state, loss)
        step(params, opt_state, state, x, y) -> (params, opt_state, state, loss)

    Args:
      net: the network.
      loss: loss name or record.
      learning_rate: α for plain SGD and named optimizers; None takes the optimizer's default
        (``fnn.optim.DEFAULT_LEARNING_RATES``: SGD 0.1, momentum 0.01, adam 1e-3). Must be None beside an optax
        transformation, which carries its own (``ValueError`` otherwise). Or a schedule (see above).
      grads: ``"manual"`` (hand-written backprop, the default) or ``"autodiff"`` (``jax.grad``).
      optimizer: None, ``"sgd"``, ``"momentum"``, ``"adam"`` or an ``optax.GradientTransformation``.
      devices: data parallelism (:mod:`fnn.parallel`): a device count or a sequence of ``jax.Device``; each
        batch is split across them (its size must be divisible by their number, else ``ValueError``) and the
        grads are averaged with ``lax.pmean``. With several processes each passes its part of the batch.
      penalty: an :mod:`fnn.penalties` record (e.g. ``fnn.penalties.l2(1e-4)``) added to the loss and grads.

    Returns:
      The jitted step; ``loss`` is the loss of the batch *before* the update. With a sparse loss, the step
      first checks that concrete labels lie in ``[0, n_out)`` (``ValueError`` otherwise: inside ``jit`` an
      out-of-range label would one-hot to zeros and silently drop out of the loss); under your own ``jit`` or
      ``lax.scan`` the labels are tracers and only their shape and dtype are checked.
    """
    loss = _losses.get(loss)
    optimizer, lr = resolve_optimizer(optimizer, learning_rate)
    grads = check_grads_mode(grads)
    check_params_type(net)
    stateful = optimizer is not None or net.stateful  # the update threads an optimizer (or network) state
    keyed = net.stochastic
    penalty = penalties.get(penalty)
    if devices is not None:  # data parallel over a device mesh
        mesh = parallel.make_mesh(devices)
        update = parallel.make_update(net, loss, grads, optimizer, penalty=penalty)
        step = parallel.make_step(update, mesh, lr=lr, stateful=stateful, keyed=keyed)
    else:
        step = _jitted_step(_epoch.make_update(net, loss, grads, optimizer, penalty=penalty), lr, stateful=stateful)
    names = ["params", *(["opt_state"] if optimizer is not None else []), *(["state"] if net.stateful else []),
             "x", "y"]
    if net.stateful:
        step = _with_net_state(step, net, optimizer is not None)
    return _with_input_checks(step, loss, net.output_shape[-1], names=names, keyed=keyed)


def _with_net_state(step: Callable, net: Network, with_optimizer: bool) -> Callable:
    """The step of a net with state: ``(params[, opt_state], state, x, y[, key]) -> (params[, opt_state], state,
    loss)`` around the update's ``(opt_state, state)`` slot (:func:`fnn._epoch.make_update`)."""

    def run(params, *args):
        opt_state, (state, *rest) = (args[0], args[1:]) if with_optimizer else ((), args)
        params, (opt_state, state), value = step(params, (opt_state, check_state(net, state)), *rest)
        return (params, opt_state, state, value) if with_optimizer else (params, state, value)

    return run


def _jitted_step(update, lr, *, stateful: bool) -> Callable:
    if not stateful:

        @jax.jit
        def step(params, x, y, *key):
            params, _, value, _ = update(params, (), x, y, lr, *key)
            return params, value

    else:

        @jax.jit
        def step(params, opt_state, x, y, *key):
            params, opt_state, value, _ = update(params, opt_state, x, y, lr, *key)
            return params, opt_state, value

    return step


def _with_input_checks(step: Callable, loss: _losses.Loss, n_out: int, *, names: list[str],
                       keyed: bool = False) -> Callable:
    """``step`` that first checks concrete ``x`` and ``y`` on the host, before ``jax.jit`` converts them: arrays of
    objects, strings or complex numbers are a ``TypeError`` naming the argument (JAX would say "Error
    interpreting argument", or drop the imaginary part), and sparse labels must lie in ``[0, n_out)`` (inside
    ``jit`` an out-of-range label would silently one-hot to a row of zeros, and an int64 label would first wrap
    to int32). Costs a host copy of the labels per call; under the caller's own ``jit``/``scan`` the arguments
    are tracers and only their dtypes are checked."""

    y_index = names.index("y")

    @functools.wraps(step)
    def checked(*args):
        if len(args) != y_index + 1 + keyed:
            shown = names + (["key"] if keyed else [])
            extra = " (the net has dropout: pass the step's PRNG key last)" if keyed else ""
            raise TypeError(f"step takes {len(shown)} arguments ({', '.join(shown)}){extra}, got {len(args)}.")
        if len(args) > y_index:
            args = list(args)
            args[y_index - 1] = numeric_array("x", args[y_index - 1])
            args[y_index] = y = numeric_array("y", args[y_index])
            if loss.sparse and not isinstance(y, jax.core.Tracer) and np.issubdtype(y.dtype, np.integer):
                _losses.check_label_range(loss, np.asarray(y), n_out)
        return step(*args)

    return checked
