"""Corrupt and hostile images: only ErofsError, quickly, never a crash or hang.

Two halves: hypothesis mutations of every vector image (bit flips, byte
overwrites biased to the inode/dirent area, truncations), and hand-made
corruptions of writer output, each checked for the specific one-line error.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import RS_VECTORS, VECTORS, need_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsboot.erofs.fsck import check_image
from cfsboot.erofs.reader import ErofsError, ErofsImage, list_objects, read_erofs
from cfsboot.tree.model import (
    CharDevice,
    Directory,
    External,
    Inline,
    Leaf,
    Stat,
    Symlink,
)

IMAGES: list[bytes] = [p.read_bytes() for p in
                       sorted(VECTORS.glob("*.cfs")) + sorted(RS_VECTORS.glob("*.erofs"))]
try:  # writer output with multi-block directories, promoted symlinks, shared xattrs
    from test_erofs_reader_kernel import rich_tree

    from cfsboot.erofs.writer import mkfs_erofs
    IMAGES += [mkfs_erofs(rich_tree(v), v) for v in (0, 1, 2)]
except ImportError:
    pass
FIRST_INODE = 1152

fuzz_settings = settings(max_examples=150, deadline=2000,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


def _exercise(data: bytes) -> None:
    """Every entry point either succeeds or raises ErofsError."""
    try:
        read_erofs(data)
    except ErofsError as e:
        msg = str(e)
        assert msg and "\n" not in msg
    with contextlib.suppress(ErofsError):
        list_objects(data)
    problems = check_image(data)
    assert all(p and "\n" not in p for p in problems)


@st.composite
def _positions(draw: st.DrawFn, size: int) -> int:
    meta_end = min(size - 1, FIRST_INODE + 3 * 4096)
    return draw(st.one_of(st.integers(FIRST_INODE, max(FIRST_INODE, meta_end)),
                          st.integers(0, size - 1)))


@st.composite
def _bit_flipped(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(IMAGES)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(_positions(len(data)))
        data[pos] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def _overwritten(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(IMAGES)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(_positions(len(data)))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[pos:pos + len(chunk)] = chunk[:len(data) - pos]
    return bytes(data)


@st.composite
def _truncated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(IMAGES))
    return data[:draw(st.integers(0, len(data) - 1))]


@fuzz_settings
@given(_bit_flipped())
def test_bit_flips_only_raise_erofs_error(data: bytes) -> None:
    _exercise(data)


@fuzz_settings
@given(_overwritten())
def test_random_bytes_only_raise_erofs_error(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=60, deadline=2000)
@given(_truncated())
def test_truncations_only_raise_erofs_error(data: bytes) -> None:
    _exercise(data)
    assert check_image(data)  # at least the block count no longer matches


# ---- hand-made corruptions -----------------------------------------------------

writer = pytest.importorskip("cfsboot.erofs.writer")


def _st(mode: int = 0o644) -> Stat:
    return Stat(mode, 0, 0, 100, 0)


def _dir(entries: Mapping[bytes, Directory | Leaf]) -> Directory:
    return Directory(_st(0o755), dict(entries))


def _image(root: Directory, version: int = 2) -> bytearray:
    data: bytes = writer.mkfs_erofs(root, version)
    read_erofs(data)  # the unpatched image is fine
    return bytearray(data)


def _nid_of(data: bytes | bytearray, path: bytes) -> int:
    img = ErofsImage(bytes(data))
    nid = img.info.root_nid
    for part in path.strip(b"/").split(b"/"):
        ents = {e.name: e.nid for e in img.dirents(img.inode(nid), "test")}
        nid = ents[part]
    return nid


def _dirent_offsets(data: bytes | bytearray, dir_nid: int) -> dict[bytes, tuple[int, int]]:
    """name -> (dirent header offset, name offset) for an inline (V2) directory."""
    img = ErofsImage(bytes(data))
    ino = img.inode(dir_nid)
    base = ino.inline_offset
    first = struct.unpack_from("<H", data, base + 8)[0]
    heads = [struct.unpack_from("<QHBx", data, base + 12 * i) for i in range(first // 12)]
    out = {}
    for i, (_nid, nameoff, _ft) in enumerate(heads):
        end = heads[i + 1][1] if i + 1 < len(heads) else ino.inline_size
        out[bytes(data[base + nameoff:base + end])] = (base + 12 * i, base + nameoff)
    return out


def _patch_dirent_nid(data: bytearray, dir_path: bytes, name: bytes, nid: int) -> None:
    head, _ = _dirent_offsets(data, _nid_of(data, dir_path) if dir_path != b"/"
                              else ErofsImage(bytes(data)).info.root_nid)[name]
    struct.pack_into("<Q", data, head, nid)


def _inode_off(data: bytes | bytearray, path: bytes) -> int:
    return _nid_of(data, path) * 32


def _expect(data: bytes | bytearray, pattern: str) -> None:
    with pytest.raises(ErofsError, match=pattern):
        read_erofs(bytes(data))
    problems = check_image(bytes(data))
    assert len(problems) == 1 and problems[0]


def test_directory_reachable_twice() -> None:
    data = _image(_dir({b"a": _dir({}), b"b": _dir({})}))
    _patch_dirent_nid(data, b"/", b"b", _nid_of(data, b"/a"))
    _expect(data, "reachable twice")


def test_directory_loop_back_to_root() -> None:
    data = _image(_dir({b"a": _dir({b"x": _dir({})})}))
    root_nid = ErofsImage(bytes(data)).info.root_nid
    _patch_dirent_nid(data, b"/a", b"x", root_nid)
    _expect(data, "reachable twice")


def test_exponential_directory_sharing_is_rejected_quickly() -> None:
    """d0 -> {a, b} -> d1 -> {a, b} -> ... : 2^40 paths if read naively."""
    depth = 40
    node = _dir({})
    for _ in range(depth):
        node = _dir({b"a": node, b"b": _dir({})})
    data = _image(node)
    path = b""
    for _ in range(depth):
        _patch_dirent_nid(data, path or b"/", b"b", _nid_of(data, path + b"/a"))
        path += b"/a"
    _expect(data, "reachable twice")


def test_bad_dot_entries() -> None:
    data = _image(_dir({b"a": _dir({}), b"b": _dir({})}))
    _patch_dirent_nid(data, b"/a", b".", _nid_of(data, b"/b"))
    _expect(data, "'.' entry")
    data = _image(_dir({b"a": _dir({}), b"b": _dir({})}))
    _patch_dirent_nid(data, b"/a", b"..", _nid_of(data, b"/b"))
    _expect(data, "'..' entry")


@pytest.mark.parametrize(("new_name", "pattern"), [
    (b"/", "invalid entry name"),
    (b"\0", "invalid entry name"),
    (b"d", "not sorted"),
    (b".", "not sorted"),
])
def test_bad_entry_names(new_name: bytes, pattern: str) -> None:
    leaf = Leaf(_st(), Inline(b"x"))
    data = _image(_dir({b"b": leaf, b"c": Leaf(_st(), Inline(b"y"))}))
    _, name_off = _dirent_offsets(data, ErofsImage(bytes(data)).info.root_nid)[b"b"]
    data[name_off:name_off + 1] = new_name
    _expect(data, pattern)


def test_empty_entry_name() -> None:
    data = _image(_dir({b"b": Leaf(_st(), Inline(b"x")), b"c": Leaf(_st(), Inline(b"y"))}))
    root_nid = ErofsImage(bytes(data)).info.root_nid
    offs = _dirent_offsets(data, root_nid)
    head_c, _ = offs[b"c"]
    _, name_b = offs[b"b"]
    base = ErofsImage(bytes(data)).inode(root_nid).inline_offset
    struct.pack_into("<H", data, head_c + 8, name_b - base)  # "b" now has length 0
    _expect(data, "invalid entry name|out of order")


def test_bad_first_nameoff() -> None:
    data = _image(_dir({b"b": Leaf(_st(), Inline(b"x"))}))
    base = ErofsImage(bytes(data)).inode(ErofsImage(bytes(data)).info.root_nid).inline_offset
    struct.pack_into("<H", data, base + 8, 13)
    _expect(data, "first nameoff")


def test_dirent_nid_past_end() -> None:
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    _patch_dirent_nid(data, b"/", b"f", 1 << 40)
    _expect(data, "past the end")


def test_unknown_i_format_and_file_type() -> None:
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    off = _inode_off(data, b"/f")
    data[off] |= 0x10
    _expect(data, "unknown i_format")
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    struct.pack_into("<H", data, off, 0x7 << 1 | 1)
    _expect(data, "data layout")
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    struct.pack_into("<H", data, off + 4, 0o170644)
    _expect(data, "unknown file type")


def test_leaf_nlink_mismatch() -> None:
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    struct.pack_into("<I", data, _inode_off(data, b"/f") + 44, 2)  # extended i_nlink
    _expect(data, "nlink is 2 but 1 directory entries")


def test_undercounted_hard_link_is_accepted() -> None:
    """nlink 1 on an inode with two entries (C mkcomposefs from a dumpfile with
    a low NLINK field): read as one Leaf, as composefs-rs and C accept it."""
    data = _image(_dir({b"a": Leaf(_st(), Inline(b"x")), b"b": Leaf(_st(), Inline(b"y"))}))
    _patch_dirent_nid(data, b"/", b"b", _nid_of(data, b"/a"))
    root = read_erofs(bytes(data))
    assert root.entries[b"a"] is root.entries[b"b"]
    struct.pack_into("<I", data, _inode_off(data, b"/a") + 44, 3)
    _expect(data, "nlink is 3 but 2 directory entries")


def test_whiteout_with_two_entries() -> None:
    data = _image(_dir({b"a": Leaf(_st(), CharDevice(0)), b"b": Leaf(_st(), Inline(b"y"))}))
    _patch_dirent_nid(data, b"/", b"b", _nid_of(data, b"/a"))
    _expect(data, "whiteout referenced by 2")


def test_directory_nlink_mismatch() -> None:
    data = _image(_dir({b"d": _dir({})}))
    struct.pack_into("<I", data, ErofsImage(bytes(data)).info.root_nid * 32 + 44, 7)
    _expect(data, "nlink is 7, expected 3")


def test_hard_linked_whiteout() -> None:
    data = _image(_dir({b"w": Leaf(_st(), CharDevice(0))}))
    struct.pack_into("<I", data, _inode_off(data, b"/w") + 44, 2)
    _expect(data, "whiteout inode has nlink 2")


def test_xattr_body_overflows() -> None:
    leaf = Leaf(Stat(0o644, 0, 0, 100, 0, {b"user.a": b"v" * 40}), Inline(b"x"))
    data = _image(_dir({b"f": leaf}))
    off = _inode_off(data, b"/f")
    struct.pack_into("<H", data, off + 2, 0xFFFF)  # xattr_icount
    _expect(data, "past the end of the image")
    data = _image(_dir({b"f": leaf}))
    struct.pack_into("<H", data, off + 64 + 12 + 2, 0xFFFF)  # first entry's value size
    _expect(data, "extends past its area")
    data = _image(_dir({b"f": leaf}))
    data[off + 64 + 12 + 1] = 9  # name index
    _expect(data, "unknown name index")
    data = _image(_dir({b"f": leaf}))
    data[off + 64 + 4] = 200  # shared_count
    _expect(data, "shared xattr references")


def test_shared_xattr_ref_out_of_bounds() -> None:
    label = {b"security.selinux": b"system_u:object_r:usr_t:s0"}
    leaves = {n: Leaf(Stat(0o644, 0, 0, 100, 0, dict(label)), Inline(n)) for n in (b"a", b"b")}
    data = _image(_dir(leaves))
    off = _inode_off(data, b"/a")
    assert data[off + 64 + 4] == 1  # one shared reference
    struct.pack_into("<I", data, off + 64 + 12, 0x3FFFFFFF)
    _expect(data, "shared xattr")


def test_malformed_metacopy() -> None:
    ext = Leaf(_st(), External.from_digest(b"\x11" * 32, 5000))
    data = _image(_dir({b"e": ext}))
    off = _inode_off(data, b"/e")
    value_at = off + 64 + 12 + 4 + len(b"overlay.metacopy")
    data[value_at + 3] = 7  # digest algorithm
    _expect(data, "malformed trusted.overlay.metacopy")


def test_inline_file_too_large_for_v2() -> None:
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x" * 100))}))
    struct.pack_into("<Q", data, _inode_off(data, b"/f") + 8, 600)
    _expect(data, "V2 allows at most 512|past the end")


def test_size_beyond_image() -> None:
    data = _image(_dir({b"l": Leaf(_st(), Symlink(b"target"))}), version=1)
    off = _inode_off(data, b"/l")
    extended = data[off] & 1
    struct.pack_into("<Q" if extended else "<I", data, off + 8, len(data) + 1)
    _expect(data, "exceeds the image size|past the end")


def test_shared_data_blocks_are_capped() -> None:
    """Many inodes pointing at the same blocks cannot multiply the work."""
    files = {b"f%03d" % i: Leaf(_st(), Inline(bytes([i]) * 3000)) for i in range(40)}
    data = _image(_dir(files), version=1)
    img = ErofsImage(bytes(data))
    for name in files:
        off = _inode_off(data, b"/" + name)
        assert img.inode(off // 32).layout == 0  # FLAT_PLAIN in a data block
        struct.pack_into("<I", data, off + 8, len(data))  # compact i_size
        struct.pack_into("<I", data, off + 16, 0)  # i_u: block 0
    _expect(data, "overlap")


def test_overlapping_inode_records_are_capped() -> None:
    """Inode records whose xattr bodies all span the rest of the image."""
    files = {b"f%03d" % i: Leaf(_st(), Inline(b"x")) for i in range(40)}
    data = _image(_dir(files))
    for name in files:
        off = _inode_off(data, b"/" + name)
        icount = (len(data) - off - 64 - 12 - 64) // 4 + 1
        struct.pack_into("<H", data, off + 2, icount)
    _expect(data, "overlaps other inodes")


def _deep_image(depth: int) -> bytes:
    """A V2 image nested ``depth`` levels (the writer recurses: give it room)."""
    node = _dir({})
    for _ in range(depth):
        node = _dir({b"d": node})
    result: list[bytes] = []
    old_limit = sys.getrecursionlimit()
    old_stack = threading.stack_size(512 << 20)
    sys.setrecursionlimit(50_000)
    try:
        worker = threading.Thread(target=lambda: result.append(writer.mkfs_erofs(node, 2)))
        worker.start()
        worker.join()
    finally:
        sys.setrecursionlimit(old_limit)
        threading.stack_size(old_stack)
    if not result:
        pytest.skip("writer could not build a deep tree")
    return result[0]


def test_deep_nesting_limit() -> None:
    read_erofs(_deep_image(2047))  # composefs-rs MAX_DIRECTORY_DEPTH is 2048
    with pytest.raises(ErofsError, match="deeper than 2048"):
        read_erofs(_deep_image(2048))


def test_root_must_be_a_directory() -> None:
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    struct.pack_into("<H", data, 1024 + 14, _nid_of(data, b"/f"))
    _expect(data, "root inode")


def test_superblock_fields() -> None:
    base = _image(_dir({}))
    cases: list[tuple[int, bytes, str]] = [
        (0, b"\0\0\0\0", "composefs magic"),
        (4, b"\x02", "header version"),
        (12, b"\x07", "composefs_version"),
        (1024, b"\0", "EROFS magic"),
        (1024 + 12, b"\x0b", "blkszbits"),
        (1024 + 80, b"\x01", "feature_incompat"),
        (1024 + 8, b"\x08", "feature_compat"),
        (1024 + 40, b"\x01", "meta_blkaddr"),
    ]
    for off, patch, pattern in cases:
        data = bytearray(base)
        data[off:off + len(patch)] = patch
        _expect(data, pattern)


def test_fsck_reports_non_fatal_problems() -> None:
    data = _image(_dir({b"f": Leaf(_st(), Inline(b"x"))}))
    head, _ = _dirent_offsets(data, ErofsImage(bytes(data)).info.root_nid)[b"f"]
    data[head + 10] = 7  # dirent file type: symlink
    struct.pack_into("<Q", data, 1024 + 16, 99)  # inos
    read_erofs(bytes(data))  # the tree still decodes
    problems = check_image(bytes(data))
    assert any("dirent file type 7" in p for p in problems)
    assert any("inos 99" in p for p in problems)


def test_fsck_bloom_filter_hiding_an_xattr() -> None:
    leaf = Leaf(Stat(0o644, 0, 0, 100, 0, {b"user.a": b"1"}), Inline(b"x"))
    data = _image(_dir({b"f": leaf}))
    struct.pack_into("<I", data, _inode_off(data, b"/f") + 64, 0xFFFFFFFF)
    assert any("name filter" in p for p in check_image(bytes(data)))


ALL_PATHS = sorted(VECTORS.glob("*.cfs")) + sorted(RS_VECTORS.glob("*.erofs"))


@pytest.mark.parametrize("path", ALL_PATHS, ids=[p.name for p in ALL_PATHS])
def test_zeroed_blocks_only_raise_erofs_error(path: Path) -> None:
    original = path.read_bytes()
    for block in range(len(original) // 4096):
        data = bytearray(original)
        data[block * 4096:(block + 1) * 4096] = bytes(4096)
        _exercise(bytes(data))


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_bit_flipped())
def test_clean_check_implies_fsck_erofs_accepts(data: bytes) -> None:
    """check_image is never more lenient than erofs-utils' fsck.erofs."""
    fsck_erofs = need_tool("fsck.erofs")
    if check_image(data):
        return
    with tempfile.NamedTemporaryFile(suffix=".erofs") as f:
        f.write(data)
        f.flush()
        res = subprocess.run([fsck_erofs, f.name], capture_output=True)
    assert res.returncode == 0, res.stderr.decode(errors="replace")


@pytest.mark.parametrize("path", ALL_PATHS, ids=[p.name for p in ALL_PATHS])
def test_vectors_pass_fsck_erofs(path: Path) -> None:
    res = subprocess.run([need_tool("fsck.erofs"), str(path)], capture_output=True)
    assert res.returncode == 0
