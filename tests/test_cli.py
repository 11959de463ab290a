"""Tests for fnn/cli.py (the ``fnn`` command) and fnn/plot.py.

One real subprocess run of ``python -m fnn train`` (the console entry point end to end); everything else calls
``fnn.cli.main`` in-process, which returns the exit code instead of exiting.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fnn
from fnn import cli

SMALL = ["--hidden", "16", "--no-progress"]  # a small network keeps the in-process runs to a few seconds


def test_train_then_resume(tmp_path, capsys):
    """``python -m fnn train --epochs 3 --out DIR`` in a subprocess (progress bar on), then ``--resume DIR`` to 5."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fnn", "train", "--epochs", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", proc.stdout.strip().splitlines()[-1]), proc.stdout
    assert "fit" in proc.stderr  # the tqdm bar goes to stderr, so stdout's last line stays the accuracy
    for name in ("checkpoint.safetensors", "history.json", "config.json", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    assert len(history["train_loss"]) == len(history["test_accuracy"]) == 3
    assert history["test_accuracy"][-1] > 0.9  # digits, 3 epochs of the default network
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3 and config["dataset"] == "digits" and config["hidden"] == [128]
    assert config["output"] == "softmax" and config["network"]["sizes"] == [64, 128, 10]

    assert cli.main(["train", "--resume", str(out), "--epochs", "5", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "epochs 4-5" in stdout
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", stdout.strip().splitlines()[-1])
    resumed = json.loads((out / "history.json").read_text())
    assert resumed["epoch"] == [1, 2, 3, 4, 5]
    assert resumed["train_loss"][:3] == history["train_loss"]  # the first three epochs are the saved ones
    assert json.loads((out / "config.json").read_text())["epochs"] == 5


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder as far as the option checks look: config.json and a checkpoint file."""
    run = tmp_path / "fake-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**cli.TRAIN_DEFAULTS, "output": "softmax"}))
    (run / "checkpoint.safetensors").write_bytes(b"")
    return run


def test_resume_refuses_changed_settings(fake_run, capsys):
    assert cli.main(["train", "--resume", str(fake_run), "--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lr" in err and "--epochs" in err and len(err.splitlines()) == 1
    assert cli.main(["train", "--resume", str(fake_run), "--out", "elsewhere"]) == 2


def test_out_refuses_an_existing_run(fake_run, capsys):
    assert cli.main(["train", "--out", str(fake_run)]) == 2
    assert f"--resume {fake_run}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--hidden", "0"], "--hidden"),
        (["--hidden", "12,x"], "--hidden"),
        (["--optimizer", "adamm"], "Did you mean 'adam'?"),
        (["--dataset", "mnist"], "--data-dir"),
        (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fnn-data"], "/nonexistent/fnn-data"),
        (["--dataset", "digitz"], "Did you mean 'digits'?"),
        (["--activation", "rleu"], "Did you mean 'relu'?"),
        (["--loss", "mse", "--output", "sofmax"], "Did you mean 'softmax'?"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--grads", "magic"], "--grads"),
        (["--batch-size", "100000"], "larger than the training set"),
        (["--resume", "/nonexistent/fnn-run"], "config.json"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error:" in err and expected in err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "runs").exists()  # nothing is written before the options are known to be good


def test_interrupt_exits_130_and_can_be_resumed(tmp_path, capsys, monkeypatch):
    real_fit = fnn.fit

    def interrupted_fit(*args, callback, **kwargs):
        def press_ctrl_c(epoch, history):
            callback(epoch, history)
            raise KeyboardInterrupt

        return real_fit(*args, callback=press_ctrl_c, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(fnn, "fit", interrupted_fit)
    assert cli.main(["train", *SMALL, "--epochs", "3", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"fnn train --resume {out}" in err
    assert json.loads((out / "history.json").read_text())["epoch"] == [1]
    monkeypatch.setattr(fnn, "fit", real_fit)
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2]


def test_divergence_exits_1_with_the_message(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL, "--lr", "1e4", "--epochs", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "diverged" in err and "smaller learning rate" in err
    assert "diverged" in json.loads((out / "history.json").read_text())


def test_gradcheck_prints_the_table(capsys):
    assert cli.main(["gradcheck", "--sizes", "4,8,3", "--activation", "tanh", "--output", "softmax",
                     "--loss", "categorical_cross_entropy", "--batch", "5", "--dtype", "float64", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "manual~autodiff" in out and "manual~fd" in out and "autodiff~fd" in out
    assert out.strip().splitlines()[-1] == "result: OK"


def test_gradcheck_all_restricted_to_one_activation(capsys):
    assert cli.main(["gradcheck", "--all", "--activation", "sigmoid", "--loss", "binary_cross_entropy"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"sigmoid\s+binary_cross_entropy\s+sigmoid\s+\S+\s+\S+\s+ok", lines[-2])
    assert lines[-1].startswith("1/1 pairs ok")


def test_gradcheck_bad_arguments(capsys):
    assert cli.main(["gradcheck", "--sizes", "4"]) == 2
    assert cli.main(["gradcheck", "--loss", "msee"]) == 2
    assert "Did you mean 'mse'?" in capsys.readouterr().err


def test_natural_output():
    assert [cli.natural_output(n) for n in ("softmax_cross_entropy", "binary_cross_entropy",
                                            "sparse_categorical_cross_entropy", "mse")] == [
        "identity", "sigmoid", "softmax", None]


def test_help_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli.main(["trian"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bench_without_the_module(monkeypatch, capsys):
    monkeypatch.delattr(fnn, "bench", raising=False)
    monkeypatch.setitem(sys.modules, "fnn.bench", None)
    assert cli.main(["bench"]) == 2
    assert "fnn bench" in capsys.readouterr().err


# --- fnn/plot.py --------------------------------------------------------------------------------------------

HISTORY = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "test_loss": [0.9, 0.6, 0.5],
           "test_accuracy": [0.7, 0.8, 0.85]}


def test_plot_history_writes_a_png(tmp_path):
    from fnn.plot import plot_history

    path = plot_history(HISTORY, tmp_path / "curves.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_history({**HISTORY, "diverged": {"epoch": 4}}, tmp_path / "diverged.png")
    plot_history({"epoch": [], "train_loss": []}, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="train_loss"):
        plot_history({"epoch": [1], "train_loss": []}, tmp_path / "bad.png")


def test_missing_matplotlib_skips_the_plot(tmp_path, monkeypatch, capsys):
    from fnn.plot import plot_history

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'fnn\[plot\]'"):
        plot_history(HISTORY, tmp_path / "curves.png")
    cli._write_history(tmp_path, HISTORY, "t")
    assert capsys.readouterr().out.strip() == cli.PLOT_SKIPPED
    assert (tmp_path / "history.json").is_file() and not (tmp_path / "curves.png").exists()


def test_devices_more_than_exist_is_a_one_line_error(tmp_path, capsys):
    n = len(__import__("jax").devices()) + 1
    code = cli.main(["train", "--devices", str(n), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fnn: error:") and f"devices={n}" in err and "xla_force_host_platform_device_count" in err


def test_train_on_two_forced_host_devices(tmp_path):
    env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, "-m", "fnn", "train", "--devices", "2", "--epochs", "2", "--no-progress", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", out.stdout.strip().splitlines()[-1])
