"""The opt-in hash cache: unchanged files are not read again, changed ones are."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cfsboot.tree import cachedir, fingerprint
from cfsboot.tree.digest_store import FlatDigestStore
from cfsboot.tree.fingerprint import TreeFingerprint, fingerprint_tree
from cfsboot.tree.hashcache import HashCache
from cfsboot.tree.model import walk
from cfsboot.tree.scan import ScanOptions, ScanResult, scan_directory

# Scans run with the pure-Python hashing code and with the C accelerator.
pytestmark = pytest.mark.usefixtures("verity_impl")

# Longer than a kernel timestamp tick (jiffy), so that a change gets a new ctime;
# real runs rely on the racy window instead.
TICK = 0.025


def tree_of(result: ScanResult) -> list[tuple[bytes, object]]:
    return [(p, getattr(n, "content", None)) for p, n in walk(result.root)]


def scan(src: Path, cache_dir: Path, **kw: object) -> ScanResult:
    cache = HashCache.open(str(cache_dir), "sha512", 64)
    return scan_directory(str(src), ScanOptions(cache=cache, threads=2, **kw))  # type: ignore[arg-type]


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files made by the test are younger than the racy window; pretend they are not.
    monkeypatch.setattr(fingerprint, "RACY_WINDOW_NS", 0)


def make_files(src: Path) -> None:
    for i in range(12):
        (src / f"f{i}").write_bytes(bytes([i]) * (100 + 1000 * i))
    (src / "inline").write_bytes(b"tiny")


def test_second_scan_reads_nothing(tmp_path: Path, no_racy_window: None) -> None:
    src, cache_dir = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    make_files(src)
    cold = scan(src, cache_dir)
    assert cold.counts.cache_hits == 0 and cold.counts.bytes_hashed > 0
    warm = scan(src, cache_dir)
    assert warm.counts.bytes_hashed == 0 and warm.counts.cache_hits == 12
    assert tree_of(warm) == tree_of(cold)
    assert set(warm.sources) == set(cold.sources)


def test_changed_file_is_rehashed(tmp_path: Path, no_racy_window: None) -> None:
    src, cache_dir = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    make_files(src)
    scan(src, cache_dir)
    time.sleep(TICK)
    # Same size, same mtime: only ctime (and content) differ.
    st = os.stat(src / "f3")
    with open(src / "f3", "r+b") as f:
        f.write(b"X")
    os.utime(src / "f3", ns=(st.st_atime_ns, st.st_mtime_ns))
    after = scan(src, cache_dir)
    assert after.counts.bytes_hashed == 3100 and after.counts.cache_hits == 11
    fresh = scan_directory(str(src))
    assert tree_of(after) == tree_of(fresh)


def test_racily_clean_files_are_not_recorded(tmp_path: Path) -> None:
    src, cache_dir = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    make_files(src)  # ctime = now: inside the racy window
    scan(src, cache_dir)
    again = scan(src, cache_dir)
    assert again.counts.cache_hits == 0


def test_damaged_or_foreign_cache_is_ignored(tmp_path: Path, no_racy_window: None) -> None:
    src, cache_dir = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    make_files(src)
    reference = tree_of(scan(src, cache_dir))
    path = cache_dir / "sha512.v1"
    path.write_bytes(path.read_bytes()[:-5])  # truncated record
    assert scan(src, cache_dir).counts.cache_hits == 0
    path.write_bytes(b"something else entirely")
    result = scan(src, cache_dir)
    assert result.counts.cache_hits == 0 and tree_of(result) == reference
    # A cache for another algorithm is another file.
    other = HashCache.open(str(cache_dir), "sha256", 32)
    assert other.path != str(path)


def test_cache_hit_still_fills_a_store(tmp_path: Path, no_racy_window: None) -> None:
    src, cache_dir = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    make_files(src)
    scan(src, cache_dir)
    store_dir = tmp_path / "store"
    result = scan(src, cache_dir, sink=FlatDigestStore(str(store_dir)))
    assert result.counts.cache_hits == 0  # objects missing from the store: read anyway
    objects = sum(len(files) for _, _, files in os.walk(store_dir))
    assert objects == 12
    again = scan(src, cache_dir, sink=FlatDigestStore(str(store_dir)))
    assert again.counts.cache_hits == 12


def test_cache_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(cachedir.HashCacheError, match="not a directory"):
        HashCache.open(str(tmp_path / "f"), "sha512", 64)


# ---- whole-tree fingerprints ---------------------------------------------------

def fingerprint_of(src: Path) -> bytes:
    fp = fingerprint_tree(str(src), TreeFingerprint(b"salt"))
    assert fp is not None
    return fp.digest()


def test_scan_and_fast_walk_fingerprints_agree(tmp_path: Path) -> None:
    make_files(tmp_path)
    (tmp_path / "d/e").mkdir(parents=True)
    (tmp_path / "d/e/x").write_bytes(b"x" * 70)
    os.symlink("d", tmp_path / "s")
    for spelled in (str(tmp_path), str(tmp_path) + "/"):
        fp = TreeFingerprint(b"salt")
        scan_directory(spelled, ScanOptions(fingerprint=fp))
        fast = fingerprint_tree(spelled, TreeFingerprint(b"salt"))
        assert fast is not None and fp.digest() == fast.digest()
    assert fingerprint_of(tmp_path) != fingerprint_tree(str(tmp_path),
                                                        TreeFingerprint(b"other salt")).digest()  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["content", "chmod", "xattr", "rename", "add", "link",
                                    "rmdir", "symlink"])
def test_any_change_changes_the_fingerprint(tmp_path: Path, change: str) -> None:
    make_files(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink("f1", tmp_path / "sym")
    before = fingerprint_of(tmp_path)
    assert fingerprint_of(tmp_path) == before  # stable while nothing changes
    target = tmp_path / "f5"
    st = os.stat(target)
    time.sleep(TICK)
    if change == "content":  # same size, mtime put back: only ctime tells
        with open(target, "r+b") as f:
            f.write(b"!")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "chmod":
        os.chmod(target, 0o600)
    elif change == "xattr":
        os.setxattr(target, "user.k", b"v")
    elif change == "rename":
        os.rename(target, tmp_path / "sub/f5")
    elif change == "add":
        (tmp_path / "sub/new").write_bytes(b"")
    elif change == "link":
        os.link(target, tmp_path / "f5-link")
        os.unlink(tmp_path / "f5-link")  # nlink back to 1, ctime moved on
    elif change == "rmdir":
        os.rmdir(tmp_path / "sub")
    elif change == "symlink":
        os.unlink(tmp_path / "sym")
        os.symlink("f2", tmp_path / "sym")
    assert fingerprint_of(tmp_path) != before


def test_fingerprint_of_unreadable_tree_is_none(tmp_path: Path) -> None:
    assert fingerprint_tree(str(tmp_path / "missing"), TreeFingerprint(b"")) is None
