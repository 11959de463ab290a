"""The data of an ``fnn train`` run, loaded the same way by ``fnn train`` and ``fnn evaluate``: a shipped data set,
an IDX folder or the user's CSV/NPZ file (:mod:`fnn.tabular`), split, standardized and described.

The pipeline (every step keyed by the run's ``--seed``, so it is the same on every machine and every call):

1. **Load.** ``--dataset NAME`` (``fnn.load_dataset``: its own test split), ``--data FILE.csv|FILE.npz``
   (:func:`fnn.tabular.read_table`; an ``.npz`` may carry ``x_test``/``y_test``) or ``--data DIR`` (a folder of
   the four MNIST-format IDX files, read by ``fnn.mnist``).
2. **Test split.** A file without a test set is split with ``fnn.train_test_split(test_fraction=--test-fraction,
   key=fold_in(key(seed), 1))``.
3. **Validation split.** With ``--val-fraction F`` (needed by ``--patience``) the training part is split again,
   ``key=fold_in(key(seed), 2)``; the validation rows are not trained on.
4. **Standardize** (unless ``--no-standardize``): mean and std per feature of the training part only, applied to
   every part; saved in the run's ``preprocessing.json`` (:mod:`fnn.run`) with the feature names, the target
   and the class names, so ``fnn evaluate`` and ``fnn predict`` transform new data exactly as training did.

**Task.** A CSV's target is read for classification (its distinct values become classes, named as in the file)
unless ``--task regression`` is given, or the target is numeric with a non-integer value (then it is a
regression). A regression run defaults to ``--loss mse`` and ``--output identity``. An ``.npz`` takes the task
from ``y``'s dtype (integers: classes ``"0".."K-1"``; floats: regression).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

import fnn
from fnn import tabular
from fnn._cli import UsageError, one_line
from fnn.data import Standardizer
from fnn.idx import MNIST_FILES
from fnn.run import Preprocessing

__all__ = ["CLASS_NAMES", "FEATURE_NAMES", "RunData", "load_run_data", "loss_targets", "task_of"]

#: Feature (the shipped CSV's columns) and class names of the shipped data sets (others: x0, x1, ... and "0", "1", ...).
FEATURE_NAMES = {"iris": ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")}
CLASS_NAMES = {
    "iris": ("setosa", "versicolor", "virginica"),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
TEST_STREAM, VAL_STREAM = 1, 2


class RunData(NamedTuple):
    """A run's data: ``train``, ``val`` (None without ``--val-fraction``) and ``test`` as ``(x, y)`` after
    standardizing, ``loaded`` (the training data as loaded, for the fingerprint) and the ``preprocessing``."""

    train: tuple
    val: tuple | None
    test: tuple
    loaded: tuple
    preprocessing: Preprocessing


def loss_targets(y: np.ndarray, task: str, loss, classes: int | None) -> np.ndarray:
    """Targets in the loss's form: class indices (a sparse loss) or one-hot rows of ``classes`` classes, or a
    regression's values as ``(n, k)`` rows (``(n,)`` values are one output; ``classes`` is not used)."""
    if task == "classification":
        return y if loss.sparse else fnn.one_hot(y, classes)
    return y.reshape(y.shape[0], -1)


def task_of(table: tabular.Table) -> str:
    return "classification" if table.classes is not None else "regression"


