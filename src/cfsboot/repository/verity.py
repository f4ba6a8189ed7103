"""The fs-verity operations the repository needs, in its own terms.

Thin adapter over :mod:`cfsboot.fsverity`: digests computed in userspace and
the kernel ioctls with their outcomes sorted the way composefs-rs sorts them
(enabled / already enabled / filesystem unsupported / verity missing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import Literal

from cfsboot import fsverity
from cfsboot.errors import CfsError
from cfsboot.fsverity import kernel
from cfsboot.repository import errpaths
from cfsboot.repository.meta import Algorithm

EnableResult = Literal["enabled", "exists", "unsupported"]


class VerityError(CfsError):
    """fs-verity failed in a way the repository cannot tolerate."""


def digest_bytes(data: bytes, alg: Algorithm) -> bytes:
    return fsverity.fsverity_digest(data, alg.hash_name)


def new_hasher(alg: Algorithm) -> fsverity.FsVerityHasher:
    return fsverity.FsVerityHasher(alg.hash_name)


def digest_fd(fd: int, alg: Algorithm) -> tuple[bytes, int]:
    """(digest, size) of an open file's whole content; ``fd``'s offset is not
    touched (the file is read through a fresh open file description)."""
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        # Name the file itself, not the /proc/self/fd alias (callers may know better).
        with contextlib.suppress(OSError):
            e.filename = os.readlink(f"/proc/self/fd/{fd}")
        raise
    try:
        return fsverity.digest_fd(own, alg.hash_name)
    finally:
        os.close(own)


def enable(fd: int, alg: Algorithm) -> EnableResult:
    """Enable verity on a read-only fd; ETXTBSY is raised to the caller."""
    try:
        kernel.enable_verity(fd, alg.hash_name)
    except kernel.VerityUnsupported:
        return "unsupported"
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
            return "unsupported"
        raise
    except CfsError as e:  # already enabled with another algorithm
        raise VerityError(str(e)) from None
    return "enabled"


def measure(fd: int, alg: Algorithm) -> bytes | None:
    """The kernel-measured digest, or None when verity is missing or the
    filesystem does not support it.  A different algorithm is an error."""
    try:
        result = kernel.measure_verity(fd)
    except kernel.VerityUnsupported:
        return None
    if result is None:
        return None
    alg_name, digest = result
    if alg_name != alg.hash_name:
        raise VerityError(f"file has fs-verity with {alg_name}, expected {alg.hash_name}")
    return digest


def enable_maybe_copy(fd: int, alg: Algorithm, tmp_dir_fd: int) -> tuple[int, EnableResult]:
    """Enable verity on ``fd``; if a stray writable fd (a forked child) keeps it
    busy, copy the content to a new O_TMPFILE in ``tmp_dir_fd`` and enable it on
    the copy.  Returns the fd to use (``fd`` or the copy) and the outcome."""
    for _ in range(3):
        try:
            return fd, enable(fd, alg)
        except OSError as e:
            if e.errno != errno.ETXTBSY:
                raise
            time.sleep(0.001)
    copy = os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=tmp_dir_fd)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while block := os.read(fd, 1 << 20):
            os.write(copy, block)
        with errpaths.as_file(None):  # an anonymous copy: no name to give
            ro = os.open(f"/proc/self/fd/{copy}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(copy)
    try:
        return ro, enable(ro, alg)
    except BaseException:
        os.close(ro)
        raise
