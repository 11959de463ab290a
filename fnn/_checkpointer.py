"""The checkpointer of ``fit``: one ``checkpoint.safetensors`` per run folder, saved atomically and restored with
the resume checks (the same network, the same training configuration, metadata that makes sense)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn import checkpoint
from fnn.network import Network, check_state

__all__ = ["CHECKPOINT_NAME", "PER_EPOCH", "Checkpointer", "Restored", "check_run_metadata", "restored_key"]

CHECKPOINT_NAME = "checkpoint.safetensors"
#: The per-epoch lists of a history (``epoch`` and ``train_loss`` always; the others when recorded).
PER_EPOCH = ("epoch", "train_loss", "epoch_time", "test_loss", "test_accuracy", "val_loss", "val_accuracy")


def check_run_metadata(path: str | os.PathLike, metadata: dict) -> tuple[int, dict, dict]:
    """``(epoch, history, config)`` of a checkpoint ``fit`` wrote, after checking every field resume reads.

    The rules (each is what ``fit`` writes, so a file that breaks one was edited or made by something else):
    ``config`` is a dict; ``history`` is a dict whose per-epoch lists (:data:`PER_EPOCH`, ``epoch`` and
    ``train_loss`` required) all have the same length ``n``, with ``history["epoch"] == [1, ..., n]`` and
    numbers (or null) as entries; ``earlier_divergences``, when present, is a list; ``epoch`` is an int with
    ``epoch == n`` (a checkpoint is saved after recording its epochs, so ``epoch >= 0``).

    Raises:
      ValueError: naming the file and the field, e.g. "... metadata field 'epoch' must be an integer >= 0, got
        'abc'".
    """
    def bad(field: str, rule: str, value) -> ValueError:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        return ValueError(f"{path} cannot be resumed: its metadata field {field!r} must be {rule}, got {shown}.")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    for field in ("epoch", "history", "config"):
        if field not in metadata:
            raise ValueError(f"{path} cannot be resumed: its metadata has no {field!r} field (found "
                             f"{sorted(metadata)}); is it a checkpoint written by fit?")
    epoch, history, config = metadata["epoch"], metadata["history"], metadata["config"]
    if not isinstance(config, dict):
        raise bad("config", "a dict of training settings", config)
    if not isinstance(history, dict):
        raise bad("history", "a dict of per-epoch lists", history)
    lists = {name: history[name] for name in PER_EPOCH if name in history}
    for name in ("epoch", "train_loss"):
        if name not in lists:
            raise bad("history", f"a dict with the {name!r} list", sorted(history))
    for name, values in lists.items():
        if not isinstance(values, list) or not all(is_number(v) for v in values):
            raise bad(f"history.{name}", "a list of numbers", values)
    n = len(lists["epoch"])
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{path} cannot be resumed: its metadata field 'history.{name}' has {len(values)} "
                             f"entries, history.epoch has {n}; every per-epoch list must be as long.")
    if lists["epoch"] != list(range(1, n + 1)):
        raise bad("history.epoch", f"the epochs 1 to {n} in order", lists["epoch"])
    if not isinstance(history.get("earlier_divergences", []), list):
        raise bad("history.earlier_divergences", "a list", history["earlier_divergences"])
    if not is_int(epoch) or epoch < 0:
        raise bad("epoch", "an integer >= 0", epoch)
    if epoch != n:
        raise bad("epoch", f"the number of epochs its history records ({n})", epoch)
    return epoch, history, config


class Restored(NamedTuple):
    """What a resume continues from: ``params``, ``opt_state``, ``epoch`` (epochs done), ``history``, ``key``,
    and the checkpoint's extra ``arrays`` and ``best_epoch`` (early stopping's best params; None without)."""

    params: Any
    opt_state: Any
    epoch: int
    history: dict
    key: Any
    arrays: dict | None = None
    best_epoch: int | None = None


def restored_key(path, arrays: dict):
    """The PRNG key a checkpoint of ``fit`` stores as ``arrays/key`` (its ``key_data``), wrapped again."""
    if "key" not in arrays:
        raise ValueError(f"{path} cannot be resumed: it has no 'arrays/key' tensor (the run's PRNG key).")
    try:
        return jax.random.wrap_key_data(jnp.asarray(arrays["key"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} cannot be resumed: its 'arrays/key' tensor is not a PRNG key ({e})") from e


class Checkpointer:
    """Saves and restores ``fit``'s state in ``directory / checkpoint.safetensors`` (a no-op without a directory).

    Args:
      directory: the run folder, or None for no checkpoints.
      net: the network (its description is stored, and checked on restore).
      config: the training configuration that must match on resume (loss, batch size, grads mode, strict,
        optimizer and learning rate, and the penalty when there is one); a difference, or an entry only one
        side has, is a ``ValueError`` listing every differing entry (a missing one shown as None).
      with_opt_state: the run has an optimizer state to save.
    """

    def __init__(self, directory, net: Network, config: dict, *, with_opt_state: bool, with_state: bool = False):
        self.directory = None if directory is None else Path(directory)
        self.path = None if directory is None else self.directory / CHECKPOINT_NAME
        self.net, self.config, self.with_opt_state, self.with_state = net, config, with_opt_state, with_state

    def save(self, epoch: int, params, opt_state, history: dict, key, *, extra: dict | None = None,
             best_epoch: int | None = None) -> Path | None:
        """Write the checkpoint after ``epoch`` epochs; returns its path (None without a directory). With
        ``with_state``, ``opt_state`` is the epoch's ``(opt_state, state)`` pair and the state goes to the
        checkpoint's ``state`` slot. ``extra`` arrays (early stopping's best params) are stored beside the key,
        and ``best_epoch`` in the metadata."""
        if self.path is None:
            return None
        opt_state, state = opt_state if self.with_state else (opt_state, None)
        meta = {"epoch": epoch, "history": history, "config": self.config}
        if best_epoch is not None:
            meta["best_epoch"] = best_epoch
        return checkpoint.save(
            self.path, params, net=self.net, opt_state=opt_state if self.with_opt_state else None,
            metadata=meta, arrays={"key": jax.random.key_data(key), **(extra or {})}, state=state,
        )

    def restore(self, opt_state_like) -> Restored | None:
        """The saved state, or None when the folder has no checkpoint yet (a fresh run that may be resumed).

        Raises:
          ValueError: no directory was given; the checkpoint is invalid, not a regular file (a FIFO), for another
            network, or its metadata breaks :func:`check_run_metadata`'s rules; or the training configuration
            differs from the saved one.
          OSError: the checkpoint is a dangling symbolic link (``FileNotFoundError``) or a link loop.
        """
        if self.path is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder holding checkpoint.safetensors.")
        if not os.path.lexists(self.path):  # a dangling symbolic link is an error (load says so), not "none yet"
            return None
        if self.with_state:
            opt_state_like = opt_state_like[0]
        template = opt_state_like if self.with_opt_state else None
        ckpt = checkpoint.load(self.path, self.net, opt_state_like=template)
        epoch, history, saved = check_run_metadata(self.path, ckpt.metadata)
        # Over the keys of both: an entry only one side has (a "penalty", recorded only when there is one) is
        # a difference too; a checkpoint written before penalties existed has none, like a run without one.
        keys = [*self.config, *(k for k in saved if k not in self.config)]
        differ = {k: (saved.get(k), self.config.get(k)) for k in keys if saved.get(k) != self.config.get(k)}
        if differ:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"Cannot resume from {self.path}: the training configuration differs ({detail}).")
        if self.with_opt_state and ckpt.opt_state is None:
            raise ValueError(f"Cannot resume from {self.path}: it holds no optimizer state, but the run uses "
                             f"optimizer {self.config.get('optimizer')!r}.")
        key = restored_key(self.path, ckpt.arrays)
        opt_state = ckpt.opt_state if ckpt.opt_state is not None else ()
        if self.with_state:
            if ckpt.state is None:
                raise ValueError(f"Cannot resume from {self.path}: it holds no network state, but the network has "
                                 f"BatchNorm's running statistics.")
            opt_state = (opt_state, check_state(self.net, ckpt.state))
        best_epoch = ckpt.metadata.get("best_epoch")
        if best_epoch is not None and not (isinstance(best_epoch, int) and 1 <= best_epoch <= epoch):
            raise ValueError(f"{self.path} cannot be resumed: its metadata field 'best_epoch' must be an epoch "
                             f"from 1 to {epoch}, got {best_epoch!r}.")
        return Restored(ckpt.params, opt_state, epoch, history, key, ckpt.arrays, best_epoch)

    def resume_hint(self) -> str:
        """How to continue an interrupted run from this folder."""
        return (f"Resume with fit(..., checkpoint_dir={str(self.directory)!r}, resume=True) or "
                f"`fnn train --resume {self.directory}`.")
