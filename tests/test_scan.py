"""Directory scan (cfsboot.tree.scan): what is read, what is never followed.

Object digests are checked against fsverity-utils (`fsverity digest`), an
independent implementation; metadata against what the test itself set.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import need_root, need_tool

from cfsboot import native
from cfsboot.fsverity import files as fsverity_files
from cfsboot.fsverity.digest import whole_digest
from cfsboot.tree import scan as scan_mod
from cfsboot.tree.digest_store import FlatDigestStore
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Socket,
    Symlink,
    object_path,
    walk,
)
from cfsboot.tree.scan import ScanError, ScanOptions, scan_directory

# Scans run with the pure-Python hashing code and with the C accelerator.
pytestmark = pytest.mark.usefixtures("verity_impl")


def fsverity_tool(paths: list[Path], alg: str = "sha512") -> dict[Path, bytes]:
    """Digests from fsverity-utils, one process for all files."""
    tool = need_tool("fsverity")
    out = subprocess.run([tool, "digest", f"--hash-alg={alg}", "--block-size=4096",
                          *map(os.fsencode, paths)], check=True, capture_output=True).stdout
    result = {}
    for line in out.split(b"\n")[:-1]:  # not splitlines(): a name may contain \r
        digest, path = line.split(b" ", 1)
        result[Path(os.fsdecode(path))] = bytes.fromhex(digest.split(b":", 1)[1].decode())
    return result


def leaf(root: Directory, path: str) -> Leaf:
    node = root.get_path(path.encode())
    assert isinstance(node, Leaf), path
    return node


def test_inline_threshold_and_external_digests(tmp_path: Path) -> None:
    sizes = {"empty": 0, "one": 1, "sixty-four": 64, "sixty-five": 65, "block": 4096,
             "block1": 4097, "big": (1 << 20) * 3 + 17}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(bytes((i * 7 + size) % 251 for i in range(size)))
    for threads in (1, 3):
        result = scan_directory(str(tmp_path), ScanOptions(threads=threads, bufsize=1 << 16))
        for name in ("empty", "one", "sixty-four"):
            assert leaf(result.root, name).content == Inline((tmp_path / name).read_bytes())
        ext = [tmp_path / n for n in ("sixty-five", "block", "block1", "big")]
        expected = fsverity_tool(ext)
        for path in ext:
            content = leaf(result.root, path.name).content
            assert content == External.from_digest(expected[path], sizes[path.name])
            assert result.sources[expected[path]] == str(path)
        c = result.counts
        assert (c.regular_files, c.inline_files, c.external_files) == (7, 3, 4)
        assert c.bytes_hashed == c.bytes_external == sum(sizes[p.name] for p in ext)


def test_sha256_and_inline_max(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a" * 100)
    (tmp_path / "b").write_bytes(b"b" * 101)
    result = scan_directory(str(tmp_path), ScanOptions(alg="sha256", inline_max=100))
    assert leaf(result.root, "a").content == Inline(b"a" * 100)
    expected = fsverity_tool([tmp_path / "b"], "sha256")[tmp_path / "b"]
    assert len(expected) == 32
    assert leaf(result.root, "b").content == External.from_digest(expected, 101)


def test_hardlinks_tracked_by_inode(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "big").write_bytes(b"x" * 1000)
    (tmp_path / "small").write_bytes(b"y")
    os.link(tmp_path / "big", tmp_path / "d/big2")
    os.link(tmp_path / "small", tmp_path / "d/small2")
    os.symlink("somewhere", tmp_path / "sym")
    os.link(tmp_path / "sym", tmp_path / "sym2", follow_symlinks=False)
    (tmp_path / "same-content").write_bytes(b"x" * 1000)  # equal bytes, not a hard link

    result = scan_directory(str(tmp_path))
    root = result.root
    assert leaf(root, "big") is leaf(root, "d/big2")
    assert leaf(root, "small") is leaf(root, "d/small2")
    assert leaf(root, "sym") is leaf(root, "sym2")
    assert leaf(root, "sym").content == Symlink(b"somewhere")
    assert leaf(root, "same-content") is not leaf(root, "big")
    assert leaf(root, "same-content").content == leaf(root, "big").content
    assert result.counts.hardlinks == 3
    assert result.counts.bytes_hashed == 2000  # each inode hashed once

    untracked = scan_directory(str(tmp_path), ScanOptions(track_hardlinks=False))
    assert leaf(untracked.root, "big") is not leaf(untracked.root, "d/big2")
    assert leaf(untracked.root, "big").content == leaf(untracked.root, "d/big2").content
    assert untracked.counts.hardlinks == 0
    assert untracked.counts.bytes_hashed == 2000  # still one read per inode


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s" * 500)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "to-dir")
    os.symlink(outside / "secret", root / "to-file")
    os.symlink("dangling/nowhere", root / "dangling")
    os.symlink("loop", root / "loop")
    os.symlink(b"\xff\xfe raw bytes", os.fsencode(root / "raw"))

    result = scan_directory(str(root))
    entries = result.root.entries
    assert sorted(entries) == [b"dangling", b"loop", b"raw", b"to-dir", b"to-file"]
    assert leaf(result.root, "to-dir").content == Symlink(os.fsencode(outside))
    assert leaf(result.root, "to-file").content == Symlink(os.fsencode(outside / "secret"))
    assert leaf(result.root, "dangling").content == Symlink(b"dangling/nowhere")
    assert leaf(result.root, "loop").content == Symlink(b"loop")
    assert leaf(result.root, "raw").content == Symlink(b"\xff\xfe raw bytes")
    assert result.counts.bytes_hashed == 0 and result.counts.symlinks == 5

    # a symlinked root is refused, not followed
    os.symlink(root, tmp_path / "root-link")
    with pytest.raises(ScanError, match="symlink"):
        scan_directory(str(tmp_path / "root-link"))
    with pytest.raises(ScanError, match="cannot open directory"):
        scan_directory(str(tmp_path / "missing"))
    with pytest.raises(ScanError, match="cannot open directory"):
        scan_directory(str(outside / "secret"))


def test_metadata_mode_owner_mtime_ns(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    f = tmp_path / "dir/file"
    f.write_bytes(b"content")
    if os.geteuid() == 0:  # before chmod: chown clears the set-uid bit
        os.chown(f, 1234, 5678)
        os.chown(tmp_path / "dir", 0, 0)
    os.chmod(f, 0o4751)
    os.chmod(tmp_path / "dir", 0o1777)
    os.symlink("file", tmp_path / "dir/link")
    os.utime(f, ns=(1, 1_700_000_000_123_456_789))
    os.utime(tmp_path / "dir/link", ns=(1, 1_600_000_000_000_000_001), follow_symlinks=False)
    os.utime(tmp_path / "dir", ns=(1, 1_500_000_000_999_999_999))
    if os.geteuid() == 0:
        os.chown(tmp_path / "dir/link", 42, 43, follow_symlinks=False)

    root = scan_directory(str(tmp_path)).root
    d = root.get_path(b"dir")
    assert isinstance(d, Directory)
    assert (d.stat.mode, d.stat.mtime_sec, d.stat.mtime_nsec) == (0o1777, 1_500_000_000,
                                                                   999_999_999)
    fs = leaf(root, "dir/file").stat
    assert (fs.mode, fs.mtime_sec, fs.mtime_nsec) == (0o4751, 1_700_000_000, 123_456_789)
    ls = leaf(root, "dir/link").stat
    assert (ls.mode, ls.mtime_sec, ls.mtime_nsec) == (0o777, 1_600_000_000, 1)
    if os.geteuid() == 0:
        assert (fs.uid, fs.gid) == (1234, 5678)
        assert (ls.uid, ls.gid) == (42, 43)
    top = os.stat(tmp_path)
    assert root.stat.mode == top.st_mode & 0o7777
    assert (root.stat.mtime_sec, root.stat.mtime_nsec) == divmod(top.st_mtime_ns, 10**9)


def test_xattrs_are_the_objects_own(tmp_path: Path) -> None:
    need_root()  # trusted.* and xattrs on symlinks
    target = tmp_path / "target"
    target.write_bytes(b"t" * 200)
    os.setxattr(target, "user.on-target", b"T")
    os.symlink("target", tmp_path / "link")
    os.setxattr(tmp_path / "link", "trusted.on-link", b"\x00L\xff", follow_symlinks=False)
    os.setxattr(tmp_path, "user.root", b"")
    big = bytes(range(256)) * 6  # ext4 keeps all xattrs in one block
    os.setxattr(target, "trusted.big", big)

    root = scan_directory(str(tmp_path)).root
    assert leaf(root, "link").stat.xattrs == {b"trusted.on-link": b"\x00L\xff"}
    assert leaf(root, "target").stat.xattrs == {b"user.on-target": b"T", b"trusted.big": big}
    assert root.stat.xattrs == {b"user.root": b""}


def test_devices_fifos_sockets(tmp_path: Path) -> None:
    need_root()
    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(tmp_path / "whiteout", 0o600 | stat.S_IFCHR, 0)
    os.mknod(tmp_path / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 300))
    os.mkfifo(tmp_path / "fifo", 0o640)
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # socket paths are limited to 108 bytes
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
        sock.close()

    result = scan_directory(str(tmp_path))
    root = result.root
    assert leaf(root, "null").content == CharDevice(os.makedev(1, 3))
    assert leaf(root, "whiteout").content == CharDevice(0)
    assert leaf(root, "loop").content == BlockDevice(os.makedev(7, 300))
    assert leaf(root, "fifo").content == Fifo()  # opening it would block: never opened
    assert leaf(root, "sock").content == Socket()
    assert leaf(root, "fifo").stat.mode == 0o640
    c = result.counts
    assert (c.devices, c.fifos, c.sockets) == (3, 1, 1)


def test_walk_reaches_every_entry(tmp_path: Path) -> None:
    expected = {b"/"}
    for i in range(30):
        d = tmp_path / f"d{i % 5}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"z" * (i * 40))
        rel = d.relative_to(tmp_path)
        expected |= {b"/" + os.fsencode(rel.parent), b"/" + os.fsencode(rel),
                     b"/" + os.fsencode(rel / f"f{i}")}
    root = scan_directory(str(tmp_path), ScanOptions(threads=2)).root
    assert {path for path, _ in walk(root)} == expected


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"o" * 100)
    (tmp_path / "secret").write_bytes(b"s" * 100)
    (tmp_path / "tiny").write_bytes(b"s")
    real_open = os.open

    def fake_open(path: object, flags: int, *args: object) -> int:
        if isinstance(path, bytes) and path.endswith((b"/secret", b"/tiny")):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", fake_open)  # what scan.py calls
        mp.setattr(native, "module", None)  # (the C code cannot be mocked: see the next test)
        with pytest.raises(ScanError) as info:
            scan_directory(str(tmp_path), ScanOptions(threads=2))
    message = str(info.value)
    assert "\n" not in message and "Permission denied" in message
    assert message.startswith("cannot read ") and message.endswith(("/secret: Permission denied",
                                                                    "/tiny: Permission denied"))


def test_unreadable_as_unprivileged_user(tmp_path: Path) -> None:
    """The real thing: a 0600 file of root's scanned by nobody (no mocking)."""
    need_root()
    tool = need_tool("setpriv")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"cfsboot-scan-test-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        os.chmod(base, 0o755)
        (base / "usr").mkdir()
        (base / "usr/readable").write_bytes(b"r" * 100)
        (base / "usr/private").write_bytes(b"p" * 100)
        os.chmod(base / "usr/private", 0o600)
        (base / "locked").mkdir(mode=0o700)
        src = str(Path(scan_mod.__file__).parents[2])
        code = ("import sys; from cfsboot.tree.scan import scan_directory\n"
                "try:\n    scan_directory(sys.argv[1])\n"
                "except Exception as e:\n    print(type(e).__name__, e); sys.exit(1)\n")
        for target, expect in ((base / "usr", "ScanError cannot read "),
                               (base, "ScanError cannot read directory ")):
            proc = subprocess.run(
                [tool, "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-c", code, str(target)],
                capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": src,
                     "CFSBOOT_NATIVE": "0" if native.module is None else "1"},
                check=False)
            assert proc.returncode == 1, proc.stderr
            assert proc.stdout.startswith(expect), proc.stdout
            assert proc.stdout.strip().endswith(": Permission denied")
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_hashing_error_stops_the_pool(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * (1000 + i))

    def failing(fd: int, alg: str, **kw: object) -> tuple[bytes, int]:
        raise OSError(5, "Input/output error")

    with pytest.MonkeyPatch.context() as mp:
        patch_digest_fd(mp, failing)
        with pytest.raises(ScanError, match="Input/output error"):
            scan_directory(str(tmp_path), ScanOptions(threads=4))
    assert_no_children()


