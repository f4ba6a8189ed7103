"""Read a directory tree into the tree model, the way composefs-rs reads a
container root (``read_filesystem``); see tree-scan-and-boot-transform.md §1.

Nothing is ever followed: entries are ``lstat``ed, files are opened with
``O_NOFOLLOW`` and xattrs are the object's own (``llistxattr``).  Every xattr
is kept — filtering is the transforms' job.  Regular files of at most
``inline_max`` bytes are stored inline; larger ones become ``External``
objects named by their fs-verity digest.

The pipeline is built for throughput: one thread walks the metadata
(scan_entries.py; with the C accelerator a whole directory per call) and
hands every large file to the hashers as soon as it is found, so the walk
overlaps the hashing.  Each file is read exactly once, in large reads,
through a bounded buffer.  With a cache, unchanged files are not read at all.

Without a sink (only digests are wanted) the hashers are threads running the
C accelerator (no GIL while hashing; results are taken in any order), or,
without it, forked processes (``digest_files_detailed``): fs-verity hashes
4 KiB blocks one by one, and Python threads doing that keep fighting over
the GIL.  Files of up to 1 MiB are fed in walk order while the walk goes on;
larger ones are held back and fed largest first once the walk is done, so
the last files hashed are small and the workers finish together.  With a
sink (an object store), the same chunks are also copied into the store,
which a pool of threads does (hash_pool.py): the walker queues each
directory's files and the threads take the largest known first.  Paths
longer than PATH_MAX are reached one component at a time.
"""

from __future__ import annotations

import errno
import gc
import os
import stat as st_
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cfsboot import native
from cfsboot.fsverity import digest_fd
from cfsboot.fsverity.digest import KERNEL_ALG_ID
from cfsboot.fsverity.files import NOT_REGULAR, digest_files_detailed
from cfsboot.fsverity.native_pool import NOT_REGULAR_CODE, NativePool
from cfsboot.tree.counts import ScanCounts
from cfsboot.tree.digest_store import ObjectSink
from cfsboot.tree.fingerprint import TreeFingerprint
from cfsboot.tree.hash_pool import HashPool
from cfsboot.tree.hashcache import HashCache, cache_key
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    LeafContent,
    Socket,
    Symlink,
)
from cfsboot.tree.progress import ByteProgress
from cfsboot.tree.scan_entries import (
    OPEN_FILE,
    ScanError,
    entry_stat,
    read_small,
    read_small_at,
    read_xattrs,
    shown,
)
from cfsboot.tree.scan_entries import list_entries as _entries

if TYPE_CHECKING:
    from cfsboot.native import ListedEntry, StatLike

__all__ = ["ScanCounts", "ScanError", "ScanOptions", "ScanResult", "scan_directory"]

_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, st_.S_IFDIR, st_.S_IFREG
# Content of a leaf whose digest is still being computed (replaced before the
# scan returns; a shared constant because the walk makes 10⁵ of them).
_UNHASHED = External(0, b"", None)

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Files larger than this are hashed after the walk, largest first (see above).
_DEFER_BYTES = 1 << 20
# Paths this long go through directory descriptors (PATH_MAX is 4096 with the NUL).
_LONG_PATH = 4000


@dataclass
class ScanOptions:
    alg: str = "sha512"
    inline_max: int = 64  # composefs-rs INLINE_CONTENT_MAX_V0; 64 inline, 65 external
    track_hardlinks: bool = True  # (st_dev, st_ino) → one Leaf; C mkcomposefs: False
    threads: int | None = None  # hashing processes (threads with a sink); None = usable CPUs
    sink: ObjectSink | None = None
    cache: HashCache | None = None
    progress: bool = False  # a progress bar on stderr (callers pass isatty())
    bufsize: int = 1 << 20  # read size per hashing thread (with a sink; workers read 1 MiB)
    fingerprint: TreeFingerprint | None = None  # fed every entry's stat identity


@dataclass
class ScanResult:
    root: Directory
    # object digest -> one source path with that content (for reading it back)
    sources: dict[bytes, str] = field(default_factory=dict)
    counts: ScanCounts = field(default_factory=ScanCounts)


