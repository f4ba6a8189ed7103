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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cfsboot.boot.digest_cache import (
    ROOT_REFUSAL,
    CacheLookup,
    DigestError,
    check_container_root,
    lookup_whole_result,
)
from cfsboot.fsverity import DIGEST_SIZE, fsverity_digest
from cfsboot.tree.counts import ScanCounts
from cfsboot.tree.fingerprint import TreeFingerprint
from cfsboot.tree.hashcache import HashCache

if TYPE_CHECKING:
    from cfsboot.tree.model import Directory, Leaf

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


__all__ = ["ROOT_REFUSAL", "DigestError", "DigestOptions", "DigestResult",
           "check_container_root", "compute_composefs_digest", "source_reader"]


def compute_composefs_digest(path: str, options: DigestOptions | None = None,
                             looked_up: CacheLookup | None = None) -> DigestResult:
    """``looked_up``: the cache lookup the caller already made (see
    digest_cache.lookup_whole_result), so that a miss does not walk twice."""
    # Scan, transforms and writer build a large object graph and free little
    # of it: the cyclic GC would only rescan it over and over (~20% of a cold
    # run on 28k files).  Cycles made meanwhile are collected afterwards.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _compute(path, options or DigestOptions(), looked_up)
    finally:
        if gc_was_enabled:
            gc.enable()


def _compute(path: str, options: DigestOptions, looked_up: CacheLookup | None) -> DigestResult:
    if options.alg not in DIGEST_SIZE:
        raise DigestError(f"unknown hash {options.alg!r} (expected sha256 or sha512)")
    if options.format not in (0, 1, 2):
        raise DigestError(f"unknown EROFS format {options.format} (expected 0, 1 or 2)")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    look = looked_up  # a caller's lookup has checked the root already
    if look is None and options.cache_dir:
        look = lookup_whole_result(path, options.cache_dir, options.alg, options.format,
                                   options.boot_transform, need_tree=options.need_tree)
    elif look is None:
        check_container_root(path, boot=options.boot_transform)
    if look is not None and look.digest is not None and look.counts is not None:
        seconds = time.perf_counter() - t0
        return DigestResult(look.digest, options.alg, options.format, None,
                            ScanCounts(**look.counts), {"scan": seconds, "total": seconds},
                            from_cache=True)
    cache = (HashCache(look.cache_dir, options.alg, DIGEST_SIZE[options.alg], look.started_ns)
             if look is not None else None)
    salt = look.salt if look is not None else b""
    before = look.before if look is not None else None

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
    if (look is not None and fingerprint is not None
            and fingerprint.is_settled(look.started_ns)
            and (before is None or before.digest() == fingerprint.digest())):
        look.results.put(fingerprint.digest(), digest, asdict(scan.counts))
    return DigestResult(digest, options.alg, options.format, root, scan.counts, timings)


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
