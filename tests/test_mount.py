"""create-image + kernel mount round trip (EROFS + overlayfs with objects/ as a
data-only lower layer): the mounted tree reads back identical to the source.
Needs root, EROFS and overlayfs; skips otherwise."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_root

from cfsboot.cli import image as image_cli
from cfsboot.cli import repo as repo_cli
from cfsboot.errors import CfsError
from cfsboot.repository.meta import SHA256, SHA512, Algorithm, FormatConfig
from cfsboot.repository.mount import MountOptions, mount_image
from cfsboot.repository.repo import Repository


def _need_kernel() -> None:
    need_root()
    fs = Path("/proc/filesystems").read_text()
    if "erofs" not in fs or "overlay" not in fs:
        pytest.skip("kernel lacks erofs or overlayfs")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cfsboot")
    sub = parser.add_subparsers(dest="command", required=True)
    repo_cli.register(sub)
    image_cli.register(sub)
    args = parser.parse_args(list(argv))
    rc: int = args.func(args)
    return rc


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


@contextlib.contextmanager
def _mounted(repo_path: Path, name: str, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    assert _cli("mount", "--repo", str(repo_path), name, str(mnt)) == 0
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _make_source(src: Path) -> None:
    (src / "dir" / "deep").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "small").write_bytes(b"x" * 64)  # inline
    (src / "edge").write_bytes(b"y" * 65)  # first external size
    (src / "big").write_bytes(os.urandom(300_000))
    (src / "dir" / "copy").write_bytes((src / "big").read_bytes())  # same object
    os.link(src / "big", src / "dir" / "hardlink")
    os.link(src / "small", src / "dir" / "hardsmall")
    os.symlink("../small", src / "dir" / "rel")
    os.symlink("/nonexistent/abs", src / "abs")
    os.mkfifo(src / "fifo")
    os.mknod(src / "dir" / "chr", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.setxattr(src / "small", "user.note", b"hello\0world")
    os.setxattr(src / "dir", "user.dir", b"")
    os.setxattr(src / "big", "trusted.overlay.custom", b"escaped")
    os.setxattr(src / "edge", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.chown(src / "dir" / "deep", 1234, 5678)
    os.chmod(src / "dir" / "deep", 0o2750)
    os.chmod(src / "edge", 0o4755)
    os.chown(src / "edge", 42, 43)
    os.utime(src / "small", ns=(1, 1_700_000_000_123_456_789))
    os.utime(src / "dir", ns=(1, 1_600_000_000_000_000_000))


def _describe(root: Path, mtime_ns: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything the image must preserve, per path, plus hard-link groups."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""] if dirpath == str(root) else [
                *dirnames, *filenames]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            xattrs = sorted((k, os.getxattr(p, k, follow_symlinks=False))
                            for k in os.listxattr(p, follow_symlinks=False))
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode):
                content = st.st_rdev
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, st.st_mtime_ns if mtime_ns else st.st_mtime_ns // 10**9,
                        content, xattrs,
                        st.st_nlink if not stat.S_ISDIR(st.st_mode) else None)
    out["<hardlinks>"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1))
    return out


@pytest.mark.parametrize("alg, version", [(SHA256, 1), (SHA512, 1), (SHA256, 2),
                                          (SHA512, 0)])
def test_create_image_mount_reads_back_identical(tmp_path: Path, alg: Algorithm,
                                                 version: int) -> None:
    _need_kernel()
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    _make_source(src)
    assert _cli("repo", "--repo", str(repo_path), "init", "--insecure",
                "--algorithm", alg.meta_name, "--erofs-version", str(version)) == 0
    assert _cli("create-image", "--repo", str(repo_path), str(src), "test/img") == 0
    before = _mounts()
    with Repository.open(repo_path) as repo:
        (ref,) = repo.list_image_refs()
        hexid = ref.target.rsplit("/", 1)[-1]
    # V1 images keep nanoseconds; V0/V2 (like composefs-rs) keep whole seconds
    expected = _describe(src, version == 1)
    for name in (hexid, "refs/test/img"):
        with _mounted(repo_path, name, tmp_path / "mnt") as mnt:
            got = _describe(mnt, version == 1)
            assert got == expected
            line = next(x for x in _mounts().splitlines() if f" {mnt} " in x)
            assert "metacopy=on" in line and "redirect_dir=on" in line
            assert " ro," in line or " ro " in line
            assert "verity=require" not in line  # insecure repository
    assert _mounts() == before  # nothing left mounted (the EROFS was detached)
    assert _cli("repo", "--repo", str(repo_path), "fsck") == 0


def test_insecure_mount_verifies_image_digest(tmp_path: Path) -> None:
    _need_kernel()
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_bytes(b"data" * 100)
    repo, _ = Repository.init(repo_path, SHA256, insecure=True, formats=FormatConfig(1))
    repo.close()
    assert _cli("create-image", "--repo", str(repo_path), str(src), "img") == 0
    with Repository.open(repo_path) as repo:
        _, _, digest = repo.open_image("img")
        assert digest is not None
        obj = repo_path / "objects" / digest[:1].hex() / digest[1:].hex()
        data = bytearray(obj.read_bytes())
        data[-1] ^= 0xFF  # still mountable, but not the committed image
        obj.write_bytes(bytes(data))
        before = _mounts()
        (tmp_path / "mnt").mkdir()
        for name in ("img", digest.hex()):
            with pytest.raises(CfsError, match="corrupt"):
                mount_image(repo, name, str(tmp_path / "mnt"))
        assert _mounts() == before


def test_mount_errors_leave_nothing_mounted(tmp_path: Path) -> None:
    _need_kernel()
    repo_path = tmp_path / "repo"
    with Repository.init(repo_path, SHA256, insecure=True)[0] as repo:
        digest = repo.write_image("junk", b"\0" * 8192)  # not an EROFS image
        before = _mounts()
        (tmp_path / "mnt").mkdir()
        with pytest.raises(CfsError, match="erofs"):
            mount_image(repo, digest.hex(), str(tmp_path / "mnt"))
        with pytest.raises(CfsError, match="not found"):
            mount_image(repo, "missing", str(tmp_path / "mnt"))
        with pytest.raises(CfsError, match="not a directory"):
            mount_image(repo, "junk", str(tmp_path / "nope"))
        assert _mounts() == before
        assert not list(Path("/tmp").glob("cfsboot-erofs-*"))


def test_mount_through_loop_device(tmp_path: Path) -> None:
    """The pre-6.12 path: EROFS on a read-only, auto-clearing loop device."""
    _need_kernel()
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices")
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    _make_source(src)
    Repository.init(repo_path, SHA256, insecure=True)[0].close()
    assert _cli("create-image", "--repo", str(repo_path), str(src), "img") == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Repository.open(repo_path) as repo:
        mount_image(repo, "img", str(mnt), MountOptions(use_loop=True))
    try:
        assert _describe(mnt) == _describe(src)
        line = next(x for x in _mounts().splitlines() if f" {mnt} " in x)
        assert "overlay" in line
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_overlay_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The option set composefs uses, without a kernel: verity=require only in
    secure mode, data-only lower layer after '::'."""
    from cfsboot.repository import mount, sysapi

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(sysapi, "fsconfig_string", lambda fd, k, v: seen.append((k, v)))
    monkeypatch.setattr(sysapi, "fsconfig_create", lambda fd: None)
    for want_verity in (True, False):
        seen.clear()
        mount._overlay_config(99, "abc", 5, 6, want_verity, [])
        if not want_verity:
            seen.clear()
            mount._overlay_config(99, "abc", 5, 6, want_verity, [7, 8])
            assert ("upperdir", "/proc/self/fd/7") in seen
            assert ("workdir", "/proc/self/fd/8") in seen
            seen[:] = [x for x in seen if x[0] not in ("upperdir", "workdir")]
        expected = [("source", "composefs:abc"), ("metacopy", "on"), ("redirect_dir", "on")]
        if want_verity:
            expected.append(("verity", "require"))
        expected.append(("lowerdir", "/proc/self/fd/5::/proc/self/fd/6"))
        assert seen == expected


