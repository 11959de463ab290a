"""Compiled mini-batch training: the jitted ``sgd_step`` and ``fit``, whole epochs as one ``lax.scan``.

The seeds' algorithm — initialise, shuffle, forward, backpropagate, update every weight at once, repeat over
mini-batches, evaluate after each epoch — compiled end to end:

* :func:`sgd_step` is one jitted update ``W := W - α dW`` (or an optax update).
* An epoch is one compiled call (:mod:`fnn._epoch`): the training set lives on the device, is permuted there
  with :func:`epoch_order` of ``jax.random.fold_in(key, epoch)``, gathered a few mini-batches at a time and
  scanned. **The last partial batch is dropped** (``n // batch_size`` steps per epoch); a fresh shuffle each
  epoch means every example is still used. No per-step Python and no host-to-device copy per epoch.
* :func:`fit` is a short loop over that epoch and small pieces: evaluation (:mod:`fnn.evaluation`), the
  history record and progress bar (:mod:`fnn._history`), the checkpointer (:mod:`fnn._checkpointer`; a resumed
  run is bit-identical to an uninterrupted one on CPU) and the divergence report (:mod:`fnn.divergence`).
* :func:`fit_ensemble` (:mod:`fnn.ensemble`) runs the same epoch ``jax.vmap``-ed over K members.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import optax

from fnn import _epoch, divergence, parallel, penalties
from fnn import losses as _losses
from fnn._checkpointer import CHECKPOINT_NAME, Checkpointer
from fnn._checks import check_data, check_fit_args, check_grads_mode, check_memory, positive_number
from fnn._epoch import epoch_order
from fnn._history import continued_history, new_history, progress_bar, record_epoch, show_epoch
from fnn._program import Program, program
from fnn._types import ArrayLike, Params, PRNGKey
from fnn.divergence import DivergenceWarning
from fnn.ensemble import fit_ensemble
from fnn.evaluation import evaluate, evaluate_checked
from fnn.network import Network, check_params, check_params_type, check_state, numeric_array
from fnn.optim import OPTIMIZERS, make_optimizer, named_learning_rate, resolve_optimizer

__all__ = [
    "sgd_step",
    "fit",
    "fit_ensemble",
    "evaluate",
    "epoch_order",
    "make_optimizer",
    "DivergenceWarning",
    "TrainingInterrupted",
    "OPTIMIZERS",
    "CHECKPOINT_NAME",
]


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` was interrupted (Ctrl-C). Carries what was trained so far and where it was saved.

    Attributes:
      params: params after the last completed epoch.
      history: the history so far (every list as long as ``history["epoch"]``).
      checkpoint: path of the checkpoint written on interrupt, or None without ``checkpoint_dir``.
      state: the network's state after the last completed epoch (None for a net without state).
    """

    def __init__(self, message: str, params: Params, history: dict, checkpoint: Path | None, state=None):
        super().__init__(message)
        self.params, self.history, self.checkpoint, self.state = params, history, checkpoint, state


# --- one step -------------------------------------------------------------------------------------------

