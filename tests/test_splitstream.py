"""Splitstream format: byte vectors from repository.md §10 (checked against
composefs-rs splitstream.rs @0fbc853), round trips, legacy headers, errors."""

from __future__ import annotations

import io
import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.repository.meta import SHA256, SHA512, Algorithm
from cfsboot.repository.splitstream import (
    CONTENT_OCI_BLOB,
    CONTENT_OCI_CONFIG,
    CONTENT_OCI_LAYER,
    CONTENT_OCI_MANIFEST,
    ExternalChunk,
    SplitStreamError,
    SplitStreamReader,
    SplitStreamWriter,
    to_legacy_header,
)

EMPTY_FRAME = bytes.fromhex("28b52ffd2000010000")


def _reader(data: bytes, alg: Algorithm = SHA256, ct: int | None = None) -> SplitStreamReader:
    return SplitStreamReader(io.BytesIO(data), alg, ct)


def _fake_store(objects: dict[bytes, bytes], alg: Algorithm):  # type: ignore[no-untyped-def]
    from cfsboot.fsverity import fsverity_digest

    def store(data: bytes) -> bytes:
        d = fsverity_digest(data, alg.hash_name)
        objects[d] = data
        return d
    return store


def test_content_type_constants_spell_their_tags() -> None:
    for value, tag in ((CONTENT_OCI_LAYER, b"ocilayer"), (CONTENT_OCI_CONFIG, b"ociconfg"),
                       (CONTENT_OCI_MANIFEST, b"ocimanif"), (CONTENT_OCI_BLOB, b"oci_blob")):
        assert struct.pack("<Q", value) == tag
    assert CONTENT_OCI_LAYER == 0x726579616C69636F


def test_empty_stream_bytes() -> None:
    data = SplitStreamWriter(SHA256).finish()
    header = b"SplitStream\x00\x00\x00\x01\x0c" + struct.pack("<QQ", 32, 112)
    info = struct.pack("<8QQQ", 112, 112, 112, 112, 121, 130, 112, 121, 0, 0)
    assert data == header + info + EMPTY_FRAME + EMPTY_FRAME


def test_named_refs_and_single_external_vectors() -> None:
    a, b = bytes([1]) * 32, bytes([2]) * 32
    w = SplitStreamWriter(SHA256, 0)
    w.add_named_stream_ref("foo", b)
    w.add_named_stream_ref("config", a)
    w.write_reference(a)
    data = w.finish()
    # stream_refs in first-call order, named table sorted by name
    assert data[112:176] == b + a
    assert data[176:208] == a
    start, end = struct.unpack_from("<QQ", data, 32 + 48)
    table = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data[start:end])).read()
    assert table == b"1:config\x000:foo\x00"  # foo was added first: index 0
    assert data.endswith(bytes.fromhex("28b52ffd00584100000000000000000000"))


def test_named_table_vector_from_spec() -> None:
    w = SplitStreamWriter(SHA256)
    w.add_named_stream_ref("config", bytes(32))
    w.add_named_stream_ref("foo", bytes([9]) * 32)
    data = w.finish()
    start, end = struct.unpack_from("<QQ", data, 32 + 48)
    assert data[start:end] == bytes.fromhex("28b52ffd0058790000303a636f6e66696700313a666f6f00")


def test_worked_example_config_header() -> None:
    """repository.md §10.9: an OCI config splitstream."""
    config = b'{"architecture":"amd64"}'
    objects: dict[bytes, bytes] = {}
    ol, oi = bytes([0xAA]) * 32, bytes([0xBB]) * 32
    w = SplitStreamWriter(SHA256, CONTENT_OCI_CONFIG, _fake_store(objects, SHA256))
    w.add_named_stream_ref("sha256:" + "L" * 4, ol)
    w.add_named_stream_ref("composefs.image.v1", oi)
    w.write_external(config)
    data = w.finish()
    assert data[:32].hex() == ("53706c697453747265616d" "00" "0000" "01" "0c"
                               "2000000000000000" "7000000000000000")
    sr, orr, stream, nr = (struct.unpack_from("<QQ", data, 32 + 16 * i) for i in range(4))
    assert sr == (112, 176) and orr == (176, 208) and nr[0] == 208 and stream[0] == nr[1]
    assert data[64 + 32:72 + 32] == b"ociconfg"
    assert struct.unpack_from("<Q", data, 104)[0] == len(config)
    r = _reader(data, ct=CONTENT_OCI_CONFIG)
    assert r.stream_refs == [ol, oi]
    assert r.named_refs == {"sha256:LLLL": ol, "composefs.image.v1": oi}
    assert list(r.chunks()) == [ExternalChunk(next(iter(objects)))]


