"""Writer output checked by independent EROFS implementations: ``fsck.erofs``
(erofs-utils) on random trees for V0/V1/V2, and the kernel (mount as root) on
a V1 image whose every file, link, device and xattr is compared with the tree.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import need_root, need_tool
from hypothesis import HealthCheck, given, settings
from strategies import trees

from cfsboot.erofs.writer import mkfs_erofs
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
    content_type_bits,
    leaf_link_counts,
    walk,
)

TREES = trees(max_leaves=25)


def fsck(image: bytes, tmp: Path) -> None:
    path = tmp / "image.erofs"
    path.write_bytes(image)
    res = subprocess.run([need_tool("fsck.erofs"), str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def make_v2_checkable(tree: Directory) -> None:
    """V2 (as composefs-rs) writes no chunk index for sparse files and external
    files without a digest, so fsck.erofs may read garbage as one; and the
    writer refuses external files over 8 TiB in V2.  Replace those leaves."""
    for _path, node in walk(tree):
        if isinstance(node, Leaf):
            c = node.content
            if isinstance(c, Sparse) or (isinstance(c, External) and c.digest is None):
                node.content = Inline(b"was sparse")
            elif isinstance(c, External) and c.size > 1 << 43:
                node.content = External(1 << 43, c.path, c.digest)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_fsck_accepts_random_trees(version: int) -> None:
    need_tool("fsck.erofs")

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(TREES)
    def check(tree: Directory) -> None:
        if version == 2:
            make_v2_checkable(tree)
        with tempfile.TemporaryDirectory() as tmp:
            fsck(mkfs_erofs(tree, version), Path(tmp))
    check()


def test_fsck_accepts_awkward_layouts(tmp_path: Path) -> None:
    """Tails near block boundaries, multi-block directories, promoted symlinks."""
    need_tool("fsck.erofs")
    base = Stat(0o644, 0, 0, 0, 0, {})
    for size in range(1900, 2200, 37):
        d = Directory(Stat(0o755, 0, 0, 0, 0, {}))
        for i in range(60):
            d.entries[b"f%03d" % i] = Leaf(base, Inline(bytes([i]) * ((size + 97 * i) % 2049)))
            d.entries[b"l%03d" % i] = Leaf(Stat(0o777, 0, 0, i, 0, {}),
                                           Symlink(b"x" * ((size * 7 + i * 131) % 4000 + 1)))
            d.entries[b"n" * 200 + b"%03d" % i] = Leaf(base, Fifo())
        for version in (0, 1, 2):
            fsck(mkfs_erofs(d, version), tmp_path)


# ---- the kernel's view ---------------------------------------------------------------


def _kernel_xattrs(path: str) -> dict[bytes, bytes]:
    return {n.encode(): os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def _expected_xattrs(node: Directory | Leaf) -> dict[bytes, bytes]:
    """Spec 6.3 name rewriting, written out independently of the writer."""
    out: dict[bytes, bytes] = {}
    for name, value in node.stat.xattrs.items():
        if name.startswith(b"trusted.overlay."):
            name = b"trusted.overlay.overlay." + name[len(b"trusted.overlay."):]
        out[name] = value
    if isinstance(node, Leaf) and isinstance(node.content, External):
        digest = node.content.digest
        out[b"trusted.overlay.metacopy"] = (
            b"" if digest is None else bytes([0, 4 + len(digest), 0, len(digest) // 32]) + digest)
        out[b"trusted.overlay.redirect"] = b"/" + node.content.path
    if isinstance(node, Leaf) and isinstance(node.content, Sparse):
        out[b"trusted.overlay.metacopy"] = b""
    return out


def kernel_test_tree(version: int) -> Directory:
    t0 = 1700000000
    label = {b"security.selinux": b"system_u:object_r:usr_t:s0"}

    def s(mode: int, mtime: int = t0, nsec: int = 0, uid: int = 0, **x: bytes) -> Stat:
        xattrs = dict(label)
        xattrs.update({k.replace("__", ".").encode(): v for k, v in x.items()})
        return Stat(mode, uid, 0, mtime, nsec, xattrs)
    shared = Leaf(s(0o640), Inline(b"linked\n"))
    digest = hashlib.sha256(b"obj").digest()
    big = Directory(s(0o755), {b"entry-%04d-%s" % (i, b"x" * (i % 40)): Leaf(s(0o644), Fifo())
                               for i in range(300)})
    sub = Directory(s(0o750, t0 + 1, 5, user__note=b"sub"), {
        b"link2": shared,
        b"gone": Leaf(s(0o600), CharDevice(0)),
        b"deep": Directory(s(0o700), {b"link3": shared, b"empty": Leaf(s(0o644), Inline(b""))}),
    })
    root = Directory(s(0o755, trusted__overlay__custom=b"esc"), {
        b"big-dir": big,
        b"sub": sub,
        b"hello": Leaf(s(0o644, user__k=b"v" * 100), Inline(b"hello world\n")),
        b"linked": shared,
        b"large": Leaf(s(0o644, t0 - 10, 123), Inline(bytes(range(256)) * 21)),
        b"tail": Leaf(s(0o644), Inline(b"T" * 3000)),
        b"ext": Leaf(s(0o644, uid=70000), External.from_digest(digest, 5000)),
        b"sparse": Leaf(s(0o644), Sparse(12345)),
        b"sym": Leaf(s(0o777), Symlink(b"hello")),
        b"longsym": Leaf(s(0o777), Symlink(b"a/" * 1900)),
        b"chr": Leaf(s(0o600), CharDevice(os.makedev(1, 3))),
        b"blk": Leaf(s(0o600), BlockDevice(os.makedev(8, 1))),
        b"fifo": Leaf(s(0o600), Fifo()),
        b"sock": Leaf(s(0o600), Socket()),
    })
    if version == 2:  # V2 keeps all data inline: nothing that needs a data block
        del root.entries[b"large"], root.entries[b"longsym"]
    return root


@contextmanager
def mounted(image: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.erofs"
        path.write_bytes(image)
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", str(path), str(mnt)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount erofs: {res.stderr.strip()}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("version", [1, 0, 2])
def test_kernel_mount_matches_tree(version: int) -> None:
    """V1 is the bootc format; V0 lacks the opaque markers, V2 keeps whiteouts
    as devices, has no stubs and no sub-second mtimes."""
    need_root()
    need_tool("mount")
    tree = kernel_test_tree(version)
    counts = leaf_link_counts(tree)
    epoch1 = version in (0, 1)
    with mounted(mkfs_erofs(tree, version)) as mnt:
        seen = set()
        for path, node in walk(tree):
            rel = path.lstrip(b"/")
            fs_path = os.path.join(os.fsencode(mnt), rel) if rel else os.fsencode(mnt)
            seen.add(os.path.normpath(fs_path))
            sb = os.lstat(fs_path)
            xattrs = _kernel_xattrs(fs_path.decode())
            want_x = _expected_xattrs(node)
            ws = node.stat
            assert (sb.st_uid, sb.st_gid) == (ws.uid, ws.gid), path
            nsec = ws.mtime_nsec if epoch1 else 0
            assert sb.st_mtime_ns == ws.mtime_sec * 10**9 + nsec, path
            assert stat.S_IMODE(sb.st_mode) == ws.mode, path
            if isinstance(node, Directory):
                assert stat.S_ISDIR(sb.st_mode)
                assert sb.st_nlink == 2 + sum(isinstance(c, Directory)
                                              for c in node.entries.values())
                if path == b"/" and epoch1:
                    want_x[b"trusted.overlay.opaque"] = b"y"
                if epoch1 and any(isinstance(c, Leaf) and c.content == CharDevice(0)
                                  for c in node.entries.values()):
                    want_x.update({b"trusted.overlay.overlay.whiteouts": b"",
                                   b"user.overlay.whiteouts": b""})
                    if version == 1:
                        want_x.update({b"trusted.overlay.overlay.opaque": b"x",
                                       b"user.overlay.opaque": b"x"})
                assert xattrs == want_x, path
                continue
            assert sb.st_nlink == counts[node], path
            c = node.content
            if c == CharDevice(0) and epoch1:  # escaped whiteout
                assert stat.S_ISREG(sb.st_mode) and sb.st_size == 0
                want_x.update({b"trusted.overlay.overlay.whiteout": b"",
                               b"user.overlay.whiteout": b""})
            else:
                assert stat.S_IFMT(sb.st_mode) == content_type_bits(c), path
            assert xattrs == want_x, path
            match c:
                case Inline(data):
                    assert Path(fs_path.decode()).read_bytes() == data
                case External(size) | Sparse(size):
                    assert sb.st_size == size
                    if not epoch1 and not (isinstance(c, External) and c.digest):
                        continue  # V2 writes no chunk index for these (as composefs-rs)
                    with open(fs_path, "rb") as f:
                        assert f.read(4096) == bytes(min(size, 4096))
                case Symlink(target):
                    assert os.readlink(fs_path) == target
                case CharDevice(rdev) | BlockDevice(rdev) if rdev:
                    assert sb.st_rdev == rdev
        # the only extra entries are the 256 whiteout stubs in the root
        extra = []
        for dirpath, dirnames, filenames in os.walk(mnt):
            for n in dirnames + filenames:
                p = os.path.normpath(os.path.join(os.fsencode(dirpath), os.fsencode(n)))
                if p not in seen:
                    extra.append(p)
        stubs = [b"%02x" % i for i in range(256)] if epoch1 else []
        assert sorted(os.path.basename(p) for p in extra) == stubs
        for p in extra:
            sb = os.lstat(p)
            assert stat.S_ISCHR(sb.st_mode) and sb.st_rdev == 0
