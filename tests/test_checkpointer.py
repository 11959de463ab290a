"""Tests for fnn/_checkpointer.py: a resume reads only metadata that makes sense.

Each case takes a checkpoint ``fit`` wrote, edits one metadata field and saves it again with ``fnn.save``, so
the checksum is valid and only the metadata rules can catch it. ``fit(resume=True)`` must refuse with a
``ValueError`` naming the file and the field (it used to raise ``int()``'s "invalid literal", a ``TypeError``, or
with ``epoch = -5`` train five epochs too many).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import fnn
from fnn._checkpointer import CHECKPOINT_NAME, check_run_metadata

NET = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")


def _data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 24).astype(np.int32)
    return (rng.normal(size=(3, 4)) * 2)[y] + rng.normal(size=(24, 4)), y


def _fit(folder, *, epochs, resume=False):
    return fnn.fit(NET, NET.init(jax.random.key(0)), _data(), _data(), loss="sparse_categorical_cross_entropy",
                   epochs=epochs, batch_size=6, optimizer="adam", key=jax.random.key(1), progress=False,
                   checkpoint_dir=folder, resume=resume)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    _fit(folder, epochs=2)
    return folder


def _edited(run_folder, tmp_path, edit) -> tuple:
    """A copy of the run's checkpoint with ``edit(metadata, arrays)`` applied, saved with a valid checksum."""
    template = optax.adam(1e-3).init(NET.init(jax.random.key(0)))
    ckpt = fnn.load(run_folder / CHECKPOINT_NAME, NET, opt_state_like=template)
    metadata, arrays = dict(ckpt.metadata), dict(ckpt.arrays)
    metadata["history"] = {k: list(v) if isinstance(v, list) else v for k, v in metadata["history"].items()}
    edit(metadata, arrays)
    fnn.save(tmp_path / CHECKPOINT_NAME, ckpt.params, net=NET, opt_state=ckpt.opt_state, metadata=metadata,
             arrays=arrays)
    return tmp_path


def _set(field, value):
    def edit(metadata, arrays):
        metadata[field] = value
    return edit


def _set_history(name, value):
    def edit(metadata, arrays):
        metadata["history"][name] = value
    return edit


def _drop_key(metadata, arrays):
    del arrays["key"]


