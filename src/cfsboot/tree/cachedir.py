"""The ``--cache DIR`` directory: who may own it, and its whole results.

``DIR/results.v2`` maps a ``TreeFingerprint`` (every entry's name and stat
identity, plus the options and the code) to the result computed for it: a
digest and the counts shown with it.  A metadata-only walk decides whether a
run can be answered from here; the last few results are kept.  The per-file
digests live beside it (hashcache.HashCache).

The format is text, one result a line, so that reading it needs no parser
module on the path of a cached rebuild:

    cfsboot-results v2
    <fingerprint hex> <digest hex> <name>=<int> <name>=<int> ...

A line that does not have this shape is ignored (a miss), as is a file with
another first line; writers replace the file atomically.
"""

from __future__ import annotations

import os
import stat

from cfsboot.errors import CfsError

_MAGIC = b"cfsboot-results v2\n"
RESULTS_KEPT = 16


class HashCacheError(CfsError):
    """The cache directory cannot be used."""


def check_cache_owner(directory: str) -> None:
    """Refuse a cache directory that anyone but us can write: whoever can write
    it dictates the digests we report."""
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


def open_cache_directory(directory: str) -> str:
    """Create ``directory`` if needed (private) and check who can write it."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise HashCacheError(f"cache {directory} is not a directory")
    try:
        os.makedirs(directory, 0o700, exist_ok=True)   # private: see check_cache_owner
    except OSError as e:
        raise HashCacheError(f"cannot create cache directory {directory}: {e.strerror}") from e
    check_cache_owner(directory)
    return directory


class RecordedResult:
    __slots__ = ("counts", "digest")

    def __init__(self, digest: bytes, counts: dict[str, int]) -> None:
        self.digest = digest
        self.counts = counts


class ResultStore:
    """The whole results in ``DIR/results.v2``."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "results.v2")
        self._read: dict[str, bytes] | None = None  # as first read, for lookups

    def _recorded(self) -> dict[str, bytes]:
        """The file as read once for ``has_any`` and ``get`` (a lookup reads it
        once; ``put`` reads it again, as another run may have written it)."""
        if self._read is None:
            self._read = self._load()
        return self._read

    def _load(self) -> dict[str, bytes]:
        """Fingerprint (hex) -> the rest of its line, oldest first."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return {}
        if not data.startswith(_MAGIC):
            return {}
        lines: dict[str, bytes] = {}
        for line in data[len(_MAGIC):].split(b"\n"):
            key, _, rest = line.partition(b" ")
            if rest:
                lines[key.decode("ascii", "replace")] = rest
        return lines

    def has_any(self) -> bool:
        return bool(self._recorded())

    def get(self, fingerprint: bytes) -> RecordedResult | None:
        """The result recorded for ``fingerprint``; None when there is none or
        its line is damaged."""
        line = self._recorded().get(fingerprint.hex())
        if line is None:
            return None
        digest_hex, *fields = line.decode("ascii", "replace").split(" ")
        counts: dict[str, int] = {}
        try:
            digest = bytes.fromhex(digest_hex)
            for item in fields:
                name, value = item.split("=")
                if not value.isdigit() or name in counts:
                    return None
                counts[name] = int(value)
        except ValueError:
            return None
        return RecordedResult(digest, counts)

    def put(self, fingerprint: bytes, digest: bytes, counts: dict[str, int]) -> None:
        """Record a result (the most recent RESULTS_KEPT are kept)."""
        for name, value in counts.items():
            if not name.isidentifier() or type(value) is not int or value < 0:
                raise ValueError(f"cannot record count {name}={value!r}")
        lines = self._load()
        key = fingerprint.hex()
        lines.pop(key, None)
        lines[key] = " ".join([digest.hex()] + [f"{n}={v}" for n, v in counts.items()]).encode()
        kept = list(lines.items())[-RESULTS_KEPT:]
        body = _MAGIC + b"".join(k.encode() + b" " + rest + b"\n" for k, rest in kept)
        from cfsboot.atomic import atomic_write_bytes  # (not needed to read the cache)
        try:
            atomic_write_bytes(self.path, body, 0o600)
        except OSError as e:
            raise HashCacheError(f"cannot write cache {self.path}: {e.strerror}") from e
