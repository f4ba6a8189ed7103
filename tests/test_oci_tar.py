"""Tar → splitstream → tar round trips and tar entry parsing (oci-import.md
§5, §6).  References: the original bytes, and Python's tarfile reading the
same archive (an independent tar parser)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_oci_support import (
    end_blocks,
    file_entry,
    info,
    new_repo,
    py_tar,
    raw_header,
)

from cfsboot.oci.layers import read_entries
from cfsboot.oci.tarheader import TarError, parse_numeric
from cfsboot.oci.tarsplit import split_tar
from cfsboot.repository import CONTENT_OCI_LAYER, ExternalChunk, Repository


def split_and_cat(repo: Repository, tar: bytes, name: str = "oci-layer-x") -> bytes:
    writer, _ = split_tar(repo, io.BytesIO(tar))
    repo.write_stream(writer, name)
    out = bytearray()
    repo.cat(name, out.extend)
    return bytes(out)


def entries_of(repo: Repository, name: str = "oci-layer-x") -> list:  # type: ignore[type-arg]
    with repo.open_stream(name, None, CONTENT_OCI_LAYER) as r:
        return list(read_entries(r))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repo(tmp_path / "repo")


def sample_entries() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    long = "d/" + "n" * 150
    return [
        (info("d", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1001), None),
        file_entry("d/small", b"x" * 64),
        file_entry("d/big", os.urandom(65)),
        file_entry("d/huge", os.urandom(200_000), mode=0o4755),
        file_entry("d/empty", b""),
        file_entry(long, b"long name " * 20),
        (info("d/hl", tarfile.LNKTYPE, link="d/big"), None),
        (info("d/sym", tarfile.SYMTYPE, link="../" + "t" * 120), None),
        (info("d/chr", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        (info("d/blk", tarfile.BLKTYPE, devmajor=8, devminor=1), None),
        (info("d/fifo", tarfile.FIFOTYPE), None),
        file_entry("d/xattr", b"y" * 100,
                   pax_headers={"SCHILY.xattr.user.a": "1",
                                "SCHILY.xattr.security.capability": "\x01\x02",
                                "mtime": "1700000000.123456789"}),
    ]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_roundtrip_and_entries_match_tarfile(repo: Repository, fmt: int) -> None:
    entries = sample_entries()
    if fmt == tarfile.GNU_FORMAT:
        entries = [(i, d) for i, d in entries if not i.pax_headers]
    tar = py_tar(entries, fmt)
    assert split_and_cat(repo, tar) == tar
    ours = entries_of(repo)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        ref = tf.getmembers()
        contents = {m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
                    for m in ref if m.isreg()}
    assert len(ours) == len(ref)
    for e, m in zip(ours, ref, strict=True):
        assert e.path == b"/" + m.name.encode()
        assert e.member.mode == m.mode and e.member.uid == m.uid and e.member.gid == m.gid
        assert e.member.mtime_sec == int(m.mtime)
        if m.issym() or m.islnk():
            assert e.member.link == m.linkname.encode()
        if m.ischr() or m.isblk():
            assert e.member.rdev == os.makedev(m.devmajor, m.devminor)
        if m.isreg():
            data = contents[m.name]
            if len(data) > 64:
                assert isinstance(e.content, ExternalChunk)
                with repo.open_object(e.content.digest) as f:
                    assert f.read() == data
            else:
                assert e.content == data
        xattrs = {k[len("SCHILY.xattr."):].encode(): v.encode("utf-8", "surrogateescape")
                  for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        assert e.member.xattrs == xattrs
    if fmt == tarfile.PAX_FORMAT:
        xe = next(e for e in ours if e.path == b"/d/xattr")
        assert xe.member.mtime_nsec == 123456789


def test_object_refs_deduplicated(repo: Repository) -> None:
    data = os.urandom(1000)
    tar = py_tar([file_entry("a", data), file_entry("b", data), file_entry("c", b"z" * 70)])
    writer, stats = split_tar(repo, io.BytesIO(tar))
    assert len(writer.object_refs.items) == 2
    assert stats.objects_new == 2 and stats.objects_present == 1


def test_trailing_bytes_and_clean_eof(repo: Repository) -> None:
    tar = py_tar([file_entry("a", b"a" * 100)]) + b"junk after the end"
    assert split_and_cat(repo, tar) == tar
    # no end-of-archive blocks at all: a clean EOF at a header boundary is fine
    body = py_tar([file_entry("a", b"a" * 100)])
    body = body[:body.rindex(b"a" * 100) + 512]
    body = body[:len(body) // 512 * 512]
    assert split_and_cat(repo, body, "oci-layer-y") == body


def test_gnu_tar_tree_roundtrip(repo: Repository, tmp_path: Path) -> None:
    from test_oci_support import gnu_tar, write_tree
    src = tmp_path / "src"
    write_tree(src, {"usr/a": os.urandom(5000), "usr/b": b"small", "usr/l": "->a",
                     "usr/" + "deep/" * 30 + "f": b"q" * 300})
    os.link(src / "usr/a", src / "usr/a2")
    tar = gnu_tar(src)
    assert split_and_cat(repo, tar) == tar
    names = [e.path for e in entries_of(repo)]
    assert b"/./usr/" + b"deep/" * 30 + b"f" in names  # "./" kept, ignored on merge


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text("abc/é", min_size=1, max_size=120).filter(
    lambda s: not s.startswith("/") and "//" not in s and not s.endswith("/")),
    st.binary(max_size=3000)), max_size=6))
def test_random_tars_roundtrip(repo: Repository, files: list[tuple[str, bytes]]) -> None:
    tar = py_tar([file_entry(n, d) for n, d in files])
    assert split_and_cat(repo, tar, "oci-layer-h") == tar


# ---- hostile and malformed tars ----------------------------------------------

def bad(repo: Repository, tar: bytes, match: str) -> None:
    with pytest.raises(TarError, match=match):
        writer, _ = split_tar(repo, io.BytesIO(tar))
        repo.write_stream(writer, "oci-layer-bad")
        entries_of(repo, "oci-layer-bad")


def test_checksum_mismatch(repo: Repository) -> None:
    bad(repo, raw_header(b"a", fix_checksum=False) + end_blocks(), "checksum")


def test_truncated_content(repo: Repository) -> None:
    tar = py_tar([file_entry("a", os.urandom(5000))])
    bad(repo, tar[:2000], "truncated")


def test_truncated_header(repo: Repository) -> None:
    tar = py_tar([file_entry("a", b"x")])
    bad(repo, tar[:300], "truncated")


def test_negative_base256_size(repo: Repository) -> None:
    bad(repo, raw_header(b"a", size_field=b"\xff" * 12) + end_blocks(), "negative")


def test_huge_size_is_truncated_not_allocated(repo: Repository) -> None:
    # base-256 size of 2**80 bytes: streamed, so it fails as truncated, fast
    field = bytes([0x80]) + (1 << 80).to_bytes(11, "big")
    bad(repo, raw_header(b"a", size_field=field) + bytes(4096), "truncated")


def test_invalid_octal(repo: Repository) -> None:
    bad(repo, raw_header(b"a", size_field=b"12x4\0" + bytes(7)) + end_blocks(), "invalid size")


def test_sparse_rejected(repo: Repository) -> None:
    bad(repo, raw_header(b"a", b"S", gnu=True) + end_blocks(), "sparse")


def test_nonzero_size_on_directory(repo: Repository) -> None:
    bad(repo, raw_header(b"d/", b"5", size=512) + bytes(512) + end_blocks(), "non-zero size")


def test_orphaned_extension(repo: Repository) -> None:
    tar = py_tar([file_entry("a", b"x", pax_headers={"path": "b"})])
    pax_len = 1024  # the x header and its one data block
    bad(repo, tar[:pax_len] + end_blocks(), "orphaned")


def test_stray_zero_block(repo: Repository) -> None:
    one = py_tar([file_entry("a", b"x")])[:1024]
    two = py_tar([file_entry("b", b"y")])[:1024]
    bad(repo, one + bytes(512) + two + end_blocks(), "stray zero block")


def test_unsupported_type(repo: Repository) -> None:
    bad(repo, raw_header(b"v", b"V") + end_blocks(), "unsupported")


def test_huge_pax_header(repo: Repository) -> None:
    h = raw_header(b"././@PaxHeader", b"x", size=(1 << 20) + 1)
    bad(repo, h + bytes(1 << 20) + bytes(1024), "exceeds the limit")


def test_duplicate_pax(repo: Repository) -> None:
    rec = b"12 path=abc\n"
    x = raw_header(b"p", b"x", size=len(rec)) + rec.ljust(512, b"\0")
    bad(repo, x + x + raw_header(b"a") + end_blocks(), "duplicate PAX")


def test_trailing_flood_rejected(repo: Repository) -> None:
    bad(repo, py_tar([file_entry("a", b"x")]) + bytes(17 << 20), "after the end")


def test_parse_numeric_forms() -> None:
    assert parse_numeric(b" 0000644\0", "m") == 0o644
    assert parse_numeric(b"0000644 \0\0", "m") == 0o644
    assert parse_numeric(b"\0" * 8, "m") == 0
    assert parse_numeric(bytes([0x80, 0, 0, 1, 0]), "m") == 256
