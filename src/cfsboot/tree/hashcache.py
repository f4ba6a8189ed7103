"""Opt-in build cache (``--cache DIR``): a rebuild after a small change
rehashes only the files that changed, and an unchanged tree is not even read.

Two levels, both keyed by what the kernel reports about inodes:

* File digests (``DIR/<alg>.v1``): ``(st_dev, st_ino, st_size, st_mtime_ns,
  st_ctime_ns)`` -> fs-verity digest.  Any write to a file, and any change of
  its mode, owner or xattrs, moves its ctime (which user space cannot set),
  so a changed file misses.  Records are ``<QQQqq`` + digest after a magic
  line; a missing, foreign or damaged file is an empty cache.  Saving keeps
  the entries used by this run only, so the file describes the last tree.
* Whole results (``DIR/results.v1.json``): a ``TreeFingerprint`` — every
  entry's name and stat identity, plus the options and code — -> the result.
  A metadata-only walk decides; the last few results are kept.

Caveats, handled the way git handles its index:

* "Racily clean" files: kernel timestamps are coarse (a clock tick), so a
  file rewritten within the same tick as our stat could keep all five values.
  Entries (and fingerprints) with a ctime not safely older than the start of
  the run are used but never *recorded*; the next run reads them once more.
* Trust: whoever can write DIR can make us report any digest.  DIR must be
  owned by the builder and writable by nobody else (``check_cache_owner``).
"""

from __future__ import annotations

import json
import os
import stat
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from cfsboot import native
from cfsboot.errors import CfsError
from cfsboot.native import StatLike

CacheKey = tuple[int, int, int, int, int]

_RECORD = struct.Struct("<QQQqq")
# name length, then the stat identity; times in ns modulo 2^64 (as _native.c packs them)
_FP_ENTRY = struct.Struct("<IIQQQIIQQQQ")
_U64 = (1 << 64) - 1
_FP_DIR = struct.Struct("<II")  # marker, path length
_RESULTS_KEPT = 16
# A ctime this close to the scan start (or later) may be "racily clean".
RACY_WINDOW_NS = 2 * 10**9


class HashCacheError(CfsError):
    """The cache directory cannot be used."""


def cache_key(st: StatLike) -> CacheKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_cache_owner(directory: str) -> None:
    """Refuse a cache directory that anyone but us can write: whoever can write
    it dictates the digests we report (see "Trust" above)."""
    try:
        st = os.stat(directory)
    except OSError as e:
        raise HashCacheError(f"cannot access cache directory {directory}: {e.strerror}") from e
    if st.st_uid != os.geteuid():
        raise HashCacheError(f"cache directory {directory} is owned by uid {st.st_uid}, not "
                             "by you: whoever can write it dictates the digest")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HashCacheError(f"cache directory {directory} is writable by "
                             f"{'others' if st.st_mode & stat.S_IWOTH else 'its group'} "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}): whoever can write it "
                             "dictates the digest (chmod go-w)")


class HashCache:
    """Digests of unchanged files, keyed by stat identity.  Thread-safe."""

    def __init__(self, directory: str, alg: str, digest_size: int) -> None:
        self.directory = directory
        self.alg = alg
        self.digest_size = digest_size
        self.path = os.path.join(directory, f"{alg}.v1")
        self._magic = f"cfsboot-hashcache v1 {alg}\n".encode()
        self._old: dict[CacheKey, bytes] = {}
        self._used: dict[CacheKey, bytes] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self._started_ns = time.time_ns()
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(cls, directory: str, alg: str, digest_size: int) -> HashCache:
        """Open (creating DIR if needed) and load ``DIR/<alg>.v1``."""
        if os.path.lexists(directory) and not os.path.isdir(directory):
            raise HashCacheError(f"cache {directory} is not a directory")
        try:
            os.makedirs(directory, 0o700, exist_ok=True)   # private: see check_cache_owner
        except OSError as e:
            raise HashCacheError(f"cannot create cache directory {directory}: {e.strerror}") from e
        check_cache_owner(directory)
        return cls(directory, alg, digest_size)

    def _load(self) -> None:
        """Read the file on first use (a run served by a whole cached result
        never needs it)."""
        self._loaded = True
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            raise HashCacheError(f"cannot read cache {self.path}: {e.strerror}") from e
        if not data.startswith(self._magic):
            return  # another format or algorithm: start empty
        body = memoryview(data)[len(self._magic):]
        size = _RECORD.size + self.digest_size
        if len(body) % size:
            return  # truncated: start empty rather than trust a partial record
        for off in range(0, len(body), size):
            key = _RECORD.unpack_from(body, off)
            self._old[key] = bytes(body[off + _RECORD.size:off + size])

    def lookup(self, st: StatLike) -> bytes | None:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
        key = cache_key(st)
        digest = self._old.get(key)
        with self._lock:
            if digest is None:
                self.misses += 1
            else:
                self.hits += 1
                self._used[key] = digest
        return digest

    def record(self, st: StatLike, digest: bytes) -> None:
        if st.st_ctime_ns > self._started_ns - RACY_WINDOW_NS:
            return  # possibly racily clean: do not vouch for it next time
        with self._lock:
            self._used[cache_key(st)] = digest

    # ---- whole results, keyed by a TreeFingerprint digest ----------------------

    @property
    def results_path(self) -> str:
        return os.path.join(self.directory, "results.v1.json")

    def _load_results(self) -> dict[str, Any]:
        try:
            with open(self.results_path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def has_results(self) -> bool:
        return bool(self._load_results())

    def get_result(self, key: bytes) -> dict[str, Any] | None:
        value = self._load_results().get(key.hex())
        return value if isinstance(value, dict) else None

    def put_result(self, key: bytes, value: dict[str, Any]) -> None:
        """Record a result (the most recent few are kept)."""
        results = self._load_results()
        results.pop(key.hex(), None)
        results[key.hex()] = value
        kept = dict(list(results.items())[-_RESULTS_KEPT:])
        from cfsboot.atomic import atomic_write_bytes  # (not needed to read the cache)
        try:
            atomic_write_bytes(self.results_path, json.dumps(kept).encode(), 0o600)
        except OSError as e:
            raise HashCacheError(f"cannot write cache {self.results_path}: {e.strerror}") from e

    @property
    def started_ns(self) -> int:
        return self._started_ns

    def save(self) -> None:
        """Atomically replace the cache file with the entries of this run."""
        with self._lock:
            items = list(self._used.items())
        chunks = [self._magic]
        for key, digest in items:
            chunks.append(_RECORD.pack(*key))
            chunks.append(digest)
        from cfsboot.atomic import atomic_write_bytes
        try:
            atomic_write_bytes(self.path, b"".join(chunks), 0o600)
        except OSError as e:
            raise HashCacheError(f"cannot write cache {self.path}: {e.strerror}") from e


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
        return self.newest_ctime_ns <= started_ns - RACY_WINDOW_NS


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