def test_inline_coalescing_and_dedup() -> None:
    objects: dict[bytes, bytes] = {}
    w = SplitStreamWriter(SHA512, 7, _fake_store(objects, SHA512))
    w.write_inline(b"ab")
    w.write_inline(b"cd")
    w.write_external(b"X" * 100)
    w.write_external(b"Y" * 100)
    w.write_external(b"X" * 100)
    w.write_inline(b"")
    w.write_inline(b"ef")
    data = w.finish()
    r = _reader(data, SHA512, 7)
    assert r.total_size == 306
    assert len(r.object_refs) == 2
    raw_stream = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(data[struct.unpack_from("<Q", data, 32 + 32)[0]:])).read()
    assert raw_stream == (struct.pack("<q", -4) + b"abcd" + struct.pack("<qqq", 0, 1, 0)
                          + struct.pack("<q", -2) + b"ef")
    chunks = list(r.chunks())
    x, y = r.object_refs
    assert chunks == [b"abcd", ExternalChunk(x), ExternalChunk(y), ExternalChunk(x), b"ef"]


def test_legacy_header_is_readable_and_identical_otherwise() -> None:
    w = SplitStreamWriter(SHA256, CONTENT_OCI_LAYER)
    w.write_inline(b"hello")
    new = w.finish()
    old = to_legacy_header(new)
    assert old[32:] == new[32:] and old[:32] != new[:32]
    assert old[18:29] == b"SplitStream" and old[:16] == new[16:32]
    r = _reader(old, ct=CONTENT_OCI_LAYER)
    assert r.legacy_header and list(r.chunks()) == [b"hello"]


def test_info_section_may_grow() -> None:
    data = bytearray(SplitStreamWriter(SHA256).finish())
    # move info to the end with 16 extra bytes; the reader must use the range
    info = bytes(data[32:112]) + b"\xff" * 16
    start = len(data)
    data += info
    struct.pack_into("<QQ", data, 16, start, start + len(info))
    assert list(_reader(bytes(data)).chunks()) == []


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"Nope" + d[4:], "magic"),
    (lambda d: d[:11] + b"\x01" + d[12:], "version"),
    (lambda d: d[:14] + b"\x02" + d[15:], "algorithm"),
    (lambda d: d[:15] + b"\x0d" + d[16:], "block size"),
    (lambda d: d[:16] + struct.pack("<QQ", 112, 32) + d[32:], "Negative"),
    (lambda d: d[:16] + struct.pack("<QQ", 32, 100) + d[32:], "too small"),
])
def test_bad_headers(mutate, message) -> None:  # type: ignore[no-untyped-def]
    data = SplitStreamWriter(SHA256).finish()
    with pytest.raises(SplitStreamError, match=message):
        _reader(mutate(data))


def _with_sections(named: bytes = b"", stream: bytes = b"", refs: int = 0) -> bytes:
    """A hand-built splitstream with given decompressed named table / chunk stream."""
    def frame(b: bytes) -> bytes:
        c = zstandard.ZstdCompressor().compressobj()
        return c.compress(b) + c.flush()
    sr = bytes(range(refs * 32))[: refs * 32] if refs else b""
    nr, st_ = frame(named), frame(stream)
    a = 112 + len(sr)
    header = b"SplitStream\0\0\0\x01\x0c" + struct.pack("<QQ", 32, 112)
    info = struct.pack("<8QQQ", 112, a, 112, 112, a + len(nr), a + len(nr) + len(st_),
                       a, a + len(nr), 0, 0)
    return header + info + sr + nr + st_


