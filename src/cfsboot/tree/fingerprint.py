"""The "has anything changed?" check behind ``--cache``: a fingerprint of a
whole tree from metadata alone (names and stat identities; no xattrs, no
contents), so that an unchanged tree is not even read.

It is on the path of every cached rebuild, so it imports only what a walk
needs (os, stat; the C accelerator when built).
"""

from __future__ import annotations

import os
import stat
import struct

from cfsboot import native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from cfsboot.native import StatLike

# name length, then the stat identity; times in ns modulo 2^64 (as _native.c packs them)
_FP_ENTRY = struct.Struct("<IIQQQIIQQQQ")
_U64 = (1 << 64) - 1
_FP_DIR = struct.Struct("<II")  # marker, path length
# A ctime this close to the start of a run (or later) may be "racily clean":
# kernel timestamps are coarse, so a file rewritten within the same tick as
# our stat could keep every stat value.
RACY_WINDOW_NS = 2 * 10**9


def racily_clean(ctime_ns: int, started_ns: int) -> bool:
    """True when an inode changed too close to ``started_ns`` to vouch for it:
    it may be used in this run but must not be recorded for the next."""
    return ctime_ns > started_ns - RACY_WINDOW_NS


def _sha256(data: bytes) -> bytes:
    # hashlib (OpenSSL) is imported on first use: with the C accelerator, a run
    # answered from the cache never hashes in Python.
    import hashlib
    return hashlib.sha256(data).digest()


class TreeFingerprint:
    """The state of a whole tree: each entry's name and full stat identity
    (inode, size, mode, owner, mtime and ctime, …).

    Any change to a file's content, metadata or xattrs changes its ctime; any
    added, removed or renamed entry changes a name list.  So an equal
    fingerprint (with the same ``salt``: code and options) means the same
    result, and a whole computation can be skipped.  Only fingerprints whose
    newest ctime is older than the racy window are worth recording.

    Each directory's records (its path, then its entries in readdir order) are
    hashed on their own, and the fingerprint is the SHA-256 of the salt, the
    root's record and the sorted directory digests: independent of the order
    directories are visited in, so the C walk reads them on several threads.
    """

    __slots__ = ("_digest", "_directories", "_root", "newest_ctime_ns", "salt")

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        self._root = b""
        self._directories: list[bytes] = []
        self._digest: bytes | None = None  # set when the C walk computed it
        self.newest_ctime_ns = 0

    def _record(self, name: bytes, st: StatLike) -> bytes:
        if st.st_ctime_ns > self.newest_ctime_ns:
            self.newest_ctime_ns = st.st_ctime_ns
        return _FP_ENTRY.pack(
            len(name), st.st_mode, st.st_dev, st.st_ino, st.st_nlink, st.st_uid, st.st_gid,
            st.st_rdev, st.st_size, st.st_mtime_ns & _U64, st.st_ctime_ns & _U64) + name

    def entry(self, name: bytes, st: StatLike) -> None:
        """The root directory itself (its name is empty)."""
        self._root = self._record(name, st)

    def directory(self, path: bytes, entries: Sequence[tuple[bytes, bytes, StatLike | None,
                                                              object, object]]) -> None:
        """A directory's listing: (name, path, lstat, ...) per entry, in readdir order."""
        parts = [_FP_DIR.pack(0xFFFFFFFF, len(path)), path]
        for name, _full, st, _, _ in entries:
            assert st is not None  # the scan redid every entry the C lister could not read
            parts.append(self._record(name, st))
        self._directories.append(_sha256(b"".join(parts)))

    def digest(self) -> bytes:
        if self._digest is not None:
            return self._digest
        return _sha256(self.salt + self._root + b"".join(sorted(self._directories)))

    def is_settled(self, started_ns: int) -> bool:
        """True when no ctime is recent enough to be racily clean."""
        return not racily_clean(self.newest_ctime_ns, started_ns)


def fingerprint_tree(path: str, fingerprint: TreeFingerprint) -> TreeFingerprint | None:
    """Feed ``fingerprint`` exactly as ``scan_directory`` does, reading only
    metadata (no xattrs, no contents): a cheap "has anything changed?" check.
    None when the tree cannot be read (the real scan will say why).

    Same traversal as ``scan._Scanner.walk`` (pop a directory, its entries in
    readdir order, push its subdirectories in that order), but entries are
    stat'ed relative to the directory's descriptor, which saves a full path
    walk per entry.  The C accelerator, when built, computes the same
    fingerprint many times faster, reading directories on several threads.
    """
    root_path = os.fsencode(path)
    if native.module is not None:
        try:
            digest, sec, nsec = native.module.fingerprint_tree(root_path, fingerprint.salt)
        except OSError:
            return None
        fingerprint._digest = digest
        fingerprint.newest_ctime_ns = sec * 10**9 + nsec
        return fingerprint
    try:
        fingerprint.entry(b"", os.lstat(root_path))
        stack = [root_path]
        while stack:
            dir_path = stack.pop()
            fd = os.open(dir_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                with os.scandir(fd) as it:  # names come back as str for an fd
                    names = [e.name for e in it]
                entries = [(os.fsencode(name), b"",
                            os.stat(name, dir_fd=fd, follow_symlinks=False), None, None)
                           for name in names]
            finally:
                os.close(fd)
            fingerprint.directory(dir_path, entries)
            base = dir_path if dir_path.endswith(b"/") else dir_path + b"/"  # as scandir
            stack.extend(base + name for name, _, st, _, _ in entries if stat.S_ISDIR(st.st_mode))
    except OSError:
        return None
    return fingerprint
