"""Tests for fnn/_files.py: only regular files are opened; FIFOs, sockets, folders and broken links are refused
with the path in the message, before anything is opened (so a FIFO cannot block the test)."""

from __future__ import annotations

import errno
import os
import socket

import pytest
from conftest import no_hang

from fnn._files import check_regular_file, open_regular


@pytest.mark.parametrize("opener", [check_regular_file, open_regular])
def test_a_fifo_is_refused_without_opening_it(tmp_path, opener):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(ValueError, match=rf"{fifo} is a FIFO \(named pipe\), not a regular file; "
                                                    r"fnn reads a checkpoint only from a regular file"):
        opener(fifo, "a checkpoint")


def test_a_socket_is_refused(tmp_path):
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with no_hang(), pytest.raises(ValueError, match=rf"{path} is a socket, not a regular file"):
            open_regular(path)


def test_a_character_device_is_refused():
    with no_hang(), pytest.raises(ValueError, match=r"/dev/zero is a character device"):
        open_regular("/dev/zero")  # would read zeros without end


def test_broken_links_and_folders_are_os_errors_naming_the_path(tmp_path):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dangling symbolic link to .*nowhere") as info:
        open_regular(dangling)
    assert info.value.filename == str(dangling)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OSError) as info:
        open_regular(loop)
    assert info.value.errno == errno.ELOOP and info.value.filename == str(loop)
    with pytest.raises(IsADirectoryError, match=r"expected an IDX file") as info:
        check_regular_file(tmp_path, "an IDX file")
    assert info.value.filename == str(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        open_regular(tmp_path / "absent")
    assert info.value.filename == str(tmp_path / "absent")


def test_regular_files_and_links_to_them_are_read(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"abc")
    link = tmp_path / "link"
    link.symlink_to(target)
    for path in (target, link):
        with open_regular(path) as f:
            assert f.read() == b"abc" and os.get_blocking(f.fileno())
