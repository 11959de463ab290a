"""Early stopping in ``fit``: on a run built to overfit it stops, returns the best epoch's params exactly (the
params of a run of exactly that many epochs), writes them to best.safetensors, records why and when, refuses to
run without a validation set and composes with resume."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SPARSE_CE, assert_tree_equal, blobs, scaled_params

import fnn

# Overfits: 12 noisy training points, a wide net and a large rate; the validation loss turns up after a few
# epochs while the training loss keeps falling.
NET = fnn.mlp([4, 64, 3], hidden="tanh", output="softmax")
TRAIN, VAL = blobs(12, seed=1), blobs(200, seed=2)
KW = dict(loss=SPARSE_CE, batch_size=4, learning_rate=0.5, key=jax.random.key(7), progress=False)
RULE = fnn.EarlyStopping(monitor="val_loss", patience=3)


def _fit(epochs=60, **kw):
    return fnn.fit(NET, scaled_params(NET), TRAIN, validation=VAL, epochs=epochs, **{**KW, **kw})


@pytest.fixture(scope="module")
def stopped():
    return _fit(early_stopping=RULE)


def test_it_stops_and_returns_the_best_epochs_params_exactly(stopped):
    params, history = stopped
    record = history["early_stopping"]
    best, stop = record["best_epoch"], record["stopped_epoch"]
    assert stop is not None and stop == best + RULE.patience and stop < 60  # it stopped, patience epochs later
    assert len(history["epoch"]) == stop == len(history["val_loss"])
    losses = history["val_loss"]
    assert record["best_value"] == min(losses) == losses[best - 1]
    assert all(v >= record["best_value"] for v in losses[best:])  # none of the last `patience` improved
    assert history["train_loss"][-1] < history["train_loss"][best - 1]  # still fitting the training set
    assert f"for {RULE.patience} epochs" in record["reason"] and f"at epoch {best}" in record["reason"]
    # The returned params are those of a run of exactly `best` epochs, bit for bit.
    reference, _ = _fit(epochs=best)
    assert_tree_equal(params, reference)


def test_restore_best_false_returns_the_last_epochs_params(stopped):
    params, history = _fit(early_stopping=RULE._replace(restore_best=False))
    reference, _ = _fit(epochs=history["early_stopping"]["stopped_epoch"])
    assert_tree_equal(params, reference)
    assert not np.array_equal(params[0]["w"], stopped[0][0]["w"])


def test_min_delta_and_val_accuracy(stopped):
    _, history = _fit(early_stopping=RULE._replace(min_delta=10.0))  # nothing beats the first epoch by 10
    assert history["early_stopping"]["best_epoch"] == 1
    assert history["early_stopping"]["stopped_epoch"] == 1 + RULE.patience
    _, history = _fit(early_stopping=fnn.EarlyStopping(monitor="val_accuracy", patience=2))
    record, accuracy = history["early_stopping"], history["val_accuracy"]
    assert record["best_value"] == max(accuracy[: record["best_epoch"]]) == accuracy[record["best_epoch"] - 1]
    assert all(a <= record["best_value"] for a in accuracy[record["best_epoch"]:])


def test_best_safetensors_holds_the_best_params(tmp_path, stopped):
    params, history = _fit(early_stopping=RULE, checkpoint_dir=tmp_path)
    assert_tree_equal(params, stopped[0])
    best = fnn.checkpoint.load(tmp_path / "best.safetensors", NET)
    assert_tree_equal(best.params, params)
    assert best.metadata == {"epoch": history["early_stopping"]["best_epoch"], "monitor": "val_loss",
                             "value": history["early_stopping"]["best_value"]}


def test_resume_stops_at_the_same_epoch_with_the_same_best_params(tmp_path, stopped):
    params, history = stopped
    best = history["early_stopping"]["best_epoch"]

    def interrupt(epoch, _):
        if epoch == best + 1:  # after the best epoch, before patience ran out
            raise KeyboardInterrupt

    with pytest.raises(fnn.TrainingInterrupted):
        _fit(early_stopping=RULE, checkpoint_dir=tmp_path, callback=interrupt)
    resumed, resumed_history = _fit(early_stopping=RULE, checkpoint_dir=tmp_path, resume=True)
    assert_tree_equal(resumed, params)
    assert resumed_history["early_stopping"] == history["early_stopping"]
    assert resumed_history["val_loss"] == history["val_loss"]
    # Resuming a run that has stopped trains nothing and gives the same best params again.
    again, again_history = _fit(early_stopping=RULE, checkpoint_dir=tmp_path, resume=True, epochs=80)
    assert_tree_equal(again, params)
    assert again_history["epoch"] == history["epoch"]


def test_validation_metrics_without_early_stopping():
    _, history = _fit(epochs=2)
    assert len(history["val_loss"]) == len(history["val_accuracy"]) == 2 and "early_stopping" not in history


@pytest.mark.parametrize("rule, kw, error, match", [
    (RULE, {"validation": None}, ValueError, "needs a validation set"),
    (fnn.EarlyStopping(monitor="test_loss"), {}, ValueError, "monitor must be one of"),
    (fnn.EarlyStopping(patience=0), {}, ValueError, "patience must be a positive int"),
    (fnn.EarlyStopping(min_delta=-1.0), {}, ValueError, "min_delta must be a finite number >= 0"),
    (fnn.EarlyStopping(restore_best="yes"), {}, TypeError, "restore_best must be True or False"),
    ({"patience": 3}, {}, TypeError, "early_stopping must be an fnn.EarlyStopping"),
    (RULE, {"validation": (VAL[0][:, :2], VAL[1])}, ValueError, "validation:"),
])
def test_bad_rules_and_a_missing_validation_set_are_refused(rule, kw, error, match):
    with pytest.raises(error, match=match):
        fnn.fit(NET, scaled_params(NET), TRAIN, epochs=1, early_stopping=rule, **{"validation": VAL, **KW, **kw})


def test_val_accuracy_needs_a_classification_net():
    net = fnn.mlp([4, 1], output="identity")  # one output and mse: a regression, accuracy is None
    x, y = blobs(8)
    target = y[:, None].astype(np.float64)
    with pytest.raises(ValueError, match="needs a classification net"):
        fnn.fit(net, scaled_params(net), (x, target), validation=(x, target), loss="mse", epochs=1, batch_size=4,
                early_stopping=fnn.EarlyStopping(monitor="val_accuracy"), key=jax.random.key(0), progress=False)
