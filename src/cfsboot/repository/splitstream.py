"""Splitstream files (composefs-rs ``splitstream.rs`` @0fbc853, repository.md §10).

A splitstream stores a byte stream as inline chunks plus references to external
objects, so the original can be rebuilt bit for bit.  Layout as written::

    0    header  32 bytes: "SplitStream" 0 | flags u16 | alg u8 | lg_bs u8 | info range
    32   info    80 bytes: stream_refs, object_refs, stream, named_refs ranges,
                           content_type u64, stream_size u64
    112  stream_refs ‖ object_refs (raw digests) ‖ named refs (zstd) ‖ chunks (zstd)

Chunks: an i64le ``n``; ``n < 0`` is ``-n`` inline bytes, ``n >= 0`` is index ``n``
into object_refs.  This module is pure format: storing objects is the caller's
job (``store`` callback of the writer, ``open_object`` of ``cat``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from cfsboot.errors import CfsError
from cfsboot.repository.meta import Algorithm

MAGIC = b"SplitStream"
LG_BLOCKSIZE = 12
HEADER_SIZE = 32
INFO_SIZE = 80
ZSTD_LEVEL = 3  # the zstd crate's level 0 = libzstd default


def content_type(tag: bytes) -> int:
    """The u64 whose little-endian bytes spell ``tag`` (8 ASCII bytes)."""
    if len(tag) != 8:
        raise ValueError("content type tags are 8 bytes")
    return int.from_bytes(tag, "little")


CONTENT_OCI_LAYER = content_type(b"ocilayer")
CONTENT_OCI_CONFIG = content_type(b"ociconfg")
CONTENT_OCI_MANIFEST = content_type(b"ocimanif")
CONTENT_OCI_BLOB = content_type(b"oci_blob")


class SplitStreamError(CfsError):
    """A splitstream file is malformed or does not match what was expected."""


@dataclass(frozen=True, slots=True)
class ExternalChunk:
    """A chunk whose content is the whole object ``digest``."""
    digest: bytes


Chunk = bytes | ExternalChunk


class _UniqueList:
    """Insertion-ordered set of digests with stable indexes."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self._index: dict[bytes, int] = {}

    def ensure(self, item: bytes) -> int:
        idx = self._index.get(item)
        if idx is None:
            idx = self._index[item] = len(self.items)
            self.items.append(item)
        return idx


def _zstd_frame(data: bytes) -> bytes:
    # Streaming encoder: no content size in the frame header (like the Rust crate).
    c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    return c.compress(data) + c.flush()


def _range(start: int, end: int) -> bytes:
    return struct.pack("<QQ", start, end)


# ---- writer ----------------------------------------------------------------

