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
from fnn._checks import check_data, check_fit_args, check_memory, check_pair, positive_number
from fnn._epoch import epoch_order
from fnn._history import continued_history, new_history, progress_bar, record_epoch, show_epoch
from fnn._program import Program, program
from fnn._types import ArrayLike, Params, PRNGKey
from fnn.divergence import DivergenceWarning
from fnn.early_stopping import EarlyStopping, Tracker, check_early_stopping, restore_best
from fnn.ensemble import fit_ensemble
from fnn.evaluation import evaluate, evaluate_checked, is_classification
from fnn.network import Network, check_params, check_state
from fnn.optim import OPTIMIZERS, is_schedule, make_optimizer, named_learning_rate
from fnn.step import sgd_step

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
    learning_rate=None,
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
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    early_stopping: EarlyStopping | None = None,
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
        transformation, which carries its own (``ValueError`` otherwise: the pair is ambiguous). A schedule
        (``count -> rate``, e.g. ``optax.cosine_decay_schedule(0.1, epochs * (n // batch_size))``) is evaluated
        at every step inside the compiled epoch, step ``t`` counted from 0 over the whole run; its step count is
        in the optimizer state (plain SGD runs as ``optax.sgd(schedule)``), so it is checkpointed and resumed
        (:mod:`fnn.optim`).
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
      validation: optional ``(x, y)`` evaluated after every epoch like ``test`` (``val_loss``,
        ``val_accuracy``); the set ``early_stopping`` monitors.
      early_stopping: an :class:`fnn.EarlyStopping` rule (:mod:`fnn.early_stopping`): stop when the validation
        metric has not improved for ``patience`` epochs, return the best epoch's params (``restore_best``),
        write them to ``checkpoint_dir/best.safetensors`` and record ``history["early_stopping"]``. Needs
        ``validation`` (``ValueError`` otherwise).

    Dropout: step ``s`` of epoch ``e`` draws its masks from ``fnn._epoch.step_keys(fold_in(key, e), steps)[s]``,
    a stream of its own, so the shuffle order does not depend on the dropout; evaluation runs without dropout.

    Returns:
      ``(params, history)``, with ``state=`` ``(params, state, history)``; ``history`` is a dict of per-epoch
      lists: ``epoch``, ``train_loss``, ``epoch_time`` and, with ``test``, ``test_loss`` and ``test_accuracy``
      (None for regression; with ``validation`` the same as ``val_loss`` and ``val_accuracy``), every list as
      long as ``epoch`` (an epoch is recorded all at once, after its evaluation); with ``early_stopping`` the
      record ``history["early_stopping"]`` and the params of its best epoch; ``diverged`` is set (a dict
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
    val_xy = check_pair(net, params, loss_rec, validation, "validation")
    rule = check_early_stopping(early_stopping, has_validation=val_xy is not None,
                                classification=is_classification(net, loss_rec))
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
    config = _config(loss_rec, batch_size, grads, strict, optimizer, learning_rate, prog, penalty)
    if rule is not None:  # recorded only when there is one (older checkpoints match runs without it)
        config["early_stopping"] = rule.describe()
    ckpt = Checkpointer(checkpoint_dir, net, config, with_opt_state=prog.optimizer is not None,
                        with_state=state is not None)
    tracker = None if rule is None else Tracker(rule, net, checkpoint_dir)
    history, start = new_history(with_test=test is not None, with_val=val_xy is not None), 0
    if resume and (restored := ckpt.restore(opt_state)) is not None:
        params, opt_state, start, saved_history, key = restored[:5]
        history = continued_history(saved_history, with_test=test is not None, with_val=val_xy is not None)
        if tracker is not None:
            tracker.replay(history, restore_best(restored.arrays, params, None if state is None else opt_state[1],
                                                 restored.best_epoch))

    def done(params, opt_state, history):
        if tracker is not None and tracker.rule.restore_best and tracker.best_epoch is not None:
            params, opt_state = tracker.params, (None, tracker.state)
        return (params, opt_state[1], history) if given_state else (params, history)

    def save(epoch, params, opt_state, history):
        extra = None if tracker is None else tracker.saved()
        return ckpt.save(epoch, params, opt_state, history, key, extra=extra,
                         best_epoch=None if tracker is None else tracker.best_epoch)

    if tracker is not None and tracker.exhausted(start):  # the resumed run had stopped already
        tracker.record(history, history.get("early_stopping", {}).get("stopped_epoch") or start)
        return done(params, opt_state, history)

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
            net_state = None if state is None else new_state[1]
            test_metrics, val_metrics = (None if xy is None else evaluate_checked(
                net, loss_rec, new_params, *xy, batch_size=eval_batch_size, state=net_state)
                for xy in (test_xy, val_xy))
            params, opt_state = new_params, new_state
            record_epoch(history, e + 1, float(step_losses.mean()), epoch_time, test_metrics, val_metrics)
            stop = False
            if tracker is not None:
                tracker.observe(e + 1, val_metrics, params, net_state)
                stop = tracker.exhausted(e + 1)
                tracker.record(history, e + 1 if stop else None)
            show_epoch(bar, history)
            if (e + 1) % checkpoint_every == 0 or e + 1 == epochs or stop:
                save(e + 1, params, opt_state, history)
            if callback is not None:
                callback(e + 1, history)
            if stop:
                break
    except KeyboardInterrupt as interrupt:
        done = len(history["epoch"])
        path = save(done, params, opt_state, history)
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
    if is_schedule(learning_rate):  # a schedule is recorded by kind only, as an optax object is
        config["lr"] = "schedule"
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