def scan_directory(path: str, options: ScanOptions | None = None) -> ScanResult:
    """Read the tree rooted at directory ``path`` (itself not a symlink)."""
    options = options or ScanOptions()
    threads = options.threads if options.threads is not None else _usable_cpus()
    if threads < 1:
        raise ScanError(f"invalid thread count {threads}")
    # Hashing is CPU-bound: hashers beyond a few per CPU only add contention
    # (and a huge --threads would fork or start until memory runs out).
    threads = min(threads, max(8, 4 * _usable_cpus()))
    root_path = os.fsencode(path)
    root_st = _open_root(root_path)
    scanner = _Scanner(root_path, options)
    # The walk makes a few objects per entry and frees none: without this the
    # cyclic GC rescans the growing tree again and again.  It makes no cycles.
    # (Forked hashers inherit the setting; they keep nothing either.)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if options.sink is None and native.module is not None:
            root = scanner.scan_with_native(root_st, threads, native.module)
        elif options.sink is None:
            root = scanner.scan_with_processes(root_st, threads)
        else:
            root = scanner.scan_with_threads(root_st, threads)
    finally:
        if gc_was_enabled:
            gc.enable()
        scanner.progress.close()
    if options.sink is not None:
        options.sink.flush()
    if options.cache is not None:
        options.cache.save()
    return ScanResult(root, scanner.sources, scanner.counts)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _open_root(root_path: bytes) -> os.stat_result:
    try:
        fd = os.open(root_path, _OPEN_DIR)
    except OSError as e:
        shown = os.fsdecode(root_path)
        if os.path.islink(root_path):
            raise ScanError(f"{shown} is a symlink; give the directory itself") from e
        raise ScanError(f"cannot open directory {shown}: {e.strerror}") from e
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Job:
    """A regular file too large to inline, waiting for its digest.

    Several leaves share a job when hard links are not tracked (C mkcomposefs
    semantics: one leaf per name) — the inode is still read only once.
    """
    leaves: list[Leaf]
    path: bytes
    st: StatLike
    content: External | None = None  # set once hashed (under _Scanner._lock)

    def __fspath__(self) -> bytes:  # so the job itself goes to the hashing workers
        return self.path


