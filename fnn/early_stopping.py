"""Early stopping for ``fit``: stop when a validation metric stops improving, and keep the best params.

``fit(..., validation=(x_val, y_val), early_stopping=fnn.EarlyStopping(patience=5))`` evaluates the validation
set after every compiled epoch (on the host, between epochs: the epochs themselves stay one ``lax.scan``) and

* an epoch **improves** when its ``monitor`` value beats the best so far by more than ``min_delta``:
  ``value < best - min_delta`` for ``"val_loss"``, ``value > best + min_delta`` for ``"val_accuracy"``; the
  first validated epoch always improves; a NaN never does;
* training **stops** after the epoch that makes ``patience`` epochs in a row without an improvement;
* the **best params** (and the network's state, for BatchNorm) are those after the best epoch: ``fit``
  returns them when ``restore_best`` (the default; else the last epoch's), and with ``checkpoint_dir`` writes
  them to ``best.safetensors`` (an ordinary :mod:`fnn.checkpoint` file: ``fnn.checkpoint.load`` reads it, its
  metadata says the epoch, the monitor and the value) whenever a new best is found;
* the **history** gains ``history["early_stopping"]``: ``monitor``, ``patience``, ``min_delta``,
  ``best_epoch``, ``best_value``, ``stopped_epoch`` (None when all the epochs ran) and ``reason``, one sentence.

**Resume.** The checkpoint of an early-stopped run holds the best params beside the last ones (extra arrays
``best_params/i``, ``best_state/i``), so a resumed run has the same best params, waits the same number of epochs
and stops at the same epoch as an uninterrupted one. The rule is part of the training configuration a resume
must match; a run that has already stopped stops again at once (nothing is trained).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax

from fnn import checkpoint
from fnn.network import Network

__all__ = ["BEST_NAME", "MONITORS", "EarlyStopping", "Tracker", "check_early_stopping", "restore_best"]

#: The file the best params are written to in a run folder.
BEST_NAME = "best.safetensors"
#: What can be monitored: the validation metric it is, and whether smaller or larger is better.
MONITORS = {"val_loss": ("loss", "min"), "val_accuracy": ("accuracy", "max")}


class EarlyStopping(NamedTuple):
    """The early-stopping rule of ``fit`` (see the module docstring).

    Attributes:
      monitor: ``"val_loss"`` (default; smaller is better) or ``"val_accuracy"`` (larger is better; needs a
        classification net). Both are computed on ``fit``'s ``validation`` set, which is required.
      patience: stop after this many epochs in a row without an improvement (a positive int).
      min_delta: an improvement must beat the best value by more than this (a finite number >= 0).
      restore_best: return the best epoch's params (default) instead of the last epoch's.
    """

    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def describe(self) -> dict:
        """The rule as JSON (recorded in a checkpoint's training configuration)."""
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta,
                "restore_best": self.restore_best}


def check_early_stopping(rule, *, has_validation: bool, classification: bool) -> EarlyStopping | None:
    """``rule`` checked (None passes through): an :class:`EarlyStopping` with valid fields, and the validation
    set (and, for ``val_accuracy``, a classification net) it needs.

    Raises:
      TypeError: not an EarlyStopping, or a field of the wrong type.
      ValueError: an unknown monitor, a bad patience or min_delta, or no validation set.
    """
    if rule is None:
        return None
    if not isinstance(rule, EarlyStopping):
        raise TypeError(f"early_stopping must be an fnn.EarlyStopping(monitor=..., patience=...) or None, got "
                        f"{type(rule).__name__}.")
    if rule.monitor not in MONITORS:
        raise ValueError(f"EarlyStopping: monitor must be one of {list(MONITORS)}, got {rule.monitor!r}.")
    if isinstance(rule.patience, bool) or not isinstance(rule.patience, int) or rule.patience < 1:
        raise ValueError(f"EarlyStopping: patience must be a positive int (epochs without improvement), got "
                         f"{rule.patience!r}.")
    delta = rule.min_delta
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {delta!r}.")
    if not isinstance(rule.restore_best, bool):
        raise TypeError(f"EarlyStopping: restore_best must be True or False, got {rule.restore_best!r}.")
    if not has_validation:
        raise ValueError(f"early_stopping monitors {rule.monitor!r}, which needs a validation set: pass "
                         f"fit(..., validation=(x_val, y_val)) (the CLI: --val-fraction F); a test set is not used "
                         f"for stopping.")
    if rule.monitor == "val_accuracy" and not classification:
        raise ValueError("EarlyStopping: monitor='val_accuracy' needs a classification net (the loss is a "
                         "regression loss); monitor 'val_loss' instead.")
    return rule._replace(min_delta=float(delta))


