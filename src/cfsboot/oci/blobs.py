"""Descriptors, verified blob readers and layer decompression (oci-import.md
§3.4, §3.5).  Upstream trusts ``oci:`` blobs blindly; we check every blob's
size and digest as it streams past, so a tampered layout is refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

import zstandard

from cfsboot.errors import CfsError
from cfsboot.oci.reference import parse_digest

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DELTA = "application/vnd.io.github.containers.oci-delta.v1"
_LAYER = "application/vnd.oci.image.layer.v1.tar"
_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
TAR_MEDIA_TYPES = {
    _LAYER: None, _LAYER + "+gzip": "gzip", _LAYER + "+zstd": "zstd",
    _NONDIST: None, _NONDIST + "+gzip": "gzip", _NONDIST + "+zstd": "zstd",
}
MAX_JSON = 4 << 20  # manifests and configs are small; refuse absurd ones


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class BlobError(CfsError):
    """A blob is missing, has the wrong size or digest, or cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    @staticmethod
    def from_json(obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise BlobError(f"{what}: descriptor is not a JSON object")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BlobError(f"{what}: descriptor has an invalid size {size!r}")
        media = obj.get("mediaType", "")
        if not isinstance(media, str):
            raise BlobError(f"{what}: descriptor has an invalid mediaType")
        platform = obj.get("platform")
        annotations = obj.get("annotations")
        return Descriptor(media, parse_digest(obj.get("digest", "")), size,
                          platform if isinstance(platform, dict) else None,
                          annotations if isinstance(annotations, dict) else None,
                          obj.get("artifactType") if isinstance(obj.get("artifactType"), str)
                          else None)


class VerifiedReader(io.RawIOBase):
    """Reads exactly ``size`` bytes of ``src``; at the end checks the digest.
    A short or long blob or a digest mismatch raises :class:`BlobError`."""

    def __init__(self, src: Readable, digest: str, size: int, what: str) -> None:
        super().__init__()
        self._src = src
        self._digest = digest
        self._left = size
        self._size = size
        self._what = what
        algo, _, _ = digest.partition(":")
        self._hash = hashlib.new(algo)
        self.verified = False
        self.on_read: Callable[[int], None] | None = None  # progress callback

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left == 0:
            self._finish()
            return 0
        data = self._src.read(min(len(b), self._left))
        n = len(data)
        memoryview(b)[:n] = data
        if not n:
            raise BlobError(f"{self._what}: blob {self._digest} is truncated "
                            f"({self._size - self._left} of {self._size} bytes)")
        self._hash.update(data)
        self._left -= n
        if self.on_read is not None:
            self.on_read(n)
        return n

    def drain(self) -> None:
        """Read what is left and check it (call after a decoder stopped early)."""
        while self.read(1 << 20):
            pass
        self._finish()

    def _finish(self) -> None:
        if self.verified:
            return
        if self._src.read(1):
            raise BlobError(f"{self._what}: blob {self._digest} is larger than its "
                            f"descriptor says ({self._size} bytes)")
        if f"{self._hash.name}:{self._hash.hexdigest()}" != self._digest:
            raise BlobError(f"{self._what}: digest mismatch: content does not hash to "
                            f"{self._digest}")
        self.verified = True

    def close(self) -> None:
        close = getattr(self._src, "close", None)
        if close is not None:
            close()
        super().close()


def read_verified(src: Readable, desc: Descriptor, what: str) -> bytes:
    """A whole small blob (manifest, config), size- and digest-checked."""
    if desc.size > MAX_JSON:
        raise BlobError(f"{what}: {desc.size} bytes is too large for a JSON document")
    r = VerifiedReader(src, desc.digest, desc.size, what)
    with r:
        data = r.read()
        r.drain()
    return data


def decompressor(media_type: str, raw: Readable) -> Readable:
    """Reader of the uncompressed tar for a tar layer media type (all gzip
    members / zstd frames are decoded, §3.5)."""
    kind = TAR_MEDIA_TYPES[media_type]
    if kind is None:
        return raw
    # docker-archive sources label uncompressed layers "+gzip": decode only
    # when the magic agrees (the diff_id check catches anything else).
    head = raw.read(4)
    raw = _Prefixed(head, raw)
    if not head.startswith(b"\x1f\x8b") and head != b"\x28\xb5\x2f\xfd":
        return raw
    kind = "gzip" if head.startswith(b"\x1f\x8b") else "zstd"
    if kind == "gzip":
        return _Guarded(gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb"), "gzip")
    return _Guarded(zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], raw), read_across_frames=True, closefd=False), "zstd")


class _Prefixed(io.RawIOBase):
    """``prefix`` followed by the rest of ``src`` (after a peek)."""

    def __init__(self, prefix: bytes, src: Readable) -> None:
        super().__init__()
        self._prefix = prefix
        self._src = src

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(b), len(self._prefix))
            memoryview(b)[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._src.read(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)


class _Guarded(io.RawIOBase):
    """Turns decoder exceptions into one-line BlobErrors."""

    def __init__(self, inner: Readable, kind: str) -> None:
        super().__init__()
        self._inner = inner
        self._kind = kind

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return self._inner.read(n)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
            raise BlobError(f"corrupt {self._kind} layer data: {e}") from None

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        memoryview(b)[:len(data)] = data
        return len(data)