class _Scanner:
    def __init__(self, root_path: bytes, options: ScanOptions) -> None:
        self.root_path = root_path
        self.options = options
        self.counts = ScanCounts()
        self.sources: dict[bytes, str] = {}
        self.progress = ByteProgress(options.progress, "Hashing")
        self._lock = threading.Lock()

    # ---- the two pipelines -------------------------------------------------

    def scan_with_threads(self, root_st: os.stat_result, threads: int) -> Directory:
        root = Directory(entry_stat(self.root_path, root_st))
        pool = HashPool(threads, self.hash_job, self.progress)
        try:
            for batch in self.walk(root, root_st):
                pool.check()  # the first error stops the walk too
                if batch:
                    pool.submit(batch)
            pool.finish()
        finally:
            pool.stop()
        return root

    def feed(self, root: Directory, root_st: StatLike) -> Iterator[_Job]:
        """The walk's files to hash: up to 1 MiB as found, larger ones after
        the walk, largest first (so the hashing does not end on one big file)."""
        deferred: list[_Job] = []
        progress = self.progress.enabled
        for batch in self.walk(root, root_st):
            if progress and batch:
                self.progress.add_total(sum(job.st.st_size for job in batch))
            for job in batch:
                if job.st.st_size > _DEFER_BYTES:
                    deferred.append(job)
                else:
                    yield job
        deferred.sort(key=_job_size, reverse=True)
        yield from deferred

    def scan_with_native(self, root_st: os.stat_result, workers: int,
                         module: native.NativeModule) -> Directory:
        """Hashing threads running the C accelerator (no GIL while hashing);
        results are taken as they come, in no particular order."""
        root = Directory(entry_stat(self.root_path, root_st))
        pool: NativePool[_Job] = NativePool(module, KERNEL_ALG_ID[self.options.alg], workers,
                                           nofollow=True, cost=_job_size)
        try:
            for job, result in pool.run((job, job) for job in self.feed(root, root_st)):
                if type(result) is int:
                    raise _native_read_error(job.path, result)
                self._hashed(job, result)  # type: ignore[arg-type]
        finally:
            pool.stop()
        return root

    def scan_with_processes(self, root_st: os.stat_result, workers: int) -> Directory:
        root = Directory(entry_stat(self.root_path, root_st))
        # Results come in the order fed; the generator is closed on any error,
        # which stops and reaps the workers.  Small files travel to the workers
        # several to a message (cost = size).
        results = digest_files_detailed(self.feed(root, root_st), self.options.alg, workers,
                                        follow_symlinks=False, cost=_job_size)
        try:
            for job, result in results:
                self._hashed(job, result)  # raises ScanError, never OSError
        except OSError as e:  # a file the workers could not read
            raise _read_error(e) from e
        finally:
            results.close()
        return root

    def _hashed(self, job: _Job, result: tuple[bytes, int, int, int, int, int, int, int, bool]
                ) -> None:
        """Check what a worker read (a FileDigest, or the same fields from the
        C code) against what the walk listed, then use it."""
        digest, size, mode, dev, ino, st_size, mtime_ns, ctime_ns, unchanged = result
        listed = job.st
        if not st_.S_ISREG(mode) or dev != listed.st_dev or ino != listed.st_ino:
            raise ScanError(f"{shown(job.path)} was replaced while scanning")
        if size != listed.st_size:
            raise ScanError(f"{shown(job.path)} changed size while scanning "
                            f"({listed.st_size} -> {size} bytes)")
        cache = self.options.cache
        if (cache is not None and unchanged and st_size == listed.st_size
                and mtime_ns == listed.st_mtime_ns and ctime_ns == listed.st_ctime_ns):
            cache.record(listed, digest)  # as listed, and unchanged while read
        self._done(job, digest, hashed=size)
        self.progress.advance(size)

    # ---- metadata walk (one thread) ----------------------------------------

    def walk(self, root: Directory, root_st: StatLike) -> Iterator[list[_Job]]:
        """Fill ``root``; yield, directory by directory, the files to hash."""
        # The hot loop of a scan (10⁵ entries): locals, no helper calls for
        # the common cases.
        opts = self.options
        track = opts.track_hardlinks
        inline_max = opts.inline_max
        use_cache = opts.cache is not None
        counts = self.counts
        seen: dict[tuple[int, int], Leaf] = {}  # hard links, when tracked
        jobs: dict[tuple[int, int], _Job] = {}  # inodes queued, when not tracked
        counts.directories += 1
        stack: list[tuple[Directory, bytes]] = [(root, self.root_path)]
        fingerprint = opts.fingerprint
        if fingerprint is not None:
            fingerprint.entry(b"", root_st)
        while stack:
            directory, dir_path = stack.pop()
            children = directory.entries
            entries = (_entries(dir_path, inline_max) if len(dir_path) < _LONG_PATH
                       else self.entries_beyond_path_max(dir_path, inline_max))
            if fingerprint is not None:
                fingerprint.directory(dir_path, entries)
            batch: list[_Job] = []
            for name, full, st, xattrs, data in entries:
                assert st is not None  # _entries redid what the C lister could not read
                fmt = st.st_mode & _S_IFMT
                if fmt == _S_IFDIR:
                    child = Directory(entry_stat(full, st, xattrs))
                    children[name] = child
                    stack.append((child, full))
                    counts.directories += 1
                    continue
                if track:
                    ident = (st.st_dev, st.st_ino)
                    known = seen.get(ident)
                    if known is not None:
                        children[name] = known
                        counts.hardlinks += 1
                        continue
                if fmt == _S_IFREG and st.st_size > inline_max:
                    leaf = Leaf(entry_stat(full, st, xattrs), _UNHASHED)
                    counts.regular_files += 1
                    counts.external_files += 1
                    counts.bytes_external += st.st_size
                    job = jobs.get((st.st_dev, st.st_ino)) if not track else None
                    if job is not None:  # another name of an inode already queued
                        self._add_leaf(job, leaf)
                    else:
                        job = _Job([leaf], full, st)
                        if not track:
                            jobs[(st.st_dev, st.st_ino)] = job
                        if use_cache and self._from_cache(job):
                            pass
                        elif len(full) >= _LONG_PATH:
                            self.progress.add_total(st.st_size)
                            self.hash_job(job)  # rare: workers open by path, which fails
                            self.progress.advance(st.st_size)
                        else:
                            batch.append(job)
                else:
                    leaf = Leaf(entry_stat(full, st, xattrs), self._content(full, st, fmt, data))
                if track:
                    seen[ident] = leaf
                children[name] = leaf
            yield batch

    def _content(self, path: bytes, st: StatLike, fmt: int, data: bytes | None) -> LeafContent:
        """``data``: the bytes or link target the C lister already read, or None."""
        counts = self.counts
        if fmt == st_.S_IFREG:
            counts.regular_files += 1
            counts.inline_files += 1
            return Inline(data if data is not None else read_small(path, st.st_size))
        if fmt == st_.S_IFLNK:
            counts.symlinks += 1
            if data is not None:
                return Symlink(data)
            try:
                return Symlink(os.readlink(path))
            except OSError as e:
                raise ScanError(f"cannot read symlink {shown(path)}: {e.strerror}") from e
        if fmt == st_.S_IFCHR:
            counts.devices += 1
            return CharDevice(st.st_rdev)
        if fmt == st_.S_IFBLK:
            counts.devices += 1
            return BlockDevice(st.st_rdev)
        if fmt == st_.S_IFIFO:
            counts.fifos += 1
            return Fifo()
        if fmt == st_.S_IFSOCK:
            counts.sockets += 1
            return Socket()
        raise ScanError(f"{shown(path)}: unsupported file type {oct(fmt)}")

    # ---- paths longer than PATH_MAX ----------------------------------------
    # The kernel refuses such paths, so they are reached from the scan root
    # one component at a time (as composefs-rs does with openat) and their
    # entries are read through the directory's descriptor.

    def open(self, path: bytes, flags: int) -> int:
        """``os.open(path, flags)``, also for a path below the root longer than PATH_MAX."""
        if len(path) < _LONG_PATH:
            return os.open(path, flags)
        fd = os.open(self.root_path, _OPEN_DIR)
        try:
            *parents, last = path[len(self.root_path):].split(b"/")
            for part in parents:
                if part:
                    parent, fd = fd, os.open(part, _OPEN_DIR, dir_fd=fd)
                    os.close(parent)
            return os.open(last, flags, dir_fd=fd)
        finally:
            os.close(fd)

    def entries_beyond_path_max(self, dir_path: bytes, inline_max: int) -> list[ListedEntry]:
        """``_entries`` for a directory whose path is too long for the kernel:
        everything is read relative to its descriptor (xattrs, which have no
        ``*at`` call, through ``/proc/self/fd``)."""
        try:
            fd = self.open(dir_path, _OPEN_DIR)
        except OSError as e:
            raise ScanError(f"cannot read directory {shown(dir_path)}: {e.strerror}") from e
        try:
            try:
                names = [os.fsencode(name) for name in os.listdir(fd)]
            except OSError as e:
                raise ScanError(f"cannot read directory {shown(dir_path)}: {e.strerror}") from e
            via_fd = f"/proc/self/fd/{fd}/".encode()
            out: list[ListedEntry] = []
            for name in names:
                full = dir_path + b"/" + name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as e:
                    raise ScanError(f"cannot stat {shown(full)}: {e.strerror}") from e
                data = None
                try:
                    if st_.S_ISLNK(st.st_mode):
                        data = os.readlink(name, dir_fd=fd)
                    elif st_.S_ISREG(st.st_mode) and st.st_size <= inline_max:
                        data = read_small_at(fd, name, st.st_size)
                except OSError as e:
                    raise ScanError(f"cannot read {shown(full)}: {e.strerror}") from e
                if data is not None and st_.S_ISREG(st.st_mode) and len(data) != st.st_size:
                    raise ScanError(f"{shown(full)} changed size while scanning")
                out.append((name, full, st, read_xattrs(via_fd + name, named=full), data))
            return out
        finally:
            os.close(fd)

    # ---- hashing (pool threads) -------------------------------------------

    def _add_leaf(self, job: _Job, leaf: Leaf) -> None:
        with self._lock:  # a worker may be finishing this job right now
            if job.content is not None:
                leaf.content = job.content
            else:
                job.leaves.append(leaf)

    def _from_cache(self, job: _Job) -> bool:
        """Complete ``job`` from the cache (in the walker: no thread hand-off)."""
        cache, sink = self.options.cache, self.options.sink
        if cache is None:
            return False
        digest = cache.lookup(job.st)
        if digest is None or (sink is not None and not sink.contains(digest)):
            return False
        self._done(job, digest, hashed=0)
        return True

    def hash_job(self, job: _Job) -> int:
        """Give ``job.leaves`` their External content; returns the bytes read."""
        opts = self.options
        cache, sink = opts.cache, opts.sink
        try:
            fd = self.open(job.path, OPEN_FILE)
        except OSError as e:
            raise ScanError(f"cannot read {shown(job.path)}: {e.strerror}") from e
        try:
            before = os.fstat(fd)
            if not st_.S_ISREG(before.st_mode) or (before.st_dev, before.st_ino) != (
                    job.st.st_dev, job.st.st_ino):
                raise ScanError(f"{shown(job.path)} was replaced while scanning")
            try:
                pending = sink.begin(before.st_size) if sink is not None else None
            except OSError as e:
                raise _store_error(job.path, e) from e
            try:
                digest, size = digest_fd(fd, opts.alg, bufsize=opts.bufsize,
                                         sink=_storing(pending.write) if pending else None)
                if size != job.st.st_size:
                    raise ScanError(f"{shown(job.path)} changed size while scanning "
                                    f"({job.st.st_size} -> {size} bytes)")
            except BaseException as e:
                if pending is not None:
                    pending.abort()  # never leave a partial object behind
                if isinstance(e, _StoreFailed):
                    raise _store_error(job.path, e.error) from e
                if isinstance(e, OSError):
                    raise ScanError(f"cannot read {shown(job.path)}: {e.strerror}") from e
                raise
            if pending is not None:
                try:
                    pending.commit(digest)
                except OSError as e:
                    raise _store_error(job.path, e) from e
            if cache is not None and cache_key(os.fstat(fd)) == cache_key(before):
                cache.record(before, digest)  # unchanged while we read it
        finally:
            os.close(fd)
        self._done(job, digest, hashed=size)
        return size

    def _done(self, job: _Job, digest: bytes, hashed: int) -> None:
        content = External.from_digest(digest, job.st.st_size)
        with self._lock:
            job.content = content
            for leaf in job.leaves:
                leaf.content = content
            self.sources.setdefault(digest, os.fsdecode(job.path))
            self.counts.bytes_hashed += hashed
            if not hashed:
                self.counts.cache_hits += 1