def test_named_ref_errors() -> None:
    with pytest.raises(SplitStreamError, match="Trailing junk"):
        _reader(_with_sections(b"0:a\0junk", refs=1))
    with pytest.raises(SplitStreamError, match="out of bounds"):
        _reader(_with_sections(b"1:a\0", refs=1))
    with pytest.raises(SplitStreamError, match="colon"):
        _reader(_with_sections(b"abc\0", refs=1))
    r = _reader(_with_sections(b"0:config:sha256:ab\0", refs=1))
    assert list(r.named_refs) == ["config:sha256:ab"]  # split at the first colon


def test_chunk_stream_errors() -> None:
    with pytest.raises(SplitStreamError, match="EOF"):
        list(_reader(_with_sections(stream=struct.pack("<q", -10) + b"abc")).chunks())
    with pytest.raises(SplitStreamError, match="EOF"):
        list(_reader(_with_sections(stream=b"\x01\x02")).chunks())
    with pytest.raises(SplitStreamError, match="out of range"):
        list(_reader(_with_sections(stream=struct.pack("<q", 0))).chunks())


def test_tar_helpers() -> None:
    objects: dict[bytes, bytes] = {}
    w = SplitStreamWriter(SHA256, 0, _fake_store(objects, SHA256))
    w.write_inline(b"H" * 512)
    w.write_external(b"D" * 700)
    w.write_inline(b"\0" * 324 + b"T" * 512)
    r = _reader(w.finish())
    assert r.read_inline_exact(512) == b"H" * 512
    ext = r.read_exact(700, 1024)
    assert isinstance(ext, ExternalChunk) and objects[ext.digest] == b"D" * 700
    assert r.read_exact(500, 512) == b"T" * 500
    assert r.read_inline_exact(512) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), st.integers(0, 3)), max_size=20),
       st.sampled_from([SHA256, SHA512]), st.booleans())
def test_round_trip(parts: list[bytes | int], alg: Algorithm, legacy: bool) -> None:
    objects: dict[bytes, bytes] = {}
    store = _fake_store(objects, alg)
    blobs = [bytes([65 + i]) * (100 + i) for i in range(4)]
    w = SplitStreamWriter(alg, 42, store)
    expected = b""
    for p in parts:
        if isinstance(p, int):
            w.write_external(blobs[p])
            expected += blobs[p]
        else:
            w.write_inline(p)
            expected += p
    data = w.finish()
    if legacy:
        data = to_legacy_header(data)
    r = _reader(data, alg, 42)
    assert r.total_size == len(expected)
    out = bytearray()
    r.cat(out.extend, lambda d: io.BytesIO(objects[d]))
    assert bytes(out) == expected
    # object refs: unique, in order of first appearance
    seen = []
    for p in parts:
        if isinstance(p, int):
            d = store(blobs[p])
            if d not in seen:
                seen.append(d)
    assert r.object_refs == seen


def test_builder_with_parallel_objects_matches_writer() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cfsboot.repository.splitstream import SplitStreamBuilder

    objects: dict[bytes, bytes] = {}
    store = _fake_store(objects, SHA256)
    blobs = [bytes([i]) * (5000 + i) for i in range(6)] + [bytes([0]) * 5000]
    w = SplitStreamWriter(SHA256, CONTENT_OCI_LAYER, store)
    w.add_named_stream_ref("x", bytes(32))
    b = SplitStreamBuilder(SHA256, CONTENT_OCI_LAYER)
    b.add_named_stream_ref("x", bytes(32))
    with ThreadPoolExecutor(4) as pool:
        for i, blob in enumerate(blobs):
            w.write_inline(b"h%d" % i)
            w.write_inline(b"-")
            w.write_external(blob)
            b.push_inline(b"h%d" % i)
            b.push_inline(b"-")
            b.push_external(pool.submit(store, blob), len(blob))
        b.push_inline(b"end")
        w.write_inline(b"end")
        assert b.finish() == w.finish()
