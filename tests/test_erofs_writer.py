"""EROFS writer: the worked examples of spec/erofs-image.md section 8 (digests
pinned upstream or derived from the spec), byte-level layout facts, the C
mkcomposefs compatibility switches (section 11) and invalid trees."""

from __future__ import annotations

import hashlib
import struct
import time

import pytest

from cfsboot.erofs.writer import ErofsWriteError, c_effective_version, mkfs_erofs
from cfsboot.erofs.xxh32 import xxh32
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Socket,
    Sparse,
    Stat,
    Symlink,
)


def fsverity_ref(data: bytes, alg: str) -> str:
    """fs-verity digest straight from spec/fsverity.md section 2 (hashlib only)."""
    new = hashlib.sha256 if alg == "sha256" else hashlib.sha512
    bs = 4096
    if not data:
        root = bytes(new().digest_size)
    else:
        level = [new(data[i:i + bs].ljust(bs, b"\0")).digest() for i in range(0, len(data), bs)]
        while len(level) > 1:
            packed = b"".join(level)
            level = [new(packed[i:i + bs].ljust(bs, b"\0")).digest()
                     for i in range(0, len(packed), bs)]
        root = level[0]
    desc = (bytes([1, 1 if alg == "sha256" else 2, 12, 0]) + bytes(4)
            + len(data).to_bytes(8, "little") + root.ljust(64, b"\0") + bytes(176))
    return new(desc).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def st(mode: int = 0o755, mtime: int = 0, **xattrs: bytes) -> Stat:
    return Stat(mode, 0, 0, mtime, 0, {k.replace("_", ".").encode(): v
                                        for k, v in xattrs.items()})