class _StoreFailed(Exception):
    """An OSError from writing into the object store, not from reading the file."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _storing(write: Callable[[memoryview], object]) -> Callable[[memoryview], object]:
    def store(chunk: memoryview) -> object:
        try:
            return write(chunk)
        except OSError as e:
            raise _StoreFailed(e) from e
    return store


def _store_error(path: bytes, e: OSError) -> ScanError:
    where = f" ({e.filename})" if e.filename else ""
    return ScanError(f"cannot store {shown(path)} in the object store: {e.strerror}{where}")


def _job_size(job: _Job) -> int:
    return job.st.st_size


def _native_read_error(path: bytes, code: int) -> ScanError:
    """A file the C hashing code could not read (an errno, or -1: not a regular
    file any more), worded as :func:`_read_error` words it."""
    if code == NOT_REGULAR_CODE or code == errno.ELOOP:
        return ScanError(f"{shown(path)} was replaced while scanning")
    return ScanError(f"cannot read {shown(path)}: {os.strerror(code)}")


def _read_error(e: OSError) -> ScanError:
    """A file the workers could not hash, as one clear line."""
    path = os.fsdecode(e.filename) if e.filename is not None else "?"
    if e.errno == errno.ELOOP or (e.errno == errno.EINVAL and e.strerror == NOT_REGULAR):
        return ScanError(f"{path} was replaced while scanning")  # now a symlink/special file
    return ScanError(f"cannot read {path}: {e.strerror}")


