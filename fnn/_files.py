"""Opening the files a user points fnn at: regular files only, checked before anything is opened.

Opening a FIFO for reading blocks until a writer appears (forever, for a forgotten ``mkfifo``), a device can
stream without end, and a dangling symbolic link looks like a missing file to ``Path.exists``. So every file
fnn reads on a user's behalf (checkpoints, IDX files, a run folder's config.json and lock) goes through
:func:`check_regular_file` (an ``os.stat`` that follows symbolic links: a link to a regular file is fine) and
is then opened non-blocking and checked again on the open descriptor, so a file swapped in between cannot hang
either. A private module: its names are shared by :mod:`fnn.idx`, :mod:`fnn._checkpoint_format` and the CLI.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = ["check_regular_file", "open_regular"]

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular_file(path: str | os.PathLike, what: str = "a file") -> os.stat_result:
    """``os.stat(path)`` when ``path`` is (a symbolic link to) a regular file; nothing is opened.

    Raises:
      FileNotFoundError: nothing is at ``path``, or it is a dangling symbolic link (the message gives the target).
      OSError: a symbolic link loop (``ELOOP``) or another OS error, naming the path.
      IsADirectoryError: ``path`` is a directory.
      ValueError: ``path`` is a FIFO, a socket or a device: "``path`` is a FIFO (named pipe), not a regular
        file; fnn reads ``what`` only from a regular file" (``what``: "a checkpoint", "an IDX file", ...).
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        if os.path.islink(name):
            raise FileNotFoundError(errno.ENOENT, f"dangling symbolic link to {os.readlink(name)!r}",
                                    name) from None
        raise
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{os.strerror(errno.EISDIR)} (expected {what})", name)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name} is {_kind(st.st_mode)}, not a regular file; fnn reads {what} only from a "
                         f"regular file.")
    return st


def open_regular(path: str | os.PathLike, what: str = "a file") -> BinaryIO:
    """``open(path, "rb")`` for a regular file only (see :func:`check_regular_file`), never blocking on a FIFO."""
    check_regular_file(path, what)
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped for something else since the check
            raise ValueError(f"{name} is {_kind(mode)}, not a regular file; fnn reads {what} only from a "
                             f"regular file.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