@dataclass
class SplitStreamWriter:
    """Builds splitstream bytes.  ``store(data) -> digest`` stores an object; it
    is needed only by :meth:`write_external`."""

    algorithm: Algorithm
    content_type: int = 0
    store: Callable[[bytes], bytes] | None = None
    stream_refs: _UniqueList = field(default_factory=_UniqueList)
    object_refs: _UniqueList = field(default_factory=_UniqueList)
    named_refs: dict[str, int] = field(default_factory=dict)
    total_size: int = 0
    _inline: bytearray = field(default_factory=bytearray)
    _z: zstandard.ZstdCompressionObj = field(
        default_factory=lambda: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj())
    _out: list[bytes] = field(default_factory=list)

    def add_named_stream_ref(self, name: str, digest: bytes) -> None:
        self._check_digest(digest)
        self.named_refs[name] = self.stream_refs.ensure(digest)

    def write_inline(self, data: bytes) -> None:
        self.total_size += len(data)
        self._inline += data

    def add_external_size(self, size: int) -> None:
        """Count an external chunk's size (for :meth:`write_reference`)."""
        self.total_size += size

    def write_reference(self, digest: bytes) -> None:
        """Reference an already stored object; its size is not counted."""
        self._check_digest(digest)
        self._flush_inline()
        self._feed(struct.pack("<q", self.object_refs.ensure(digest)))

    def write_external(self, data: bytes) -> None:
        if self.store is None:
            raise TypeError("SplitStreamWriter.write_external needs a store callback")
        self.total_size += len(data)
        self.write_reference(self.store(data))

    def finish(self) -> bytes:
        """The complete splitstream file (the writer must not be used after)."""
        self._flush_inline()
        self._out.append(self._z.flush())
        stream = b"".join(self._out)
        table = b"".join(f"{i}:{n}\0".encode()
                         for n, i in sorted(self.named_refs.items(), key=lambda kv: kv[0].encode()))
        named = _zstd_frame(table)
        sr = b"".join(self.stream_refs.items)
        orefs = b"".join(self.object_refs.items)
        sr_start = HEADER_SIZE + INFO_SIZE
        or_start = sr_start + len(sr)
        nr_start = or_start + len(orefs)
        st_start = nr_start + len(named)
        header = (MAGIC + bytes([0]) + struct.pack("<H", 0)
                  + bytes([self.algorithm.kernel_id, LG_BLOCKSIZE])
                  + _range(HEADER_SIZE, HEADER_SIZE + INFO_SIZE))
        info = (_range(sr_start, or_start) + _range(or_start, nr_start)
                + _range(st_start, st_start + len(stream)) + _range(nr_start, st_start)
                + struct.pack("<QQ", self.content_type, self.total_size))
        return header + info + sr + orefs + named + stream

    def _flush_inline(self) -> None:
        if self._inline:
            self._feed(struct.pack("<q", -len(self._inline)))
            self._feed(bytes(self._inline))
            self._inline.clear()

    def _feed(self, data: bytes) -> None:
        out = self._z.compress(data)
        if out:
            self._out.append(out)

    def _check_digest(self, digest: bytes) -> None:
        if len(digest) != self.algorithm.digest_size:
            raise ValueError(f"digest of {len(digest)} bytes in a {self.algorithm.hash_name} "
                             "splitstream")


def to_legacy_header(data: bytes) -> bytes:
    """Rewrite a current-layout file with the legacy (bootc <= 1.15) header."""
    if data[:11] != MAGIC:
        raise ValueError("not a current-layout splitstream")
    h = data[:HEADER_SIZE]
    return h[16:32] + h[12:14] + h[0:11] + h[11:12] + h[14:16] + data[HEADER_SIZE:]


# ---- reader ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Header:
    version: int
    algorithm_id: int
    lg_blocksize: int
    info: tuple[int, int]
    legacy: bool


def parse_header(raw: bytes) -> Header:
    """Parse the 32-byte header, accepting the legacy field order."""
    if len(raw) < HEADER_SIZE:
        raise SplitStreamError("splitstream too short for its header")
    if raw[0:11] == MAGIC:
        start, end = struct.unpack_from("<QQ", raw, 16)
        return Header(raw[11], raw[14], raw[15], (start, end), False)
    if raw[18:29] == MAGIC:
        start, end = struct.unpack_from("<QQ", raw, 0)
        return Header(raw[29], raw[30], raw[31], (start, end), True)
    raise SplitStreamError("Invalid splitstream header magic value")


