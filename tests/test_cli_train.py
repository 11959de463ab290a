"""Tests for fnn/cli_train.py (``fnn train``) and the plot it writes (fnn/plot.py).

One real subprocess run of ``python -m fnn train`` (the console entry point end to end) and one process started
with two forced host devices; everything else calls ``fnn.cli.main`` in-process, which returns the exit code
instead of exiting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import fnn
from fnn import cli, cli_train

SMALL = ["--hidden", "16", "--no-progress"]  # a small network keeps the in-process runs to a few seconds


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fnn train: error: ") and "Traceback" not in err, err
    return lines[0]


def test_train_then_resume(tmp_path, capsys):
    """``python -m fnn train --epochs 3 --out DIR`` in a subprocess (progress bar on), then ``--resume DIR`` to 5;
    then copies of the finished run folder with a bad config.json or checkpoint are refused with 2."""
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

    def broken_copy(name: str, edit) -> Path:
        copy = tmp_path / name
        shutil.copytree(out, copy)
        edit(copy)
        return copy

    def set_config(key, value):
        def edit(folder):
            path = folder / "config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
        return edit

    cases = {
        "lr": (set_config("lr", 0.5), "other training settings .*lr: checkpoint 0.1, config.json 0.5"),
        "hidden": (set_config("hidden", [64]), "does not match the given network"),
        "corrupt": (lambda f: (f / "checkpoint.safetensors").write_bytes(b"junk" * 10), "not a valid fnn checkpoint"),
        "bad_type": (set_config("epochs", "ten"), r"config.json: epochs must be a positive integer, got 'ten'"),
        "not_json": (lambda f: (f / "config.json").write_text("{"), "config.json is not valid JSON"),
        "not_a_dict": (lambda f: (f / "config.json").write_text("[]"), "must hold a JSON object"),
    }
    for name, (edit, expected) in cases.items():
        copy = broken_copy(name, edit)
        before = (copy / "checkpoint.safetensors").read_bytes()
        assert cli.main(["train", "--resume", str(copy), "--epochs", "6", "--no-progress"]) == 2, name
        assert re.search(expected, one_error_line(capsys.readouterr().err)), name
        assert (copy / "checkpoint.safetensors").read_bytes() == before  # nothing was overwritten


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder as far as the option checks look: config.json and a checkpoint file."""
    run = tmp_path / "fake-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**cli_train.TRAIN_DEFAULTS, "output": "softmax"}))
    (run / "checkpoint.safetensors").write_bytes(b"")
    return run


