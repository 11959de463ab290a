"""The ``fnn`` command line: ``fnn train``, ``evaluate``, ``predict``, ``export``, ``gradcheck`` and ``bench``, and
its exit codes.

``fnn train`` (:mod:`fnn.cli_train`) trains an MLP and writes a run folder; ``fnn evaluate``, ``fnn predict`` and
``fnn export`` (:mod:`fnn.cli_use`) use one: its loss, accuracy and confusion matrix on its test set or new data,
its predictions for a CSV or an .npz, its network as an ONNX model taking raw features; ``fnn gradcheck``
(:mod:`fnn.cli_gradcheck`) compares the hand-written gradient with ``jax.grad`` and finite differences;
``fnn bench`` runs ``benchmarks/bench.py`` of the source checkout fnn runs from (the benchmark is not installed
with the package: from an installed fnn, ``fnn bench`` says so and exits with 2).

Exit codes, the same for every command:

====  ========================================================================================================
code  meaning
====  ========================================================================================================
0     success
1     training diverged, or a gradient check failed
2     bad arguments or bad input data: an argument error, a bad data file or folder (a FIFO among them), a bad
      run folder or config, a run folder in use by another ``fnn train``, other data on ``--resume``
70    internal error (a bug in fnn): one line on stderr with the hint ``set FNN_TRACEBACK=1 for the traceback``
74    file-system or OS error: one line naming the path and the OS reason (``--out`` is an existing file, the
      checkpoint path is a directory, a dangling symbolic link or a link loop, a read-only folder, a full disk)
130   interrupted (Ctrl-C); ``fnn train`` saves a checkpoint first and says how to resume
====  ========================================================================================================

Every error is one line on stderr, ``fnn <command>: error: <message>`` (``fnn: error:`` when no command is
known yet), without a traceback; with ``FNN_TRACEBACK=1`` in the environment the traceback is printed too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import fnn
from fnn import cli_gradcheck, cli_train, cli_use
from fnn._cli import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OS,
    EXIT_USAGE,
    UsageError,
    error,
    one_line,
)
from fnn.cli_gradcheck import GRADCHECK_EPS
from fnn.cli_train import PLOT_SKIPPED, RESUME_MAY_CHANGE, TRAIN_DEFAULTS
from fnn.losses import natural_output

__all__ = ["EXIT_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_OS", "EXIT_USAGE", "GRADCHECK_EPS",
           "PLOT_SKIPPED", "RESUME_MAY_CHANGE", "TRAIN_DEFAULTS", "UsageError", "bench_script", "main",
           "natural_output", "os_error_message", "run_bench"]

COMMANDS = ("train", "evaluate", "predict", "export", "gradcheck", "bench")
TRACEBACK_HINT = "set FNN_TRACEBACK=1 for the traceback"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2), not the whole usage block."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fnn", description="fnn: functional neural networks on JAX with a hand-written backprop.")
    parser.add_argument("--version", action="version", version=f"fnn {fnn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{train,evaluate,predict,export,gradcheck,bench}",
                                     required=True)
    cli_train.add_parser(commands)
    cli_use.add_parsers(commands)
    cli_gradcheck.add_parser(commands)
    commands.add_parser("bench", help="the benchmark of a source checkout (fnn bench --help)", add_help=False)
    return parser


def _exit_status(stop: SystemExit) -> int:
    return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else EXIT_USAGE)


# --- fnn bench --------------------------------------------------------------------------------------------

def bench_script() -> Path | None:
    """``benchmarks/bench.py`` beside the ``fnn`` package folder (a source checkout), or None (an installed fnn)."""
    path = Path(fnn.__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    return path if path.is_file() else None


def run_bench(argv: Sequence[str]) -> int:
    """``fnn bench ARGS``: ``benchmarks/bench.py``'s ``main(ARGS)`` when fnn runs from a source checkout."""
    script = bench_script()
    if script is None:
        raise UsageError("the benchmark ships only with the source checkout of fnn, not with the installed "
                         "package; run it from a checkout with: python benchmarks/bench.py")
    root = str(script.parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)  # bench.py imports its siblings as the `benchmarks` package
    module = importlib.import_module("benchmarks.bench")
    if Path(module.__file__).resolve() != script:
        raise UsageError(f"another 'benchmarks' package ({module.__file__}) shadows {script}; "
                         f"run it directly: python {script}")
    try:
        return module.main(list(argv))
    except SystemExit as stop:  # its argparse (--help, usage errors)
        return _exit_status(stop)


# --- errors and exit codes --------------------------------------------------------------------------------

def os_error_message(e: OSError) -> str:
    """``path: reason`` (``src -> dst: reason`` for a rename) for an OSError, else its message."""
    if e.filename is None:
        return str(e)
    where = os.fsdecode(e.filename)
    if e.filename2 is not None:
        where += f" -> {os.fsdecode(e.filename2)}"
    return f"{where}: {e.strerror or e}"


def _run(command: str | None, body: Callable[[], int]) -> int:
    """``body()``'s exit code, or the code of the exception it raised (printed as one line on stderr)."""
    show_traceback = os.environ.get("FNN_TRACEBACK", "") not in ("", "0")
    try:
        return body()
    except KeyboardInterrupt as e:  # fnn.TrainingInterrupted too: its message says how to resume
        caught, code, message = e, EXIT_INTERRUPTED, one_line(e) or "interrupted (Ctrl-C)"
    except UsageError as e:
        caught, code, message = e, EXIT_USAGE, one_line(e)
    except OSError as e:
        caught, code, message = e, EXIT_OS, os_error_message(e)
    except Exception as e:
        caught, code = e, EXIT_INTERNAL
        message = f"internal error (a bug in fnn, please report it): {type(e).__name__}: {one_line(e)}"
        if not show_traceback:
            message += f"; {TRACEBACK_HINT}"
    if show_traceback:
        traceback.print_exception(type(caught), caught, caught.__traceback__)
    error(command, message)
    return code


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        return run_bench(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors (printed by argparse, one line)
        return _exit_status(stop)
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fnn`` command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Example:
      >>> main(["train", "--epochs", "3", "--out", "/tmp/run", "--no-progress"])  # doctest: +SKIP
      0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    return _run(command, lambda: _dispatch(argv))


if __name__ == "__main__":
    sys.exit(main())
