"""The checkpointer of ``fit``: one ``checkpoint.safetensors`` per run folder, saved atomically and restored with
the resume checks (the same network, the same training configuration)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from fnn import checkpoint
from fnn.network import Network

__all__ = ["CHECKPOINT_NAME", "Checkpointer", "Restored"]

CHECKPOINT_NAME = "checkpoint.safetensors"


class Restored:
    """What a resume continues from: ``params``, ``opt_state``, ``epoch`` (epochs done), ``history``, ``key``."""

    def __init__(self, params, opt_state, epoch: int, history: dict, key):
        self.params, self.opt_state, self.epoch, self.history, self.key = params, opt_state, epoch, history, key


class Checkpointer:
    """Saves and restores ``fit``'s state in ``directory / checkpoint.safetensors`` (a no-op without a directory).

    Args:
      directory: the run folder, or None for no checkpoints.
      net: the network (its description is stored, and checked on restore).
      config: the training configuration that must match on resume (loss, batch size, grads mode, strict,
        optimizer and learning rate); a difference is a ``ValueError`` listing every differing entry.
      with_opt_state: the run has an optimizer state to save.
    """

    def __init__(self, directory, net: Network, config: dict, *, with_opt_state: bool):
        self.directory = None if directory is None else Path(directory)
        self.path = None if directory is None else self.directory / CHECKPOINT_NAME
        self.net, self.config, self.with_opt_state = net, config, with_opt_state

    def save(self, epoch: int, params, opt_state, history: dict, key) -> Path | None:
        """Write the checkpoint after ``epoch`` epochs; returns its path (None without a directory)."""
        if self.path is None:
            return None
        return checkpoint.save(
            self.path, params, net=self.net, opt_state=opt_state if self.with_opt_state else None,
            metadata={"epoch": epoch, "history": history, "config": self.config},
            arrays={"key": jax.random.key_data(key)},
        )

    def restore(self, opt_state_like) -> Restored | None:
        """The saved state, or None when the folder has no checkpoint yet (a fresh run that may be resumed).

        Raises:
          ValueError: no directory was given, the checkpoint is invalid or for another network, or the
            training configuration differs from the saved one.
        """
        if self.path is None:
            raise ValueError("resume=True needs checkpoint_dir, the folder holding checkpoint.safetensors.")
        if not self.path.exists():
            return None
        template = opt_state_like if self.with_opt_state else None
        ckpt = checkpoint.load(self.path, self.net, opt_state_like=template)
        saved = ckpt.metadata.get("config", {})
        differ = {k: (saved.get(k), v) for k, v in self.config.items() if saved.get(k) != v}
        if differ:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"Cannot resume from {self.path}: the training configuration differs ({detail}).")
        key = jax.random.wrap_key_data(jnp.asarray(ckpt.arrays["key"]))
        opt_state = ckpt.opt_state if ckpt.opt_state is not None else ()
        return Restored(ckpt.params, opt_state, int(ckpt.metadata["epoch"]), ckpt.metadata["history"], key)

    def resume_hint(self) -> str:
        """How to continue an interrupted run from this folder."""
        return (f"Resume with fit(..., checkpoint_dir={str(self.directory)!r}, resume=True) or "
                f"`fnn train --resume {self.directory}`.")