def test_resume_refuses_changed_settings(fake_run, capsys):
    assert cli.main(["train", "--resume", str(fake_run), "--lr", "0.5"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--lr" in line and "--epochs" in line
    assert cli.main(["train", "--resume", str(fake_run), "--out", "elsewhere"]) == 2
    one_error_line(capsys.readouterr().err)


def test_out_refuses_an_existing_run(fake_run, capsys):
    assert cli.main(["train", "--out", str(fake_run)]) == 2
    assert f"--resume {fake_run}" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--hidden", "0"], "--hidden"),
        (["--hidden", "12,x"], "--hidden"),
        (["--optimizer", "adamm"], "--optimizer: Unknown optimizer 'adamm'. Did you mean 'adam'?"),
        (["--dataset", "mnist"], "--data-dir"),
        (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fnn-data"], "/nonexistent/fnn-data"),
        (["--dataset", "digitz"], "Did you mean 'digits'?"),
        (["--activation", "rleu"], "--activation: Unknown activation 'rleu'. Did you mean 'relu'?"),
        (["--loss", "mse", "--output", "sofmax"], "--output: Unknown activation 'sofmax'. Did you mean 'softmax'?"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--grads", "magic"], "--grads"),
        (["--seed", str(-2**64)], "--seed must be an integer of at most 63 bits"),
        (["--batch-size", "100000"], "larger than the training set"),
        (["--resume", "/nonexistent/fnn-run"], "config.json"),
        (["--dropout", "1.0"], "--dropout must be a rate in [0, 1)"),
        (["--dropout", "-0.1"], "--dropout must be a rate in [0, 1)"),
        (["--dropout", "nan"], "--dropout must be a rate in [0, 1)"),
        (["--l2=-1e-4"], "--l2 must be a finite number >= 0"),
        (["--l2", "inf"], "--l2 must be a finite number >= 0"),
        (["--l1", "-1"], "--l1 must be a finite number >= 0"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *argv]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()  # nothing is written before the options are known to be good


def test_a_malformed_data_file_is_bad_input_2(tmp_path, capsys):
    """A corrupt IDX file is the user's data (exit 2), not a bug: the message names the file."""
    data = tmp_path / "mnist"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(b"\0\0\x08\x01\0\0\0\x05abc")  # says 5 bytes, holds 3
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "r")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train-images-idx3-ubyte" in line and "truncated" in line
    assert not (tmp_path / "r").exists()


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
    line = one_error_line(capsys.readouterr().err)
    assert "interrupted after 1 epoch" in line and f"fnn train --resume {out}" in line
    assert json.loads((out / "history.json").read_text())["epoch"] == [1]
    monkeypatch.setattr(fnn, "fit", real_fit)
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2]


def test_divergence_exits_1_with_the_message(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL, "--lr", "1e4", "--epochs", "2", "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "diverged" in line and "smaller learning rate" in line
    assert "diverged" in json.loads((out / "history.json").read_text())


def test_devices_more_than_exist_is_a_one_line_error(tmp_path, capsys):
    n = len(jax.devices()) + 1
    code = cli.main(["train", "--devices", str(n), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith("fnn train: error: --devices:") and f"devices={n}" in line
    assert "xla_force_host_platform_device_count" in line
    assert not (tmp_path / "r").exists()


#: ``fnn.cli.main`` on each argv of ``sys.argv[1]`` (JSON) in turn, in one process: its exit code, stdout and stderr.
RUN_EACH = """
import contextlib, io, json, sys
from fnn import cli
runs = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    runs.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(runs))
"""


def test_train_on_two_forced_host_devices(tmp_path):
    """Both runs in one process started with two host devices (each process pays JAX's start and compiles)."""
    common = ["train", "--devices", "2", "--epochs", "2", "--no-progress"]
    argvs = [[*common, "--out", str(tmp_path / "r")], [*common, "--out", str(tmp_path / "odd"), "--batch-size", "33"]]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"}
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ok, odd = json.loads(proc.stdout)
    assert ok["code"] == 0, ok["err"]
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", ok["out"].strip().splitlines()[-1])
    assert odd["code"] == 2
    assert "--batch-size 33 must be divisible by --devices 2" in one_error_line(odd["err"])
    assert not (tmp_path / "odd").exists()


# --- write_history and fnn/plot.py --------------------------------------------------------------------------

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
    cli_train.write_history(tmp_path, HISTORY, "t")
    assert capsys.readouterr().out.strip() == cli_train.PLOT_SKIPPED == cli.PLOT_SKIPPED
    assert json.loads((tmp_path / "history.json").read_text()) == HISTORY
    assert not (tmp_path / "curves.png").exists()


def test_a_network_too_large_for_memory_is_refused_before_init(tmp_path, capsys, monkeypatch):
    """fnn train used to build params with net.init before fit's memory check, so a 4 TB net allocated (and hung)
    there; now it is sized with jax.eval_shape and refused (exit 2) before any allocation or run folder."""
    calls = []
    real_init_jit = jax.jit
    monkeypatch.setattr(jax, "jit", lambda f, *a, **k: calls.append(f) or real_init_jit(f, *a, **k))
    out = tmp_path / "huge"
    code = cli.main(["train", "--hidden", "1000000,1000000", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"--hidden: the network is too large for this machine's memory: its params take 4,000\.\d GB",
                     err), err
    assert not out.exists() and not calls  # nothing compiled, no folder made


def test_dropout_and_l2_train_are_recorded_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--epochs", "1", "--dropout", "0.2", "--l2", "1e-4", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "network: [64, 16, 10] relu -> softmax, dropout 0.2, l2 0.0001," in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["dropout"] == 0.2 and config["l2"] == 1e-4 and config["l1"] == 0
    kinds = [layer["kind"] for layer in config["network"]["layers"]]
    assert kinds == ["Dense", "Dropout", "Dense"] and config["network"]["layers"][1]["rate"] == 0.2
    ckpt = fnn.load(out / "checkpoint.safetensors")
    assert ckpt.net.stochastic and ckpt.metadata["config"]["penalty"] == {"name": "l2", "lam": 1e-4, "leaves": ["w"]}

    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "epoch 2" in capsys.readouterr().out
    assert json.loads((out / "history.json").read_text())["epoch"] == [1, 2]
    assert fnn.load(out / "checkpoint.safetensors").metadata["config"]["penalty"]["lam"] == 1e-4

    for flag, value in (("--dropout", "0.3"), ("--l2", "0.001"), ("--l1", "0.001")):
        assert cli.main(["train", "--resume", str(out), "--epochs", "3", flag, value, "--no-progress"]) == 2
        assert f"{flag} {float(value)!r} differs from the resumed run's" in one_error_line(capsys.readouterr().err)


def test_without_dropout_the_net_is_the_mlp_and_l1_l2_combine():
    net = cli_train.make_net([4, 6, 5, 3], "tanh", "softmax", 0.0)
    assert net.describe() == fnn.mlp([4, 6, 5, 3], hidden="tanh", output="softmax").describe()
    dropped = cli_train.make_net([4, 6, 5, 3], "tanh", "softmax", 0.5)
    assert [layer.kind for layer in dropped.layers] == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    params = net.init(jax.random.key(0))
    assert cli_train.make_penalty({"l1": 0, "l2": 0}) is None
    assert cli_train.make_penalty({"l1": 0, "l2": 0.1}) == fnn.penalties.l2(0.1)
    both = cli_train.make_penalty({"l1": 0.2, "l2": 0.1})
    assert both == fnn.penalties.combine(fnn.penalties.l1(0.2), fnn.penalties.l2(0.1))
    assert float(both.value(params)) > float(fnn.penalties.l2(0.1).value(params)) > 0


def test_norm_batch_trains_saves_the_state_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL, "--epochs", "1", "--norm", "batch", "--out", str(out)]) == 0
    assert "network: [64, 16, 10] relu -> softmax, batch norm," in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["norm"] == "batch"
    assert [layer["kind"] for layer in config["network"]["layers"]] == ["Dense", "BatchNorm", "Activation", "Dense"]
    assert config["network"]["layers"][0]["bias"] is False  # BatchNorm's offset replaces the bias
    ckpt = fnn.load(out / "checkpoint.safetensors")
    assert ckpt.net.stateful and ckpt.state[1]["var"].shape == (16,)  # the running statistics, saved
    assert float(abs(ckpt.state[1]["var"] - 1.0).max()) > 1e-3
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert cli.main(["train", "--resume", str(out), "--epochs", "3", "--norm", "layer", "--no-progress"]) == 2
    assert "--norm 'layer' differs from the resumed run's" in one_error_line(capsys.readouterr().err)


def test_norm_layer_places_layernorm_before_every_hidden_activation():
    net = cli_train.make_net([4, 6, 5, 3], "tanh", "softmax", 0.1, "layer")
    assert [layer.kind for layer in net.layers] == ["Dense", "LayerNorm", "Activation", "Dropout"] * 2 + ["Dense"]
    assert not net.stateful and not net.layers[0].config["bias"]
    cnn = cli_train.make_cnn((8, 8, 1), [16], 10, "relu", "softmax", 0.0, "batch")
    assert [layer.kind for layer in cnn.layers[:4]] == ["Conv2D", "BatchNorm", "Activation", "MaxPool2D"]
    L = fnn.layers  # without --norm: the net of before, layer for layer
    before = fnn.serial(L.Conv2D(32, 3, activation="relu"), L.MaxPool2D(2), L.Conv2D(64, 3, activation="relu"),
                        L.MaxPool2D(2), L.Flatten(), L.Dense(16, activation="relu"), L.Dense(10, activation="softmax"),
                        input_shape=(8, 8, 1))
    assert cli_train.make_cnn((8, 8, 1), [16], 10, "relu", "softmax", 0.0).describe() == before.describe()
