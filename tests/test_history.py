"""Tests for fnn/_history.py's progress bar: its postfix says train or test, and its rate and ETA never count
the run's first epoch, which compiles the program."""

from __future__ import annotations

import re

import jax
import pytest
import tqdm.std
from conftest import SPARSE_CE, blobs, classifier, scaled_params

import fnn
from fnn._history import progress_bar, show_epoch


def test_fit_progress_bar_says_train_loss_and_test_accuracy(capsys):
    net = classifier()
    fnn.fit(net, scaled_params(net), blobs(16), blobs(8, seed=1), loss=SPARSE_CE, epochs=2, batch_size=4,
            key=jax.random.key(0), progress=True)
    err = capsys.readouterr().err
    assert re.search(r"2/2 .*train_loss=\d\.\d{4}, test_acc=\d\.\d{4}", err), err
    assert not re.search(r"[ ,]loss=|[ ,]acc=", err), err  # the old keys did not say train or test


def test_fit_ensemble_progress_bar_without_test_set_shows_train_loss_only(capsys):
    net = classifier()
    stacked = jax.vmap(lambda k: scaled_params(net))(jax.random.split(jax.random.key(0), 2))
    fnn.fit_ensemble(net, stacked, blobs(16), loss=SPARSE_CE, epochs=2, batch_size=4, progress=True,
                     keys=jax.random.split(jax.random.key(1), 2))
    err = capsys.readouterr().err
    assert "fit_ensemble" in err and "train_loss=" in err and "test_acc" not in err


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock, set by hand: ``clock[0]`` seconds."""
    now = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return now


@pytest.mark.parametrize("initial", [0, 2], ids=["new run", "resumed at epoch 2"])
def test_eta_does_not_count_the_compiling_epoch(clock, capsys, initial):
    """A 60 s first epoch (compilation) then 1 s epochs: the ETA is 1 s per remaining epoch, never 60."""
    bar = progress_bar(True, total=initial + 5, initial=initial)
    history = {"train_loss": [], "test_accuracy": []}
    for t in (60.0, 61.0, 62.0):
        clock[0] = t
        history["train_loss"].append(0.5)
        history["test_accuracy"].append(0.9)
        show_epoch(bar, history)
    bar.close()
    err = capsys.readouterr().err
    assert "s/epoch" not in err and "01:00" not in err and "04:00" not in err, err  # the compiling epoch's pace
    assert f"{initial + 1}/{initial + 5} [00:00<?, ?epoch/s" in err  # no rate after the compiling epoch alone
    assert f"{initial + 3}/{initial + 5} [00:02<00:02,  1.00epoch/s" in err, err  # 2 epochs left at 1 s each
