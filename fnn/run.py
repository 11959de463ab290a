"""A run folder of ``fnn train`` as Python values: ``fnn.load_run(path)`` gives the network, its trained params
(and state), the input transform and the class names, with a ``predict`` that applies them in order.

What a run folder holds for this (beside config.json, the checkpoint and the history, :mod:`fnn.cli_train`):

``preprocessing.json``
    what turns a raw example into the network's input, and an output into a name: ``features`` (the CSV
    columns in order, or ``x0, x1, ...``), ``target`` (the target column, or null), ``task``
    (``"classification"`` or ``"regression"``), ``classes`` (class names in output order; null for
    regression), ``input_shape`` and ``standardize`` (null, or ``{"mean", "std"}``: float32 lists of the
    input's shape, fitted on the training split; ``x_std = (x - mean) / std``). The floats are written with
    ``repr`` of float32 values, which reads back to the same float32 bits.
``best.safetensors``
    the params of the best epoch when the run used early stopping (``--patience``); :func:`load_run` takes
    them (they are what ``fit`` returned), else ``checkpoint.safetensors``'s (the last epoch's).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from fnn import checkpoint
from fnn import losses as _losses
from fnn._checkpointer import CHECKPOINT_NAME
from fnn._files import open_regular
from fnn.data import Standardizer, apply_standardizer
from fnn.early_stopping import BEST_NAME
from fnn.network import Network

__all__ = ["PREPROCESSING_NAME", "Preprocessing", "Run", "load_run", "read_preprocessing", "write_preprocessing"]

PREPROCESSING_NAME = "preprocessing.json"
TASKS = ("classification", "regression")


class Preprocessing(NamedTuple):
    """How a run turns raw examples into inputs and outputs into names (``preprocessing.json``, module docstring).

    Attributes:
      features: the feature names in input order.
      target: the target column's name, or None.
      task: ``"classification"`` or ``"regression"``.
      classes: class names in output order (None for regression).
      input_shape: the network's input shape.
      standardizer: the training split's mean and std (None: the inputs are used as they are).
    """

    features: tuple[str, ...]
    target: str | None
    task: str
    classes: tuple[str, ...] | None
    input_shape: tuple[int, ...]
    standardizer: Standardizer | None

    def transform(self, x) -> np.ndarray:
        """Raw examples ``(m, *input_shape)`` -> the network's inputs (standardized when the run was), float32.

        Raises:
          ValueError: ``x``'s example shape is not the run's input shape (the message names both).
        """
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[1:] != self.input_shape:
            raise ValueError(f"expected examples of shape {self.input_shape} ({len(self.features)} feature"
                             f"{'s' * (len(self.features) != 1)}: {', '.join(self.features[:8])}"
                             f"{', ...' if len(self.features) > 8 else ''}), got an array of shape {x.shape}.")
        x = x.astype(np.float32, copy=False)
        return x if self.standardizer is None else apply_standardizer(self.standardizer, x)


def _floats(a: np.ndarray) -> list:
    return [float(v) for v in np.asarray(a, np.float32).reshape(-1)]


def write_preprocessing(folder: str | os.PathLike, prep: Preprocessing) -> Path:
    """Write ``folder/preprocessing.json`` atomically; returns its path."""
    s = prep.standardizer
    body = {"features": list(prep.features), "target": prep.target, "task": prep.task,
            "classes": None if prep.classes is None else list(prep.classes), "input_shape": list(prep.input_shape),
            "standardize": None if s is None else {"mean": _floats(s.mean), "std": _floats(s.std)}}
    path = Path(folder) / PREPROCESSING_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_preprocessing(folder: str | os.PathLike) -> Preprocessing:
    """``folder/preprocessing.json`` checked field by field.

    Raises:
      ValueError: a missing file (a run written before fnn saved it: ``fnn train --resume`` writes it), invalid
        JSON or a field of the wrong kind, naming the file and the field.
      OSError: the file cannot be read.
    """
    path = Path(folder) / PREPROCESSING_NAME
    if not os.path.lexists(path):
        raise ValueError(f"{path} not found: the run folder has no input transform (written by 'fnn train' since "
                         f"fnn 0.1; 'fnn train --resume {folder}' writes it for an older run).")
    with open_regular(path, "a run's preprocessing.json") as f:
        text = f.read()
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None

    def bad(field: str, rule: str) -> ValueError:
        got = d.get(field, "nothing") if isinstance(d, dict) else d
        return ValueError(f"{path}: {field} must be {rule}, got {str(got)[:80]!r}.")

    if not isinstance(d, dict):
        raise bad("the file", "a JSON object")
    shape = d.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise bad("input_shape", "a list of positive integers")
    features = d.get("features")
    if not (isinstance(features, list) and features and all(isinstance(n, str) for n in features)):
        raise bad("features", "a non-empty list of names")
    if d.get("task") not in TASKS:
        raise bad("task", "'classification' or 'regression'")
    classes = d.get("classes")
    if d["task"] == "classification" and not (isinstance(classes, list) and len(classes) >= 2
                                              and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "a list of at least two class names for a classification run")
    if d.get("target") is not None and not isinstance(d["target"], str):
        raise bad("target", "a column name or null")
    standardizer = None
    if d.get("standardize") is not None:
        s = d["standardize"]
        size = math.prod(shape)
        ok = isinstance(s, dict) and all(isinstance(s.get(k), list) and len(s[k]) == size
                                         and all(isinstance(v, (int, float)) for v in s[k]) for k in ("mean", "std"))
        if not ok or not all(v > 0 for v in s["std"]):
            raise bad("standardize", f"null or {{'mean', 'std'}}: lists of {size} numbers, std > 0")
        standardizer = Standardizer(*(np.asarray(s[k], np.float32).reshape(shape) for k in ("mean", "std")))
    return Preprocessing(tuple(features), d.get("target"), d["task"],
                         None if d["task"] == "regression" else tuple(classes), tuple(shape), standardizer)


class Run(NamedTuple):
    """A trained run (:func:`load_run`).

    Attributes:
      folder: the run folder.
      net, params, state: the network, its trained params and its state (None without BatchNorm).
      config: the run's config.json (settings and records).
      preprocessing: the input transform and class names (:class:`Preprocessing`).
      loss: the run's loss record.
      weights: the file the params came from (``best.safetensors`` or ``checkpoint.safetensors``).
      epoch: the epoch those params are of.
    """

    folder: Path
    net: Network
    params: list
    state: list | None
    config: dict
    preprocessing: Preprocessing
    loss: _losses.Loss
    weights: Path
    epoch: int | None

    def predict(self, x, *, batch_size: int = 4096) -> np.ndarray:
        """The network's outputs (inference mode) on raw examples ``x`` ``(m, *input_shape)``, transformed as in
        training: class probabilities for a softmax/sigmoid output, else the output layer's values."""
        x = self.preprocessing.transform(x)
        outs = [np.asarray(_outputs(self.net, self.params, self.state, x[i:i + batch_size]))
                for i in range(0, x.shape[0], batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, *self.net.output_shape), np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _outputs(net: Network, params, state, x):
    """``net.apply`` in inference mode, compiled once per network and shapes (not once per ``predict``); a net
    with state returns ``(out, state)`` and its running statistics stay as they are."""
    return net.apply(params, x) if state is None else net.apply(params, x, state=state)[0]


def load_run(path: str | os.PathLike) -> Run:
    """Load the run folder ``path`` written by ``fnn train``: its network, params (the best epoch's when it used
    early stopping), state, config, input transform and class names.

    Raises:
      ValueError: not a run folder, or a file in it that is not what ``fnn train`` writes (the message names it).
      OSError: a file that cannot be read.

    Example:
      >>> run = fnn.load_run("runs/iris")                            # doctest: +SKIP
      >>> probabilities = run.predict(raw_x)                         # (m, 3), in run.preprocessing.classes order
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a run folder (expected a folder written by 'fnn train').")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder} is not a run folder: it has no config.json (expected a folder written by "
                         f"'fnn train').")
    with open_regular(config_path, "a run's config.json") as f:
        try:
            config = json.loads(f.read())
        except ValueError as e:
            raise ValueError(f"{config_path} is not valid JSON ({e}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("loss"), str):
        raise ValueError(f"{config_path}: expected the JSON object 'fnn train' writes, with a 'loss'.")
    prep = read_preprocessing(folder)
    weights = folder / BEST_NAME if os.path.lexists(folder / BEST_NAME) else folder / CHECKPOINT_NAME
    if not os.path.lexists(weights):
        raise ValueError(f"{folder} holds no trained params ({CHECKPOINT_NAME}): the run stopped before its first "
                         f"epoch ended; continue it with 'fnn train --resume {folder}'.")
    ckpt = checkpoint.load(weights)
    if ckpt.net.input_shape != prep.input_shape:
        raise ValueError(f"{weights}: the network takes inputs of shape {ckpt.net.input_shape}, but "
                         f"{folder / PREPROCESSING_NAME} says {prep.input_shape}.")
    if ckpt.net.stateful and ckpt.state is None:
        raise ValueError(f"{weights} holds no state, but its network has BatchNorm's running statistics.")
    epoch = ckpt.metadata.get("epoch") if isinstance(ckpt.metadata, dict) else None
    return Run(folder, ckpt.net, ckpt.params, ckpt.state if ckpt.net.stateful else None, config, prep,
               _losses.get(config["loss"]), weights, epoch if isinstance(epoch, int) else None)