def test_file_changing_size_is_detected(tmp_path: Path) -> None:
    (tmp_path / "grows").write_bytes(b"g" * 1000)
    from cfsboot.fsverity import digest_fd as real

    def growing(fd: int, alg: str, **kw: object) -> tuple[bytes, int]:
        os.write(os.open(tmp_path / "grows", os.O_WRONLY | os.O_APPEND), b"more")
        return real(fd, alg, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        patch_digest_fd(mp, growing)
        with pytest.raises(ScanError, match="changed size"):
            scan_directory(str(tmp_path))


def patch_digest_fd(mp: pytest.MonkeyPatch, fake: Callable[..., tuple[bytes, int]]) -> None:
    """Replace digest_fd where both pipelines call it: the thread pool (with a
    sink) and the forked workers (without one; they inherit the patch).  The
    C accelerator hashes without calling it, so it is switched off."""
    from cfsboot import native
    mp.setattr(native, "module", None)
    mp.setattr(scan_mod, "digest_fd", fake)
    mp.setattr(fsverity_files, "digest_fd", fake)


def assert_no_children() -> None:
    """Every worker process was reaped (none left running or as a zombie)."""
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_file_replaced_after_listing_is_detected(tmp_path: Path) -> None:
    """A file that became a symlink (or another inode) between the walk and its
    hashing is refused, never followed; the workers are reaped."""
    for i in range(40):
        (tmp_path / f"f{i:02d}").write_bytes(bytes([i]) * 5000)
    real_entries = scan_mod._entries

    def to_symlink(path: bytes) -> None:
        os.unlink(path)
        os.symlink(b"f00", path)

    def to_new_inode(path: bytes) -> None:
        with open(path + b".new", "wb") as f:
            f.write(b"n" * 5000)
        os.rename(path + b".new", path)  # the old inode is still alive: a new number

    for threads in (1, 2):
        for replace in (to_symlink, to_new_inode):
            def entries_then_replace(dir_path: bytes, inline_max: int,
                                     replace: Callable[[bytes], None] = replace) -> Any:
                listed = real_entries(dir_path, inline_max)
                replace(os.path.join(dir_path, b"f07"))  # after lstat, before hashing
                return listed

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(scan_mod, "_entries", entries_then_replace)
                with pytest.raises(ScanError, match="/f07 was replaced while scanning"):
                    scan_directory(str(tmp_path), ScanOptions(threads=threads))
            assert_no_children()
            (tmp_path / "f07").unlink()
            (tmp_path / "f07").write_bytes(bytes([7]) * 5000)


def test_processes_and_threads_agree(tmp_path: Path) -> None:
    """The forked pipeline (no sink) and the threaded one (with a sink) build
    the same tree, hard links included, and hash each inode once."""
    from cfsboot.tree.digest_store import FlatDigestStore
    src = tmp_path / "src"
    for i in range(300):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(bytes([i % 251]) * (i * 997 % 70000))
    (src / "big").write_bytes(b"B" * (3 << 20))  # held back until the walk ends
    os.link(src / "big", src / "d0" / "big-link")
    os.link(src / "d1" / "f1", src / "d2" / "f1-link")
    plain = scan_directory(str(src), ScanOptions(threads=2))
    stored = scan_directory(str(src), ScanOptions(
        threads=2, sink=FlatDigestStore(str(tmp_path / "store"), enable_verity=False)))
    def shape(root: Directory) -> dict[bytes, object]:  # Leaf compares by identity
        return {path: (node.stat, node.content if isinstance(node, Leaf) else None)
                for path, node in walk(root)}

    assert shape(plain.root) == shape(stored.root)
    links = [plain.root.get_path(p) for p in (b"/big", b"/d0/big-link", b"/d1/f1", b"/d2/f1-link")]
    assert links[0] is links[1] and links[2] is links[3]
    assert plain.counts == stored.counts
    assert plain.counts.bytes_hashed == plain.counts.bytes_external  # each inode once
    assert plain.counts.hardlinks == 2
    assert_no_children()


def test_object_path_of_scanned_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello world" * 10)
    content = leaf(scan_directory(str(tmp_path)).root, "f").content
    assert isinstance(content, External) and content.digest is not None
    assert content.path == object_path(content.digest)
    assert len(content.digest) == 64


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    base = os.fsencode(tmp_path)
    os.mkdir(base + b"/\x80dir")
    with open(base + b"/\x80dir/\xff\xfe-file", "wb") as f:
        f.write(b"n" * 300)
    result = scan_directory(str(tmp_path))
    node = result.root.get_path(b"/\x80dir/\xff\xfe-file")
    assert isinstance(node, Leaf) and isinstance(node.content, External)
    assert node.content.digest is not None
    source = result.sources[node.content.digest]
    assert os.fsencode(source) == base + b"/\x80dir/\xff\xfe-file"


def test_progress_bar_only_changes_stderr(tmp_path: Path) -> None:
    """With a TTY on stderr a bar is drawn there; stdout is still the bare result."""
    import pty

    for i in range(30):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * 200_000)
    master, slave = pty.openpty()
    code = ("import sys; from cfsboot.tree.scan import ScanOptions, scan_directory\n"
            "r = scan_directory(sys.argv[1], ScanOptions(progress=sys.stderr.isatty()))\n"
            "print(r.counts.bytes_hashed)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    stdout, _ = proc.communicate(timeout=60)
    drawn = b""
    try:
        while chunk := os.read(master, 65536):
            drawn += chunk
    except OSError:
        pass  # EIO once the child has closed the pty
    os.close(master)
    assert proc.returncode == 0
    assert stdout == b"6000000\n"
    assert b"Hashing" in drawn


def test_huge_thread_count_is_capped(tmp_path: Path) -> None:
    """--threads 10**20 must not try to start that many hashers."""
    for i in range(20):
        (tmp_path / f"f{i}").write_bytes(bytes([i]) * 3000)
    result = scan_directory(str(tmp_path), ScanOptions(threads=10**20))
    assert result.counts.external_files == 20
    assert_no_children()


def test_walk_error_while_hashing_stops_the_workers(tmp_path: Path) -> None:
    """A directory that fails after files were handed to the workers: one clear
    error, and every worker process is gone."""
    for d in range(6):
        (tmp_path / f"d{d}").mkdir()
        for i in range(30):
            (tmp_path / f"d{d}" / f"f{i}").write_bytes(bytes([i]) * 20000)
    real_entries = scan_mod._entries
    calls = []

    def failing_later(dir_path: bytes, inline_max: int) -> Any:
        calls.append(dir_path)
        if len(calls) == 4:
            raise ScanError(f"cannot read directory {os.fsdecode(dir_path)}: Input/output error")
        return real_entries(dir_path, inline_max)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "_entries", failing_later)
        with pytest.raises(ScanError, match="Input/output error"):
            scan_directory(str(tmp_path), ScanOptions(threads=2))
    assert_no_children()


