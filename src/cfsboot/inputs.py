"""Read a whole input file (a dumpfile, an image) without being fooled by
what the path turns out to be.

A regular file is read as it is.  Anything else (``-``/a pipe, ``/dev/zero``, a
fifo) is read up to a limit, so a mistaken path gives one clear error instead
of exhausting memory; a directory is refused up front.

``read_regular_file`` is the stricter variant for inputs that only make sense as
files (a PE image to inspect or sign): anything but a regular file is refused
without reading it, and a file above the size limit is refused before reading.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable

from cfsboot.errors import CfsError

STREAM_LIMIT = 1 << 30  # bytes accepted from a pipe or device


def read_input(path: str, what: str, limit: int = STREAM_LIMIT) -> bytes:
    """The bytes of ``path`` (``-`` = standard input)."""
    if path == "-":
        return _read_stream(sys.stdin.buffer.fileno(), "standard input", what, limit)
    fd, st = _open_not_a_directory(path, what)
    try:
        os.set_blocking(fd, True)
        if stat.S_ISREG(st.st_mode):
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
        return _read_stream(fd, path, what, limit)
    finally:
        os.close(fd)


class NotRegularError(OSError):
    """open_regular() reached something other than a regular file."""


def open_regular(path: str, dir_fd: int | None = None,
                 opener: Callable[[str, int, int | None], int] | None = None) -> int:
    """``path`` opened for reading, only if it is a regular file (else
    NotRegularError).  O_NONBLOCK makes opening a FIFO return at once instead
    of waiting for a writer; it is cleared before any read.  ``opener``
    replaces ``os.open`` (e.g. one that resolves beneath ``dir_fd``)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    fd = opener(path, flags, dir_fd) if opener else os.open(path, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularError(path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_not_a_directory(path: str, what: str) -> tuple[int, os.stat_result]:
    """``path`` opened without blocking (a fifo must not hang the open) and
    its fstat; a directory is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except IsADirectoryError:
        raise CfsError(f"{path}: is a directory, not a {what}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise CfsError(f"{path}: is a directory, not a {what}")
    return fd, st


def _read_stream(fd: int, name: str, what: str, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
        if total > limit:
            raise CfsError(_too_large(name, what, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def read_regular_file(path: str, what: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Opened with ``O_NONBLOCK`` so a fifo cannot hang the open; a fifo, device,
    socket or directory is refused, as is a file larger than ``limit``."""
    fd, st = _open_not_a_directory(path, what)
    try:
        if not stat.S_ISREG(st.st_mode):
            raise CfsError(f"{path}: not a regular file")
        if st.st_size > limit:
            raise CfsError(_too_large(path, what, limit))
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since the fstat
        if len(data) > limit:
            raise CfsError(_too_large(path, what, limit))
        return data
    finally:
        os.close(fd)


def _too_large(name: str, what: str, limit: int) -> str:
    return f"{name}: more than {limit >> 20} MiB; is this really a {what}?"