def test_read_write_mount_with_upper(tmp_path: Path) -> None:
    _need_kernel()
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_bytes(b"base" * 100)
    Repository.init(repo_path, SHA256, insecure=True)[0].close()
    assert _cli("create-image", "--repo", str(repo_path), str(src), "img") == 0
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    before = _mounts()
    with Repository.open(repo_path) as repo:
        with pytest.raises(CfsError, match="together"):
            mount_image(repo, "img", str(mnt), MountOptions(upperdir=str(upper)))
        with pytest.raises(CfsError, match="--workdir"):
            mount_image(repo, "img", str(mnt), MountOptions(str(upper), str(tmp_path / "no"),
                                                              True))
        assert _mounts() == before
        mount_image(repo, "img", str(mnt), MountOptions(str(upper), str(work), True))
    try:
        (mnt / "new").write_bytes(b"hello")
        assert (mnt / "f").read_bytes() == b"base" * 100
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert (upper / "new").read_bytes() == b"hello"
    assert _mounts() == before


def test_mount_by_name_as_images_lists_it(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``repo images`` prints ``a/b`` for images/refs/a/b; ``mount a/b`` must work
    (upstream alone would need ``refs/a/b``, which keeps working too)."""
    _need_kernel()
    src, repo_path = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_bytes(b"nested ref" * 100)
    Repository.init(repo_path, SHA256, insecure=True)[0].close()
    assert _cli("create-image", "--repo", str(repo_path), str(src), "a/b") == 0
    capsys.readouterr()
    assert _cli("repo", "--repo", str(repo_path), "images") == 0
    listed = capsys.readouterr().out.splitlines()[1].split()[0]
    assert listed == "a/b"
    before = _mounts()
    for name in (listed, "refs/a/b"):
        with _mounted(repo_path, name, tmp_path / "mnt") as mnt:
            assert (mnt / "f").read_bytes() == b"nested ref" * 100
    assert _mounts() == before
    (tmp_path / "mnt2").mkdir()
    with pytest.raises(CfsError, match=r"image not found: a/c \(no .*/images/refs/a/c\)"):
        _cli("mount", "--repo", str(repo_path), "a/c", str(tmp_path / "mnt2"))