def make_deep(top: Path, levels: int = 20) -> bytes:
    """A directory chain of ``levels`` x 250 bytes under ``top`` (past PATH_MAX
    from 17 levels on), built relative to descriptors; its deepest directory
    holds a big file, a small file with an xattr, a symlink and a subdirectory."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = os.fsencode(top)
    try:
        for _ in range(levels):
            os.mkdir(b"d" * 249, dir_fd=fd)
            fd, parent = os.open(b"d" * 249, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
            path += b"/" + b"d" * 249
        for name, data in ((b"big", b"B" * 100_000), (b"small", b"tiny")):
            out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, data)
            if name == b"small":
                os.setxattr(out, "user.deep", b"yes")
            os.close(out)
        os.symlink(b"small", b"link", dir_fd=fd)
        os.mkdir(b"sub", dir_fd=fd)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("with_sink", [False, True])
def test_paths_longer_than_path_max(tmp_path: Path, with_sink: bool) -> None:
    """composefs-rs walks with openat and so reads any depth; so do we."""
    (tmp_path / "root").mkdir()
    deep = make_deep(tmp_path / "root")
    (tmp_path / "root/shallow").write_bytes(b"s" * 1000)
    assert len(deep) > 4096
    sink = FlatDigestStore(str(tmp_path / "store")) if with_sink else None
    result = scan_directory(str(tmp_path / "root"), ScanOptions(threads=2, sink=sink))
    node: Directory = result.root
    for _ in range(20):
        child = node.entries[b"d" * 249]
        assert isinstance(child, Directory)
        node = child
    big, small, link = (node.entries[n] for n in (b"big", b"small", b"link"))
    assert isinstance(big, Leaf) and isinstance(big.content, External)
    assert big.content.digest == whole_digest(b"B" * 100_000)
    assert isinstance(small, Leaf) and small.content == Inline(b"tiny")
    assert small.stat.xattrs == {b"user.deep": b"yes"}
    assert isinstance(link, Leaf) and link.content == Symlink(b"small")
    assert isinstance(node.entries[b"sub"], Directory)
    assert result.counts.external_files == 2 and result.counts.bytes_hashed == 101_000
    if with_sink:
        stored = tmp_path / "store" / os.fsdecode(big.content.path)
        assert stored.read_bytes() == b"B" * 100_000
