"""``oci-archive:FILE[:TAG]`` without skopeo: an OCI layout inside an
uncompressed tar, read in place (nothing is extracted).

Only ``index.json`` and ``blobs/<alg>/<hex>`` regular-file members are looked
at; links, devices and any other name are ignored, so a hostile archive cannot
point a blob at anything outside itself.  Used when skopeo is not installed
(with skopeo the proxy reads the archive, as upstream does; the result is the
same because an OCI manifest is not converted)."""

from __future__ import annotations

import io
import os
import re
import tarfile
from typing import BinaryIO

from cfsboot.oci.blobs import BlobError
from cfsboot.oci.layout import LayoutError, OciLayout

_BLOB = re.compile(r"^(?:\./)?blobs/(sha256|sha512)/([0-9a-f]+)$")
_INDEX = re.compile(r"^(?:\./)?index\.json$")


class _Slice(io.RawIOBase):
    """Bytes [start, start+size) of a file, read with pread."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self._fd, self._pos, self._end = fd, start, start + size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._end - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._pos)
        memoryview(b)[:len(data)] = data
        self._pos += len(data)
        return len(data)


class OciArchive(OciLayout):
    """An image source over an ``oci-archive`` tar file."""

    def __init__(self, path: str, tag: str | None) -> None:
        self.path = path
        self.tag = tag
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LayoutError(f"{path}: cannot open OCI archive: {e.strerror}") from None
        self._members: dict[str, tuple[int, int]] = {}
        try:
            with os.fdopen(os.dup(self._fd), "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if not m.isreg():
                        continue
                    blob = _BLOB.match(m.name)
                    key = (f"{blob[1]}:{blob[2]}" if blob else
                           "index.json" if _INDEX.match(m.name) else None)
                    if key is not None:
                        self._members[key] = (m.offset_data, m.size)
        except (tarfile.TarError, EOFError) as e:
            os.close(self._fd)
            raise LayoutError(f"{path}: not a readable OCI archive (uncompressed tar): "
                              f"{e}") from None
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        os.close(self._fd)

    def _member(self, key: str) -> BinaryIO:
        start, size = self._members[key]
        return io.BufferedReader(_Slice(self._fd, start, size))

    def _open_index(self) -> BinaryIO:
        if "index.json" not in self._members:
            raise LayoutError(f"{self.path}: not an OCI archive (no index.json)")
        return self._member("index.json")

    def _open_raw(self, digest: str) -> BinaryIO:
        if digest not in self._members:
            raise BlobError(f"{self.path}: blob {digest} is missing")
        return self._member(digest)