class _Section(io.RawIOBase):
    """Read-only view of ``[start, end)`` of a seekable file."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        self._f, self._pos, self._end = f, start, end

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._end - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._pos)
        data = self._f.read(n)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _read_range(f: BinaryIO, rng: tuple[int, int], what: str) -> bytes:
    start, end = rng
    if end < start:
        raise SplitStreamError(f"Negative-sized range in splitstream ({what})")
    f.seek(start)
    data = f.read(end - start)
    if len(data) != end - start:
        raise SplitStreamError(f"Incomplete read from splitstream file ({what})")
    return data


def _split_digests(data: bytes, size: int, what: str) -> list[bytes]:
    if len(data) % size:
        raise SplitStreamError(f"splitstream {what} array is not a multiple of {size} bytes")
    return [data[i:i + size] for i in range(0, len(data), size)]


def parse_named_refs(table: bytes, stream_refs: list[bytes]) -> dict[str, bytes]:
    """Decode ``"<index>:<name>\\0"`` records (decompressed)."""
    out: dict[str, bytes] = {}
    records = table.split(b"\0")
    if records[-1]:
        raise SplitStreamError("Trailing junk in named references section")
    for rec in records[:-1]:
        try:
            text = rec.decode()
        except UnicodeDecodeError:
            raise SplitStreamError("named reference is not UTF-8") from None
        idx_str, sep, name = text.partition(":")
        if not sep:
            raise SplitStreamError("Named reference doesn't contain a colon")
        if not idx_str.isdigit():
            raise SplitStreamError("Named reference contains a non-integer index")
        idx = int(idx_str)
        if idx >= len(stream_refs):
            raise SplitStreamError("Named reference out of bounds")
        out[name] = stream_refs[idx]
    return out


def _decompress_all(data: bytes) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True)
        return reader.read()
    except zstandard.ZstdError as e:
        raise SplitStreamError(f"corrupt zstd data in splitstream: {e}") from None


class SplitStreamReader:
    """Parses a splitstream from a seekable binary file; chunks are decoded lazily."""

    def __init__(self, f: BinaryIO, algorithm: Algorithm,
                 expected_content_type: int | None = None) -> None:
        f.seek(0)
        header = parse_header(f.read(HEADER_SIZE))
        if header.version != 0:
            raise SplitStreamError(f"Invalid splitstream version {header.version}")
        if header.algorithm_id != algorithm.kernel_id:
            raise SplitStreamError("Invalid splitstream fs-verity algorithm type")
        if header.lg_blocksize != LG_BLOCKSIZE:
            raise SplitStreamError("Invalid splitstream fs-verity block size")
        self.legacy_header = header.legacy
        info = _read_range(f, header.info, "info")
        if len(info) < INFO_SIZE:
            raise SplitStreamError("splitstream info section is too small")
        r = struct.unpack_from("<8Q", info)
        stream_refs_r, object_refs_r, stream_r, named_r = (r[0:2], r[2:4], r[4:6], r[6:8])
        self.content_type, self.total_size = struct.unpack_from("<QQ", info, 64)
        if expected_content_type is not None and self.content_type != expected_content_type:
            raise SplitStreamError("Invalid splitstream content type")
        d = algorithm.digest_size
        self.stream_refs = _split_digests(_read_range(f, stream_refs_r, "stream refs"), d,
                                          "stream refs")
        self.object_refs = _split_digests(_read_range(f, object_refs_r, "object refs"), d,
                                          "object refs")
        self.named_refs = parse_named_refs(
            _decompress_all(_read_range(f, named_r, "named refs")), self.stream_refs)
        if stream_r[1] < stream_r[0]:
            raise SplitStreamError("Negative-sized range in splitstream (stream)")
        self._decoder = zstandard.ZstdDecompressor().stream_reader(
            io.BufferedReader(_Section(f, stream_r[0], stream_r[1]), 1 << 16),
            read_across_frames=True)
        self._inline_left = 0
        self._file = f

    def close(self) -> None:
        """Close the underlying file."""
        self._file.close()

    def __enter__(self) -> SplitStreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low-level chunk access ------------------------------------------------

    def _read(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n:
            try:
                data = self._decoder.read(n)
            except zstandard.ZstdError as e:
                raise SplitStreamError(f"corrupt zstd data in splitstream: {e}") from None
            if not data:
                break
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def _next_chunk(self) -> tuple[str, int | bytes]:
        """("eof", 0) | ("inline", nbytes) | ("external", digest); sets the
        inline byte count still to be consumed."""
        if self._inline_left:
            return "inline", self._inline_left
        raw = self._read(8)
        if not raw:
            return "eof", 0
        if len(raw) < 8:
            raise SplitStreamError("Unexpected EOF in splitstream chunk header")
        (n,) = struct.unpack("<q", raw)
        if n < 0:
            self._inline_left = -n
            return "inline", -n
        if n >= len(self.object_refs):
            raise SplitStreamError("Splitstream external reference is out of range")
        return "external", self.object_refs[n]

    def _take_inline(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise SplitStreamError("Unexpected EOF inside splitstream inline data")
        self._inline_left -= n
        return data

    def chunks(self, max_inline: int = 1 << 20) -> Iterator[Chunk]:
        """Inline data (in pieces of at most ``max_inline`` bytes) and external refs."""
        while True:
            kind, value = self._next_chunk()
            if kind == "eof":
                return
            if kind == "external":
                assert isinstance(value, bytes)
                yield ExternalChunk(value)
            else:
                yield self._take_inline(min(self._inline_left, max_inline))

    # -- helpers for the tar reader (oci) -------------------------------------

    def read_inline_exact(self, n: int) -> bytes | None:
        """``n`` bytes that must lie within the current inline chunk; None at EOF."""
        kind, _ = self._next_chunk()
        if kind == "eof":
            return None
        if kind == "external":
            raise SplitStreamError("Unexpected external reference in splitstream")
        if self._inline_left < n:
            raise SplitStreamError("Unexpectedly small inline content when parsing splitstream")
        return self._take_inline(n)

    def read_exact(self, actual: int, stored: int) -> Chunk:
        """One member of ``actual`` bytes padded to ``stored``: inline bytes
        (padding dropped) or an external object followed by inline padding."""
        kind, value = self._next_chunk()
        if kind == "eof":
            raise SplitStreamError("Unexpected EOF in splitstream")
        if kind == "external":
            assert isinstance(value, bytes)
            if actual < stored:
                pad_kind, _ = self._next_chunk()
                if pad_kind != "inline" or self._inline_left < stored - actual:
                    raise SplitStreamError("splitstream padding after an external chunk "
                                           "is missing")
                self._take_inline(stored - actual)
            return ExternalChunk(value)
        if self._inline_left < stored:
            raise SplitStreamError("Unexpectedly small inline content when parsing splitstream")
        return self._take_inline(stored)[:actual]

    def cat(self, write: Callable[[bytes], object],
            open_object: Callable[[bytes], BinaryIO]) -> None:
        """Reconstruct the original stream; ``open_object`` opens (and checks) an object."""
        for chunk in self.chunks():
            if isinstance(chunk, ExternalChunk):
                with open_object(chunk.digest) as obj:
                    while block := obj.read(1 << 20):
                        write(block)
            else:
                write(chunk)


# ---- builder with objects stored in parallel --------------------------------

class SplitStreamBuilder:
    """Collects a stream whose external objects are still being stored (e.g. by a
    thread pool): ``push_external`` takes a future of the ObjectID.  ``finish``
    waits for them in stream order and replays everything into a
    :class:`SplitStreamWriter` (composefs-rs ``SplitStreamBuilder``), so the
    bytes equal those of a writer fed sequentially."""

    def __init__(self, algorithm: Algorithm, content_type: int = 0) -> None:
        self.algorithm = algorithm
        self.content_type = content_type
        self._entries: list[bytearray | tuple[Future[bytes], int]] = []
        self._named: list[tuple[str, bytes]] = []
        self.inline_bytes = 0
        self.external_bytes = 0

    def push_inline(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.inline_bytes += len(data)
        last = self._entries[-1] if self._entries else None
        if isinstance(last, bytearray):
            last += data
        else:
            self._entries.append(bytearray(data))

    def push_external(self, digest: Future[bytes] | bytes, size: int) -> None:
        if isinstance(digest, bytes):
            done: Future[bytes] = Future()
            done.set_result(digest)
            digest = done
        self.external_bytes += size
        self._entries.append((digest, size))

    def add_named_stream_ref(self, name: str, digest: bytes) -> None:
        self._named.append((name, digest))

    def finish(self) -> bytes:
        writer = SplitStreamWriter(self.algorithm, self.content_type)
        for name, digest in self._named:
            writer.add_named_stream_ref(name, digest)
        for entry in self._entries:
            if isinstance(entry, bytearray):
                writer.write_inline(bytes(entry))
            else:
                future, size = entry
                writer.add_external_size(size)
                writer.write_reference(future.result())
        return writer.finish()
