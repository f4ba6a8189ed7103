"""The kernel reads back what `cfsboot mkcomposefs --digest-store` wrote: the
EROFS image mounted as the metadata layer, the digest store as overlayfs's
data-only lower layer (as composefs mounts), every file's content and metadata
as in the source directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_root

from cfsboot.cli.main import main


def _mount(args: list[str]) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def mounted(image: Path, store: Path, work: Path) -> Iterator[Path]:
    meta, merged = work / "meta", work / "merged"
    meta.mkdir()
    merged.mkdir()
    _mount(["-t", "erofs", "-o", "ro,loop", str(image), str(meta)])
    try:
        _mount(["-t", "overlay", "overlay", "-o",
                f"ro,metacopy=on,redirect_dir=on,lowerdir={meta}::{store}", str(merged)])
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged)], check=True)
    finally:
        subprocess.run(["umount", str(meta)], check=True)


def make_source(src: Path) -> None:
    (src / "usr/bin").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n" * 100)
    (src / "usr/bin/tool").chmod(0o755)
    (src / "usr/bin/tiny").write_bytes(b"x" * 64)
    (src / "usr/bin/small").write_bytes(b"y" * 65)
    (src / "usr/lib").mkdir()
    (src / "usr/lib/big").write_bytes(os.urandom(3 << 20))
    (src / "usr/lib/empty").write_bytes(b"")
    (src / "etc/hostname").write_bytes(b"host\n")
    os.symlink("../usr/bin/tool", src / "etc/tool-link")
    os.setxattr(src / "usr/bin/tool", "user.note", b"kept")
    os.chown(src / "etc/hostname", 1000, 1001)


def test_digest_store_overlay_reads_back(tmp_path: Path) -> None:
    need_root()
    src, store = tmp_path / "src", tmp_path / "store"
    make_source(src)
    image = tmp_path / "img.cfs"
    assert main(["mkcomposefs", f"--digest-store={store}", str(src), str(image)]) == 0
    with mounted(image, store, tmp_path) as merged:
        seen = []
        for dirpath, dirs, files in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            for name in sorted(dirs + files):
                a, b = src / rel / name, merged / rel / name
                sa, sb = os.lstat(a), os.lstat(b)
                assert (sa.st_mode, sa.st_uid, sa.st_gid) == \
                    (sb.st_mode, sb.st_uid, sb.st_gid), rel / name
                if not a.is_dir():  # directory sizes are the filesystem's own
                    assert sa.st_size == sb.st_size, rel / name
                assert sa.st_mtime_ns == sb.st_mtime_ns
                if a.is_symlink():
                    assert os.readlink(a) == os.readlink(b)
                elif a.is_file():
                    assert a.read_bytes() == b.read_bytes(), rel / name
                    assert os.listxattr(b) == os.listxattr(a)
                seen.append(str(rel / name))
        assert len(seen) == 11  # 4 directories, 7 leaves


def test_tree_deeper_than_path_max_mounts_and_reads_back(tmp_path: Path) -> None:
    """A source deeper than PATH_MAX (C mkcomposefs fails on it): the kernel
    reads the image, walked one component at a time, as the source was."""
    need_root()
    from test_scan import make_deep
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    make_deep(src)
    image = tmp_path / "img.cfs"
    assert main(["mkcomposefs", f"--digest-store={store}", str(src), str(image)]) == 0
    with mounted(image, store, tmp_path) as merged:
        fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(20):
                fd, parent = os.open(b"d" * 249, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
                os.close(parent)
            assert sorted(os.listdir(fd)) == ["big", "link", "small", "sub"]
            for name, want in (("big", b"B" * 100_000), ("small", b"tiny")):
                file_fd = os.open(name, os.O_RDONLY, dir_fd=fd)
                try:
                    assert os.read(file_fd, 200_000) == want
                    if name == "small":
                        assert os.getxattr(file_fd, "user.deep") == b"yes"
                finally:
                    os.close(file_fd)
            assert os.readlink("link", dir_fd=fd) == "small"
        finally:
            os.close(fd)
