"""Tests for fnn/cli_use.py: ``fnn evaluate``, ``fnn predict`` and ``fnn export`` on run folders of ``fnn train``.

Two tiny runs are trained once per module through ``fnn.cli.main`` in-process (iris with early stopping, so the
params come from best.safetensors, and a small regression); every test then uses them. The references are
computed independently of the commands: the run's test split as ``fnn train`` builds it (``load_run_data`` with
the standardization fitted there), ``fnn.evaluate`` and ``Run.predict`` on the raw rows read by ``fnn.tabular``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import fnn
from fnn import cli, cli_use
from fnn.cli_data import load_run_data
from fnn.run import load_run
from fnn.tabular import read_csv

IRIS = Path(__file__).resolve().parents[1] / "examples" / "data" / "iris.csv"
SMALL = ["--hidden", "8", "--no-progress"]
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fnn {command}: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("use") / "iris"
    assert cli.main(["train", "--data", str(IRIS), "--target", "species", "--epochs", "6", "--val-fraction", "0.2",
                     "--patience", "3", "--lr", "0.3", "--out", str(out), *SMALL]) == 0
    assert (out / "best.safetensors").is_file()
    return out


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 60))
    y = 2 * a - b + 0.1 * rng.normal(size=60)
    data = folder / "reg.csv"
    data.write_text("a,b,y\n" + "".join(f"{u:.6f},{v:.6f},{w:.6f}\n" for u, v, w in zip(a, b, y, strict=True)))
    out = folder / "run"
    assert cli.main(["train", "--data", str(data), "--epochs", "4", "--batch-size", "16", "--out", str(out),
                     *SMALL]) == 0
    return out, data


def _reference_test_set(run):
    """The run's test split, standardized, exactly as ``fnn train`` built it."""
    return load_run_data(json.loads((run.folder / "config.json").read_text()), "--data").test


# --- fnn evaluate -------------------------------------------------------------------------------------------

