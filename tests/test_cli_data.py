"""``fnn train`` on the user's own data (fnn/cli_data.py): CSV and NPZ files, the keyed test and validation
splits, the saved input transform, regression detection, ``--patience``, ``--schedule`` and their resume, and
the one-line errors (exit 2) for bad files and bad combinations of options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import fnn
from fnn import cli
from fnn.run import load_run

IRIS = Path(__file__).resolve().parents[1] / "examples" / "data" / "iris.csv"
SMALL = ["--hidden", "8", "--no-progress", "--epochs", "3"]


def train(tmp_path, *argv, name="run"):
    out = tmp_path / name
    return cli.main(["train", *argv, *SMALL, "--out", str(out)]), out


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fnn train: error: ") and "Traceback" not in err, err
    return lines[0]


def test_a_csv_trains_and_its_transform_and_classes_are_saved(tmp_path, capsys):
    code, out = train(tmp_path, "--data", str(IRIS), "--target", "species", "--val-fraction", "0.25")
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "data: iris, 90 train / 30 validation / 30 test examples, 4 features, 3 classes" in stdout
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["classes"] == ["setosa", "versicolor", "virginica"] and prep["target"] == "species"
    assert prep["features"] == ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
    # The saved statistics are those of the 90 training rows, exactly (float32 bits survive the JSON).
    table = fnn.tabular.read_csv(IRIS, target="species")
    key = jax.random.fold_in(jax.random.key(0), 1)
    (x, y), _ = fnn.train_test_split(table.x, table.y, test_fraction=0.2, key=key)
    (x, _), _ = fnn.train_test_split(x, y, test_fraction=0.25,
                                     key=jax.random.fold_in(jax.random.key(0), 2))
    s = fnn.data.fit_standardizer(x)
    run = load_run(out)
    np.testing.assert_array_equal(run.preprocessing.standardizer.mean, s.mean)
    np.testing.assert_array_equal(run.preprocessing.standardizer.std, s.std)
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_loss"]) == 3


def test_features_choose_and_order_the_columns(tmp_path, capsys):
    code, out = train(tmp_path, "--data", str(IRIS), "--features", "petal_width_cm,petal_length_cm")
    assert code == 0, capsys.readouterr().err
    assert load_run(out).preprocessing.features == ("petal_width_cm", "petal_length_cm")
    assert load_run(out).net.input_shape == (2,)


def test_a_numeric_target_with_fractions_is_a_regression_with_mse(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 60))
    path = tmp_path / "reg.csv"
    rows = (f"{float(u)!r},{float(v)!r},{2 * u - v + 0.5:.6f}\n" for u, v in zip(a, b, strict=True))
    path.write_text("a,b,y\n" + "".join(rows))
    code, out = train(tmp_path, "--data", str(path))
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "1 regression target(s)" in stdout and "loss mse" in stdout and "-> identity" in stdout
    assert stdout.strip().splitlines()[-1].startswith("test mse: ")
    assert load_run(out).preprocessing.task == "regression"
    code, _ = train(tmp_path, "--data", str(path), "--loss", "softmax_cross_entropy", name="ce")
    assert code == 2 and "is a classification loss" in one_error_line(capsys.readouterr().err)


def test_an_npz_with_its_own_test_set(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x[:60], y=y[:60], x_test=x[60:], y_test=y[60:])
    code, _ = train(tmp_path, "--data", str(tmp_path / "d.npz"))
    assert code == 0, capsys.readouterr().err
    assert "60 train / 20 test examples, 5 features, 2 classes" in capsys.readouterr().out


def _interrupted_after(monkeypatch, epochs: int):
    """``fnn.fit`` as the CLI calls it, with a Ctrl-C after ``epochs`` epochs."""
    real_fit = fnn.fit

    def interrupted_fit(*args, callback, **kwargs):
        def press_ctrl_c(epoch, history):
            callback(epoch, history)
            if epoch == epochs:
                raise KeyboardInterrupt

        return real_fit(*args, callback=press_ctrl_c, **kwargs)

    monkeypatch.setattr(fnn, "fit", interrupted_fit)
    return real_fit


def test_patience_stops_early_keeps_best_and_an_interrupted_run_resumes_to_the_same_stop(tmp_path, capsys,
                                                                                        monkeypatch):
    argv = ["--data", str(IRIS), "--val-fraction", "0.2", "--patience", "2", "--schedule", "cosine",
            "--lr", "0.5", "--batch-size", "8", "--hidden", "64", "--no-progress", "--epochs", "60"]
    assert cli.main(["train", *argv, "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    record = history["early_stopping"]
    assert record["stopped_epoch"] == len(history["epoch"]) < 60 and "early stopping: stopped after" in stdout
    best = fnn.checkpoint.load(tmp_path / "a" / "best.safetensors")
    assert best.metadata["epoch"] == record["best_epoch"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["schedule"] == "cosine" and config["schedule_epochs"] == 60 and config["patience"] == 2
    # The same run, interrupted after its first epoch and resumed: the same stop and the same best params.
    real_fit = _interrupted_after(monkeypatch, 1)
    assert cli.main(["train", *argv, "--out", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(fnn, "fit", real_fit)
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "--no-progress"]) == 0
    capsys.readouterr()
    resumed = json.loads((tmp_path / "b" / "history.json").read_text())
    assert resumed["early_stopping"] == record and resumed["val_loss"] == history["val_loss"]
    again = fnn.checkpoint.load(tmp_path / "b" / "best.safetensors")
    for la, lb in zip(best.params, again.params, strict=True):
        np.testing.assert_array_equal(la["w"], lb["w"])
        np.testing.assert_array_equal(la["b"], lb["b"])


def test_resume_with_a_schedule_equals_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    argv = ["--data", str(IRIS), "--schedule", "step", "--optimizer", "adam", "--hidden", "8", "--no-progress",
            "--epochs", "4"]
    assert cli.main(["train", *argv, "--out", str(tmp_path / "a")]) == 0
    real_fit = _interrupted_after(monkeypatch, 2)
    assert cli.main(["train", *argv, "--out", str(tmp_path / "b")]) == 130
    monkeypatch.setattr(fnn, "fit", real_fit)
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "--no-progress"]) == 0
    capsys.readouterr()
    a = fnn.checkpoint.load(tmp_path / "a" / "checkpoint.safetensors")
    b = fnn.checkpoint.load(tmp_path / "b" / "checkpoint.safetensors")
    assert a.metadata["history"]["train_loss"] == b.metadata["history"]["train_loss"]
    for la, lb in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(la["w"], lb["w"])
        np.testing.assert_array_equal(la["b"], lb["b"])
    for sa, sb in zip(a.opt_state, b.opt_state, strict=True):  # adam's moments and the schedule's step count
        np.testing.assert_array_equal(sa, sb)


def _bad_csv(tmp_path, text, name="bad.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("a,b,y\n1,2,u\n3,,v\n", r"bad\.csv: line 3, column 'b': missing value"),
    ("a,b,y\n1,2,u\n3,x,v\n", r"line 3, column 'b': expected a number, got 'x'"),
    ("a,b,y\n1,2,u\n3,4\n", r"line 3: expected 3 columns"),
    ("", r"line 1: empty file"),
    ("a,b,y\n1,2,u\n3,4,u\n", r"fewer than two classes"),
])
def test_bad_csv_files_exit_2_naming_file_line_and_column(tmp_path, capsys, text, expected):
    code, _ = train(tmp_path, "--data", _bad_csv(tmp_path, text))
    assert code == 2
    assert re.search(expected, one_error_line(capsys.readouterr().err))


@pytest.mark.parametrize("argv, expected", [
    (["--data", str(IRIS), "--target", "specis"], r"no column 'specis' for the target.*Did you mean 'species'"),
    (["--data", str(IRIS), "--dataset", "digits"], r"do not combine it with --dataset"),
    (["--target", "species"], r"describe a file given with --data"),
    (["--data", str(IRIS), "--patience", "3"], r"needs a validation set: add --val-fraction"),
    (["--data", str(IRIS), "--val-fraction", "1.5"], r"expected a fraction in \[0, 1\)"),
    (["--data", str(IRIS), "--schedule", "linear"], r"invalid choice: 'linear'"),
    (["--data", str(IRIS), "--task", "regression"], r"line 2, column 'species': expected a number, got 'setosa'"),
])
def test_bad_option_combinations_exit_2_with_one_line(tmp_path, capsys, argv, expected):
    code, _ = train(tmp_path, *argv)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and re.search(expected, err), err
