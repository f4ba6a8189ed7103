"""Read a whole input file (a dumpfile, an image) without being fooled by
what the path turns out to be.

A regular file is read as it is.  Anything else (``-``/a pipe, ``/dev/zero``, a
fifo) is read up to a limit, so a mistaken path gives one clear error instead
of exhausting memory; a directory is refused up front.
"""

from __future__ import annotations

import os
import stat
import sys

from cfsboot.errors import CfsError

STREAM_LIMIT = 1 << 30  # bytes accepted from a pipe or device


def read_input(path: str, what: str, limit: int = STREAM_LIMIT) -> bytes:
    """The bytes of ``path`` (``-`` = standard input)."""
    if path == "-":
        return _read_stream(sys.stdin.buffer.fileno(), "standard input", what, limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except IsADirectoryError:
        raise CfsError(f"{path}: is a directory, not a {what}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CfsError(f"{path}: is a directory, not a {what}")
        os.set_blocking(fd, True)
        if stat.S_ISREG(st.st_mode):
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
        return _read_stream(fd, path, what, limit)
    finally:
        os.close(fd)


def _read_stream(fd: int, name: str, what: str, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
        if total > limit:
            raise CfsError(f"{name}: more than {limit >> 20} MiB; is this really a {what}?")
        chunks.append(chunk)
    return b"".join(chunks)