class Tracker:
    """The bookkeeping of one run: the best epoch, its value and params, and whether patience ran out."""

    def __init__(self, rule: EarlyStopping, net: Network, directory: str | Path | None):
        self.rule, self.net = rule, net
        self.path = None if directory is None else Path(directory) / BEST_NAME
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.params = self.state = None

    def _improves(self, value) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if MONITORS[self.rule.monitor][1] == "min":
            return value < self.best_value - self.rule.min_delta
        return value > self.best_value + self.rule.min_delta

    def replay(self, history: dict, best) -> None:
        """Continue from a restored ``history``: the best epoch is found again by the same rule, and its params
        and state are ``best`` (from the checkpoint: ``(params, state, epoch)``, or None when the run that
        saved it had no early stopping, in which case tracking starts afresh).

        Raises:
          ValueError: the checkpoint's best epoch is not the one the history gives.
        """
        if best is None:
            return
        for epoch, value in zip(history["epoch"], history.get(self.rule.monitor, []), strict=False):
            if self._improves(value):
                self.best_epoch, self.best_value = epoch, float(value)
        if self.best_epoch != best[2]:
            raise ValueError(f"Cannot resume early stopping: the checkpoint's best params are of epoch {best[2]}, "
                             f"but its history's {self.rule.monitor} is best at epoch {self.best_epoch}.")
        self.params, self.state = best[0], best[1]

    def observe(self, epoch: int, metrics: dict, params, state) -> None:
        """Epoch ``epoch`` finished with the validation ``metrics`` (evaluation's ``{"loss", "accuracy"}``); a new
        best of the monitored one is kept (and written)."""
        value = metrics[MONITORS[self.rule.monitor][0]]
        if not self._improves(value):
            return
        self.best_epoch, self.best_value, self.params, self.state = epoch, float(value), params, state
        if self.path is not None:
            checkpoint.save(self.path, params, net=self.net, state=state,
                            metadata={"epoch": epoch, "monitor": self.rule.monitor, "value": float(value)})

    def exhausted(self, epoch: int) -> bool:
        """After ``epoch``: ``patience`` epochs in a row without an improvement."""
        return self.best_epoch is not None and epoch - self.best_epoch >= self.rule.patience

    def saved(self) -> dict | None:
        """The extra checkpoint arrays holding the best params and state (None before a best is found)."""
        if self.best_epoch is None:
            return None
        arrays = {f"best_params/{i}": leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(self.params))}
        arrays.update({f"best_state/{i}": leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(self.state))})
        return arrays

    def record(self, history: dict, stopped_epoch: int | None) -> None:
        """Write ``history["early_stopping"]``."""
        r = self.rule
        if stopped_epoch is None:
            reason = (f"ran every epoch; {r.monitor} was best at epoch {self.best_epoch} "
                      f"({self.best_value:.6g})" if self.best_epoch is not None else "ran every epoch")
        else:
            reason = (f"stopped after epoch {stopped_epoch}: {r.monitor} did not improve by more than "
                      f"{r.min_delta:g} for {r.patience} epoch{'s' * (r.patience > 1)} (best {self.best_value:.6g} "
                      f"at epoch {self.best_epoch})")
        history["early_stopping"] = {**r.describe(), "best_epoch": self.best_epoch, "best_value": self.best_value,
                                     "stopped_epoch": stopped_epoch, "reason": reason}


def restore_best(arrays: dict, params, state, epoch) -> tuple | None:
    """``(params, state, epoch)`` of the best epoch from a checkpoint's extra arrays (:meth:`Tracker.saved`),
    laid out like ``params`` and ``state``; None when the checkpoint holds none."""
    if epoch is None or "best_params/0" not in arrays:
        return None
    p_leaves, p_def = jax.tree_util.tree_flatten(params)
    s_leaves, s_def = jax.tree_util.tree_flatten(state)
    best_p = p_def.unflatten([jax.numpy.asarray(arrays[f"best_params/{i}"]) for i in range(len(p_leaves))])
    best_s = s_def.unflatten([jax.numpy.asarray(arrays[f"best_state/{i}"]) for i in range(len(s_leaves))])
    return best_p, best_s, epoch
