"""``fnn.load_run`` and ``preprocessing.json`` (fnn/run.py), and the run's data pipeline on an IDX folder
(fnn/cli_data.py), on folders built here without training."""

from __future__ import annotations

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import cli_data
from fnn._cli import UsageError
from fnn._run_folder import TRAIN_DEFAULTS
from fnn.data import Standardizer
from fnn.run import Preprocessing, read_preprocessing, write_preprocessing

NET = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
ODD = Standardizer(np.array([0.1, -2.5e-7, 3.0e5], np.float32), np.array([1 / 3, 7.0, 0.9], np.float32))
PREP = Preprocessing(("a", "b", "c"), "kind", "classification", ("no", "yes"), (3,), ODD)


def _run_folder(tmp_path, *, best: bool = False):
    params = jax.tree_util.tree_map(jnp.asarray, NET.init(jax.random.key(0)))
    fnn.save(tmp_path / "checkpoint.safetensors", params, net=NET, metadata={"epoch": 3})
    if best:
        better = jax.tree_util.tree_map(lambda t: t + 1, params)
        fnn.save(tmp_path / "best.safetensors", better, net=NET, metadata={"epoch": 2})
    (tmp_path / "config.json").write_text(json.dumps({**TRAIN_DEFAULTS, "loss": "sparse_categorical_cross_entropy"}))
    write_preprocessing(tmp_path, PREP)
    return params


def test_preprocessing_round_trips_bit_for_bit(tmp_path):
    write_preprocessing(tmp_path, PREP)
    back = read_preprocessing(tmp_path)
    assert back[:5] == PREP[:5]
    np.testing.assert_array_equal(back.standardizer.mean, ODD.mean)
    np.testing.assert_array_equal(back.standardizer.std, ODD.std)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(back.transform(x), (x - ODD.mean) / ODD.std)


def test_load_run_prefers_the_best_params_and_predict_applies_the_transform(tmp_path):
    params = _run_folder(tmp_path)
    run = fnn.load_run(tmp_path)
    assert run.weights.name == "checkpoint.safetensors" and run.epoch == 3 and run.state is None
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(run.predict(x), NET.apply(params, (x - ODD.mean) / ODD.std), atol=1e-6)
    _run_folder(tmp_path, best=True)
    run = fnn.load_run(tmp_path)
    assert run.weights.name == "best.safetensors" and run.epoch == 2
    np.testing.assert_array_equal(run.params[0]["w"], params[0]["w"] + 1)
    with pytest.raises(ValueError, match=r"expected examples of shape \(3,\) \(3 features: a, b, c\), got an array "
                                         r"of shape \(5, 2\)"):
        run.predict(x[:, :2])


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(task="cluster"), r"task must be 'classification' or 'regression'"),
    (lambda d: d.update(classes=["only"]), r"classes must be a list of at least two class names"),
    (lambda d: d.update(input_shape=[0]), r"input_shape must be a list of positive integers"),
    (lambda d: d["standardize"].update(std=[1.0, 0.0, 1.0]), r"standardize must be null or"),
    (lambda d: d["standardize"].update(mean=[1.0]), r"lists of 3 numbers"),
    (lambda d: d.update(features=[]), r"features must be a non-empty list of names"),
])
def test_a_bad_preprocessing_json_names_the_file_and_the_field(tmp_path, edit, match):
    write_preprocessing(tmp_path, PREP)
    d = json.loads((tmp_path / "preprocessing.json").read_text())
    edit(d)
    (tmp_path / "preprocessing.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as info:
        read_preprocessing(tmp_path)
    assert "preprocessing.json" in str(info.value)


def test_load_run_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        fnn.load_run(tmp_path)
    _run_folder(tmp_path)
    (tmp_path / "preprocessing.json").unlink()
    with pytest.raises(ValueError, match=r"preprocessing.json not found.*fnn train --resume"):
        fnn.load_run(tmp_path)
    write_preprocessing(tmp_path, PREP._replace(input_shape=(4,), features=("a", "b", "c", "d"),
                                                standardizer=None))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(3,\).*says \(4,\)"):
        fnn.load_run(tmp_path)
    write_preprocessing(tmp_path, PREP)
    (tmp_path / "checkpoint.safetensors").unlink()
    with pytest.raises(ValueError, match="holds no trained params"):
        fnn.load_run(tmp_path)


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def test_an_idx_folder_is_read_split_for_validation_and_standardized(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 6)):
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (n, 28, 28))))
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(_idx(np.arange(n) % 3))
    config = {**TRAIN_DEFAULTS, "data_file": str(tmp_path), "val_fraction": 0.25}
    data = cli_data.load_run_data(config, "--data")
    assert data.train[0].shape == (15, 784) and data.val[0].shape == (5, 784) and data.test[0].shape == (6, 784)
    assert data.preprocessing.classes == ("0", "1", "2") and data.loaded[0].shape == (20, 784)
    np.testing.assert_allclose(data.train[0].mean(axis=0)[data.train[0].std(axis=0) > 0], 0, atol=1e-5)
    images = cli_data.load_run_data({**config, "model": "cnn", "val_fraction": 0.0}, "--data")
    assert images.train[0].shape == (20, 28, 28, 1)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UsageError, match=r"--data .*must hold the four IDX files"):
        cli_data.load_run_data(config, "--data")