def u16(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", b, off)[0])


def u32(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def u64(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", b, off)[0])


def root_child_offset(img: bytes, name: bytes) -> int:
    """Byte offset of the inode a V0/V1 root entry points to (the root's dirents
    are always in full blocks there), read with the spec's raw offsets."""
    root = 0x480
    extended = u16(img, root) & 1
    size = u64(img, root + 8) if extended else u32(img, root + 8)
    start = u32(img, root + 16) * 4096
    for blk in range(start, start + size, 4096):
        count = u16(img, blk + 8) // 12
        for i in range(count):
            nameoff = u16(img, blk + 12 * i + 8)
            end = u16(img, blk + 12 * i + 20) if i + 1 < count else None
            entry = img[blk + nameoff:blk + end] if end else img[blk + nameoff:blk + 4096]
            if entry.rstrip(b"\0") == name:
                return u64(img, blk + 12 * i) * 32
    raise KeyError(name)


def empty_tree() -> Directory:
    return Directory(st())


def simple_tree() -> Directory:
    return Directory(st(), {
        b"fifo": Leaf(st(0), Fifo()),
        b"regular-inline": Leaf(st(0), Inline(b"hihi")),
        b"regular-external": Leaf(st(0), External.from_digest(b"\x5a" * 32, 1234)),
        b"chrdev": Leaf(st(0), CharDevice(123)),
        b"blkdev": Leaf(st(0), BlockDevice(123)),
        b"socket": Leaf(st(0), Socket()),
        b"symlink": Leaf(st(0), Symlink(b"/target")),
    })


PATTERN1M_SHA512 = bytes.fromhex(
    "41af04461110f14941d920ec99e22353f53c2368e05d2855b3a991c5d3efa270"
    "08353a81a3c09cfa37e0c967525ec7481991133cf4249c4df70545c91cead118")


def bootc_like_tree() -> Directory:
    """Spec 8.4."""
    t = 1700000000
    root_label = {b"security.selinux": b"system_u:object_r:root_t:s0"}
    usr_label = {b"security.selinux": b"system_u:object_r:usr_t:s0"}

    def s(mode: int, label: dict[bytes, bytes]) -> Stat:
        return Stat(mode, 0, 0, t, 0, dict(label))
    usr = Directory(s(0o755, usr_label), {
        b"big": Leaf(s(0o644, usr_label), External.from_digest(PATTERN1M_SHA512, 1 << 20)),
        b"hello": Leaf(s(0o644, usr_label), Inline(b"hello\n")),
        b"link": Leaf(s(0o777, usr_label), Symlink(b"hello")),
    })
    return Directory(s(0o755, root_label), {b"usr": usr})


# ---- section 8: pinned digests ---------------------------------------------------------

PINNED_SHA256 = {  # fs-verity SHA-256, pinned in composefs-rs tests/mkfs.rs
    ("empty", 0): "8f589e8f57ecb88823736b0d857ddca1e1068a23e264fad164b28f7038eb3682",
    ("empty", 1): "14a26c957c84f6eb774b91205476adc13196c7c33b9dd97d08d43725ecb90b63",
    ("empty", 2): "086b702a519b57d6ef5aea6f8b3f2be24355cd1fb835cd80fb4e3d388b24d5a5",
    ("simple", 0): "9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01",
    ("simple", 1): "ad6db6427568a1e4fdc772cbab7b6063f5eb4b33cb62982a740ba9213e5962b5",
    ("simple", 2): "a8fcd41f8b313bede69f462f2af0a38d64b99a6333f5df884ea9ab4037fac722",
}
FILE_SHA256 = {  # spec 8.5
    ("empty", 0): "c3dc5b0fc4afb0693a95e017fe5815e1f88f204d485df617541b5ea659aefb8b",
    ("empty", 1): "18e13c704e2aae7f84be9fda89fdc4c5001c184d279b90a93434e872e5e7c190",
    ("empty", 2): "1cc80c021ae1b35fd70913e82854b0c4ac9046a6774f746c0cbb963ede54af45",
    ("simple", 0): "850f94a6374fc4a920e8bc65d10bac1d1e2f3dd7b5c203d351e3ed74c08398aa",
    ("simple", 1): "c2ef36f4493efe3d15c85789b2ead2b0ece9917ef663339484c8ae35927bc1a1",
    ("simple", 2): "ad78678b31ec64586d235a68a2ab28a7d0a8440b191f5eb17dbacfdc59f3a7da",
}
TREES = {"empty": empty_tree, "simple": simple_tree}


@pytest.mark.parametrize("name,version", sorted(PINNED_SHA256))
def test_pinned_upstream_digests(name: str, version: int) -> None:
    image = mkfs_erofs(TREES[name](), version)
    assert fsverity_ref(image, "sha256") == PINNED_SHA256[name, version]
    assert sha256(image) == FILE_SHA256[name, version]
    assert len(image) == (4096 if version == 2 else 16384)


def test_bootc_like_v1_sha512() -> None:
    image = mkfs_erofs(bootc_like_tree(), 1)
    assert len(image) == 24576
    assert sha256(image) == "1cee923939de7c7a0cb5b19cac5143e2498cd332eea5213f9851c4f86523a29e"
    assert fsverity_ref(image, "sha512") == (
        "c5bb9e476fcd75385737bbbd1b5f819de3157fdc19c772e061b7eaa699a74a08"
        "489a8662a1e9938be67d099184f0740e2f366086133654700fd2cadb4ae92281")


@pytest.mark.parametrize("version,digest", [
    (2, "c7fd259304aede68dc40708ab0d2a1d311e4c5db05af1aaac5a956a849440553"
        "ed74aa3c1bd0bc3ccb09292f54b19966d43aa8b5f6eac1e5223bf5e47017be05"),
    (0, "05a7eaebd38af92d059db93d6d2d050e53b7628621e6f8a6d83cdd8b2d2a3b28"
        "fac0fa4c51df786cbf190746ea647357f299ee486b01d5ec445df7e1381200c4"),
])
def test_bootc_like_other_versions(version: int, digest: str) -> None:
    assert fsverity_ref(mkfs_erofs(bootc_like_tree(), version), "sha512") == digest


def test_bootc_like_layout_details() -> None:
    """Byte positions quoted in spec 8.4."""
    img = mkfs_erofs(bootc_like_tree(), 1)
    sb = 1024
    assert u16(img, sb + 14) == 36 and u64(img, sb + 16) == 261
    assert u64(img, sb + 24) == 1700000000 and u32(img, sb + 36) == 6
    assert u32(img, sb + 44) == 4
    # root: compact FLAT_PLAIN, xattr_icount 7, size 4096, i_u 5; filter, one shared ref 456
    assert u16(img, 0x480) == 0 and u16(img, 0x482) == 7 and u32(img, 0x488) == 4096
    assert u32(img, 0x490) == 5
    assert u32(img, 0x4A0) == 0xFFEFF7FF and img[0x4A4] == 1 and u32(img, 0x4AC) == 456
    # /usr/big at 0x4560: chunk-based, i_u 8, metacopy with algorithm 2
    assert u16(img, 0x4560) == 8 and u32(img, 0x4570) == 8 and u16(img, 0x4562) == 62
    assert u32(img, 0x4580) == 0x7FFDF7FF
    meta = img.index(b"overlay.metacopy", 0x4560)
    assert img[meta + 16:meta + 20] == bytes([0, 68, 0, 2])
    assert img[meta + 20:meta + 84] == PATTERN1M_SHA512
    # the shared table at inodes_end 0x4720, descending order
    assert img[0x4720:0x4724] == bytes([7, 6, 27, 0])
    assert img[0x4724:0x4724 + 34] == b"selinuxsystem_u:object_r:root_t:s0"
    assert img[0x4748:0x474C] == bytes([7, 6, 26, 0])


def test_empty_v1_layout_details() -> None:
    """Spec 8.1, field by field."""
    img = mkfs_erofs(empty_tree(), 1)
    assert img[:16] == bytes.fromhex("9a6278d0" "01000000" "00000000" "01000000")
    assert img[16:1024] == bytes(1008)
    assert u32(img, 1024) == 0xE0F5E1E2 and u32(img, 1032) == 6 and img[1036] == 12
    assert u16(img, 1038) == 36 and u64(img, 1040) == 257 and u32(img, 1060) == 4
    assert u32(img, 1068) == 2
    # root
    assert (u16(img, 0x480), u16(img, 0x482), u16(img, 0x484), u16(img, 0x486)) == (
        0, 6, 0o40755, 2)
    assert u32(img, 0x488) == 4096 and u32(img, 0x490) == 3 and u32(img, 0x494) == 0
    assert u32(img, 0x4A0) == 0xFFEFFFFF
    assert img[0x4AC:0x4C0] == b"\x0e\x04\x01\x00overlay.opaquey\x00"
    # stubs: compact chr 0/0, ino i+1
    for i in (0, 1, 255):
        off = 0x4C0 + 32 * i
        assert (u16(img, off), u16(img, off + 4), u16(img, off + 6)) == (0, 0o20644, 1)
        assert u32(img, off + 20) == i + 1
    # root directory block
    blk = 0x3000
    assert (u64(img, blk), u16(img, blk + 8), img[blk + 10]) == (36, 3096, 2)
    assert (u64(img, blk + 24), u16(img, blk + 32), img[blk + 34]) == (38, 3099, 3)
    assert img[blk + 3096:blk + 3101] == b"...00"
    assert img[blk + 3611:] == bytes(4096 - 3611)


def test_simple_v2_external_inode() -> None:
    """Spec 8.3: regular-external at 0x640 in the V2 image."""
    img = mkfs_erofs(simple_tree(), 2)
    off = 0x640
    assert u16(img, off) == 9 and u16(img, off + 2) == 37 and u64(img, off + 8) == 1234
    assert u32(img, off + 16) == 31 and u32(img, off + 20) == off // 32
    assert u32(img, off + 64) == 0x7FFDFFFF
    assert img[off + 76:off + 80] == bytes([16, 4, 36, 0])
    redirect = b"/5a/" + b"5a" * 31
    assert redirect in img
    assert img[0x71C:0x720] == b"\xff" * 4


def test_simple_v1_inode_order() -> None:
    """Spec 8.3: stubs and leaves interleaved by name in BFS order."""
    img = mkfs_erofs(simple_tree(), 1)
    # blkdev is ino 193 at nid 230
    assert u32(img, 230 * 32 + 20) == 193 and u16(img, 230 * 32 + 4) == 0o60000
    # regular-external: compact, chunk-based, chunk format 0, ino 260, nid 297
    off = 297 * 32
    assert u16(img, off) == 8 and u32(img, off + 16) == 0 and u32(img, off + 20) == 260
    assert u64(img, 1040) == 264


# ---- xxh32 and the bloom filter ------------------------------------------------------


def test_xxh32_known_answers() -> None:
    assert xxh32(b"", 0) == 0x02CC5D05
    assert xxh32(b"abc", 0) == 0x32D153FF
    # long input (> 16 bytes) exercises the four-lane loop; value from the xxHash suite
    assert xxh32(b"Nobody inspects the spammish repetition", 0) == 0xE2293B2F


@pytest.mark.parametrize("index,suffix,bit", [
    (4, b"overlay.opaque", 20), (4, b"overlay.metacopy", 31), (4, b"overlay.redirect", 17),
    (6, b"selinux", 11), (6, b"capability", 29), (4, b"overlay.overlay.whiteout", 4),
    (1, b"overlay.whiteout", 9), (4, b"overlay.overlay.whiteouts", 12),
    (1, b"overlay.whiteouts", 20), (4, b"overlay.overlay.opaque", 5), (1, b"overlay.opaque", 10),
])
def test_bloom_bits(index: int, suffix: bytes, bit: int) -> None:
    assert xxh32(suffix, 0x25BBE08F + index) % 32 == bit


# ---- behaviour -------------------------------------------------------------------------


def test_tree_not_modified() -> None:
    tree = simple_tree()
    before = sorted(tree.entries)
    first = mkfs_erofs(tree, 1)
    assert sorted(tree.entries) == before
    assert mkfs_erofs(tree, 2) == mkfs_erofs(simple_tree(), 2)
    assert mkfs_erofs(tree, 1) == first


def test_hard_links_share_an_inode() -> None:
    f = Leaf(st(0o644), Inline(b"data"))
    deep = Directory(st(), {b"deep": Directory(st(), {b"x": f})})
    tree = Directory(st(), {b"a": deep, b"b": Directory(st(), {b"y": f})})
    for version in (0, 1, 2):
        img = mkfs_erofs(tree, version)
        # one inode with nlink 2 and the data once
        assert img.count(b"data") == 1
    # V1: b/y is met in BFS before a/deep/x, whose directory is canonical (deferred link)
    # so the file's inode is created last, when a/deep is processed.
    img = mkfs_erofs(tree, 1)
    assert u64(img, 1040) == 1 + 256 + 3 + 1
    hdr = img.index(b"data") - 32  # compact inode without xattrs
    assert u16(hdr_bytes := img, hdr + 6) == 2 and u32(hdr_bytes, hdr + 20) == 260


def test_whiteout_escaping_v0_v1_v2() -> None:
    tree = Directory(st(), {b"d": Directory(st(), {b"gone": Leaf(st(0o644), CharDevice(0))})})
    v0, v1, v2 = (mkfs_erofs(tree, v) for v in (0, 1, 2))
    assert b"overlay.overlay.whiteout" in v0 and b"overlay.overlay.whiteouts" in v0
    assert b"overlay.overlay.opaque" not in v0
    assert b"overlay.overlay.opaque" in v1 and b"overlay.opaque" in v1
    assert b"overlay.overlay.whiteout" not in v2
    assert u32(v0, 12) == 0 and u32(v1, 12) == 1 and u32(v2, 12) == 2


def test_lustre_prefix_only_in_v2() -> None:
    tree = Directory(st(), {b"f": Leaf(Stat(0o644, 0, 0, 0, 0, {b"lustre.x": b"1"}),
                                        Inline(b""))})
    assert b"lustre.x" in mkfs_erofs(tree, 1)  # index 0, whole name stored
    img2 = mkfs_erofs(tree, 2)
    assert b"lustre.x" not in img2 and bytes([1, 5, 1, 0]) + b"x1" in img2


def test_acl_flag() -> None:
    def tree(name: bytes) -> Directory:
        return Directory(Stat(0o755, 0, 0, 0, 0, {name: b"\x02\x00\x00\x00"}))
    assert u32(mkfs_erofs(tree(b"system.posix_acl_access"), 0), 8) == 1
    assert u32(mkfs_erofs(tree(b"system.posix_acl_default"), 1), 8) == 1
    assert u32(mkfs_erofs(tree(b"system.posix_acl_access"), 2), 8) == 0
    assert u32(mkfs_erofs(tree(b"user.foo"), 1), 8) == 0
    # composefs-rs tests the prefix index, C the exact name (spec 11 item 8)
    assert u32(mkfs_erofs(tree(b"system.posix_acl_accessX"), 1), 8) == 1
    assert u32(mkfs_erofs(tree(b"system.posix_acl_accessX"), 1, c_compat=True), 8) == 0


def test_large_inline_and_long_symlink_go_to_blocks() -> None:
    data = bytes(range(256)) * 20  # 5120 bytes: one block + 1024-byte tail
    target = b"t" * 4000
    tree = Directory(st(), {b"big": Leaf(st(0o644), Inline(data)),
                            b"link": Leaf(st(0o777), Symlink(target))})
    img = mkfs_erofs(tree, 1)
    assert img.count(data[:4096]) == 1 and data[4096:] in img and target in img
    assert mkfs_erofs(tree, 1, c_compat=True) == img
    with pytest.raises(ErofsWriteError, match="V2 cannot store"):
        mkfs_erofs(tree, 2)  # V2 has no data blocks for them


def test_extended_inode_for_other_mtimes() -> None:
    tree = Directory(st(mtime=5), {b"old": Leaf(Stat(0o644, 0, 0, 3, 7, {}), Inline(b"")),
                                   b"big-uid": Leaf(Stat(0o644, 70000, 0, 3, 7, {}), Fifo())})
    img = mkfs_erofs(tree, 1)
    assert u64(img, 1048) == 3 and u32(img, 1056) == 7  # build time = minimum
    assert u16(img, 0x480) & 1 == 1  # the root (mtime 5) is extended
    assert u64(img, 0x480 + 32) == 5


def test_negative_mtime_min_order() -> None:
    """composefs-rs compares seconds as u64, C as i64 (only differs below 0)."""
    tree = Directory(st(mtime=10), {b"f": Leaf(Stat(0o644, 0, 0, -1, 0, {}), Inline(b""))})
    assert u64(mkfs_erofs(tree, 1), 1048) == 10
    assert u64(mkfs_erofs(tree, 1, c_compat=True), 1048) == (1 << 64) - 1


# ---- C compatibility switches (spec 11) ------------------------------------------------


def test_c_effective_version() -> None:
    plain = simple_tree()
    with_wh = Directory(st(), {b"w": Leaf(st(0o644), CharDevice(0))})
    assert c_effective_version(plain, 0, 1) == 0
    assert c_effective_version(with_wh, 0, 1) == 1
    assert c_effective_version(with_wh, 0, 0) == 0
    assert c_effective_version(with_wh, 1, 0) == 1
    assert c_effective_version(plain, 1, 1) == 1


def test_c_duplicate_xattr_name_replaced() -> None:
    """A user ``trusted.overlay.opaque`` is escaped and then collides with the V1
    opaque marker: composefs-rs writes two entries, C keeps one with value x."""
    d = Directory(Stat(0o755, 0, 0, 0, 0, {b"trusted.overlay.opaque": b"y"}),
                  {b"w": Leaf(st(0o644), CharDevice(0))})
    tree = Directory(st(), {b"d": d})
    rs = mkfs_erofs(tree, 1)
    c = mkfs_erofs(tree, 1, c_compat=True)
    assert rs.count(b"overlay.overlay.opaquey") == 1 and rs.count(b"overlay.overlay.opaquex") == 1
    assert c.count(b"overlay.overlay.opaquey") == 0 and c.count(b"overlay.overlay.opaquex") == 1


def test_c_escapes_stub_lookalike() -> None:
    """Spec 11 item 3: a root whiteout named like a stub with the stub's metadata."""
    tree = Directory(st(), {b"0a": Leaf(Stat(0o644, 0, 0, 0, 0, {}), CharDevice(0))})
    assert b"overlay.overlay.whiteout" not in mkfs_erofs(tree, 1)
    assert b"overlay.overlay.whiteout" in mkfs_erofs(tree, 1, c_compat=True)


def test_c_nlink_from_leaf() -> None:
    tree = Directory(st(), {b"f": Leaf(st(0o644), Inline(b""), nlink=7)})
    rs, c = mkfs_erofs(tree, 0), mkfs_erofs(tree, 0, c_compat=True)
    assert u16(rs, root_child_offset(rs, b"f") + 6) == 1
    assert u16(c, root_child_offset(c, b"f") + 6) == 7


def test_c_size_zero_external_is_plain() -> None:
    tree = Directory(st(), {b"e": Leaf(st(0o644), External.from_digest(b"\x11" * 32, 0))})
    rs, c = mkfs_erofs(tree, 1), mkfs_erofs(tree, 1, c_compat=True)
    assert b"overlay.redirect" in rs and b"overlay.redirect" not in c
    off = root_child_offset(c, b"e")
    assert (u16(c, off), u16(c, off + 2), u16(c, off + 4)) == (0, 0, 0o100644)
    assert u16(rs, root_child_offset(rs, b"e")) == 8  # chunk-based in composefs-rs


def test_c_payload_redirect_and_empty_payload() -> None:
    tree = Directory(st(), {b"p": Leaf(st(0o644), External(10, b"ab/cdef.file", None)),
                            b"q": Leaf(st(0o644), External(10, b"", None))})
    c = mkfs_erofs(tree, 0, c_compat=True)
    assert c.count(b"overlay.redirect") == 1 and b"/ab/cdef.file" in c


def test_c_too_many_chunks_refused() -> None:
    tree = Directory(st(), {b"huge": Leaf(st(0o644), Sparse(9500000000000000))})
    mkfs_erofs(tree, 1)  # composefs-rs promotes the chunk index to a block
    with pytest.raises(ErofsWriteError, match="File too large"):
        mkfs_erofs(tree, 1, c_compat=True)


def test_c_shared_ref_cap() -> None:
    """C shares at most 128 xattrs per inode; the rest stay inline (spec 11 item 7)."""
    xattrs = {b"user.x%03d" % i: b"v" for i in range(130)}
    tree = Directory(st(), {b"a": Leaf(Stat(0o644, 0, 0, 0, 0, dict(xattrs)), Fifo()),
                            b"b": Leaf(Stat(0o644, 0, 0, 0, 0, dict(xattrs)), Fifo())})
    rs, c = mkfs_erofs(tree, 1), mkfs_erofs(tree, 1, c_compat=True)
    assert rs[root_child_offset(rs, b"a") + 32 + 4] == 130
    assert c[root_child_offset(c, b"a") + 32 + 4] == 128


# ---- invalid trees -------------------------------------------------------------------


def test_hard_linked_whiteout_rejected() -> None:
    w = Leaf(st(0o644), CharDevice(0))
    tree = Directory(st(), {b"a": w, b"b": w})
    for version in (0, 1, 2):
        with pytest.raises(ErofsWriteError, match="whiteout"):
            mkfs_erofs(tree, version)


def test_bad_rdev_and_versions_rejected() -> None:
    tree = Directory(st(), {b"d": Leaf(st(0o644), BlockDevice(1 << 32))})
    with pytest.raises(ErofsWriteError):
        mkfs_erofs(tree, 1)
    with pytest.raises(ErofsWriteError):
        mkfs_erofs(empty_tree(), 3)
    with pytest.raises(ErofsWriteError):
        mkfs_erofs(empty_tree(), 2, c_compat=True)


def test_v2_huge_external_rejected() -> None:
    """V2 writes a single chunk entry of format 31 (8 TiB): larger files would
    make an image that fsck.erofs and the kernel reject."""
    ok = Directory(st(), {b"f": Leaf(st(0o644), External.from_digest(b"\1" * 32, 1 << 43))})
    mkfs_erofs(ok, 2)
    big = Directory(st(), {b"f": Leaf(st(0o644),
                                      External.from_digest(b"\1" * 32, (1 << 43) + 1))})
    with pytest.raises(ErofsWriteError, match="8 TiB"):
        mkfs_erofs(big, 2)
    mkfs_erofs(big, 1)


def test_bad_xattrs_rejected() -> None:
    for name, value in ((b"user." + b"k" * 300, b""), (b"user.k", b"v" * 70000)):
        tree = Directory(Stat(0o755, 0, 0, 0, 0, {name: value}))
        with pytest.raises(ErofsWriteError):
            mkfs_erofs(tree, 1)


# ---- performance -----------------------------------------------------------------------


def big_tree(n_dirs: int, per_dir: int) -> Directory:
    label = {b"security.selinux": b"system_u:object_r:usr_t:s0"}
    root = Directory(Stat(0o755, 0, 0, 1700000000, 0, dict(label)))
    k = 0
    for i in range(n_dirs):
        d = Directory(Stat(0o755, 0, 0, 1700000000, 0, dict(label)))
        root.entries[b"dir%04d" % i] = d
        for j in range(per_dir):
            k += 1
            content: Inline | External | Symlink
            if j % 3 == 0:
                content = Inline(b"x" * (j % 70))
            elif j % 3 == 1:
                content = External.from_digest(hashlib.sha512(b"%d" % k).digest(), 1000 + k)
            else:
                content = Symlink(b"../target/%d" % k)
            d.entries[b"file-%05d" % j] = Leaf(
                Stat(0o644, 0, 0, 1700000000 + k % 5, 0, dict(label)), content)
    return root


@pytest.mark.slow
def test_100k_inodes_in_seconds() -> None:
    tree = big_tree(500, 200)
    start = time.perf_counter()
    img = mkfs_erofs(tree, 1)
    elapsed = time.perf_counter() - start
    assert u64(img, 1040) == 1 + 256 + 500 + 100000
    assert elapsed < 30, f"100k inodes took {elapsed:.1f}s"


def test_deep_tree_and_repeated_directory() -> None:
    tree = Directory(st())
    d = tree
    for _ in range(1500):  # deeper than Python's recursion limit
        child = Directory(st())
        d.entries[b"d"] = child
        d = child
    d.entries[b"f"] = Leaf(st(0o644), Inline(b"bottom"))
    for version in (0, 1, 2):
        assert b"bottom" in mkfs_erofs(tree, version)
    sub = Directory(st())
    twice = Directory(st(), {b"a": sub, b"b": sub})
    for version in (0, 1, 2):
        with pytest.raises(ErofsWriteError, match="more than once"):
            mkfs_erofs(twice, version)