CASES = {
    "epoch abc": (_set("epoch", "abc"), r"field 'epoch' must be an integer >= 0, got 'abc'"),
    "epoch -5": (_set("epoch", -5), r"field 'epoch' must be an integer >= 0, got -5"),
    "epoch None": (_set("epoch", None), r"field 'epoch' must be an integer >= 0, got None"),
    "epoch True": (_set("epoch", True), r"field 'epoch' must be an integer >= 0, got True"),
    "epoch 2.0": (_set("epoch", 2.0), r"field 'epoch' must be an integer >= 0, got 2.0"),
    "epoch past the history": (_set("epoch", 5), r"field 'epoch' must be the number of epochs its history "
                                                 r"records \(2\), got 5"),
    "history a list": (_set("history", [1, 2]), r"field 'history' must be a dict of per-epoch lists, got \[1, 2\]"),
    "history None": (_set("history", None), r"field 'history' must be a dict of per-epoch lists, got None"),
    "history without train_loss": (lambda m, a: m["history"].pop("train_loss"),
                                   r"field 'history' must be a dict with the 'train_loss' list"),
    "history lists of unequal length": (_set_history("test_loss", [0.5]),
                                        r"'history.test_loss' has 1 entries, history.epoch has 2"),
    "history entries not numbers": (_set_history("train_loss", ["a", "b"]),
                                    r"field 'history.train_loss' must be a list of numbers"),
    "history epochs out of order": (_set_history("epoch", [2, 1]),
                                    r"field 'history.epoch' must be the epochs 1 to 2 in order, got \[2, 1\]"),
    "config a list": (_set("config", ["adam"]), r"field 'config' must be a dict of training settings"),
    "no config": (lambda m, a: m.pop("config"), r"its metadata has no 'config' field"),
    "no PRNG key": (_drop_key, r"it has no 'arrays/key' tensor"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_refuses_bad_metadata_naming_the_file_and_the_field(run_folder, tmp_path, case):
    edit, expected = CASES[case]
    folder = _edited(run_folder, tmp_path, edit)
    with pytest.raises(ValueError, match=expected) as info:
        _fit(folder, epochs=3, resume=True)
    assert str(folder / CHECKPOINT_NAME) in str(info.value)


def test_untouched_metadata_resumes(run_folder, tmp_path):
    folder = _edited(run_folder, tmp_path, lambda m, a: None)
    _, history = _fit(folder, epochs=3, resume=True)
    assert history["epoch"] == [1, 2, 3]


def test_check_run_metadata_accepts_what_fit_writes(run_folder):
    ckpt = fnn.load(run_folder / CHECKPOINT_NAME)
    epoch, history, config = check_run_metadata("x", ckpt.metadata)
    assert epoch == 2 and history["epoch"] == [1, 2] and config["optimizer"] == "adam"
    empty = {"epoch": 0, "history": {"epoch": [], "train_loss": [], "diverged": {"epoch": 1}}, "config": {}}
    assert check_run_metadata("x", empty)[0] == 0  # interrupted before the first epoch, or diverged in it


def test_a_dangling_checkpoint_link_is_an_error_not_a_fresh_start(tmp_path):
    """It used to count as "no checkpoint yet": fit retrained from epoch 0 and replaced the link."""
    link = tmp_path / CHECKPOINT_NAME
    link.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match="dangling symbolic link"):
        _fit(tmp_path, epochs=1, resume=True)
    assert link.is_symlink() and not link.exists()  # left as it was


# --- a serial net with dropout and a penalty -------------------------------------------------------------

SERIAL = fnn.serial(fnn.layers.Dense(8, activation="relu"), fnn.layers.Dropout(0.25),
                    fnn.layers.Residual(fnn.layers.Dense(8, activation="tanh"), fnn.layers.Dense(8)),
                    fnn.layers.Dense(3, activation="softmax"), input_shape=(4,))  # one net: fit's compile cache hits


L2 = fnn.penalties.l2(1e-2)


def _fit_serial(folder, *, epochs, resume=False, penalty=L2, callback=None):
    return fnn.fit(SERIAL, SERIAL.init(jax.random.key(0)), _data(), loss="sparse_categorical_cross_entropy",
                   epochs=epochs, batch_size=6, optimizer="momentum", key=jax.random.key(1), progress=False,
                   checkpoint_dir=folder, resume=resume, penalty=penalty, callback=callback)


def _same_bits(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(la, lb, strict=True))


def test_a_dropout_net_with_a_penalty_resumes_bit_identically(tmp_path):
    whole, whole_history = _fit_serial(tmp_path / "whole", epochs=4)
    _fit_serial(tmp_path / "split", epochs=2)
    ckpt = fnn.load(tmp_path / "split" / CHECKPOINT_NAME)
    assert ckpt.net.describe() == SERIAL.describe() and isinstance(ckpt.params[2], list)
    assert ckpt.metadata["config"]["penalty"] == {"name": "l2", "lam": 1e-2, "leaves": ["w"]}
    ran = []
    resumed, history = _fit_serial(tmp_path / "split", epochs=4, resume=True, callback=lambda e, h: ran.append(e))
    assert ran == [3, 4]  # continued from the checkpoint, not trained again from the initial params
    assert _same_bits(resumed, whole) and history["train_loss"] == whole_history["train_loss"]


@pytest.mark.parametrize("saved, now", [(L2, None), (None, L2), (L2, fnn.penalties.l1(1e-2))])
def test_resume_with_another_penalty_is_refused(tmp_path, saved, now):
    _fit_serial(tmp_path, epochs=1, penalty=saved)
    with pytest.raises(ValueError, match=r"training configuration differs \(penalty: checkpoint "):
        _fit_serial(tmp_path, epochs=2, resume=True, penalty=now)


def test_a_checkpoint_without_a_penalty_entry_resumes_a_run_without_one(run_folder, tmp_path):
    """Checkpoints written before penalties existed (format version 1, no "penalty" in config) still resume."""
    from test_checkpoint import write_version_1

    template = optax.adam(1e-3).init(NET.init(jax.random.key(0)))
    ckpt = fnn.load(run_folder / CHECKPOINT_NAME, NET, opt_state_like=template)
    assert "penalty" not in ckpt.metadata["config"]
    write_version_1(tmp_path / CHECKPOINT_NAME, NET, ckpt.params, opt_state=ckpt.opt_state, metadata=ckpt.metadata,
                    arrays=ckpt.arrays)
    resumed, history = _fit(tmp_path, epochs=4, resume=True)
    whole, whole_history = _fit(tmp_path / "whole", epochs=4)
    assert _same_bits(resumed, whole) and history["train_loss"] == whole_history["train_loss"]
    assert fnn.load(tmp_path / CHECKPOINT_NAME).metadata["epoch"] == 4
