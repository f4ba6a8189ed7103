"""The kernel's view of every vector image versus read_erofs (needs root).

The kernel shows the raw image: whiteout stubs are visible, escaped whiteouts
are regular files, and xattrs keep their on-disk names.  The test maps the
kernel's view through the spec section 10 rules (written out here
independently of the reader) and compares type, permissions, owner, mtime,
nlink, rdev, symlink targets, inline contents, sizes and xattrs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import RS_VECTORS, VECTORS, need_root, need_tool

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
    Symlink,
    content_type_bits,
    leaf_link_counts,
    walk,
)

IMAGES = sorted(VECTORS.glob("*.cfs")) + sorted(RS_VECTORS.glob("*.erofs"))
INTERNAL = {b"trusted.overlay.metacopy", b"trusted.overlay.redirect",
            b"trusted.overlay.overlay.whiteout", b"trusted.overlay.overlay.whiteouts",
            b"trusted.overlay.overlay.opaque", b"user.overlay.whiteout",
            b"user.overlay.whiteouts", b"user.overlay.opaque"}
ACL = b"system.posix_acl_"


@contextmanager
def mounted(image: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cfs-reader-") as tmp:
        mnt = Path(tmp)
        subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", str(image), str(mnt)],
                       check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def kernel_xattrs(path: bytes) -> dict[bytes, bytes | None]:
    """On-disk xattrs as the kernel lists them, mapped by the section 10 rules.
    POSIX ACL values are parsed (and may be refused) by the kernel: None."""
    out: dict[bytes, bytes | None] = {}
    for name in os.listxattr(path, follow_symlinks=False):
        raw = os.fsencode(name)
        value = None if raw.startswith(ACL) else os.getxattr(path, name, follow_symlinks=False)
        if raw in INTERNAL:
            continue
        if raw.startswith(b"trusted.overlay.overlay."):
            raw = b"trusted.overlay." + raw[len(b"trusted.overlay.overlay."):]
        elif raw.startswith(b"trusted.overlay."):
            continue
        out[raw] = value
    return out


def decode_rdev(rdev: int) -> tuple[int, int]:
    """The kernel's new_decode_dev of the 32-bit rdev stored in the inode."""
    return (rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


def is_stub(name: bytes, st: os.stat_result, xattrs: list[str]) -> bool:
    if len(name) != 2 or any(c not in b"0123456789abcdefABCDEF" for c in name):
        return False
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return stat.S_ISREG(st.st_mode) and "trusted.overlay.overlay.whiteout" in xattrs


@pytest.mark.parametrize("image", IMAGES, ids=[p.name for p in IMAGES])
def test_kernel_view_matches_reader(image: Path) -> None:
    need_root()
    need_tool("mount")
    from cfsboot.erofs.reader import read_erofs

    tree = read_erofs(image.read_bytes())
    links = leaf_link_counts(tree)
    with mounted(image) as mnt:
        base = os.fsencode(mnt)
        kernel_paths = set()
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if dirpath == base and is_stub(name, st, os.listxattr(full,
                                                                      follow_symlinks=False)):
                    continue
                kernel_paths.add(full[len(base):])
        assert kernel_paths == {p for p, _ in walk(tree) if p != b"/"}
        inodes: dict[int, int] = {}
        for path, node in walk(tree):
            full = base + path if path != b"/" else base
            st = os.lstat(full)
            _compare(full, st, node, links)
            if isinstance(node, Leaf):
                # hard links: one kernel inode per Leaf object
                assert inodes.setdefault(id(node), st.st_ino) == st.st_ino


def _compare(full: bytes, st: os.stat_result, node: Directory | Leaf,
             links: dict[Leaf, int]) -> None:
    s = node.stat
    assert stat.S_IMODE(st.st_mode) == s.mode
    assert (st.st_uid, st.st_gid) == (s.uid, s.gid)
    assert st.st_mtime_ns == s.mtime_sec * 10**9 + s.mtime_nsec
    assert kernel_xattrs(full) == {k: None if k.startswith(ACL) else v
                                   for k, v in s.xattrs.items()
                                   if not k.startswith(b"lustre.")}
    if isinstance(node, Directory):
        assert stat.S_ISDIR(st.st_mode)
        assert st.st_nlink == 2 + sum(isinstance(c, Directory) for c in node.entries.values())
        return
    assert st.st_nlink == links[node]
    content = node.content
    if content == CharDevice(0) and stat.S_ISREG(st.st_mode):
        return  # an escaped whiteout: a regular file on disk
    assert stat.S_IFMT(st.st_mode) == content_type_bits(content)
    match content:
        case Inline(data):
            assert st.st_size == len(data)
            with open(full, "rb") as f:
                assert f.read() == data
        case External(size=size) | Sparse(size=size):
            assert st.st_size == size
        case Symlink(target):
            assert os.readlink(full) == target
        case CharDevice(rdev) | BlockDevice(rdev):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == decode_rdev(rdev)
        case Fifo() | Socket():
            pass


def rich_tree(version: int) -> Directory:
    """Multi-block directories, hard links across directories, promoted
    symlinks and data blocks (V0/V1), shared xattrs, escaped names/xattrs,
    extended inodes (nsec, big ids), a user whiteout, every leaf kind."""
    from cfsboot.tree.model import Stat

    def st(mode: int = 0o644, **kw: object) -> Stat:
        s = Stat(mode, 0, 0, 1_700_000_000, 0, {b"security.selinux": b"system_u:object_r:usr_t:s0"})
        for k, v in kw.items():
            setattr(s, k, v)
        if version == 2:
            s.mtime_nsec = 0  # V2 does not store nanoseconds
        return s

    big = 5000 if version < 2 else 500  # V2 keeps everything inline (<= 512)
    link_len = 3000 if version < 2 else 1000
    shared = Leaf(st(), Inline(b"shared content\n"))
    many = Directory(st(0o755), {
        b"entry-%04d-%s" % (i, b"x" * (i % 40)): Leaf(st(), Inline(b"%d" % i))
        for i in range(300)})
    many.entries[b"hardlink"] = shared
    odd = Directory(st(0o700, uid=70000, gid=80000, mtime_nsec=123456789), {
        b"a b": Leaf(st(0o4755, mtime_sec=1_800_000_000, mtime_nsec=5), Inline(b"")),
        b"new\nline": Leaf(st(), Symlink(b"t" * link_len)),
        b"\xff\xfe": Leaf(st(xattrs={b"user.k=v": b"a=b", b"trusted.overlay.foo": b"esc",
                                      b"trusted.other": b"\0\1"}), Inline(b"x" * big)),
        b"whiteout": Leaf(st(0o600), CharDevice(0)),
        b"fifo": Leaf(st(), Fifo()),
        b"sock": Leaf(st(), Socket()),
        b"chr": Leaf(st(), CharDevice(0x12345)),
        b"blk": Leaf(st(), BlockDevice(8 << 8 | 1)),
        b"link-to-shared": shared,
    })
    return Directory(st(0o755), {
        b"many": many,
        b"odd": odd,
        b"empty": Directory(st(0o755)),
        b"ext256": Leaf(st(), External.from_digest(bytes(range(32)), 4097)),
        b"ext512": Leaf(st(), External.from_digest(bytes(range(64)), 1 << 33)),
        b"ext0": Leaf(st(), External.from_digest(b"\x07" * 32, 0)),
        b"sparse": Leaf(st(), Sparse(123456)),
        b"shared": shared,
    })


@pytest.mark.parametrize("version", [0, 1, 2])
def test_kernel_view_of_rich_tree(version: int, tmp_path: Path) -> None:
    need_root()
    from cfsboot.erofs.fsck import check_image
    from cfsboot.erofs.reader import read_erofs
    from cfsboot.erofs.writer import mkfs_erofs
    from cfsboot.tree.dumpfile import write_dumpfile

    tree = rich_tree(version)
    image = tmp_path / "rich.erofs"
    image.write_bytes(mkfs_erofs(tree, version))
    data = image.read_bytes()
    back = read_erofs(data)
    assert check_image(data) == []
    assert write_dumpfile(back) == write_dumpfile(tree)
    links = leaf_link_counts(back)
    with mounted(image) as mnt:
        base = os.fsencode(mnt)
        for path, node in walk(back):
            full = base + path if path != b"/" else base
            _compare(full, os.lstat(full), node, links)