def test_evaluate_on_the_runs_test_set(iris_run, capsys):
    assert cli.main(["evaluate", str(iris_run)]) == 0
    out = capsys.readouterr().out
    run = load_run(iris_run)
    assert run.weights.name == "best.safetensors" and f"params of epoch {run.epoch} from {run.weights}" in out
    x, y = _reference_test_set(run)
    ref = fnn.evaluate(run.net, run.params, x, y, run.loss)
    assert f"loss sparse_categorical_cross_entropy: {ref['loss']:.6g}\n" in out
    assert f"\naccuracy: {ref['accuracy']:.4f}\n" in out
    assert f"data: the run's test set ({IRIS}), {x.shape[0]} examples" in out
    table = out.split("predicted class):\n")[1].splitlines()[:4]
    assert table[0].split() == ["true", "\\", "predicted", "setosa", "versicolor", "virginica"]
    assert [r.split()[0] for r in table[1:]] == ["setosa", "versicolor", "virginica"]
    matrix = np.array([[int(v) for v in r.split()[1:]] for r in table[1:]])
    pred = np.asarray(run.net.apply(run.params, x)).argmax(-1)
    np.testing.assert_array_equal(matrix, [[np.sum((y == i) & (pred == j)) for j in range(3)] for i in range(3)])
    assert len({len(r) for r in table}) == 1  # aligned
    assert (iris_run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"confusion matrix plot: {iris_run / 'confusion.png'}" in out


def test_evaluate_new_csv_and_an_unknown_class(iris_run, tmp_path, capsys):
    rows = IRIS.read_text().splitlines()
    subset = tmp_path / "subset.csv"  # other column order, an extra column, rows of every class
    header = rows[0].split(",")
    picked = [r.split(",") for r in rows[1::5]]
    order = ["species", "note", *reversed(FEATURES)]
    subset.write_text(",".join(order) + "\n" + "".join(
        ",".join(r[header.index(c)] if c in header else "x" for c in order) + "\n" for r in picked))
    plot = tmp_path / "plots" / "c.png"
    assert cli.main(["evaluate", str(iris_run), "--data", str(subset), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    run = load_run(iris_run)
    table = read_csv(IRIS, target="species")
    x, y = table.x[::5], table.y[::5]
    ref = fnn.evaluate(run.net, run.params, run.preprocessing.transform(x), y, run.loss)
    assert f"\naccuracy: {ref['accuracy']:.4f}\n" in out and f"{len(picked)} examples" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"

    bad = tmp_path / "bad.csv"
    bad.write_text(rows[0] + "\n" + rows[1] + "\n" + rows[2].rsplit(",", 1)[0] + ",rose\n")
    assert cli.main(["evaluate", str(iris_run), "--data", str(bad)]) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert f"{bad}: line 3, column 'species': class 'rose' is not among the known classes" in line


def test_evaluate_npz_takes_its_test_arrays(iris_run, tmp_path, capsys):
    table = read_csv(IRIS, target="species")
    path = tmp_path / "iris.npz"
    np.savez(path, x=table.x[:100], y=table.y[:100], x_test=table.x[100:], y_test=table.y[100:])
    assert cli.main(["evaluate", str(iris_run), "--data", str(path)]) == 0
    out = capsys.readouterr().out
    run = load_run(iris_run)
    ref = fnn.evaluate(run.net, run.params, run.preprocessing.transform(table.x[100:]), table.y[100:], run.loss)
    assert "(x_test/y_test), 50 examples" in out and f"\naccuracy: {ref['accuracy']:.4f}\n" in out


def test_evaluate_says_when_the_runs_data_are_gone_or_changed(iris_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(iris_run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "data_file": str(tmp_path / "gone.csv")}))
    assert cli.main(["evaluate", str(copy)]) == 74
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert f"{tmp_path / 'gone.csv'}: the run's training data are gone" in line and "--data PATH" in line
    (copy / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "sha256": "0" * 64}}))
    assert cli.main(["evaluate", str(copy)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("fnn evaluate: warning: ") and "its test split is not the run's" in err

def test_evaluate_without_matplotlib_skips_the_plot(iris_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["evaluate", str(iris_run), "--plot", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == cli.PLOT_SKIPPED
    assert not (tmp_path / "c.png").exists()


# --- fnn predict --------------------------------------------------------------------------------------------

def test_predict_csv_ignores_the_target_and_keeps_the_order(iris_run, tmp_path, capsys):
    preds = tmp_path / "preds.csv"
    assert cli.main(["predict", str(iris_run), str(IRIS), "--out", str(preds)]) == 0
    assert f"wrote 150 predictions to {preds}" in capsys.readouterr().out
    run = load_run(iris_run)
    classes = run.preprocessing.classes
    with preds.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", *(f"p_{c}" for c in classes)] and len(rows) == 151
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]], np.float32)
    expected = run.predict(read_csv(IRIS, target="species").x)
    np.testing.assert_array_equal(probs, expected)  # repr round-trips exactly
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [r[0] for r in rows[1:]] == [classes[i] for i in expected.argmax(axis=1)]

    assert cli.main(["predict", str(iris_run), str(IRIS)]) == 0  # no --out: the same CSV on stdout
    assert capsys.readouterr().out == preds.read_text()


def test_predict_npz_and_logits_get_a_softmax(iris_run, tmp_path, capsys):
    x = read_csv(IRIS, target="species").x[::7]
    path = tmp_path / "x.npz"
    np.savez(path, x=x)
    assert cli.main(["predict", str(iris_run), str(path)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    run = load_run(iris_run)
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], np.float64).astype(np.float32),
                                  run.predict(x))
    logits = run._replace(net=fnn.mlp([4, 8, 3], output="identity"))  # the same params, no softmax
    probs = cli_use.probabilities(logits, logits.predict(x))
    np.testing.assert_allclose(probs, run.predict(x), atol=1e-6)


