"""Opt-in build cache (``--cache DIR``): a rebuild after a small change
rehashes only the files that changed, and an unchanged tree is not even read.

Two levels, both keyed by what the kernel reports about inodes:

* File digests (``DIR/<alg>.v1``): ``(st_dev, st_ino, st_size, st_mtime_ns,
  st_ctime_ns)`` -> fs-verity digest.  Any write to a file, and any change of
  its mode, owner or xattrs, moves its ctime (which user space cannot set),
  so a changed file misses.  Records are ``<QQQqq`` + digest after a magic
  line; a missing, foreign or damaged file is an empty cache.  Saving keeps
  the entries used by this run only, so the file describes the last tree.
* Whole results (``DIR/results.v2``, cachedir.ResultStore): a
  ``TreeFingerprint`` (fingerprint.py) — every entry's name and stat
  identity, plus the options and code — -> the result.  A metadata-only walk
  decides; the last few results are kept.

Caveats, handled the way git handles its index:

* "Racily clean" files: kernel timestamps are coarse (a clock tick), so a
  file rewritten within the same tick as our stat could keep all five values.
  Entries (and fingerprints) with a ctime not safely older than the start of
  the run are used but never *recorded*; the next run reads them once more.
* Trust: whoever can write DIR can make us report any digest.  DIR must be
  owned by the builder and writable by nobody else
  (``cachedir.check_cache_owner``).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import TYPE_CHECKING

from cfsboot.tree.cachedir import HashCacheError, open_cache_directory
from cfsboot.tree.fingerprint import racily_clean

if TYPE_CHECKING:
    from cfsboot.native import StatLike

CacheKey = tuple[int, int, int, int, int]

_RECORD = struct.Struct("<QQQqq")


def cache_key(st: StatLike) -> CacheKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """Digests of unchanged files, keyed by stat identity.  Thread-safe."""

    def __init__(self, directory: str, alg: str, digest_size: int,
                 started_ns: int | None = None) -> None:
        """``started_ns``: when the run started (time.time_ns()), if before now;
        what an entry's ctime must be safely older than to be recorded."""
        self.directory = directory
        self.alg = alg
        self.digest_size = digest_size
        self.path = os.path.join(directory, f"{alg}.v1")
        self._magic = f"cfsboot-hashcache v1 {alg}\n".encode()
        self._old: dict[CacheKey, bytes] = {}
        self._used: dict[CacheKey, bytes] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self._started_ns = time.time_ns() if started_ns is None else started_ns
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(cls, directory: str, alg: str, digest_size: int) -> HashCache:
        """Open DIR (creating it if needed); ``DIR/<alg>.v1`` is read on first use."""
        return cls(open_cache_directory(directory), alg, digest_size)

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
        if racily_clean(st.st_ctime_ns, self._started_ns):
            return  # do not vouch for it next time
        with self._lock:
            self._used[cache_key(st)] = digest

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
