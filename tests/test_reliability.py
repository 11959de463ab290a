"""Reliability: wrong input to every public function, numerical extremes, low precision, determinism and
checkpoints written by ``fit`` (see RELIABILITY.md, which lists every fault tried and where it is tested).

* (a) ``BAD_INPUT`` is one table: each row calls one public function with one fault and names the exception
  type and regex fragments for the expected and the given value that the message must contain. The error must
  be raised by fnn's own validation (the innermost frame lies in the ``fnn`` package), never an
  AssertionError/IndexError from deep inside JAX, and never a silent broadcast.
  ``test_every_public_name_has_a_row`` fails when a name joins ``fnn.__all__`` without a row.
* (b) inputs of 1e4, logits of ±1e4, all-zero inputs, a batch of one: finite losses and gradients, manual ==
  autodiff; float16/bfloat16 params against a float64 reference, at the bounds RELIABILITY.md documents.
* (c) the same seed gives bit-identical params and history, in one process and in a fresh one.
* (d) ``checkpoint_every`` saves at the right epochs; a save that fails half-way (an exception, or the
  process dying between write and rename) leaves the previous checkpoint loadable, and resuming from it
  finishes bit-identically.

Divergence, strict mode and Ctrl-C are tested in tests/test_train.py; corrupt IDX files and checkpoints in
tests/test_data.py and tests/test_checkpoint.py. This file does not repeat them.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import traceback
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import without_time

import fnn
from fnn.gradcheck import relative_error
from fnn.train import CHECKPOINT_NAME

FNN_DIR = Path(fnn.__file__).resolve().parent
SPARSE = "sparse_categorical_cross_entropy"
KEY = jax.random.key(0)

# A 4-5-3 classifier and a batch of 8; OTHER has the shapes of another network (hidden width 6).
NET = fnn.mlp([4, 5, 3], hidden="tanh", output="softmax")
P = NET.init(jax.random.key(1))
OTHER = fnn.mlp([4, 6, 3]).init(jax.random.key(1))
INT_P = [{k: jnp.ones(v.shape, jnp.int32) for k, v in layer.items()} for layer in P]
X = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
YD = fnn.one_hot(Y, 3)
COMPLEX_P = [{k: v.astype(jnp.complex64) for k, v in layer.items()} for layer in P]
OBJECT_P = [{"w": P[0]["w"], "b": np.asarray(P[0]["b"]).astype(object)}, P[1]]
BIG_LABELS = np.where(np.arange(8) == 3, np.int64(2**32 + 1), Y.astype(np.int64))  # int32 wraps it to 1
# A net with dropout and a residual block, in the shapes of NET's first and last layers.
DROPOUT_NET = fnn.serial(fnn.layers.Dense(5, activation="tanh"), fnn.layers.Dropout(0.5),
                         fnn.layers.Residual(fnn.layers.Dense(5, activation="tanh")),
                         fnn.layers.Dense(3, activation="softmax"), input_shape=(4,))
DROPOUT_P = DROPOUT_NET.init(jax.random.key(1))
HUGE = fnn.mlp([64, 10**6, 10**6, 10])  # 4.0 TB of float32 params; jax.eval_shape sizes them without allocating


def _stack(params, k=2):
    return jax.tree_util.tree_map(lambda t: jnp.stack([t] * k), params)


# --- (a) the table of bad input ---------------------------------------------------------------------------

class Row(NamedTuple):
    target: str  # the public name (``fnn.<target>``) whose validation the row exercises
    fault: str
    call: Callable[[Path], object]  # takes a scratch folder
    exc: type[BaseException]
    pieces: tuple[str, ...]  # regexes the message must contain; "{tmp}" stands for the scratch folder
    origin: str = "fnn"  # where the exception is raised: "fnn" (our own check) or "jax" (JAX's, named)
    xfail: str | None = None


# The functions that take (net, params, x, y, loss), as a caller reaches them.
LOSS_PATH = {
    "backprop": lambda p, x, y, loss: fnn.backprop(NET, p, x, y, loss),
    "autodiff": lambda p, x, y, loss: fnn.autodiff(NET, p, x, y, loss),
    "per_example_grads": lambda p, x, y, loss: fnn.per_example_grads(NET, p, x, y, loss),
    "gradcheck": lambda p, x, y, loss: fnn.gradcheck(NET, p, x, y, loss, num_checks=4, taylor=False),
    "taylor_test": lambda p, x, y, loss: fnn.taylor_test(NET, p, x, y, loss),
    "finite_difference_grads": lambda p, x, y, loss: fnn.finite_difference_grads(NET, p, x, y, loss),
    "objective": lambda p, x, y, loss: fnn.objective(NET, loss)(p, x, y),
    "manual_objective": lambda p, x, y, loss: fnn.manual_objective(NET, loss)(p, x, y),
    "sgd_step": lambda p, x, y, loss: fnn.sgd_step(NET, loss, learning_rate=0.1)(p, x, y),
    "sgd_step[adam]": lambda p, x, y, loss: fnn.sgd_step(NET, loss, optimizer="adam", learning_rate=0.01)(
        p, fnn.make_optimizer("adam", 0.01).init(p), x, y),
    "evaluate": lambda p, x, y, loss: fnn.evaluate(NET, p, x, y, loss),
    "fit": lambda p, x, y, loss: fnn.fit(NET, p, (x, y), loss=loss, epochs=1, batch_size=2, key=KEY,
                                         progress=False),
    "fit_ensemble": lambda p, x, y, loss: fnn.fit_ensemble(NET, _stack(p), (x, y), loss=loss, epochs=1,
                                                           batch_size=2, keys=jax.random.split(KEY, 2)),
    "curvature": lambda p, x, y, loss: fnn.curvature.first_order(NET, p, x, y, loss),
}


# fault: (params, x, y, loss, exception, pieces, xfail for these targets)
LOSS_PATH_FAULTS = {
    "x and y batch sizes differ": (P, X, Y[:5], SPARSE, ValueError, (r"\b8\b", r"\b5\b"), {}),
    "input of rank 3": (P, X[None], Y, SPARSE, ValueError, (r"\(.*\b4\)", r"\(1, 8, 4\)"), {}),
    "wrong feature count": (P, X[:, :3], Y, SPARSE, ValueError, (r"expected 4 input features", r"got 3"), {}),
    "params from another network": (OTHER, X, Y, SPARSE, ValueError, (r"Layer 0", r"\(4, 5\)", r"\(4, 6\)"), {}),
    "params of integer dtype": (INT_P, X, Y, SPARSE, TypeError, (r"floating", r"int32"), {}),
    "empty batch": (P, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), SPARSE, ValueError,
                    (r"at least one example", r"\(0, 4\)"), {}),
    "labels out of range": (P, X, np.where(Y == 2, 3, Y).astype(np.int32), SPARSE, ValueError,
                            (r"\[0, 3\)", r"to 3\b"), {}),
    "negative labels": (P, X, np.where(Y == 2, -1, Y).astype(np.int32), SPARSE, ValueError,
                        (r"\[0, 3\)", r"from -1\b"), {}),
    "float labels for a sparse loss": (P, X, Y.astype(np.float32), SPARSE, TypeError, (r"integer", r"float32"), {}),
    "one-hot labels for a sparse loss": (P, X, YD.astype(np.int32), SPARSE, ValueError,
                                         (r"\(8,\)", r"\(8, 3\)"), {}),
    "one-hot width does not fit": (P, X, np.zeros((8, 4), np.float32), "categorical_cross_entropy", ValueError,
                                   (r"\(8, 3\)", r"\(8, 4\)"), {}),
    "dense y (batch, 1) for 3 outputs": (P, X, np.zeros((8, 1), np.float32), "mse", ValueError,
                                         (r"\(8, 3\)", r"\(8, 1\)"), {}),
    "dense y (batch,) for 3 outputs": (P, X, np.zeros(8, np.float32), "mse", ValueError,
                                       (r"\(8, 3\)", r"\(8,\)"), {}),
    "dense y (1, 3) that would broadcast": (P, X, np.zeros((1, 3), np.float32), "quadratic", ValueError,
                                            (r"\b8\b", r"\(1, 3\)"), {}),
    "unknown loss name": (P, X, Y, "categorical_crossentropy", ValueError,
                          (r"'categorical_crossentropy'", r"Did you mean 'categorical_cross_entropy'",
                           r"Valid names: .*mse"), {}),
    "loss neither a name nor a record": (P, X, Y, 3, TypeError, (r"loss name", r"\bint\b"), {}),
    "int64 labels of 2**32 + 1 (int32 would wrap them to 1)": (
        P, X, BIG_LABELS, SPARSE, ValueError, (r"\[0, 3\)", r"got label 4294967297 at index 3"),
        {}),
    "complex inputs": (P, X.astype(np.complex64), Y, SPARSE, TypeError, (r"x must be an array of real numbers",
                                                                         r"complex64"), {}),
    "complex params": (COMPLEX_P, X, Y, SPARSE, TypeError, (r"Layer 0: expected w of a floating dtype",
                                                            r"params\[0\]\['w'\] of dtype complex64"), {}),
    "complex dense targets": (P, X, YD.astype(np.complex64), "mse", TypeError,
                              (r"y must be an array of real numbers", r"complex64"), {}),
    "object inputs (a stray pandas column)": (
        P, X.astype(object), Y, SPARSE, TypeError, (r"x must be an array of real numbers", r"dtype object"),
        {}),
    "string labels": (P, X, np.array(list("abcabcab")), SPARSE, TypeError,
                      (r"y must be an array of real numbers", r"dtype <U1"),
                      {}),
}


def _loss_path_rows() -> list[Row]:
    rows = []
    for name, call in LOSS_PATH.items():
        for fault, (p, x, y, loss, exc, pieces, xfails) in LOSS_PATH_FAULTS.items():
            rows.append(Row(name.split("[")[0], f"{name}: {fault}",
                            lambda tmp, call=call, p=p, x=x, y=y, loss=loss: call(p, x, y, loss),
                            exc, pieces, xfail=xfails.get(name)))
    return rows


def _idx(array: np.ndarray) -> bytes:
    """An IDX file of uint8 data, written here with struct (independently of fnn)."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def _write(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


