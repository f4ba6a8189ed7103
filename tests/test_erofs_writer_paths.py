"""EROFS writer: code paths of the fast writer that the vectors do not reach.

External files without an fs-verity digest (composefs-rs ``ExternalNoVerity``)
are read back with the reader (an independent implementation of the format)
and checked by ``fsck.erofs``; invalid trees must fail with one clear
ErofsWriteError (a header field out of range, a bad digest length, a
directory cycle), never a struct.error or a hang.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import need_tool

from cfsboot.erofs.reader import ErofsImage, read_tree
from cfsboot.erofs.writer import ErofsWriteError, mkfs_erofs
from cfsboot.tree.model import Directory, External, Leaf, Stat, object_path


def st(mode: int = 0o644, uid: int = 0, mtime: int = 0, nsec: int = 0) -> Stat:
    return Stat(mode, uid, 0, mtime, nsec, {})


def tree_with(*leaves: tuple[bytes, Leaf]) -> Directory:
    return Directory(st(0o755), dict(leaves))


@pytest.mark.parametrize("version", [0, 1, 2])
def test_external_without_digest_round_trips(version: int, tmp_path: Path) -> None:
    digest = bytes(range(64))
    files = {
        b"noverity": External(5000, object_path(digest), None),
        b"empty-noverity": External(0, b"ab/cdef", None),
        b"verity": External(5000, object_path(digest), digest),
    }
    root = tree_with(*((name, Leaf(st(), c)) for name, c in files.items()))
    image = mkfs_erofs(root, version)
    back = read_tree(ErofsImage(image))
    for name, content in files.items():
        leaf = back.entries[name]
        assert isinstance(leaf, Leaf)
        assert leaf.content == content, name
    path = tmp_path / "img"
    path.write_bytes(image)
    res = subprocess.run([need_tool("fsck.erofs"), str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("version", "c_compat"), [(1, False), (2, False), (1, True)])
def test_bad_digest_length(version: int, c_compat: bool) -> None:
    root = tree_with((b"f", Leaf(st(), External(10, b"ab/cd", bytes(20)))))
    with pytest.raises(ErofsWriteError, match="digest of 20 bytes"):
        mkfs_erofs(root, version, c_compat=c_compat)


@pytest.mark.parametrize(("version", "stat", "message"), [
    (1, st(uid=1 << 32, mtime=5), "uid/gid/nlink out of range"),
    (2, st(uid=1 << 32), "uid/gid/nlink out of range"),
    (1, st(uid=-1, mtime=5), "uid/gid/nlink out of range"),
    (1, st(uid=-1), "uid/gid/nlink out of range"),  # a compact header
    (1, st(mtime=5, nsec=1 << 32), "inode field out of range"),  # (V2 stores no nsec)
])
def test_header_field_out_of_range(version: int, stat: Stat, message: str) -> None:
    root = tree_with((b"f", Leaf(stat, External(10, b"ab/cd", None))))
    with pytest.raises(ErofsWriteError, match=message):
        mkfs_erofs(root, version)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_directory_cycle_is_refused(version: int) -> None:
    root = Directory(st(0o755))
    sub = Directory(st(0o755))
    root.entries[b"sub"] = sub
    sub.entries[b"loop"] = root
    with pytest.raises(ErofsWriteError, match="more than once"):
        mkfs_erofs(root, version)
