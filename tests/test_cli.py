"""Tests for fnn/cli.py: the exit-code table (every code), the one error prefix, FNN_TRACEBACK, and ``fnn bench``.

Everything calls ``fnn.cli.main`` in-process, which returns the exit code instead of exiting; the sub-commands'
own behaviour is tested in tests/test_cli_train.py and tests/test_cli_gradcheck.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import fnn
from fnn import cli

ROOT = Path(__file__).resolve().parents[1]
#: Fast arguments for a train run that fails before anything is compiled, or trains one tiny epoch.
TINY = ["--dataset", "iris", "--hidden", "4", "--epochs", "1", "--no-progress"]


def one_error_line(err: str, command: str | None) -> str:
    """The single line of stderr, checked to carry the one prefix and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = "fnn: error: " if command is None else f"fnn {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_exit_code_table_is_the_same_in_the_docstring_and_the_readme():
    def codes(text: str) -> list[int]:
        return [int(c) for c in re.findall(r"^\|?\s*`?(\d+)`?\s+(?:\||\s)", text, flags=re.M)]

    doc = cli.__doc__.split("Exit codes")[1]
    readme = (ROOT / "README.md").read_text().split("## The `fnn` command")[1].split("\n## ")[0]
    assert codes(doc) == codes(readme) == [0, 1, 2, 70, 74, 130]
    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_INTERNAL, cli.EXIT_OS,
            cli.EXIT_INTERRUPTED) == (0, 1, 2, 70, 74, 130)


# --- 0 and 2: help, version, usage errors ------------------------------------------------------------------

def test_help_version_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fnn {fnn.__version__}"
    assert cli.main(["trian"]) == 2
    assert "invalid choice: 'trian'" in one_error_line(capsys.readouterr().err, None)
    assert cli.main([]) == 2
    one_error_line(capsys.readouterr().err, None)


@pytest.mark.parametrize(
    "argv, command, expected",
    [
        (["train", "--epochs", "0"], "train", "--epochs"),  # argparse
        (["train", "--optimizer", "adamm"], "train", "Did you mean 'adam'?"),  # fnn's validation, at the flag
        (["train", "--seed", str(2**70)], "train", "--seed must be an integer of at most 63 bits"),
        (["gradcheck", "--sizes", "4"], "gradcheck", "--sizes"),
        (["gradcheck", "--batch", "x"], "gradcheck", "--batch"),
    ],
)
def test_bad_arguments_exit_2_with_one_prefixed_line(argv, command, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert expected in one_error_line(capsys.readouterr().err, command)
    assert not (tmp_path / "runs").exists()


# --- 70: internal errors -----------------------------------------------------------------------------------

def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("where", ["data.fit_standardizer", "fit"])
def test_an_internal_value_error_is_70_with_the_hint_and_no_traceback(where, tmp_path, capsys, monkeypatch):
    """A ValueError deep inside fnn is a bug, not a bad argument (it used to exit 2 as 'bad arguments')."""
    monkeypatch.setattr(f"fnn.{where}", _raise(ValueError("boom")))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 70
    line = one_error_line(capsys.readouterr().err, "train")
    assert "internal error" in line and "ValueError: boom" in line and line.endswith(cli.TRACEBACK_HINT)


def test_fnn_traceback_prints_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fnn.data, "fit_standardizer", _raise(TypeError("boom")))
    monkeypatch.setenv("FNN_TRACEBACK", "1")
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise exc' in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fnn train: error: internal error") and "TypeError: boom" in last
    assert cli.TRACEBACK_HINT not in err


def test_fnn_traceback_shows_user_errors_too(capsys, monkeypatch):
    monkeypatch.setenv("FNN_TRACEBACK", "1")
    assert cli.main(["gradcheck", "--loss", "msee"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("fnn gradcheck: error: --loss")


# --- 74: file-system and OS errors --------------------------------------------------------------------------

def test_out_is_an_existing_file_is_74(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    assert cli.main(["train", *TINY, "--out", str(out)]) == 74
    line = one_error_line(capsys.readouterr().err, "train")
    assert str(out) in line and "Not a directory" in line
    assert out.read_text() == "not a folder"


def test_checkpoint_path_is_a_directory_is_74(tmp_path, capsys):
    (tmp_path / "r" / "checkpoint.safetensors").mkdir(parents=True)
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 74
    line = one_error_line(capsys.readouterr().err, "train")
    assert str(tmp_path / "r" / "checkpoint.safetensors") in line and "Is a directory" in line


def test_unwritable_run_folder_is_74(tmp_path, capsys, monkeypatch):
    """A read-only folder (simulated: the tests may run as root, who can write anywhere): the checkpoint save
    that ``fit`` does after the first epoch fails with PermissionError."""
    path = tmp_path / "r" / "checkpoint.safetensors"
    monkeypatch.setattr(fnn.checkpoint, "save", _raise(PermissionError(13, "Permission denied", str(path))))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 74
    assert one_error_line(capsys.readouterr().err, "train").endswith(f"{path}: Permission denied")


def test_os_error_message():
    assert cli.os_error_message(FileExistsError(17, "File exists", "/a")) == "/a: File exists"
    assert cli.os_error_message(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == \
        "/a -> /b: Invalid cross-device link"
    assert cli.os_error_message(OSError("disk on fire")) == "disk on fire"


# --- 130: interrupted ---------------------------------------------------------------------------------------

def test_ctrl_c_before_training_is_130(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fnn, "load_dataset", _raise(KeyboardInterrupt()))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "r")]) == 130
    assert "interrupted" in one_error_line(capsys.readouterr().err, "train")


# --- fnn bench ----------------------------------------------------------------------------------------------

def test_bench_is_found_beside_the_package_of_a_checkout(monkeypatch, tmp_path):
    assert cli.bench_script() == ROOT / "benchmarks" / "bench.py"
    installed = tmp_path / "site-packages" / "fnn" / "__init__.py"
    monkeypatch.setattr(fnn, "__file__", str(installed))
    assert cli.bench_script() is None


def test_bench_delegates_to_the_checkouts_benchmark(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fnn bench") and "--quick" in out
    from benchmarks import bench

    assert sys.modules["benchmarks.bench"] is bench and Path(bench.__file__).resolve() == cli.bench_script()


def test_bench_passes_its_exit_code_through(capsys):
    assert cli.main(["bench", "--configs", "nope"]) == 2  # benchmarks/bench.py's own check and message
    err = capsys.readouterr().err
    assert "unknown configuration" in err and "Traceback" not in err


def test_bench_without_a_checkout_exits_2_saying_how_to_run_it(monkeypatch, capsys):
    monkeypatch.setattr(cli, "bench_script", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    line = one_error_line(capsys.readouterr().err, "bench")
    assert "only with the source checkout" in line and "python benchmarks/bench.py" in line


# --- run-folder files are written atomically ------------------------------------------------------------------

def test_write_json_interrupted_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path, monkeypatch):
    """A Ctrl-C between writing history.json's temporary file and renaming it used to leave the .tmp behind."""
    from fnn._cli import write_json

    path = tmp_path / "history.json"
    write_json(path, {"epoch": [1]})
    monkeypatch.setattr("os.replace", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"epoch": [1, 2]})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
    assert '"epoch": [1]' in path.read_text()
