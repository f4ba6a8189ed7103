"""The C accelerator (cfsboot._native) against independent references: the
spec's whole-buffer algorithm, `fsverity digest`, os.stat, and the pure-Python
tree fingerprint it must reproduce record for record."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import need_tool
from hypothesis import given, settings
from hypothesis import strategies as hs
from test_fsverity import reference_digest

from cfsboot import native
from cfsboot.fsverity import KERNEL_ALG_ID
from cfsboot.tree import fingerprint

if TYPE_CHECKING:
    from cfsboot.native import NativeModule


@pytest.fixture(params=["multibuffer", "one-block"])
def c(request: pytest.FixtureRequest) -> Iterator[NativeModule]:
    """The C module, hashing blocks in AVX-512 lanes (SHA-512 eight, SHA-256
    sixteen at a time) or one by one."""
    if native.module is None:
        if os.environ.get("CI"):
            pytest.fail("cfsboot._native was not built (make setup builds it; needs libssl-dev)")
        pytest.skip("cfsboot._native not built (needs gcc and libssl-dev at install time)")
    from cfsboot import _native
    was = _native.multibuffer()
    if request.param == "multibuffer" and not _native.multibuffer(True):
        pytest.skip("this CPU has no AVX-512: blocks are hashed one at a time")
    if request.param == "one-block":
        _native.multibuffer(False)
    try:
        yield native.module
    finally:
        _native.multibuffer(was)


BLOCK = 4096
# Tree shapes: one block, one level of hashes full (64 SHA-512 / 128 SHA-256
# hashes per block) and one more, two levels full and one more; the 1 MiB
# read size and around it.
SIZES = [0, 1, 64, 4095, 4096, 4097, 8192, 64 * BLOCK, 64 * BLOCK + 1, 128 * BLOCK,
         128 * BLOCK + 1, 64 * 64 * BLOCK, 64 * 64 * BLOCK + 1, (1 << 20) - 1, 1 << 20,
         (1 << 20) + 1, 3 * (1 << 20) + 5]


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
@pytest.mark.parametrize("size", SIZES)
def test_buffer_and_fd_digests_equal_the_reference(c: NativeModule, tmp_path: Path, alg: str,
                                                    size: int) -> None:
    data = data_of(size)
    want = reference_digest(data, alg)
    assert c.digest_buffer(data, KERNEL_ALG_ID[alg]) == want
    path = tmp_path / "f"
    path.write_bytes(b"skipped" + data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)  # from the current position, like the Python version
        assert c.digest_fd(fd, KERNEL_ALG_ID[alg]) == (want, size)
    finally:
        os.close(fd)


def test_sha256_three_level_tree(c: NativeModule) -> None:
    size = 128 * 128 * BLOCK + 1  # 64 MiB + 1: three levels of SHA-256 hashes
    data = bytes(range(256)) * (size // 256) + b"x"
    assert c.digest_buffer(data, 1) == reference_digest(data, "sha256")


@settings(max_examples=60, deadline=None)
@given(hs.integers(0, 600_000), hs.sampled_from(["sha256", "sha512"]), hs.booleans())
def test_random_sizes(size: int, alg: str, lanes: bool) -> None:
    if native.module is None:
        pytest.skip("cfsboot._native not built")
    from cfsboot import _native
    was = _native.multibuffer()
    _native.multibuffer(lanes)
    try:
        data = data_of(size)
        assert native.module.digest_buffer(data, KERNEL_ALG_ID[alg]) == reference_digest(
            data, alg)
    finally:
        _native.multibuffer(was)


def test_digests_equal_fsverity_utils(c: NativeModule, tmp_path: Path) -> None:
    tool = need_tool("fsverity")
    paths = []
    for size in (0, 4097, 64 * 64 * BLOCK + 1, (1 << 20) + 1):
        path = tmp_path / f"f{size}"
        path.write_bytes(data_of(size))
        paths.append(os.fsencode(path))
    for alg in ("sha256", "sha512"):
        out = subprocess.run([tool, "digest", f"--hash-alg={alg}", *paths], check=True,
                             capture_output=True, text=True).stdout.split()
        results = c.digest_paths(paths, KERNEL_ALG_ID[alg], True)
        for path, result, tool_digest in zip(paths, results, out[::2], strict=True):
            assert not isinstance(result, int), path
            assert f"{alg}:{result[0].hex()}" == tool_digest, path


def test_digest_paths_results_and_errors(c: NativeModule, tmp_path: Path) -> None:
    data = data_of(10_000)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "link").symlink_to("f")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    names = [b"f", b"missing", b"link", b"fifo", b"dir"]
    paths = [os.fsencode(tmp_path) + b"/" + name for name in names]
    nofollow = c.digest_paths(paths, 2, True)
    st = os.stat(tmp_path / "f")
    assert nofollow[0] == (reference_digest(data, "sha512"), 10_000, st.st_mode, st.st_dev,
                           st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, True)
    assert nofollow[1:] == [errno.ENOENT, errno.ELOOP, -1, -1]  # -1: not a regular file
    follow = c.digest_paths([paths[2], paths[4]], 2, False)  # (a FIFO would block)
    assert follow == [nofollow[0], errno.EISDIR]  # the link's target; a directory
    # relative to a directory descriptor
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert c.digest_paths([b"f"], 2, True, dir_fd) == nofollow[:1]
    finally:
        os.close(dir_fd)
    assert c.digest_paths([], 2, True) == []
    with pytest.raises(ValueError, match="null byte"):
        c.digest_paths([b"a\0b"], 2, True)
    with pytest.raises(TypeError):
        c.digest_paths(["f"], 2, True)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="algorithm"):
        c.digest_paths([b"f"], 3, True)


def make_tree(root: Path) -> None:
    rng = random.Random(5)
    for d in ("a", "a/b", "a/b/c", "d", "e e", "a/ü"):
        (root / d).mkdir(parents=True)
    for i in range(60):
        folder = root / rng.choice(["a", "a/b", "a/b/c", "d", "e e", "a/ü", "."])
        (folder / f"f{i}").write_bytes(rng.randbytes(rng.randrange(200)))
    (root / "a/link").symlink_to("../d")
    os.mkfifo(root / "d/fifo")
    os.link(root / "d" / next(p.name for p in (root / "d").iterdir() if p.is_file()),
            root / "hard")
    os.utime(root / "a/b", ns=(0, -5 * 10**9 - 3))  # before 1970
    os.utime(root / "d", ns=(0, 2**63 - 1))  # year 2262: the ns counter at its limit


def python_fingerprint(path: str, salt: bytes, monkeypatch: pytest.MonkeyPatch
                       ) -> fingerprint.TreeFingerprint | None:
    with monkeypatch.context() as m:
        m.setattr(native, "module", None)
        return fingerprint.fingerprint_tree(path, fingerprint.TreeFingerprint(salt))


@pytest.mark.parametrize("suffix", ["", "/"])
def test_fingerprint_equals_the_python_walk(c: NativeModule, tmp_path: Path, suffix: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "root")
    path = str(tmp_path / "root") + suffix
    want = python_fingerprint(path, b"salt", monkeypatch)
    got = fingerprint.fingerprint_tree(path, fingerprint.TreeFingerprint(b"salt"))
    assert want is not None and got is not None
    assert got.digest() == want.digest()
    assert got.newest_ctime_ns == want.newest_ctime_ns
    # ... and to what a scan feeds it (the cache's whole-result key)
    from cfsboot.tree.scan import ScanOptions, scan_directory
    fed = fingerprint.TreeFingerprint(b"salt")
    scan_directory(path, ScanOptions(fingerprint=fed))
    assert fed.digest() == got.digest()
    assert fingerprint.fingerprint_tree(path, fingerprint.TreeFingerprint(b"other")).digest() != (
        got.digest())
    (tmp_path / "root/a/b/c/new").write_bytes(b"")
    assert fingerprint.fingerprint_tree(path, fingerprint.TreeFingerprint(b"salt")).digest() != (
        got.digest())


def test_fingerprint_of_what_cannot_be_read_is_none(c: NativeModule, tmp_path: Path) -> None:
    assert fingerprint.fingerprint_tree(str(tmp_path / "nope"),
                                        fingerprint.TreeFingerprint(b"")) is None
    (tmp_path / "link").symlink_to(tmp_path)
    assert fingerprint.fingerprint_tree(str(tmp_path / "link"),
                                        fingerprint.TreeFingerprint(b"")) is None
    with pytest.raises(OSError):
        c.fingerprint_tree(os.fsencode(tmp_path / "nope"), b"")


def python_listing(path: bytes, inline_max: int) -> list[tuple[object, ...]]:
    """What the pure-Python scanner reads for each entry (independently written)."""
    out = []
    for name in os.listdir(path):
        full = os.path.join(path, name)
        st = os.lstat(full)
        xattrs = {os.fsencode(k): os.getxattr(full, k, follow_symlinks=False)
                  for k in os.listxattr(full, follow_symlinks=False)}
        data = None
        if os.path.islink(full):
            data = os.readlink(full)
        elif os.path.isfile(full) and st.st_size <= inline_max:
            with open(full, "rb") as f:
                data = f.read()
        fields = (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                  st.st_size, st.st_rdev, st.st_mtime_ns, st.st_ctime_ns)
        out.append((name, full, fields, xattrs, data))
    return out


def c_listing(c: NativeModule, path: bytes, inline_max: int) -> list[tuple[object, ...]]:
    out = []
    for name, full, st, xattrs, data in c.list_directory(path, inline_max):
        assert st is not None
        fields = (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                  st.st_size, st.st_rdev, st.st_mtime_ns, st.st_ctime_ns)
        out.append((name, full, fields, xattrs, data))
    return out


def test_list_directory_equals_what_python_reads(c: NativeModule, tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    for path in (root / "a/f1", root / "d"):
        if path.exists():
            os.setxattr(path, "user.test", b"v" * 3000)  # more than the C side's first buffer
            os.setxattr(path, "user.empty", b"")
    (root / "sixty-four").write_bytes(b"x" * 64)
    (root / "sixty-five").write_bytes(b"x" * 65)
    (root / "long-link").symlink_to("t" * 4000)
    if os.geteuid() == 0:
        os.setxattr(root / "long-link", "trusted.x", b"on a symlink", follow_symlinks=False)
        os.mknod(root / "null", 0o20644, os.makedev(1, 3))
    for folder, _dirs, _files in os.walk(os.fsencode(root)):
        for suffix in (b"", b"/"):
            want = sorted(python_listing(folder + suffix, 64), key=lambda e: e[0])  # type: ignore
            got = sorted(c_listing(c, folder + suffix, 64), key=lambda e: e[0])  # type: ignore
            assert got == want, folder
    with pytest.raises(OSError) as info:
        c.list_directory(os.fsencode(root / "sixty-four"), 64)
    assert info.value.errno == errno.ENOTDIR
    (root / "dirlink").symlink_to("a")
    with pytest.raises(OSError):  # never followed
        c.list_directory(os.fsencode(root / "dirlink"), 64)


def test_list_directory_past_path_max(c: NativeModule, tmp_path: Path) -> None:
    """A directory whose path is longer than PATH_MAX cannot be opened by path:
    an OSError, which sends the scan to its Python listing (and its message)."""
    deep = os.fsencode(tmp_path)
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 250 bytes, each step relative to a descriptor
            os.mkdir(b"d" * 249, dir_fd=fd)
            new = os.open(b"d" * 249, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            deep += b"/" + b"d" * 249
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        c.list_directory(deep, 64)
    assert info.value.errno == errno.ENAMETOOLONG


def test_digest_paths_batches_small_files_across_lanes(c: NativeModule, tmp_path: Path) -> None:
    """Small files are read whole and their blocks hashed together, eight at a
    time across files: every size around the lane and batch boundaries."""
    sizes = [0, 1, 4095, 4096, 4097, 3 * BLOCK, 7 * BLOCK + 1, 8 * BLOCK, 9 * BLOCK + 5,
             17 * BLOCK, 256 * 1024, 256 * 1024 + 1, 5, 64 * BLOCK + 1]
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}"
        path.write_bytes(data_of(size))
        paths.append(os.fsencode(path))
    paths.insert(3, os.fsencode(tmp_path / "missing"))  # an error inside a batch
    for alg in ("sha256", "sha512"):
        results = c.digest_paths(paths, KERNEL_ALG_ID[alg], True)
        assert results[3] == errno.ENOENT
        del results[3]
        for size, result in zip(sizes, results, strict=True):
            assert not isinstance(result, int)
            assert result[:2] == (reference_digest(data_of(size), alg), size), size
