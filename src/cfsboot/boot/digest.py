"""The sealed-image digest: ``bootc container compute-composefs-digest``.

    scan (container-root read, hard links tracked, SHA-512 objects)
      -> transform_for_oci -> transform_for_boot
      -> mkfs_erofs(V1) -> fs-verity SHA-512 of the image

(tree-scan-and-boot-transform.md, erofs-image.md §3).  Unlike bootc no
temporary repository is filled: the image only needs each object's digest,
so file contents are hashed and never copied.

With a cache directory, two things are reused: the digest of every unchanged
file (hashcache.HashCache), and — when the whole tree is unchanged, which a
metadata-only walk establishes (TreeFingerprint) — the final result itself.
"""

from __future__ import annotations

import gc
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cfsboot import __version__
from cfsboot.errors import CfsError
from cfsboot.fsverity import DIGEST_SIZE, fsverity_digest
from cfsboot.tree.counts import ScanCounts
from cfsboot.tree.hashcache import HashCache, TreeFingerprint, fingerprint_tree

if TYPE_CHECKING:
    from cfsboot.tree.model import Directory, Leaf

# bootc's exact refusal (crates/lib/src/bootc_composefs/digest.rs).
ROOT_REFUSAL = "Cannot operate on active root filesystem; mount separate target instead"


class DigestError(CfsError):
    """The directory is not something a composefs digest can be computed for."""


@dataclass
class DigestOptions:
    alg: str = "sha512"  # fs-verity hash of objects and of the image (bootc: sha512)
    format: int = 1  # EROFS format version (bootc at composefs-rs 0fbc853: V1)
    boot_transform: bool = True  # transform_for_boot (boot entries, /boot, SELinux)
    threads: int | None = None
    cache_dir: str | None = None
    progress: bool = False
    # The caller needs DigestResult.root (e.g. for a dumpfile): a cached whole
    # result cannot be used, only cached file digests.
    need_tree: bool = False


@dataclass
class DigestResult:
    digest: bytes
    alg: str
    format: int
    root: Directory | None  # the transformed tree (None when from_cache)
    counts: ScanCounts
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    from_cache: bool = False  # the whole result came from the cache

    @property
    def hexdigest(self) -> str:
        return self.digest.hex()


def compute_composefs_digest(path: str, options: DigestOptions | None = None) -> DigestResult:
    # Scan, transforms and writer build a large object graph and free little
    # of it: the cyclic GC would only rescan it over and over (~20% of a cold
    # run on 28k files).  Cycles made meanwhile are collected afterwards.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _compute(path, options or DigestOptions())
    finally:
        if gc_was_enabled:
            gc.enable()


def _compute(path: str, options: DigestOptions) -> DigestResult:
    if options.alg not in DIGEST_SIZE:
        raise DigestError(f"unknown hash {options.alg!r} (expected sha256 or sha512)")
    if options.format not in (0, 1, 2):
        raise DigestError(f"unknown EROFS format {options.format} (expected 0, 1 or 2)")
    check_container_root(path, boot=options.boot_transform)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    cache = (HashCache.open(options.cache_dir, options.alg, DIGEST_SIZE[options.alg])
             if options.cache_dir else None)
    salt = _fingerprint_salt(options) if cache is not None else b""
    before: TreeFingerprint | None = None
    if cache is not None and not options.need_tree and cache.has_results():
        before = fingerprint_tree(path, TreeFingerprint(salt))
        hit = cache.get_result(before.digest()) if before is not None else None
        cached = _cached_result(hit, options, time.perf_counter() - t0) if hit else None
        if cached is not None:
            return cached

    # Imported here: an unchanged tree (above) needs none of the machinery.
    from cfsboot.boot.transform import transform_for_boot, transform_for_oci
    from cfsboot.erofs.writer import mkfs_erofs
    from cfsboot.tree.scan import ScanOptions, scan_directory

    fingerprint = TreeFingerprint(salt) if cache is not None else None
    scan = scan_directory(path, ScanOptions(
        alg=options.alg, track_hardlinks=True, threads=options.threads,
        cache=cache, progress=options.progress, fingerprint=fingerprint))
    t1 = time.perf_counter()
    timings["scan"] = t1 - t0

    root = scan.root
    transform_for_oci(root)
    if options.boot_transform:
        transform_for_boot(root, source_reader(scan.sources, options.alg))
    t2 = time.perf_counter()
    timings["transform"] = t2 - t1

    image = mkfs_erofs(root, options.format)
    digest = fsverity_digest(image, options.alg)
    t3 = time.perf_counter()
    timings["image"] = t3 - t2
    timings["total"] = t3 - t0
    if (cache is not None and fingerprint is not None
            and fingerprint.is_settled(cache.started_ns)
            and (before is None or before.digest() == fingerprint.digest())):
        cache.put_result(fingerprint.digest(),
                         {"digest": digest.hex(), "counts": asdict(scan.counts)})
    return DigestResult(digest, options.alg, options.format, root, scan.counts, timings)


def _fingerprint_salt(options: DigestOptions) -> bytes:
    """What a cached whole result depends on besides the tree: the options and
    the code (cfsboot's version and the size and mtime of its sources)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [f"cfsboot {__version__} {options.alg} {options.format} "
             f"{options.boot_transform}".encode()]
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".py", ".so")):
                st = os.stat(os.path.join(dirpath, name))
                parts.append(f"{dirpath}/{name} {st.st_size} {st.st_mtime_ns}".encode())
    return b"\n".join(parts)


def _cached_result(hit: dict[str, Any], options: DigestOptions,
                   seconds: float) -> DigestResult | None:
    """The recorded result, or None when the record is damaged (a miss)."""
    try:
        digest = bytes.fromhex(hit["digest"])
        counts = ScanCounts(**hit["counts"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(digest) != DIGEST_SIZE[options.alg]:
        return None
    counts.bytes_hashed = 0
    counts.cache_hits = counts.external_files
    return DigestResult(digest, options.alg, options.format, None, counts,
                        {"scan": seconds, "total": seconds}, from_cache=True)


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


def source_reader(sources: dict[bytes, str], alg: str) -> Callable[[Leaf], bytes]:
    """``read_file`` for the transforms: the bytes of a scanned regular file.

    External files are read back from where the scan found them (only a few
    small policy and boot-entry files are ever asked for) and re-verified, so
    a file changed since it was hashed cannot silently produce labels that do
    not match the image.
    """
    from cfsboot.tree.model import External, Inline, Sparse

    def read_file(leaf: Leaf) -> bytes:
        content = leaf.content
        if isinstance(content, Inline):
            return content.data
        if isinstance(content, Sparse):
            return bytes(content.size)
        if not isinstance(content, External):
            raise DigestError("not a regular file")
        source = sources.get(content.digest) if content.digest is not None else None
        if source is None:
            raise DigestError(f"no source known for object {content.path.decode()}")
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            with open(fd, "rb") as f:
                data = f.read(content.size + 1)
        except OSError as e:
            raise DigestError(f"cannot read {source}: {e.strerror}") from e
        if len(data) != content.size or fsverity_digest(data, alg) != content.digest:
            raise DigestError(f"{source} changed while the digest was computed")
        return data
    return read_file
