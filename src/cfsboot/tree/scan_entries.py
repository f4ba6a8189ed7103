"""Reading one directory's entries for the tree scan: each entry's lstat,
xattrs (the object's own: ``llistxattr``) and, for a symlink or a small
regular file, its target or bytes.  Nothing is ever followed.

With the C accelerator one call does a whole directory (``list_directory``);
whatever it could not read is redone here, so errors are worded the same
either way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cfsboot import native
from cfsboot.errors import CfsError
from cfsboot.tree.model import Stat

if TYPE_CHECKING:
    from cfsboot.native import ListedEntry, StatLike

OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class ScanError(CfsError):
    """The directory tree could not be read."""


def list_entries(dir_path: bytes, inline_max: int) -> Sequence[ListedEntry]:
    """(name, path, lstat, xattrs, data) of every entry, in directory order.

    With the C accelerator, one call lists the directory, stats every entry,
    reads its xattrs and, for a symlink or a regular file of at most
    ``inline_max`` bytes, its target or bytes.  Without it (or for anything
    it could not read, which is then redone here so errors say what Python
    says) xattrs and data are None, and the walk reads them itself.
    """
    lister = native.module
    if lister is not None:
        try:
            listed = lister.list_directory(dir_path, inline_max)
        except OSError:
            pass  # listed again below, for the error message
        else:
            if all(entry[2] is not None for entry in listed):
                return listed
            return [entry if entry[2] is not None else (entry[0], entry[1], lstat_entry(entry[1]),
                                                          None, None) for entry in listed]
    try:
        with os.scandir(dir_path) as it:
            names = [(e.name, e.path) for e in it]
    except OSError as e:
        raise ScanError(f"cannot read directory {shown(dir_path)}: {e.strerror}") from e
    return [(name, full, lstat_entry(full), None, None) for name, full in names]


def lstat_entry(path: bytes) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise ScanError(f"cannot stat {shown(path)}: {e.strerror}") from e


def entry_stat(path: bytes, st: StatLike, xattrs: dict[bytes, bytes] | None = None) -> Stat:
    sec, nsec = divmod(st.st_mtime_ns, 10**9)
    return Stat(st.st_mode & 0o7777, st.st_uid, st.st_gid, sec, nsec,
                xattrs if xattrs is not None else read_xattrs(path))


def read_small_at(dir_fd: int, name: bytes, size: int) -> bytes:
    fd = os.open(name, OPEN_FILE, dir_fd=dir_fd)
    try:
        return os.read(fd, size + 1)  # one more byte shows growth
    finally:
        os.close(fd)


def read_small(path: bytes, size: int) -> bytes:
    try:
        fd = os.open(path, OPEN_FILE)
    except OSError as e:
        raise ScanError(f"cannot read {shown(path)}: {e.strerror}") from e
    try:
        data = os.read(fd, size + 1)  # one more byte shows growth
    except OSError as e:
        raise ScanError(f"cannot read {shown(path)}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) != size:
        raise ScanError(f"{shown(path)} changed size while scanning")
    return data


def read_xattrs(path: bytes, named: bytes | None = None) -> dict[bytes, bytes]:
    """The xattrs of ``path`` itself (not followed); ``named`` names it in errors
    when ``path`` is only a way to reach it (through ``/proc/self/fd``)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return {}
        raise ScanError(f"cannot list xattrs of {shown(named or path)}: {e.strerror}") from e
    if not names:
        return {}
    out: dict[bytes, bytes] = {}
    for name in names:
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            raise ScanError(
                f"cannot read xattr {name} of {shown(named or path)}: {e.strerror}") from e
    return out


_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP}  # filesystem without xattrs


def shown(path: bytes) -> str:
    return os.fsdecode(path)