def _read_file(config: dict, where: str) -> tuple[tuple, tuple | None, Preprocessing]:
    """``(train, test or None, preprocessing without standardizer)`` of ``--data FILE``."""
    path = Path(config["data_file"])
    if path.is_dir():
        try:
            train, test = fnn.mnist(path, flatten=config["model"] == "mlp")
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"{where} {path}: {one_line(e)} (a folder must hold the four IDX files "
                             f"{', '.join(MNIST_FILES)}, raw or .gz)") from e
        shape = train[0].shape[1:]
        classes = tuple(str(i) for i in range(int(max(train[1].max(), test[1].max())) + 1))
        return train, test, Preprocessing(_feature_names(shape), None, "classification", classes, shape, None)
    task = config["task"]
    kw = dict(target=config["target"], features=config["features"]) if path.suffix.lower() != ".npz" else {}
    try:
        train, test = tabular.read_table(path, task=task, **kw)
        if task is None and path.suffix.lower() != ".npz" and _non_integer(train.classes):
            train, test = tabular.read_table(path, task="regression", **kw)  # a numeric target with fractions
    except ValueError as e:
        raise UsageError(one_line(e)) from e
    if config["model"] == "cnn" and train.x.ndim != 4:
        raise UsageError(f"--model cnn trains on images (n, H, W, C); {path} holds x of shape {train.x.shape}; "
                         f"use --model mlp.")
    prep = Preprocessing(tuple(train.feature_names), train.target, task_of(train), train.classes,
                         tuple(train.x.shape[1:]), None)
    return (train.x, train.y), (None if test is None else (test.x, test.y)), prep


def _non_integer(classes) -> bool:
    """Every class name is a number and one of them is not an integer: the column holds measurements."""
    if classes is None:
        return False
    try:
        values = [float(c) for c in classes]
    except ValueError:
        return False
    return any(math.isfinite(v) and not v.is_integer() for v in values)


def _feature_names(shape) -> tuple[str, ...]:
    if len(shape) == 1:
        return tuple(f"x{i}" for i in range(shape[0]))
    return (f"x of shape {tuple(shape)}",)


def _split(x, y, fraction: float, seed: int, stream: int, what: str, option: str):
    try:
        return fnn.train_test_split(x, y, test_fraction=fraction,
                                    key=jax.random.fold_in(jax.random.key(seed), stream))
    except ValueError as e:
        raise UsageError(f"{option} {fraction:g}: {what}: {one_line(e)}") from e


def load_run_data(config: dict, where: str) -> RunData:
    """The run's data (module docstring); a bad file or name, or a split that leaves a part empty, is the user's
    (a UsageError, exit 2). ``where`` names the option the data came from in messages."""
    if config["data_file"] is not None:
        train, test, prep = _read_file(config, where)
        if test is None:
            train, test = _split(*train, config["test_fraction"], config["seed"], TEST_STREAM,
                                 f"{config['data_file']}'s {train[0].shape[0]} rows", "--test-fraction")
    else:
        name = config["dataset"]
        if name == "mnist" and config["data_dir"] is None:
            raise UsageError(f"--dataset mnist needs --data-dir DIR, the folder holding MNIST's four IDX files "
                             f"{', '.join(f'{f}[.gz]' for f in MNIST_FILES)} (download them from "
                             f"yann.lecun.com/exdb/mnist or one of its mirrors), or --data DIR.")
        if config["model"] == "cnn" and name == "iris":
            raise UsageError("--model cnn trains on images: use --dataset digits, mnist or fashion-mnist (iris is a "
                             "table of 4 measurements).")
        try:
            train, test = fnn.load_dataset(name, config["data_dir"], flatten=config["model"] == "mlp")
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"{where} {name}: {one_line(e)}") from e
        shape = train[0].shape[1:]
        k = int(max(train[1].max(), test[1].max())) + 1
        prep = Preprocessing(FEATURE_NAMES.get(name, _feature_names(shape)), None, "classification",
                             CLASS_NAMES.get(name, tuple(str(i) for i in range(k))), shape, None)
    loaded = train
    val = None
    if config["val_fraction"]:
        train, val = _split(*train, config["val_fraction"], config["seed"], VAL_STREAM,
                            f"the {train[0].shape[0]} training rows", "--val-fraction")
    if config["standardize"]:
        s = fnn.data.fit_standardizer(train[0])
        s = Standardizer(s.mean.astype(np.float32), s.std.astype(np.float32))
        prep = prep._replace(standardizer=s)
    parts = [train, val, test]
    parts = [None if p is None else (prep.transform(p[0]), p[1]) for p in parts]
    return RunData(parts[0], parts[1], parts[2], loaded, prep)
