"""Random trees: the scan agrees with a plain os.walk + `fsverity digest` reference."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan import fsverity_tool

from cfsboot.tree.model import External, Inline, Leaf, Symlink, walk
from cfsboot.tree.scan import ScanOptions, scan_directory

# no "/" or NUL (invalid), no newline (fsverity-utils prints one line per file)
NAMES = st.binary(min_size=1, max_size=6).filter(lambda b: not set(b) & set(b"/\0\n")
                                                 and b not in (b".", b".."))
SIZES = st.sampled_from([0, 1, 63, 64, 65, 100, 4095, 4096, 4097, 9000, 70_000])

ITEM = st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink"]), NAMES, SIZES,
                 st.integers(0, 2**31), st.integers(0, 999_999_999))


def build(root: Path, items: list[tuple[str, bytes, int, int, int]]) -> None:
    dirs = [os.fsencode(root)]
    files: list[bytes] = []
    for kind, name, size, sec, nsec in items:
        parent = dirs[sec % len(dirs)]
        path = parent + b"/" + name
        if os.path.lexists(path):
            continue
        if kind == "dir":
            os.mkdir(path)
            dirs.append(path)
        elif kind == "symlink":
            os.symlink(name * 3, path)
        elif kind == "hardlink" and files:
            os.link(files[sec % len(files)], path)
            continue
        else:
            with open(path, "wb") as f:
                f.write(bytes((sec + i) % 256 for i in range(size)))
            os.chmod(path, 0o600 + sec % 0o100)
            files.append(path)
        os.utime(path, ns=(0, sec * 10**9 + nsec), follow_symlinks=False)


@settings(max_examples=15, deadline=None)
@given(st.lists(ITEM, max_size=25), st.integers(1, 3))
def test_scan_matches_reference(items: list[tuple[str, bytes, int, int, int]],
                                threads: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        build(tmp, items)
        result = scan_directory(str(tmp), ScanOptions(threads=threads))
        base = os.fsencode(tmp)
        regular = []
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(path).st_mode) and os.lstat(path).st_size > 64:
                    regular.append(Path(os.fsdecode(path)))
        digests = fsverity_tool(regular) if regular else {}

        seen = set()
        inode_of: dict[tuple[int, int], Leaf] = {}
        for rel, node in walk(result.root):
            path = base + rel.rstrip(b"/") if rel != b"/" else base
            seen.add(path)
            s = os.lstat(path)
            assert node.stat.mode == s.st_mode & 0o7777
            assert (node.stat.mtime_sec, node.stat.mtime_nsec) == divmod(s.st_mtime_ns, 10**9)
            if not isinstance(node, Leaf):
                assert stat.S_ISDIR(s.st_mode)
                continue
            # hard links: one Leaf per inode
            assert inode_of.setdefault((s.st_dev, s.st_ino), node) is node
            if stat.S_ISLNK(s.st_mode):
                assert node.content == Symlink(os.readlink(path))
            elif s.st_size <= 64:
                with open(path, "rb") as f:
                    assert node.content == Inline(f.read())
            else:
                expected = digests[Path(os.fsdecode(path))]
                assert node.content == External.from_digest(expected, s.st_size)
        everything = {base} | {os.path.join(d, n) for d, ds, fs in os.walk(base) for n in ds + fs}
        assert seen == everything
    finally:
        shutil.rmtree(tmp)