def _half_gzip() -> bytes:
    """The first half of a gzip-compressed IDX file of incompressible bytes."""
    data = gzip.compress(_idx(np.random.default_rng(0).integers(0, 256, 4000)))
    return data[: len(data) // 2]


def _per_example(params=P):
    net = NET if params is P else fnn.mlp([4, 6, 3])
    return fnn.per_example_grads(net, params, X, Y, SPARSE)


def _checkpoint(tmp: Path) -> Path:
    return fnn.save(tmp / "ckpt.safetensors", P, net=NET)


def _truncated_checkpoint(tmp: Path) -> Path:
    data = _checkpoint(tmp).read_bytes()
    return _write(tmp, "cut.safetensors", data[: len(data) // 2])


def _fake_mnist(tmp: Path, n_images: int, n_labels: int) -> Path:
    folder = tmp / "mnist"
    folder.mkdir()
    for split in ("train", "t10k"):
        _write(folder, f"{split}-images-idx3-ubyte", _idx(np.zeros((n_images, 28, 28))))
        _write(folder, f"{split}-labels-idx1-ubyte", _idx(np.zeros(n_labels)))
    return folder


def _fit(**overrides):
    kw = dict(loss=SPARSE, epochs=1, batch_size=2, learning_rate=0.1, key=KEY, progress=False)
    kw.update(overrides)
    train = kw.pop("train", (X, Y))
    test = kw.pop("test", None)
    params = kw.pop("params", P)
    return lambda tmp: fnn.fit(NET, params, train, test, **kw)


def _fit_ensemble(**overrides):
    kw = dict(loss=SPARSE, epochs=1, batch_size=2, learning_rate=0.1, keys=jax.random.split(KEY, 2))
    kw.update(overrides)
    train = kw.pop("train", (X, Y))
    params = kw.pop("params", _stack(P))
    return lambda tmp: fnn.fit_ensemble(NET, params, train, **kw)


def _with_memory(available: int, call):
    """``call`` on a machine that seems to have only ``available`` bytes free (fnn's memory check is faked)."""
    def run(tmp):
        with mock.patch.object(fnn._checks, "available_memory", lambda device=None: (available, "host memory")):
            return call(tmp)
    return run


NAMES = r"Valid names: "
OTHER_ROWS = [
    # mlp: sizes, names, dtype
    Row("mlp", "no layer sizes", lambda tmp: fnn.mlp([]), ValueError, (r"input and an output width", r"got \[\]")),
    Row("mlp", "one layer size", lambda tmp: fnn.mlp([4]), ValueError, (r"at least", r"got \[4\]")),
    Row("mlp", "zero-width layer", lambda tmp: fnn.mlp([4, 0, 3]), ValueError,
        (r"sizes\[1\] must be a positive int", r"got 0")),
    Row("mlp", "negative width", lambda tmp: fnn.mlp([4, -2, 3]), ValueError, (r"positive int", r"-2")),
    Row("mlp", "fractional width", lambda tmp: fnn.mlp([4, 2.5, 3]), TypeError, (r"positive int", r"2\.5")),
    Row("mlp", "sizes given as a string", lambda tmp: fnn.mlp("4,3"), TypeError,
        (r"sequence of layer widths", r"'4,3'")),
    Row("mlp", "unknown activation", lambda tmp: fnn.mlp([4, 3], output="sofmax"), ValueError,
        (r"'sofmax'", r"Did you mean 'softmax'", NAMES + r".*relu")),
    Row("mlp", "unknown initializer", lambda tmp: fnn.mlp([4, 3], init="glorot"), ValueError,
        (r"'glorot'", r"Did you mean 'glorot_", NAMES + r".*he_normal")),
    Row("mlp", "wrong number of activations", lambda tmp: fnn.mlp([4, 5, 3], activations=["relu"]), ValueError,
        (r"needs 2 entries", r"got 1")),
    Row("mlp", "integer dtype", lambda tmp: fnn.mlp([4, 3], dtype=jnp.int32), TypeError, (r"floating", r"int32")),
    Row("mlp", "bias not a bool", lambda tmp: fnn.mlp([4, 3], bias="yes"), TypeError, (r"True or False", r"'yes'")),
    # Network: init and apply
    Row("Network", "init with an int instead of a key", lambda tmp: NET.init(0), TypeError,
        (r"PRNG key", r"Got 0"), origin="jax"),
    Row("Network", "init with raw key data of the wrong shape",
        lambda tmp: NET.init(jnp.zeros(3, jnp.uint32)), TypeError, (r"\(2,\)", r"shape=\(3,\)"), origin="jax"),
    Row("Network", "apply: input of rank 3", lambda tmp: NET.apply(P, X[None]), ValueError,
        (r"\(4,\) or \(batch, 4\)", r"\(1, 8, 4\)")),
    Row("Network", "apply: scalar input", lambda tmp: NET.apply(P, 1.0), ValueError,
        (r"\(4,\) or \(batch, 4\)", r"got shape \(\)")),
    Row("Network", "apply: wrong feature count", lambda tmp: NET.apply(P, X[:, :3]), ValueError,
        (r"expected 4 input features", r"got 3")),
    Row("Network", "apply under jit: wrong feature count", lambda tmp: jax.jit(NET.apply)(P, X[:, :3]), ValueError,
        (r"expected 4 input features", r"got 3")),
    Row("Network", "apply: params from another network", lambda tmp: NET.apply(OTHER, X), ValueError,
        (r"\(4, 5\)", r"\(4, 6\)")),
    Row("Network", "apply: too few layers", lambda tmp: NET.apply(P[:1], X), ValueError, (r"has 2", r"have 1")),
    Row("Network", "apply: params not a list", lambda tmp: NET.apply(P[0], X), TypeError,
        (r"list of 2 layer dicts", r"dict")),
    Row("Network", "apply: integer params", lambda tmp: NET.apply(INT_P, X), TypeError, (r"floating", r"int32")),
    Row("Network", "apply: complex input", lambda tmp: NET.apply(P, X + 1j), TypeError,
        (r"x must be an array of real numbers", r"complex64", r"imaginary part")),
    Row("Network", "apply: strings", lambda tmp: NET.apply(P, X.astype(str)), TypeError,
        (r"x must be an array of real numbers", r"<U\d+", r"pandas")),
    Row("Network", "apply: a params leaf of objects", lambda tmp: NET.apply(OBJECT_P, X), TypeError,
        (r"floating dtype", r"params\[0\]\['b'\] of dtype object")),
    Row("Network", "apply: layer missing its bias", lambda tmp: NET.apply([{"w": P[0]["w"]}, P[1]], X), ValueError,
        (r"\['b', 'w'\]", r"\['w'\]")),
    # manual_apply: the custom_vjp bridge validates like apply
    Row("manual_apply", "not a Network", lambda tmp: fnn.manual_apply("net"), TypeError, (r"Network", r"str")),
    Row("manual_apply", "input of rank 3", lambda tmp: fnn.manual_apply(NET)(P, X[None]), ValueError,
        (r"\(batch, 4\)", r"\(1, 8, 4\)")),
    Row("manual_apply", "params from another network", lambda tmp: fnn.manual_apply(NET)(OTHER, X), ValueError,
        (r"\(4, 5\)", r"\(4, 6\)")),
    Row("backprop", "one example x with a batch of y", lambda tmp: fnn.backprop(NET, P, X[0], Y, SPARSE),
        ValueError, (r"\(1,\)", r"\(1, 8\)")),
    Row("backprop", "net is not a Network", lambda tmp: fnn.backprop("net", P, X, Y, SPARSE), TypeError,
        (r"Network", r"str")),
    Row("objective", "net is not a Network", lambda tmp: fnn.objective("net", SPARSE), TypeError,
        (r"Network", r"str")),
    # gradcheck / taylor_test hyper-parameters
    Row("gradcheck", "zero step", lambda tmp: fnn.gradcheck(NET, P, X, Y, SPARSE, eps=0.0), ValueError,
        (r"eps must be a positive", r"0\.0")),
    Row("gradcheck", "zero coordinates to check", lambda tmp: fnn.gradcheck(NET, P, X, Y, SPARSE, num_checks=0),
        ValueError, (r"num_checks must be a positive int", r"got 0")),
    Row("gradcheck", "empty params", lambda tmp: fnn.gradcheck(NET, [], X, Y, SPARSE), ValueError,
        (r"0 layer", r"has 2")),
    Row("taylor_test", "no step sizes", lambda tmp: fnn.taylor_test(NET, P, X, Y, SPARSE, hs=()), ValueError,
        (r"at least two positive step sizes", r"got \(\)")),
    Row("taylor_test", "grads of another network", lambda tmp: fnn.taylor_test(NET, P, X, Y, SPARSE, grads=OTHER),
        ValueError, (r"grads", r"\(4, 5\)", r"\(4, 6\)")),
    # epoch_order
    Row("epoch_order", "zero examples", lambda tmp: fnn.epoch_order(jax.random.key(0), 0), ValueError,
        (r"positive integer below 2\*\*31", r"got 0")),
    Row("epoch_order", "a float count", lambda tmp: fnn.epoch_order(jax.random.key(0), 3.0), ValueError,
        (r"positive integer", r"got 3\.0")),
    # sgd_step / make_optimizer hyper-parameters
    Row("sgd_step", "zero learning rate", lambda tmp: fnn.sgd_step(NET, SPARSE, learning_rate=0), ValueError,
        (r"learning_rate must be a positive number", r"got 0")),
    Row("sgd_step", "NaN learning rate", lambda tmp: fnn.sgd_step(NET, SPARSE, learning_rate=math.nan), ValueError,
        (r"positive number", r"nan")),
    Row("sgd_step", "unknown optimizer", lambda tmp: fnn.sgd_step(NET, SPARSE, optimizer="adamw"), ValueError,
        (r"'adamw'", r"Did you mean 'adam'", NAMES + r"adam, momentum, sgd")),
    Row("sgd_step", "optimizer of the wrong type", lambda tmp: fnn.sgd_step(NET, SPARSE, optimizer=3), TypeError,
        (r"optax\.GradientTransformation", r"got int")),
    Row("sgd_step", "unknown grads mode", lambda tmp: fnn.sgd_step(NET, SPARSE, grads="auto"), ValueError,
        (r"'auto'", r"Did you mean 'autodiff'", NAMES + r"autodiff, manual")),
    Row("make_optimizer", "unknown name", lambda tmp: fnn.make_optimizer("adamm", 0.1), ValueError,
        (r"'adamm'", r"Did you mean 'adam'", NAMES + r"adam, momentum, sgd")),
    Row("make_optimizer", "zero learning rate", lambda tmp: fnn.make_optimizer("sgd", 0.0), ValueError,
        (r"positive number", r"got 0\.0")),
    Row("make_optimizer", "learning rate as a string", lambda tmp: fnn.make_optimizer("sgd", "0.1"), TypeError,
        (r"positive number", r"str '0\.1'")),
    # fit: hyper-parameters and data
    Row("fit", "zero epochs", _fit(epochs=0), ValueError, (r"epochs must be a positive int", r"got 0")),
    Row("fit", "fractional epochs", _fit(epochs=1.5), TypeError, (r"epochs must be a positive int", r"1\.5")),
    Row("fit", "batch size zero", _fit(batch_size=0), ValueError, (r"batch_size must be a positive int", r"got 0")),
    Row("fit", "batch size larger than the data", _fit(batch_size=9), ValueError,
        (r"batch_size \(9\)", r"\(8 examples\)")),
    Row("fit", "zero learning rate", _fit(learning_rate=0.0), ValueError, (r"positive number", r"got 0\.0")),
    Row("fit", "negative learning rate", _fit(learning_rate=-0.1), ValueError, (r"positive number", r"-0\.1")),
    Row("fit", "infinite learning rate", _fit(learning_rate=math.inf), ValueError, (r"positive number", r"inf")),
    Row("fit", "checkpoint_every zero", _fit(checkpoint_every=0), ValueError,
        (r"checkpoint_every must be a positive int", r"got 0")),
    Row("fit", "eval_batch_size zero", _fit(eval_batch_size=0), ValueError,
        (r"eval_batch_size must be a positive int", r"got 0")),
    Row("fit", "train not a pair", _fit(train=X), TypeError, (r"pair \(x, y\)", r"ndarray")),
    Row("fit", "test x and y of different lengths", _fit(test=(X, Y[:3])), ValueError,
        (r"test: .*x has 8", r"\(3,\)")),
    Row("fit", "NaN in the training inputs", _fit(train=(np.where(np.arange(32).reshape(8, 4) == 13, np.nan, X), Y)),
        ValueError, (r"x must be finite", r"1 NaN or inf", r"index \(3, 1\)")),
    Row("fit", "inf in dense targets", _fit(loss="mse", train=(X, np.where(YD > 0, np.inf, YD))), ValueError,
        (r"y must be finite", r"8 NaN or inf")),
    Row("fit", "data that overflows float16 params",
        lambda tmp: fnn.fit(fnn.mlp([4, 3], dtype="float16"), fnn.mlp([4, 3], dtype="float16").init(KEY),
                            (X * 1e5, YD), loss="mse", epochs=1, batch_size=2, key=KEY, progress=False),
        ValueError, (r"x must be finite", r"in float16", r"wider params dtype")),
    Row("fit", "unknown optimizer", _fit(optimizer="sgdd"), ValueError, (r"'sgdd'", r"Did you mean 'sgd'")),
    Row("fit", "resume without a checkpoint folder", _fit(resume=True), ValueError,
        (r"resume=True needs checkpoint_dir", r"checkpoint\.safetensors")),
    Row("fit", "resume from a checkpoint of another network",
        lambda tmp: (fnn.save(tmp / CHECKPOINT_NAME, OTHER, net=fnn.mlp([4, 6, 3])),
                     _fit(checkpoint_dir=tmp, resume=True)(tmp)),
        ValueError, (r"sizes: checkpoint has \[4, 6, 3\], network has \[4, 5, 3\]",)),
    Row("fit", "a network too large for memory (4 TB)",
        lambda tmp: fnn.fit(HUGE, jax.eval_shape(HUGE.init, KEY), (np.zeros((4, 64)), np.zeros(4, np.int32)),
                            loss=SPARSE, epochs=1, batch_size=2, key=KEY, progress=False),
        ValueError, (r"too large for this machine's memory", r"params take 4,000\.3 GB", r"only [\d.,]+ GB")),
    Row("fit", "a params leaf of objects", _fit(params=OBJECT_P), TypeError,
        (r"floating dtype", r"params\[0\]\['b'\] of dtype object")),
    Row("fit", "key that is not a PRNG key", _fit(key=None), TypeError, (r"PRNG key", r"NoneType"), origin="jax"),
    # fit_ensemble
    Row("fit_ensemble", "params not stacked", _fit_ensemble(params=P), ValueError, (r"stacked params", r"\(4, 5\)")),
    Row("fit_ensemble", "one learning rate per member, wrong count", _fit_ensemble(learning_rate=[0.1, 0.2, 0.3]),
        ValueError, (r"one entry per member \(2\)", r"\(3,\)")),
    Row("fit_ensemble", "a negative member learning rate", _fit_ensemble(learning_rate=[0.1, -0.2]), ValueError,
        (r"positive for every member", r"-0\.2")),
    Row("fit_ensemble", "learning rate as a string", _fit_ensemble(learning_rate="fast"), TypeError,
        (r"learning_rate must be a positive number", r"'fast'")),
    Row("fit_ensemble", "keys for a different member count", _fit_ensemble(keys=jax.random.split(KEY, 3)),
        ValueError, (r"one PRNG key per member \(2\)", r"\(3,\)")),
    Row("fit_ensemble", "more params than the memory available (100 bytes here)",
        _with_memory(100, _fit_ensemble()), ValueError,
        (r"^fit_ensemble: the network is too large", r"only 1e-07 GB of host memory")),
    Row("fit_ensemble", "zero epochs", _fit_ensemble(epochs=0), ValueError, (r"epochs", r"got 0")),
    Row("fit_ensemble", "train not a pair", _fit_ensemble(train=X), TypeError, (r"pair \(x, y\)", r"ndarray")),
    Row("evaluate", "chunk size zero", lambda tmp: fnn.evaluate(NET, P, X, Y, SPARSE, batch_size=0), ValueError,
        (r"batch_size must be a positive int", r"got 0")),
    # data parallelism (fnn.parallel; one CPU device here)
    Row("parallel", "make_mesh: zero devices", lambda tmp: fnn.parallel.make_mesh(0), ValueError,
        (r"at least 1", r"got 0")),
    Row("parallel", "make_mesh: more devices than exist", lambda tmp: fnn.parallel.make_mesh(4096), ValueError,
        (r"devices=4096", r"JAX sees \d+")),
    Row("parallel", "make_mesh: a float", lambda tmp: fnn.parallel.make_mesh(2.0), TypeError,
        (r"a number, a sequence of jax\.Device or a Mesh", r"float 2\.0")),
    Row("parallel", "make_mesh: an empty device list", lambda tmp: fnn.parallel.make_mesh([]), ValueError,
        (r"empty sequence", r"at least one jax\.Device")),
    Row("parallel", "make_mesh: not devices", lambda tmp: fnn.parallel.make_mesh([0, 1]), TypeError,
        (r"jax\.Device objects", r"got 0")),
    Row("fit", "devices=0", _fit(devices=0), ValueError, (r"at least 1", r"got 0")),
    # gradient statistics (fnn.stats) on per-example gradients
    Row("stats", "example_norms: unknown grouping", lambda tmp: fnn.stats.example_norms(_per_example(), per="neuron"),
        ValueError, (r"one of \('layer', 'total'\)", r"'neuron'")),
    Row("stats", "gradient_variance: negative ddof", lambda tmp: fnn.stats.gradient_variance(_per_example(), ddof=-1),
        ValueError, (r"non-negative int", r"got -1")),
    Row("stats", "gradient_variance: fewer examples than ddof needs",
        lambda tmp: fnn.stats.gradient_variance(_per_example(), ddof=8), ValueError,
        (r"at least 9 examples", r"got 8")),
    Row("stats", "example_norms: params instead of per-example grads", lambda tmp: fnn.stats.example_norms(P),
        ValueError, (r"batch size", r"\(4, 5\)")),
    Row("stats", "cosine_similarity: grads of two networks",
        lambda tmp: fnn.stats.cosine_similarity(_per_example(), _per_example(OTHER)), ValueError,
        (r"\(8, 5\)", r"\(8, 6\)")),
    Row("stats", "example_norms: not a pytree of grads", lambda tmp: fnn.stats.example_norms("abc"), TypeError,
        (r"list of per-layer dicts", r"got str")),
    # first-order curvature (fnn.curvature)
    Row("curvature", "first_order: unknown quantity",
        lambda tmp: fnn.curvature.first_order(NET, P, X, Y, SPARSE, quantities=["batch_grad"]), ValueError,
        (r"Unknown first-order quantities \['batch_grad'\]", r"known: batch_l2_grad, sum_grad_squared, variance")),
    Row("curvature", "first_order: quantities given as one string",
        lambda tmp: fnn.curvature.first_order(NET, P, X, Y, SPARSE, quantities="variance"), TypeError,
        (r"sequence of names", r"'variance'")),
    Row("curvature", "batch_l2_grad: more devices than exist",
        lambda tmp: fnn.curvature.batch_l2_grad(NET, P, X, Y, SPARSE, devices=3), ValueError,
        (r"devices=3", r"JAX sees 1 cpu device")),
    Row("curvature", "variance: penalty of the wrong type",
        lambda tmp: fnn.curvature.variance(NET, P, X, Y, SPARSE, penalty=0.1), TypeError,
        (r"expected None or a Penalty", r"got 0\.1 \(float\)")),
    # registries
    Row("activations", "get: unknown name", lambda tmp: fnn.activations.get("rellu"), ValueError,
        (r"'rellu'", r"Did you mean 'relu'", NAMES + r".*softmax")),
    Row("activations", "get: not a name", lambda tmp: fnn.activations.get(None), TypeError,
        (r"activation name \(str\)", r"NoneType")),
    Row("losses", "get: unknown name", lambda tmp: fnn.losses.get("mean_squared_error"), ValueError,
        (r"'mean_squared_error'", NAMES + r".*mse")),
    Row("losses", "get: close misspelling", lambda tmp: fnn.losses.get("quadratik"), ValueError,
        (r"'quadratik'", r"Did you mean 'quadratic'")),
    Row("initializers", "get: unknown name", lambda tmp: fnn.initializers.get("he_normall"), ValueError,
        (r"'he_normall'", r"Did you mean 'he_normal'", NAMES + r".*glorot_uniform")),
    Row("initializers", "get: not a name", lambda tmp: fnn.initializers.get(3), TypeError,
        (r"initializer name", r"int")),
    # data helpers
    Row("one_hot", "float labels", lambda tmp: fnn.one_hot([0.5, 1.0], 3), ValueError, (r"integers", r"float64")),
    Row("one_hot", "label out of range", lambda tmp: fnn.one_hot([0, 3], 3), ValueError,
        (r"\[0, 3\)", r"max 3")),
    Row("one_hot", "negative label", lambda tmp: fnn.one_hot([-1, 2], 3), ValueError, (r"\[0, 3\)", r"min -1")),
    Row("one_hot", "zero classes", lambda tmp: fnn.one_hot([0], 0), ValueError, (r"positive integer", r"got 0")),
    Row("one_hot", "2-D labels", lambda tmp: fnn.one_hot([[0, 1]], 3), ValueError, (r"1-D", r"\(1, 2\)")),
    Row("train_test_split", "x and y of different lengths", lambda tmp: fnn.train_test_split(X, Y[:5], key=KEY),
        ValueError, (r"same number of rows", r"\b8\b", r"\b5\b")),
    Row("train_test_split", "fraction outside (0, 1)",
        lambda tmp: fnn.train_test_split(X, Y, test_fraction=1.5, key=KEY), ValueError, (r"\(0, 1\)", r"1\.5")),
    Row("train_test_split", "fraction as a string",
        lambda tmp: fnn.train_test_split(X, Y, test_fraction="half", key=KEY), TypeError, (r"\(0, 1\)", r"'half'")),
    Row("train_test_split", "too few rows for two parts",
        lambda tmp: fnn.train_test_split(X[:1], Y[:1], key=KEY), ValueError, (r"non-empty", r"of 1 rows")),
    Row("standardize", "no rows", lambda tmp: fnn.standardize(np.zeros((0, 4))), ValueError,
        (r"n >= 1", r"\(0, 4\)")),
    Row("standardize", "test features differ", lambda tmp: fnn.standardize(X, X[:, :3]), ValueError,
        (r"\(m, 4\)", r"\(8, 3\)")),
    Row("standardize", "strings", lambda tmp: fnn.standardize(np.array([["a"], ["b"]])), TypeError,
        (r"numeric", r"<U1")),
    # files: IDX (corrupt files in depth: tests/test_data.py), data sets, checkpoints
    Row("load_idx", "missing file", lambda tmp: fnn.load_idx(tmp / "nope"), FileNotFoundError, (r"{tmp}/nope",)),
    Row("load_idx", "a folder", lambda tmp: fnn.load_idx(tmp), IsADirectoryError, (r"{tmp}",)),
    Row("load_idx", "empty file", lambda tmp: fnn.load_idx(_write(tmp, "e", b"")), ValueError,
        (r"{tmp}/e", r"expected an IDX header", r"empty file")),
    Row("load_idx", "wrong magic", lambda tmp: fnn.load_idx(_write(tmp, "m", b"PK\x03\x04")), ValueError,
        (r"{tmp}/m", r"expected magic bytes 00 00", r"found 50 4b")),
    Row("load_idx", "unknown dtype code", lambda tmp: fnn.load_idx(_write(tmp, "c", b"\0\0\x07\x01\0\0\0\1x")),
        ValueError, (r"{tmp}/c", r"unknown dtype code 0x07", r"0x08 \(uint8\)")),
    Row("load_idx", "header claims far more than the file",
        lambda tmp: fnn.load_idx(_write(tmp, "h", b"\0\0\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff" + b"x" * 10)),
        ValueError, (r"{tmp}/h", r"18446744065119617025 bytes", r"found only 10 bytes")),
    Row("load_idx", "truncated gzip stream", lambda tmp: fnn.load_idx(_write(tmp, "g", _half_gzip())),
        ValueError, (r"{tmp}/g", r"valid gzip stream", r"corrupt or truncated")),
    Row("load_idx", "gzip stream of garbage",
        lambda tmp: fnn.load_idx(_write(tmp, "z", b"\x1f\x8b\x08\x00\0\0\0\0\0\xff" + b"\xff" * 64)),
        ValueError, (r"{tmp}/z", r"valid gzip stream", r"corrupt or truncated")),
    Row("load_dataset", "unknown name", lambda tmp: fnn.load_dataset("digit"), ValueError,
        (r"'digit'", r"Did you mean 'digits'", r"valid names: iris, digits, mnist, fashion-mnist")),
    Row("load_dataset", "mnist without a folder", lambda tmp: fnn.load_dataset("mnist"), ValueError,
        (r"needs data_dir", r"four IDX files")),
    Row("mnist", "missing folder", lambda tmp: fnn.mnist(tmp / "none"), FileNotFoundError,
        (r"{tmp}/none does not exist", r"train-images-idx3-ubyte")),
    Row("mnist", "image and label counts disagree", lambda tmp: fnn.mnist(_fake_mnist(tmp, 2, 3)), ValueError,
        (r"holds 2 images", r"holds 3 labels", r"{tmp}/mnist/")),
    Row("fashion_mnist", "missing folder", lambda tmp: fnn.fashion_mnist(tmp / "none"), FileNotFoundError,
        (r"{tmp}/none does not exist", r"t10k-labels-idx1-ubyte")),
    Row("save", "params of another network", lambda tmp: fnn.save(tmp / "c", OTHER, net=NET), ValueError,
        (r"\(4, 5\)", r"\(4, 6\)")),
    Row("save", "net is not a Network", lambda tmp: fnn.save(tmp / "c", P, net="net"), TypeError,
        (r"Network", r"got str")),
    Row("save", "metadata JSON cannot hold",
        lambda tmp: fnn.save(tmp / "c", P, net=NET, metadata={"lr": np.float32(1)}), TypeError,
        (r"JSON-serialisable", r"metadata\['lr'\] is a numpy\.float32")),
    Row("load", "missing file", lambda tmp: fnn.load(tmp / "none"), FileNotFoundError, (r"{tmp}/none",)),
    Row("load", "truncated file", lambda tmp: fnn.load(_truncated_checkpoint(tmp)), ValueError,
        (r"{tmp}/cut\.safetensors is not a valid fnn checkpoint", r"header claims|not a readable")),
    Row("load", "a pickle", lambda tmp: fnn.load(_write(tmp, "p.pkl", pickle.dumps({"w": [1.0]}))), ValueError,
        (r"{tmp}/p\.pkl is not a valid fnn checkpoint",)),
    Row("load", "checkpoint of another architecture", lambda tmp: fnn.load(_checkpoint(tmp), fnn.mlp([4, 6, 3])),
        ValueError, (r"does not match the given network", r"checkpoint has \[4, 5, 3\], network has \[4, 6, 3\]",
                     r"layer 0 w: checkpoint \(4, 5\), network \(4, 6\)")),
    Row("load", "checkpoint of another dtype",
        lambda tmp: fnn.load(_checkpoint(tmp), fnn.mlp([4, 5, 3], hidden="tanh", output="softmax", dtype="float16")),
        ValueError, (r"dtype: checkpoint has 'float32', network has 'float16'",)),
    Row("load", "optimizer state of another optimizer",
        lambda tmp: fnn.load(fnn.save(tmp / "o", P, net=NET, opt_state=optax.adam(0.1).init(P)), NET,
                             opt_state_like=optax.sgd(0.1, momentum=0.9).init(P)),
        ValueError, (r"optimizer state has \d+ leaves but opt_state_like has \d+",)),
    Row("load", "net is not a Network", lambda tmp: fnn.load(_checkpoint(tmp), "net"), TypeError,
        (r"Network", r"got str")),
    # --- layers, serial, penalties (the layer protocol) ---
    Row("layers", "Dropout(1.0): every unit dropped", lambda tmp: fnn.layers.Dropout(1.0), ValueError,
        (r"Dropout: rate must be a number in \[0, 1\)", r"got 1\.0")),
    Row("layers", "Dropout of a negative rate", lambda tmp: fnn.layers.Dropout(-0.1), ValueError,
        (r"\[0, 1\)", r"got -0\.1")),
    Row("layers", "Dense(0): no units", lambda tmp: fnn.layers.Dense(0), ValueError,
        (r"Dense: units must be a positive int", r"got 0")),
    Row("layers", "Dense of 2.5 units", lambda tmp: fnn.layers.Dense(2.5), ValueError,
        (r"positive int", r"got 2\.5")),
    Row("layers", "Dense with a misspelt activation", lambda tmp: fnn.layers.Dense(3, activation="relux"),
        ValueError, (r"Did you mean 'relu'", r"'relux'")),
    Row("layers", "Dense bias not a bool", lambda tmp: fnn.layers.Dense(3, bias="yes"), TypeError,
        (r"bias must be True or False", r"got 'yes'")),
    Row("layers", "Residual() without inner layers", lambda tmp: fnn.layers.Residual(), ValueError,
        (r"Residual needs at least one inner layer",)),
    Row("layers", "Residual of an int", lambda tmp: fnn.layers.Residual(3), TypeError,
        (r"Residual's inner layer 0: expected a layer", r"got int: 3")),
    Row("layers", "Residual(Dense(3)) bound to input 4: x + f(x) cannot add",
        lambda tmp: fnn.serial(fnn.layers.Residual(fnn.layers.Dense(3)), input_shape=(4,)), ValueError,
        (r"Layer 0 \(Residual\)", r"input shape \(4,\) to \(3,\)")),
    Row("layers", "from_description of an unknown kind", lambda tmp: fnn.layers.from_description({"kind": "Conv"}),
        ValueError, (r"known kinds: Dense", r"'Conv'")),
    # --- convolution and pooling ---
    Row("layers", "Conv2D(0) filters", lambda tmp: fnn.layers.Conv2D(0, 3), ValueError,
        (r"Conv2D: filters must be a positive int", r"got 0")),
    Row("layers", "Conv2D with a kernel of three sizes", lambda tmp: fnn.layers.Conv2D(4, (3, 3, 3)), ValueError,
        (r"Conv2D: kernel_size must be a positive int or a pair", r"\(3, 3, 3\)")),
    Row("layers", "Conv2D with a negative padding", lambda tmp: fnn.layers.Conv2D(4, 3, padding=-1), ValueError,
        (r'padding must be "SAME", "VALID" or a non-negative int', r"got -1")),
    Row("layers", "MaxPool2D with stride 0", lambda tmp: fnn.layers.MaxPool2D(2, stride=0), ValueError,
        (r"MaxPool2D: stride must be a positive int", r"got 0")),
    Row("layers", "Conv2D on flat inputs", lambda tmp: fnn.serial(fnn.layers.Conv2D(4, 3), input_shape=(784,)),
        ValueError, (r"Layer 0 \(Conv2D\): expects images", r"\(784,\)", r"flatten=False")),
    Row("layers", "Conv2D on a channels-first shape",
        lambda tmp: fnn.serial(fnn.layers.Conv2D(4, 3), input_shape=(3, 32, 32)), ValueError,
        (r"looks like channels-first", r"input_shape=\(32, 32, 3\)")),
    Row("layers", "a pooling window larger than the image",
        lambda tmp: fnn.serial(fnn.layers.AvgPool2D(5), input_shape=(4, 4, 1)), ValueError,
        (r"Layer 0 \(AvgPool2D\): the window \(5, 5\) is larger than the image \(4, 4\)",)),
    Row("layers", "Dense after Conv2D without Flatten",
        lambda tmp: fnn.serial(fnn.layers.Conv2D(2, 3), fnn.layers.Dense(3), input_shape=(5, 5, 1)), ValueError,
        (r"Layer 1 \(Dense\)", r"\(5, 5, 2\)", r"Flatten\(\)")),
    Row("serial", "no layers", lambda tmp: fnn.serial(input_shape=(3,)), ValueError,
        (r"serial needs at least one layer",)),
    Row("serial", "a misspelt activation name as a layer", lambda tmp: fnn.serial("relux", input_shape=(3,)),
        ValueError, (r"Layer 0: 'relux' is neither a layer nor an activation name", r"Did you mean 'relu'")),
    Row("serial", "an int as a layer", lambda tmp: fnn.serial(3, input_shape=(3,)), TypeError,
        (r"Layer 0: expected a layer", r"got int: 3")),
    Row("serial", "input_shape of a zero width", lambda tmp: fnn.serial(fnn.layers.Dense(3), input_shape=(0,)),
        ValueError, (r"input_shape must be the per-example shape as a tuple of positive ints", r"got \(0,\)")),
    Row("serial", "an image shape into a Dense layer",
        lambda tmp: fnn.serial(fnn.layers.Dense(3), input_shape=(2, 2)), ValueError,
        (r"Layer 0 \(Dense\): expects a flat input of shape \(n,\)", r"got per-example shape \(2, 2\)")),
    Row("serial", "an integer dtype", lambda tmp: fnn.serial(fnn.layers.Dense(3), input_shape=(3,), dtype="int32"),
        TypeError, (r"floating dtype", r"got int32")),
    Row("serial", "params of a Residual given as a dict, not a list of inner entries",
        lambda tmp: fnn.serial(fnn.layers.Residual(fnn.layers.Dense(4)), input_shape=(4,)).apply(
            [{"w": jnp.ones((4, 4)), "b": jnp.ones(4)}], X), ValueError,
        (r"Layer 0: expected params as a list of 1 inner-layer entries", r"got dict")),
    Row("penalties", "l2(-1): a negative strength", lambda tmp: fnn.penalties.l2(-1), ValueError,
        (r"l2: lam must be a finite real number >= 0", r"got -1")),
    Row("penalties", "l1(nan)", lambda tmp: fnn.penalties.l1(float("nan")), ValueError,
        (r"lam must be a finite real number >= 0", r"got nan")),
    Row("penalties", "l2 of a string", lambda tmp: fnn.penalties.l2("0.1"), TypeError,
        (r"finite real number", r"'0\.1' \(str\)")),
    Row("penalties", "no leaf names", lambda tmp: fnn.penalties.l1(0.1, leaves=()), ValueError,
        (r"leaves must be a non-empty tuple of leaf names", r"got \(\)")),
    Row("penalties", "l2(0.1, leaves=('q',)) on real params: no leaf matches",
        lambda tmp: fnn.penalties.l2(0.1, leaves=("q",)).value(P), ValueError,
        (r"selects no leaf of params", r"leaves=\('q',\)", r"0\.w, 1\.b, 1\.w")),
    Row("penalties", "a mask unlike params", lambda tmp: fnn.penalties.l2(0.1, mask=[True]).value(P), ValueError,
        (r"mask's tree structure", r"does not match the params'")),
    Row("penalties", "combine of a non-penalty", lambda tmp: fnn.penalties.combine(3), TypeError,
        (r"expected a Penalty", r"got 3")),
    Row("penalties", "from_description of an unknown penalty",
        lambda tmp: fnn.penalties.from_description({"name": "l3", "lam": 1}), ValueError,
        (r"'l1' or 'l2'", r"'l3'")),
    Row("backprop", "train=True without a key on a dropout net",
        lambda tmp: fnn.backprop(DROPOUT_NET, DROPOUT_P, X, Y, SPARSE, train=True), ValueError,
        (r"Training mode \(train=True\) on a net with dropout needs a PRNG key", r"pass key=")),
    Row("backprop", "a penalty that is a number", lambda tmp: fnn.backprop(NET, P, X, Y, SPARSE, penalty=0.1),
        TypeError, (r"expected None or a Penalty", r"got 0\.1 \(float\)")),
    Row("backprop", "a penalty selecting no leaf",
        lambda tmp: fnn.backprop(NET, P, X, Y, SPARSE, penalty=fnn.penalties.l2(0.1, leaves=("q",))), ValueError,
        (r"selects no leaf of params", r"'q'")),
    Row("Network", "apply: train=True without a key on a dropout net",
        lambda tmp: DROPOUT_NET.apply(DROPOUT_P, X, train=True), ValueError,
        (r"needs a PRNG key", r"train=True")),
    Row("Network", "apply: train not a bool", lambda tmp: DROPOUT_NET.apply(DROPOUT_P, X, train="yes"), TypeError,
        (r"train must be True, False or None", r"got 'yes'")),
    Row("sgd_step", "a dropout net's step without its key",
        lambda tmp: fnn.sgd_step(DROPOUT_NET, SPARSE, learning_rate=0.1)(DROPOUT_P, X, Y), TypeError,
        (r"step takes 4 arguments \(params, x, y, key\)", r"got 3")),
    Row("fit", "penalty given by name", lambda tmp: fnn.fit(NET, P, (X, Y), loss=SPARSE, epochs=1, batch_size=2,
                                                            key=KEY, progress=False, penalty="l2"), TypeError,
        (r"expected None or a Penalty", r"got 'l2' \(str\)")),
    Row("fit_ensemble", "penalty given by name", _fit_ensemble(penalty="l2"), TypeError,
        (r"expected None or a Penalty", r"got 'l2' \(str\)")),
    Row("fit_ensemble", "a dropout+residual net's params not stacked",
        lambda tmp: fnn.fit_ensemble(DROPOUT_NET, DROPOUT_P, (X, Y), loss=SPARSE, epochs=1, batch_size=2,
                                     keys=jax.random.split(KEY, 2)), ValueError,
        (r"stacked params", r"layer 0's w of shape \(K, 4, 5\), got \(4, 5\)")),
    Row("EarlyStopping", "zero patience", _fit(test=(X, Y), validation=(X, Y),
                                              early_stopping=fnn.EarlyStopping(patience=0)), ValueError,
        (r"patience must be a positive int", r"got 0")),
    Row("fit", "early stopping without a validation set", _fit(early_stopping=fnn.EarlyStopping()), ValueError,
        (r"monitors 'val_loss'", r"needs a validation set", r"validation=\(x_val, y_val\)")),
    Row("fit", "validation set of the wrong width", _fit(validation=(X[:, :2], Y)), ValueError,
        (r"validation: Layer 0: expected 4 input features", r"got 2")),
    Row("fit", "a schedule beside an optax object", _fit(learning_rate=lambda count: 0.1,
                                                         optimizer=optax.sgd(0.1)), ValueError,
        (r"beside an optax transformation", r"ambiguous")),
    Row("export_onnx", "a layer kind ONNX export does not know",
        lambda tmp: fnn.export_onnx(fnn.serial(fnn.layers.Spec("Cube", {}, lambda shape, where: dataclasses.replace(
            fnn.layers.Flatten().bind(shape, where), kind="Cube")), input_shape=(4,)), [{}], tmp / "m.onnx"),
        ValueError, (r"Layer 0 \(Cube\) cannot be exported to ONNX", r"supported kinds: Dense")),
    Row("load_run", "a folder that is not a run", lambda tmp: fnn.load_run(tmp), ValueError,
        (r"is not a run folder", r"no config\.json")),
    Row("tabular", "a CSV with a missing value",
        lambda tmp: (tmp / "m.csv").write_text("a,y\n1,u\n,v\n") and fnn.tabular.read_csv(tmp / "m.csv"),
        ValueError, (r"m\.csv: line 3, column 'a': missing value",)),
    Row("save", "state without one entry per layer",
        lambda tmp: fnn.save(tmp / "s.safetensors", P, net=NET, state=[{}]), ValueError,
        (r"state must be a list with one entry per layer \(2", r"got 1 entries")),
    Row("load", "a serial net's checkpoint into a net with another dropout rate",
        lambda tmp: fnn.load(fnn.save(tmp / "d.safetensors", DROPOUT_P, net=DROPOUT_NET), fnn.serial(
            fnn.layers.Dense(5, activation="tanh"), fnn.layers.Dropout(0.25),
            fnn.layers.Residual(fnn.layers.Dense(5, activation="tanh")), fnn.layers.Dense(3, activation="softmax"),
            input_shape=(4,))), ValueError,
        (r"does not match the given network", r"layer 1 rate: checkpoint has 0\.5, network has 0\.25")),
]

BAD_INPUT = _loss_path_rows() + OTHER_ROWS

#: Public names that take no user data, or whose functions are reached through other names.
NO_USER_DATA = {
    "Checkpoint": "a NamedTuple returned by load",
    "GradcheckReport": "a NamedTuple returned by gradcheck",
    "Trace": "a NamedTuple returned by backprop",
    "DivergenceWarning": "a warning class",
    "TrainingInterrupted": "an exception class",
    "checkpoint": "module: save and load have rows",
    "data": "module: its public functions are re-exported and have rows",
    "iris": "takes no arguments",
    "digits": "takes no arguments",
}


def _innermost_frame(exc: BaseException) -> Path:
    return Path(traceback.extract_tb(exc.__traceback__)[-1].filename).resolve()


@pytest.mark.parametrize(
    "row",
    [pytest.param(r, id=f"{r.target} | {r.fault}",
                  marks=[pytest.mark.xfail(strict=True, reason=r.xfail)] if r.xfail else []) for r in BAD_INPUT],
)
def test_bad_input_raises_a_clear_error(row, tmp_path):
    with pytest.raises(Exception) as info:
        row.call(tmp_path)
    err = info.value
    assert type(err) is row.exc, f"expected {row.exc.__name__}, got {type(err).__name__}: {err}"
    message = str(err)
    for piece in row.pieces:
        piece = piece.replace("{tmp}", re.escape(str(tmp_path)))
        assert re.search(piece, message), f"{piece!r} not in {message!r}"
    where = _innermost_frame(err)
    if row.origin == "fnn":
        assert FNN_DIR in where.parents, f"raised in {where}, not by fnn's own validation"
    else:  # JAX's own check (a typed-key TypeError): still named, and raised before anything is computed
        assert "jax" in where.parts, where


def test_every_public_name_has_a_row():
    targets = {row.target for row in BAD_INPUT}
    missing = []
    for name in fnn.__all__:
        obj = getattr(fnn, name)
        if name in NO_USER_DATA:
            continue
        if isinstance(obj, types.ModuleType) or callable(obj):
            if name not in targets:
                missing.append(name)
    assert not missing, f"public names with no bad-input row in BAD_INPUT (or NO_USER_DATA): {missing}"
    assert set(NO_USER_DATA) <= set(fnn.__all__), set(NO_USER_DATA) - set(fnn.__all__)


def test_reliability_md_states_the_row_count():
    """RELIABILITY.md's intro gives the size of this table; a row added without updating it fails here."""
    text = (FNN_DIR.parent / "RELIABILITY.md").read_text()
    assert f"(`BAD_INPUT`, {len(BAD_INPUT)} rows)" in text, re.findall(r"\(`BAD_INPUT`, \d+ rows\)", text)


@pytest.mark.parametrize("loss", ["mse", "quadratic", "binary_cross_entropy", "categorical_cross_entropy",
                                  "sigmoid_binary_cross_entropy", "softmax_cross_entropy"])
@pytest.mark.parametrize("shape", [(8, 1), (8,), (1, 3), (3,), (8, 3, 1)])
def test_no_silent_broadcast_of_dense_targets(loss, shape):
    """A target that numpy would broadcast against the (8, 3) output is refused by every entry point."""
    y = np.zeros(shape, np.float32)
    for call in (LOSS_PATH["backprop"], LOSS_PATH["autodiff"], LOSS_PATH["evaluate"]):
        with pytest.raises(ValueError, match=re.escape(str(shape))):
            call(P, X, y, loss)


# --- (b) numerical extremes --------------------------------------------------------------------------------

ELEMENTWISE = [n for n in fnn.activations.names() if fnn.activations.get(n).elementwise]
FUSED_AND_LOGIT_PAIRS = [  # (output activation, loss): the closed forms and the from-logits losses
    ("softmax", "categorical_cross_entropy"),
    ("softmax", "sparse_categorical_cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("identity", "softmax_cross_entropy"),
    ("identity", "sparse_softmax_cross_entropy"),
    ("identity", "sigmoid_binary_cross_entropy"),
]


def _leaves64(tree):
    return [np.asarray(t, np.float64) for t in jax.tree_util.tree_leaves(tree)]


def _finite(*trees):
    return all(np.isfinite(t).all() for tree in trees for t in _leaves64(tree))


def _max_rel(a, b):
    return max(relative_error(u, v)[1] for u, v in zip(_leaves64(a), _leaves64(b), strict=True))


def _targets(loss, y_int, k, dtype):
    rec = fnn.losses.get(loss)
    return jnp.asarray(y_int, jnp.int32) if rec.sparse else jnp.asarray(fnn.one_hot(y_int, k), dtype)


def _both_all(cases):
    """For each case ``(net, params, x, y, loss)``: ``((loss, grads, trace) by hand, (loss, grads) by jax.grad)``.

    All cases are compiled as one program: one XLA compile instead of one per case (or one per primitive
    eagerly) is what keeps this file within its time budget."""
    static = [(net, loss) for net, _, _, _, loss in cases]

    def run(args):
        return [(fnn.backprop(net, p, x, y, loss, return_trace=True), fnn.autodiff(net, p, x, y, loss))
                for (net, loss), (p, x, y) in zip(static, args, strict=True)]

    return jax.jit(run)([(p, x, y) for _, p, x, y, _ in cases])


def _check_finite_and_equal(cases, rtol):
    """Every case: finite loss and grads by hand and by autodiff, equal within ``rtol``; returns the results."""
    results = _both_all(cases)
    for case, ((lm, gm, _), (la, ga)) in zip(cases, results, strict=True):
        what = (case[0], case[4])
        assert _finite(lm, gm, la, ga), what
        assert relative_error(lm, la)[1] <= rtol and _max_rel(gm, ga) <= rtol, (what, _max_rel(gm, ga))
    return results


def test_inputs_of_1e4_give_finite_equal_gradients():
    """Inputs of ±1e4 push every hidden pre-activation far into the tails (saturated sigmoid/tanh, relu passing
    1e4-scale values on): each hidden activation in turn with the fused softmax output, and two other pairs."""
    x = jnp.asarray(np.random.default_rng(1).choice([-1e4, 1e4], size=(6, 3)), jnp.float32)
    cases = []
    for hidden, output, loss in [(h, "softmax", SPARSE) for h in ELEMENTWISE] + [
            ("relu", "identity", "mse"), ("tanh", "sigmoid", "binary_cross_entropy")]:
        net = fnn.mlp([3, 4, 3], hidden=hidden, output=output)
        cases.append((net, net.init(jax.random.key(2)), x, _targets(loss, [0, 1, 2, 0, 1, 2], 3, jnp.float32), loss))
    _check_finite_and_equal(cases, rtol=1e-4)


def _logit_net(output, dtype):
    """A one-layer net whose output pre-activations are [[1e4, -1e4, 0], [-1e4, 1e4, 0]] for x = I (1e4 as
    rounded to ``dtype``: exact in float16, 9984 in bfloat16)."""
    net = fnn.mlp([2, 3], output=output, dtype=dtype)
    w = jnp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype)
    return net, [{"w": w, "b": jnp.zeros(3, dtype)}], jnp.eye(2, dtype=dtype)


def _reference_loss(loss, z, y):
    """The loss of logits z in float64 NumPy, independent of fnn; ``y`` integer labels."""
    z = np.asarray(z, np.float64)
    if loss in ("sigmoid_binary_cross_entropy", "binary_cross_entropy"):
        return np.mean(np.sum(np.logaddexp(0.0, z) - z * np.eye(3)[y], axis=1))
    lse = np.log(np.sum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)) + z.max(axis=1)
    return np.mean(lse - z[np.arange(len(y)), y])


def test_logits_of_pm_1e4_give_the_exact_finite_loss():
    """Every fused pair and every from-logits loss, in float32, float16 and bfloat16 (float16's max is 65504, so
    logits of ±1e4 and a loss of 1e4 are representable): the loss is the float64 reference to 2 eps (the first
    row's label is right, loss ~ 0; the second's is wrong by 2e4) and the gradients are finite and equal."""
    y_int = np.array([0, 0])
    cases = []
    for dtype in ("float32", "float16", "bfloat16"):
        for output, loss in FUSED_AND_LOGIT_PAIRS:
            net, params, x = _logit_net(output, dtype)
            cases.append((net, params, x, _targets(loss, y_int, 3, dtype), loss))
    for (net, params, _, _, loss), ((lm, gm, _), (la, ga)) in zip(cases, _both_all(cases), strict=True):
        eps = float(jnp.finfo(net.dtype).eps)
        assert _finite(lm, gm, la, ga), (net, loss)
        assert _max_rel(gm, ga) <= 4 * eps, (net, loss)  # delta = (a - y) / N: a few roundings apart
        expected = _reference_loss(loss, params[0]["w"], y_int)  # z = x @ w = w
        assert float(lm) == pytest.approx(expected, rel=2 * eps), (net, loss)
        assert float(la) == pytest.approx(expected, rel=2 * eps), (net, loss)


def test_every_loss_at_logits_of_pm_1e4_is_finite():
    """Outside the fused pairs, probability losses clip into [eps, 1 - eps]: large but finite, never inf/NaN."""
    cases = []
    for output in ("identity", "sigmoid", "softmax"):
        net, params, x = _logit_net(output, "float32")
        cases += [(net, params, x, _targets(loss, [0, 2], 3, jnp.float32), loss)
                  for loss in fnn.losses.names() if (output, loss) not in FUSED_AND_LOGIT_PAIRS]
    _check_finite_and_equal(cases, rtol=1e-4)


def test_all_zero_inputs(x64):
    x, y = jnp.zeros((5, 3)), jnp.array([0, 1, 0, 1, 1])
    nets = [fnn.mlp([3, 4, 2], hidden=hidden, output="softmax") for hidden in ELEMENTWISE]
    cases = [(net, net.init(jax.random.key(3)), x, y, SPARSE) for net in nets]
    for net, ((_, gm, trace), _) in zip(nets, _check_finite_and_equal(cases, rtol=1e-10), strict=True):  # kinks
        assert np.array_equal(gm[0]["w"], np.zeros((3, 4))), net  # dW_1 = x^T delta_1 = 0 exactly
        assert np.array_equal(trace.z[0], np.zeros((5, 4))), net  # biases start at zero


def test_batch_of_one(x64):
    cases = []
    for output, loss in [("softmax", SPARSE), ("sigmoid", "binary_cross_entropy"), ("identity", "mse")]:
        net = fnn.mlp([3, 4, 2], hidden="tanh", output=output)
        x, y = jnp.asarray([[0.5, -1.0, 2.0]]), _targets(loss, [1], 2, jnp.float64)
        cases += [(net, net.init(jax.random.key(4)), x, y, loss), (net, net.init(jax.random.key(4)), x[0], y[0], loss)]
    results = _check_finite_and_equal(cases, rtol=1e-10)
    batched = cases[::2]
    per_example = jax.jit(lambda args: [fnn.per_example_grads(c[0], p, x, y, c[4]) for c, (p, x, y) in
                                        zip(batched, args, strict=True)])([c[1:4] for c in batched])
    for i, per in zip(range(0, len(cases), 2), per_example, strict=True):
        (lm, gm, _), _ = results[i]
        (l1, g1, _), _ = results[i + 1]  # one example without the batch axis: the same numbers
        assert float(l1) == pytest.approx(float(lm), rel=1e-15) and _max_rel(g1, gm) <= 1e-15
        assert _max_rel(jax.tree_util.tree_map(lambda t: t[0], per), gm) <= 1e-12
    net, params, x, y, loss = cases[0]
    assert fnn.evaluate(net, params, x, y, loss)["loss"] == pytest.approx(float(results[0][0][0]), rel=1e-12)
    trained, history = fnn.fit(net, params, (x, y), loss=loss, epochs=2, batch_size=1, key=KEY, progress=False)
    assert _finite(trained) and len(history["train_loss"]) == 2


# Accuracy of float16/bfloat16 against float64 at the same (rounded) params and data, norm-wise per leaf,
# measured over 5 architectures x 3 seeds on digits (RELIABILITY.md): worst loss error 0.29 eps (float16) and
# 0.50 eps (bfloat16); worst gradient error 1.3 eps (float16) and 2.0 eps (bfloat16). 2x headroom:
LOW_PRECISION_LOSS_EPS = 2
LOW_PRECISION_GRAD_EPS = 4


@pytest.fixture(scope="module")
def digits_batch():
    x, y = fnn.digits()
    idx = np.random.default_rng(0).choice(len(x), 64, replace=False)
    return x[idx], y[idx]


def test_low_precision_grads_match_float64_within_documented_bound(digits_batch):
    x, y_int = digits_batch
    with jax.enable_x64(True):
        cases, refs = [], []
        for dtype, hidden, output, loss in [(d, *arch) for d in ("float16", "bfloat16") for arch in
                                            [("relu", "softmax", SPARSE), ("sigmoid", "sigmoid", "mse")]]:
            net = fnn.mlp([64, 32, 10], hidden=hidden, output=output, dtype=dtype)
            net64 = fnn.mlp([64, 32, 10], hidden=hidden, output=output, dtype="float64")
            params = net.init(jax.random.key(0))
            x_lo, y_lo = jnp.asarray(x, dtype), _targets(loss, y_int, 10, dtype)
            cases.append((net, params, x_lo, y_lo, loss))
            refs.append((net64, jax.tree_util.tree_map(lambda t: t.astype(jnp.float64), params),
                         x_lo.astype(jnp.float64), y_lo if fnn.losses.get(loss).sparse else y_lo.astype(jnp.float64),
                         loss))
        results = _both_all(cases + refs)
    n = len(cases)
    for case, ((lm, gm, _), (la, ga)), ((l64, g64, _), _) in zip(cases, results[:n], results[n:], strict=True):
        dtype = case[0].dtype
        eps = float(jnp.finfo(dtype).eps)
        for how, value, grads in (("manual", lm, gm), ("autodiff", la, ga)):
            assert value.dtype == dtype and all(g.dtype == dtype for g in jax.tree_util.tree_leaves(grads))
            assert _finite(value, grads)
            assert abs(float(value) - float(l64)) <= LOW_PRECISION_LOSS_EPS * eps * abs(float(l64)), (case[4], how)
            for g, r in zip(_leaves64(grads), _leaves64(g64), strict=True):
                assert np.linalg.norm(g - r) <= LOW_PRECISION_GRAD_EPS * eps * np.linalg.norm(r), (case[4], how)


@pytest.mark.parametrize("dtype, optimizer", [("float16", "adam"), ("bfloat16", None)])
def test_low_precision_fit_stays_finite_and_learns(dtype, optimizer, digits_batch):
    # Adam in float16 used to diverge at step 0: its eps = 1e-8 rounds to 0 in float16 and g² underflows, so
    # a zero gradient gave 0/0; the named optimizers now keep adam's state in float32 (make_optimizer).
    x, y = digits_batch
    net = fnn.mlp([64, 32, 10], hidden="relu", output="softmax", dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fnn.DivergenceWarning)
        params, history = fnn.fit(net, net.init(jax.random.key(0)), (x, y), loss=SPARSE, epochs=3, batch_size=16,
                                  learning_rate=0.01 if optimizer else 0.1, optimizer=optimizer, key=KEY,
                                  progress=False)
    assert all(t.dtype == dtype for t in jax.tree_util.tree_leaves(params)) and _finite(params)
    assert history["train_loss"][-1] < 0.9 * history["train_loss"][0]


# --- (c) determinism ---------------------------------------------------------------------------------------

def _blobs(n=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    return (rng.normal(size=(3, 4)) * 2)[y] + rng.normal(size=(n, 4)), y


def _assert_bit_identical(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert u.dtype == v.dtype and np.array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("options", [dict(), dict(optimizer="adam", learning_rate=0.01),
                                     dict(strict=True, grads="autodiff")], ids=str)
def test_same_seed_same_params_and_history(options):
    net = fnn.mlp([4, 6, 3], hidden="relu", output="softmax")
    kw = dict(loss=SPARSE, epochs=3, batch_size=5, key=jax.random.key(7), progress=False, **options)
    runs = [fnn.fit(net, net.init(jax.random.key(6)), _blobs(), _blobs(9, seed=1), **kw) for _ in range(2)]
    _assert_bit_identical(runs[0][0], runs[1][0])
    assert without_time(runs[0][1]) == without_time(runs[1][1])


def test_same_seed_same_ensemble():
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    kw = dict(loss=SPARSE, epochs=2, batch_size=6, learning_rate=jnp.array([0.05, 0.2]),
              keys=jax.random.split(jax.random.key(8), 2))
    runs = [fnn.fit_ensemble(net, jax.vmap(net.init)(jax.random.split(KEY, 2)), _blobs(), **kw) for _ in range(2)]
    _assert_bit_identical(runs[0][0], runs[1][0])
    assert without_time(runs[0][1]) == without_time(runs[1][1])


# Run in this process and in a fresh one (new compilation, new PRNG state): the digests must agree.
DIGEST_SCRIPT = textwrap.dedent("""
    import hashlib, json, jax, numpy as np, fnn
    def digest():
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 24).astype(np.int32)
        x = (rng.normal(size=(3, 4)) * 2)[y] + rng.normal(size=(24, 4))
        net = fnn.mlp([4, 6, 3], hidden="relu", output="softmax")
        h = hashlib.sha256()
        params, hist = fnn.fit(net, net.init(jax.random.key(6)), (x, y), loss="sparse_categorical_cross_entropy",
                               epochs=2, batch_size=5, learning_rate=0.05, optimizer="adam",
                               key=jax.random.key(7), progress=False)
        for leaf in jax.tree_util.tree_leaves(params):
            h.update(np.asarray(leaf).tobytes())
        h.update(json.dumps(hist["train_loss"]).encode())
        return h.hexdigest()
""")


def test_same_seed_bit_identical_in_a_fresh_process():
    namespace: dict = {}
    exec(DIGEST_SCRIPT, namespace)
    here = namespace["digest"]()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT + "\nprint(digest())"], capture_output=True,
                         text=True, env=env, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == here


# --- (d) checkpoints written by fit ------------------------------------------------------------------------

def _ckpt_kw(tmp_path, **extra):
    return dict(loss=SPARSE, batch_size=6, learning_rate=0.05, optimizer="adam", key=jax.random.key(9),
                progress=False, checkpoint_dir=tmp_path, **extra)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted 3-epoch run that the crashed-and-resumed runs below must reproduce bit for bit."""
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    return fnn.fit(net, net.init(KEY), _blobs(), epochs=3, **_ckpt_kw(tmp_path_factory.mktemp("straight")))


def test_checkpoint_every_n_saves_at_the_right_epochs(tmp_path):
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    params0 = net.init(KEY)
    seen = []

    def callback(epoch, history):  # runs after the epoch's save, if any
        path = tmp_path / CHECKPOINT_NAME
        seen.append(fnn.load(path, net).metadata["epoch"] if path.exists() else None)

    params, history = fnn.fit(net, params0, _blobs(), epochs=5, checkpoint_every=2, callback=callback,
                              **_ckpt_kw(tmp_path))
    assert seen == [None, 2, 2, 4, 5]  # every 2 epochs, and always after the last one
    ckpt = fnn.load(tmp_path / CHECKPOINT_NAME, net, opt_state_like=fnn.make_optimizer("adam", 0.05).init(params0))
    _assert_bit_identical(ckpt.params, params)
    assert ckpt.metadata["history"]["train_loss"] == history["train_loss"]
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temporary file left behind


def _fail_on_call(n, real, failure):
    calls = []

    def replace(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            failure()
        return real(*args, **kwargs)

    return replace


def _disk_full():
    raise OSError(28, "No space left on device (simulated)")


def test_a_save_failing_mid_way_keeps_the_previous_checkpoint_and_resume_finishes(tmp_path, monkeypatch,
                                                                                   straight_run):
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    params0 = net.init(KEY)
    straight, h_straight = straight_run

    folder = tmp_path / "crashed"
    monkeypatch.setattr(fnn.checkpoint.os, "replace", _fail_on_call(2, os.replace, _disk_full))
    with pytest.raises(OSError, match="No space left"):  # the second save (after epoch 2) fails half-way
        fnn.fit(net, params0, _blobs(), epochs=3, **_ckpt_kw(folder))
    monkeypatch.undo()
    assert [p.name for p in folder.iterdir()] == [CHECKPOINT_NAME]  # the temporary file was removed
    assert fnn.load(folder / CHECKPOINT_NAME, net).metadata["epoch"] == 1

    resumed, h_resumed = fnn.fit(net, net.init(jax.random.key(99)), _blobs(), epochs=3, resume=True,
                                 **_ckpt_kw(folder))
    _assert_bit_identical(resumed, straight)
    assert without_time(h_resumed) == without_time(h_straight)


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, jax, numpy as np, fnn
    real_replace, calls = os.replace, []
    def replace(*args):  # the process dies after the new file is written, before it is renamed
        calls.append(args)
        if len(calls) == 2:
            os._exit(3)
        return real_replace(*args)
    os.replace = replace
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 24).astype(np.int32)
    x = (rng.normal(size=(3, 4)) * 2)[y] + rng.normal(size=(24, 4))
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    fnn.fit(net, net.init(jax.random.key(0)), (x, y), loss="sparse_categorical_cross_entropy", epochs=3,
            batch_size=6, learning_rate=0.05, optimizer="adam", key=jax.random.key(9), progress=False,
            checkpoint_dir=sys.argv[1])
""")


def test_process_killed_mid_save_keeps_the_previous_checkpoint(tmp_path, straight_run):
    folder = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(folder)], env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    names = sorted(p.name for p in folder.iterdir())
    # What a power cut leaves: the complete previous checkpoint, and the new one under a temporary name.
    assert names[-1] == CHECKPOINT_NAME and len(names) == 2 and names[0].endswith(".tmp"), names
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    assert fnn.load(folder / CHECKPOINT_NAME, net).metadata["epoch"] == 1
    resumed, history = fnn.fit(net, net.init(KEY), _blobs(), epochs=3, resume=True, **_ckpt_kw(folder))
    straight, h_straight = straight_run
    _assert_bit_identical(resumed, straight)
    assert without_time(history) == without_time(h_straight)


def test_resume_from_a_corrupt_checkpoint_refuses_and_keeps_the_file(tmp_path):
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")
    fnn.fit(net, net.init(KEY), _blobs(), epochs=1, **_ckpt_kw(tmp_path))
    path = tmp_path / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the tensors
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum does not match"):
        fnn.fit(net, net.init(KEY), _blobs(), epochs=2, resume=True, **_ckpt_kw(tmp_path))
    assert path.read_bytes() == bytes(data)  # not overwritten by a fresh start


def test_no_code_executing_deserialiser_in_the_library():
    """Loading never executes code: no pickle (or anything built on it) anywhere in fnn's source."""
    banned = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b|"
                        r"allow_pickle\s*=\s*True|torch\.load|\beval\(|\bexec\(", re.M)
    offenders = [f"{path.name}: {m.group(0).strip()}" for path in sorted(FNN_DIR.rglob("*.py"))
                 for m in banned.finditer(path.read_text())]
    assert not offenders, offenders
