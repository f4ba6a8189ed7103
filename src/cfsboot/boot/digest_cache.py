"""The ``--cache`` fast path of compute-composefs-digest: is the whole result
already known?  On an unchanged tree this module, the cache directory and one
metadata walk are all a run needs, so it imports nothing heavy (no scanner, no
image writer, no dataclasses, not even typing or json); boot/digest.py does
the rest on a miss.
"""

from __future__ import annotations

import os
import stat
import time

from cfsboot import __version__
from cfsboot.errors import CfsError
from cfsboot.paths import is_within
from cfsboot.tree.cachedir import RecordedResult, ResultStore, open_cache_directory
from cfsboot.tree.fingerprint import TreeFingerprint, fingerprint_tree

# fs-verity digest sizes (as cfsboot.fsverity.DIGEST_SIZE; that package pulls
# in hashlib, which an answer from the cache does not need).
DIGEST_SIZE = {"sha256": 32, "sha512": 64}

# bootc's exact refusal (crates/lib/src/bootc_composefs/digest.rs).
ROOT_REFUSAL = "Cannot operate on active root filesystem; mount separate target instead"

# The fields of tree.counts.ScanCounts, which a recorded result must have
# exactly (test_digest_cache checks the two agree).
COUNT_FIELDS = ("directories", "regular_files", "inline_files", "external_files", "symlinks",
                "devices", "fifos", "sockets", "hardlinks", "bytes_external", "bytes_hashed",
                "cache_hits")


class DigestError(CfsError):
    """The directory is not something a composefs digest can be computed for."""


class CacheLookup:
    """What a look into the cache found (a plain class: typing.NamedTuple and
    dataclasses cost milliseconds to import, on a path that takes tens)."""

    __slots__ = ("before", "cache_dir", "counts", "digest", "results", "salt", "started_ns")

    def __init__(self, cache_dir: str, started_ns: int, salt: bytes,
                 before: TreeFingerprint | None = None, digest: bytes | None = None,
                 counts: dict[str, int] | None = None) -> None:
        self.cache_dir = cache_dir  # checked: ours, private
        self.started_ns = started_ns  # when the run started (for racily clean entries)
        self.salt = salt  # what the fingerprint is keyed with (options and code)
        self.before = before  # the tree's fingerprint, when any result is recorded
        self.digest = digest  # the recorded result, on a hit
        self.counts = counts  # its counts, as a cache hit reports them
        self.results = ResultStore(cache_dir)


def check_container_root(path: str, *, boot: bool) -> None:
    """Refuse ``/`` (as bootc does) and fail fast, before hashing gigabytes,
    on a tree the transforms would reject for lack of /usr, /boot or /sysroot."""
    if path == "/" or os.path.realpath(path) == "/":
        raise DigestError(ROOT_REFUSAL)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise DigestError(f"cannot access {path}: {e.strerror}") from e
    if stat.S_ISLNK(st.st_mode):
        raise DigestError(f"{path} is a symlink; give the directory itself")
    if not stat.S_ISDIR(st.st_mode):
        raise DigestError(f"{path} is not a directory")
    for name in ("usr", "boot", "sysroot") if boot else ("usr",):
        try:
            st = os.lstat(os.path.join(path, name))
        except FileNotFoundError:
            raise DigestError(f"not a container root: /{name} is missing in {path}") from None
        except OSError as e:
            raise DigestError(f"cannot access /{name} in {path}: {e.strerror}") from e
        if not stat.S_ISDIR(st.st_mode):
            raise DigestError(f"not a container root: /{name} in {path} is not a directory")


def check_cache_outside(path: str, cache_dir: str) -> None:
    """Refuse a cache inside the tree: its files would become part of the very
    image whose digest it caches (and change it from run to run)."""
    if is_within(path, cache_dir):
        raise DigestError(f"cache directory {cache_dir} is inside {path}: its files would "
                          "become part of the image; give a directory outside the tree")


def fingerprint_salt(alg: str, image_format: int, boot_transform: bool) -> bytes:
    """What a cached whole result depends on besides the tree: the options and
    the code (cfsboot's version and the size and mtime of its sources)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [f"cfsboot {__version__} {alg} {image_format} {boot_transform}".encode()]
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".py", ".so")):
                st = os.stat(os.path.join(dirpath, name))
                parts.append(f"{dirpath}/{name} {st.st_size} {st.st_mtime_ns}".encode())
    return b"\n".join(parts)


def lookup_whole_result(path: str, cache_dir: str, alg: str, image_format: int,
                        boot_transform: bool, *, need_tree: bool = False) -> CacheLookup:
    """Check that ``path`` is a container root, open the cache and, unless the
    caller needs the tree itself, look the tree's fingerprint up among the
    recorded results."""
    started_ns = time.time_ns()
    check_container_root(path, boot=boot_transform)
    check_cache_outside(path, cache_dir)
    look = CacheLookup(open_cache_directory(cache_dir), started_ns,
                       fingerprint_salt(alg, image_format, boot_transform))
    if need_tree or not look.results.has_any():
        return look
    look.before = fingerprint_tree(path, TreeFingerprint(look.salt))
    hit = look.results.get(look.before.digest()) if look.before is not None else None
    if hit is not None:
        look.digest, look.counts = _recorded(hit, alg)
    return look


def _recorded(hit: RecordedResult, alg: str) -> tuple[bytes | None, dict[str, int] | None]:
    """The digest and counts of a recorded result; (None, None) when the record
    does not fit (then it is a miss)."""
    digest, counts = hit.digest, hit.counts
    if len(digest) != DIGEST_SIZE[alg] or set(counts) != set(COUNT_FIELDS):
        return None, None
    shown = {name: counts[name] for name in COUNT_FIELDS}
    shown["bytes_hashed"] = 0  # nothing was read this time
    shown["cache_hits"] = shown["external_files"]
    return digest, shown