def test_predict_input_that_does_not_fit(iris_run, tmp_path, capsys):
    missing = tmp_path / "three.csv"
    missing.write_text("sepal_length_cm,sepal_width_cm,petal_length_cm\n5.1,3.5,1.4\n")
    assert cli.main(["predict", str(iris_run), str(missing)]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "no column 'petal_width_cm' for the features" in line and str(missing) in line
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.zeros((5, 3), np.float32))
    assert cli.main(["predict", str(iris_run), str(wide)]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "expected examples of shape (4,) (4 features: sepal_length_cm," in line
    assert "got an array of shape (5, 3)" in line and str(wide) in line
    assert cli.main(["predict", str(iris_run), str(tmp_path / "nothing.csv")]) == 74
    assert "No such file or directory" in one_error_line(capsys.readouterr().err, "predict")


# --- regression ---------------------------------------------------------------------------------------------

def test_regression_run_reports_mse_and_predicts_values(reg_run, tmp_path, capsys):
    folder, data = reg_run
    config = json.loads((folder / "config.json").read_text())
    run = load_run(folder)
    assert (config["loss"], config["output"], run.preprocessing.task) == ("mse", "identity", "regression")
    capsys.readouterr()
    assert cli.main(["evaluate", str(folder)]) == 0
    out = capsys.readouterr().out
    x, y = _reference_test_set(run)
    pred = np.asarray(run.net.apply(run.params, x))[:, 0].astype(np.float64)
    ref = fnn.evaluate(run.net, run.params, x, y.reshape(-1, 1), run.loss)
    assert f"loss mse: {ref['loss']:.6g}\n" in out
    assert f"\nmse: {np.mean((pred - y) ** 2):.6g}\n" in out and f"\nmae: {np.mean(np.abs(pred - y)):.6g}" in out
    assert "accuracy" not in out and "confusion" not in out

    assert cli.main(["predict", str(folder), str(data), "--out", str(tmp_path / "y.csv")]) == 0
    rows = list(csv.reader((tmp_path / "y.csv").open()))
    assert rows[0] == ["y"] and len(rows) == 61
    values = np.array([float(r[0]) for r in rows[1:]], np.float32)
    np.testing.assert_array_equal(values, run.predict(read_csv(data, task="regression").x)[:, 0])


# --- fnn export ---------------------------------------------------------------------------------------------

def test_export_runs_on_raw_features_in_onnxruntime(iris_run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    assert cli.main(["export", str(iris_run), "--onnx", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {path}: params of epoch ")
    assert "input  x: float32 (batch, 4): raw sepal_length_cm" in out
    assert "output y: float32 (batch, 3): softmax probabilities of setosa, versicolor, virginica" in out
    x = read_csv(IRIS, target="species").x
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, load_run(iris_run).predict(x), rtol=0, atol=1e-5)


def test_export_needs_onnx_and_the_option(iris_run, tmp_path, capsys, monkeypatch):
    assert cli.main(["export", str(iris_run)]) == 2
    assert "the following arguments are required: --onnx" in one_error_line(capsys.readouterr().err, "export")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert cli.main(["export", str(iris_run), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'fnn[export]'" in one_error_line(capsys.readouterr().err, "export")
    assert not (tmp_path / "m.onnx").exists()


# --- run folders that are not ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["evaluate"], ["predict", str(IRIS)], ["export", "--onnx", "m.onnx"]])
def test_not_a_run_folder_is_bad_input(command, tmp_path, capsys):
    argv = [command[0], str(tmp_path), *command[1:]]
    assert cli.main(argv) == 2
    line = one_error_line(capsys.readouterr().err, command[0])
    assert re.search(rf"{re.escape(str(tmp_path))} is not a run folder: it has no config.json", line)
    (tmp_path / "config.json").write_text('{"loss": "mse"}')
    assert cli.main(argv) == 2
    assert "preprocessing.json not found" in one_error_line(capsys.readouterr().err, command[0])