def sgd_step(
    net: Network,
    loss,
    *,
    learning_rate: float | None = None,
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

    For a net with dropout the step takes a last argument ``key`` (the step's dropout masks; required). A net
    with state (BatchNorm) takes and returns it after the optimizer state, every step in training mode::

        step(params, state, x, y) -> (params, state, loss)
        step(params, opt_state, state, x, y) -> (params, opt_state, state, loss)

    Args:
      net: the network.
      loss: loss name or record.
      learning_rate: α for plain SGD and named optimizers; None takes the optimizer's default
        (``fnn.optim.DEFAULT_LEARNING_RATES``: SGD 0.1, momentum 0.01, adam 1e-3). Must be None beside an optax
        transformation, which carries its own (``ValueError`` otherwise).
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


# --- fit ------------------------------------------------------------------------------------------------

def fit(
    net: Network,
    params: Params,
    train: tuple[ArrayLike, ArrayLike],
    test: tuple[ArrayLike, ArrayLike] | None = None,
    *,
    loss,
    epochs: int,
    batch_size: int,
    learning_rate: float | None = None,
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
    penalty=None,
    state=None,
) -> tuple:
    """Train with mini-batch SGD (or an optax optimizer), one compiled ``lax.scan`` per epoch.

    Args:
      net, params: the network and its initial params.
      train: ``(x, y)`` training data, ``x`` of shape ``(n, n_in)``.
      test: optional ``(x, y)`` evaluated after every epoch (loss and accuracy).
      loss: loss name or record.
      epochs: number of epochs (total, counting those restored by ``resume``).
      batch_size: mini-batch size; each epoch runs ``n // batch_size`` steps (the last partial batch of
        each shuffle is dropped).
      learning_rate: α for plain SGD and named optimizers; None takes the optimizer's default
        (``fnn.optim.DEFAULT_LEARNING_RATES``: SGD 0.1, momentum 0.01, adam 1e-3). Must be None beside an optax
        transformation, which carries its own (``ValueError`` otherwise: the pair is ambiguous).
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
        keeps a second copy of params live (its measured cost is in RELIABILITY.md). Without it, divergence is
        detected once per epoch and the params of the previous epoch are returned.
      eval_batch_size: chunk size of the jitted evaluation.
      unroll: ``lax.scan`` unroll factor of the epoch loop.
      callback: ``callback(epoch, history)`` after every epoch (on the host).
      devices: data parallelism (:mod:`fnn.parallel`): a device count or a sequence of ``jax.Device``; every
        batch is split across them (``batch_size`` must be divisible by their number, else ``ValueError``),
        grads are averaged with ``lax.pmean`` and the params come back replicated on them. Same batches and,
        up to float rounding, the same result as one device (dropout included: masks are drawn per row of the
        global batch).
      penalty: an :mod:`fnn.penalties` record added to every step's loss and grads (``fnn.penalties.l2(lam)``
        is ``(lam/2)·Σw²`` over the weights; Nielsen's ``λ/2n`` is ``l2(λ / n)``).
      state: the network's state (``net.init_state()``), required for a net with BatchNorm: carried through
        the compiled epoch beside the optimizer state (every step in training mode), used by the evaluation
        (inference mode, running statistics), saved in checkpoints and restored bit-identically on resume.

    Dropout: step ``s`` of epoch ``e`` draws its masks from ``fnn._epoch.step_keys(fold_in(key, e), steps)[s]``,
    a stream of its own, so the shuffle order does not depend on the dropout; evaluation runs without dropout.

    Returns:
      ``(params, history)``, with ``state=`` ``(params, state, history)``; ``history`` is a dict of per-epoch
      lists: ``epoch``, ``train_loss``,
      ``epoch_time`` and, with ``test``, ``test_loss`` and ``test_accuracy`` (None for regression), every list
      as long as ``epoch`` (an epoch is recorded all at once, after its evaluation); ``diverged`` is set (a dict
      with ``epoch``, ``step``, ``layer`` and ``message``) when training stopped on a non-finite value. A resumed
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
    loss_rec, x, y, test_xy = check_data(net, params, loss, train, test)
    epochs, batch_size = check_fit_args(x, batch_size, epochs)
    checkpoint_every = positive_number("checkpoint_every", checkpoint_every, integer=True)
    unroll = positive_number("unroll", unroll, integer=True)
    eval_batch_size = positive_number("eval_batch_size", eval_batch_size, integer=True)
    mesh = parallel.make_mesh(devices) if devices is not None else None
    prog = program(net, loss_rec, grads, optimizer, learning_rate, x.shape[0], batch_size, strict=strict,
                   unroll=unroll, mesh=mesh, penalty=penalty)
    check_memory(params, prog.optimizer, strict=strict)  # before the first copy of the params is allocated
    epoch_fn = prog.epoch if mesh is not None else jax.jit(prog.epoch)
    if mesh is not None:  # the same batches, split across the devices
        x, y = parallel.replicate(mesh, (x, y))
    given_state, state = state is not None, check_state(net, state)
    # a net with state carries (opt_state, state) in the optimizer-state slot of the epoch (fnn._epoch)
    opt_state = prog.init_state(params) if state is None else (prog.init_state(params), state)
    ckpt = Checkpointer(checkpoint_dir, net, _config(loss_rec, batch_size, grads, strict, optimizer, learning_rate,
                                                     prog, penalty), with_opt_state=prog.optimizer is not None,
                        with_state=state is not None)
    history, start = new_history(with_test=test is not None), 0
    if resume and (restored := ckpt.restore(opt_state)) is not None:
        params, opt_state, start, saved_history, key = restored
        history = continued_history(saved_history, with_test=test is not None)

    def done(params, opt_state, history):
        return (params, opt_state[1], history) if given_state else (params, history)

    bar = progress_bar(progress, total=epochs, initial=start)
    try:
        for e in range(start, epochs):
            t0 = time.perf_counter()
            epoch_key = jax.random.fold_in(key, e)
            new_params, new_state, step_losses, layer_ok = epoch_fn(params, opt_state, x, y, epoch_key, prog.lr)
            step_losses = np.asarray(step_losses)
            if not (np.isfinite(step_losses).all() and bool(_epoch.all_finite(new_params))):
                replay_args = (prog.update, prog.lr, params, opt_state, x, y, epoch_key, batch_size, net.stochastic)
                strict_run = layer_ok is not None
                where = divergence.locate(step_losses, layer_ok) if strict_run else divergence.replay(*replay_args)
                at_start = e == start and where[0] == 0 and divergence.broken_at_start(*replay_args)
                if strict_run:  # frozen at the last finite step
                    params, opt_state = new_params, new_state
                return done(params, opt_state, _diverged(history, e + 1, *where, strict=strict_run,
                                                         at_start=at_start, key=key, ckpt=ckpt, params=params,
                                                         opt_state=opt_state))
            epoch_time = time.perf_counter() - t0
            test_metrics = None if test_xy is None else evaluate_checked(
                net, loss_rec, new_params, *test_xy, batch_size=eval_batch_size,
                state=None if state is None else new_state[1])
            params, opt_state = new_params, new_state
            record_epoch(history, e + 1, float(step_losses.mean()), epoch_time, test_metrics)
            show_epoch(bar, history)
            if (e + 1) % checkpoint_every == 0 or e + 1 == epochs:
                ckpt.save(e + 1, params, opt_state, history, key)
            if callback is not None:
                callback(e + 1, history)
    except KeyboardInterrupt as interrupt:
        done = len(history["epoch"])
        path = ckpt.save(done, params, opt_state, history, key)
        msg = f"Training interrupted after {done} epoch(s); " + (
            f"checkpoint saved to {path}. {ckpt.resume_hint()}" if path is not None
            else "pass checkpoint_dir to keep a checkpoint.")
        raise TrainingInterrupted(msg, params, history, path, None if state is None else opt_state[1]) from interrupt
    finally:
        if bar is not None:
            bar.close()
    return done(params, opt_state, history)


def _config(loss: _losses.Loss, batch_size, grads, strict, optimizer, learning_rate, prog: Program,
            penalty=None) -> dict:
    """The training configuration a resume must match. A named optimizer bakes its learning rate into the
    transformation (``prog.lr`` is None), so both are recorded; an optax object is recorded by kind only
    (its hyper-parameters are not inspectable). A penalty is recorded only when there is one (so checkpoints
    written before penalties existed still match a run without one)."""
    config = {"loss": loss.name, "batch_size": batch_size, "grads": grads, "strict": strict,
              "optimizer": optimizer if optimizer is None or isinstance(optimizer, str) else "optax",
              "lr": named_learning_rate(optimizer, learning_rate) if isinstance(optimizer, str) else prog.lr}
    penalty = penalties.get(penalty)
    if penalty is not None:
        try:
            config["penalty"] = penalty.describe()
        except ValueError:  # built with a mask: recorded by kind and strength
            config["penalty"] = {"name": penalty.name, "lam": penalty.lam, "leaves": "mask"}
    return config


def _diverged(history: dict, epoch: int, step: int, layer, *, strict: bool, at_start: bool, key,
              ckpt: Checkpointer, params, opt_state) -> dict:
    """Record and warn about a divergence in ``epoch``; without strict mode, keep the last finite checkpoint."""
    message = divergence.message(epoch, len(history["epoch"]), step, layer, strict=strict, at_start=at_start)
    history["diverged"] = {"epoch": epoch, "step": step, "layer": layer, "message": message}
    path = ckpt.save(len(history["epoch"]), params, opt_state, history, key) if not strict else None
    if path is not None:
        history["diverged"]["message"] = message = message + f" Last finite checkpoint kept at {path}."
    warnings.warn(message, DivergenceWarning, stacklevel=3)
    return history

