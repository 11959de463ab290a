"""What the ``fnn`` commands share: the exit codes, the user-error exception, argument types and file helpers.

A private module of :mod:`fnn.cli`, :mod:`fnn.cli_train` and :mod:`fnn.cli_gradcheck` (the exit-code table is
in :mod:`fnn.cli`'s docstring).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "EXIT_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_OS", "EXIT_USAGE",
    "UsageError", "error", "one_line", "positive", "user_input", "widths", "write_json",
]

EXIT_OK = 0
#: Training diverged or a gradient check failed.
EXIT_FAILED = 1
#: Bad arguments or bad input data (argument errors, bad data files, a bad run folder or config).
EXIT_USAGE = 2
#: Internal error: a bug in fnn (``EX_SOFTWARE`` of BSD's sysexits.h).
EXIT_INTERNAL = 70
#: A file-system or OS error (``EX_IOERR``): a path that cannot be read or written.
EXIT_OS = 74
#: Interrupted (Ctrl-C): 128 + SIGINT.
EXIT_INTERRUPTED = 130

T = TypeVar("T")


class UsageError(Exception):
    """Bad arguments or bad input data, found by a command (exit code 2): the message is shown as it is."""


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def error(command: str | None, message: object) -> None:
    """Print ``fnn <command>: error: <message>`` on one line of stderr (``fnn: error:`` before a command)."""
    prog = "fnn" if command is None else f"fnn {command}"
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def user_input(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on values the user gave, its ValueError/TypeError turned into a UsageError.

    Only for calls whose every argument comes from the command line, a data file or a run folder: fnn's
    validation errors there are the user's (exit 2); the same exceptions anywhere else are bugs (exit 70).
    """
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{what}: {one_line(e)}" if what else one_line(e)) from e


def widths(text: str) -> list[int]:
    """``"128,64"`` -> ``[128, 64]``; ``""`` -> ``[]`` (no hidden layer). An argparse type."""
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 128,64, got {text!r}") from None
    if any(w <= 0 for w in values):
        raise argparse.ArgumentTypeError(f"layer widths must be positive integers, got {text!r}")
    return values


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a positive, finite ``kind`` (int or float)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def write_json(path: Path, obj: dict) -> None:
    """One top-level key per line (per-epoch lists stay on one line), written atomically."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items())
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text("{\n" + body + "\n}\n")
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk: keep the old file, leave no temporary one
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
