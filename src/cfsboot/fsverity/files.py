"""fs-verity digests of open files and of paths, one at a time or in parallel.

Files are read with ``readv`` straight into a reused 1 MiB buffer and hashed
from slices of it, so a byte is never copied in Python (only the bytes of a
trailing partial block).  Buffers are pooled per thread because allocating a
fresh 1 MiB buffer per file costs page faults that show on trees of small files.

Parallelism uses forked worker processes, not threads.  fs-verity hashes every
4096-byte block separately, so a thread drops and retakes the GIL twice per
block; with two threads the waiting one keeps losing the handoff and the pair
ran 1.8-2.3x slower than plain hashing (bench/fsverity.py), while processes
scale like the floor.  Forked workers inherit the path list, take the next
index from a counter in shared memory, write digests into shared memory and
report finished indices in batches over a pipe, so the per-file cost is a few
microseconds.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import TypeVar

from cfsboot.errors import CfsError
from cfsboot.fsverity.digest import DIGEST_SIZE, FsVerityHasher, hash_constructor, whole_digest

P = TypeVar("P", bound="str | os.PathLike[str]")

DEFAULT_BUFSIZE = 1 << 20
# Below this much data in total, forking workers costs more than it saves.
PARALLEL_MIN_BYTES = 8 << 20


class _BufferPool(threading.local):
    """Free buffers of this thread, by size (a list, so a re-entrant call gets its own)."""

    def __init__(self) -> None:
        self.free: dict[int, list[bytearray]] = {}


_buffers = _BufferPool()


def digest_fd(fd: int, alg: str = "sha512", *,
              sink: Callable[[memoryview], object] | None = None,
              bufsize: int = DEFAULT_BUFSIZE) -> tuple[bytes, int]:
    """Read ``fd`` from its current position to EOF; return (fs-verity digest, bytes read).

    ``sink``, if given, is called with every chunk read, in order, so a caller can
    copy the file elsewhere while hashing it.  The memoryview is only valid during
    the call (the buffer is reused for the next chunk): copy it or write it out.
    Chunks are ``bufsize`` bytes except the last (short reads are topped up).
    """
    hash_constructor(alg)  # fail on a bad algorithm before reading anything
    if bufsize < 1:
        raise ValueError("bufsize must be positive")
    free = _buffers.free.setdefault(bufsize, [])
    buf = free.pop() if free else bytearray(bufsize)
    view = memoryview(buf)
    try:
        hasher: FsVerityHasher | None = None
        total = 0
        while True:
            filled = _fill(fd, buf, view)
            total += filled
            chunk = view[:filled]
            if sink is not None and filled:
                sink(chunk)
            if filled < bufsize and hasher is None:
                # The whole file fit in the buffer (most files do): skip the
                # streaming state, which costs more than hashing a small file.
                return whole_digest(chunk, alg), total
            if hasher is None:
                hasher = FsVerityHasher(alg)
            hasher.update(chunk)
            chunk.release()
            if filled < bufsize:
                return hasher.digest(), total
    finally:
        view.release()
        free.append(buf)


def _fill(fd: int, buf: bytearray, view: memoryview) -> int:
    """Read into ``buf`` until it is full or at EOF; the number of bytes read."""
    filled = os.readv(fd, [buf])
    while 0 < filled < len(buf):
        more = os.readv(fd, [view[filled:]])
        if not more:
            break
        filled += more
    return filled


def digest_file(path: str | os.PathLike[str], alg: str = "sha512") -> bytes:
    """fs-verity digest of the file at ``path`` (symlinks followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        return digest_fd(fd, alg)[0]
    finally:
        os.close(fd)


def default_threads() -> int:
    """Worker count for :func:`digest_files`: the CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def digest_files(paths: Iterable[P], alg: str = "sha512",
                 threads: int | None = None) -> Iterator[tuple[P, bytes]]:
    """fs-verity digests of many files, hashed in parallel; yields (path, digest)
    **in input order**.

    ``threads`` is the number of workers (default: usable CPUs); 1 hashes in
    the calling thread.  The workers are forked processes (see the module
    docstring); ``paths`` is read completely before the first result.  An
    OSError from a file is raised by the iterator when that file's turn comes;
    closing the iterator early stops the workers.
    """
    hash_constructor(alg)
    workers = default_threads() if threads is None else threads
    items = list(paths)
    if workers <= 1 or len(items) <= 1 or not hasattr(os, "fork") or _small(items):
        for path in items:
            yield path, digest_file(path, alg)
        return
    pool = _ForkedPool(items, alg, min(workers, len(items)))
    try:
        for index, digest in pool.results():
            yield items[index], digest
    finally:
        pool.stop()


def _small(items: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether a short list of files is too little data to be worth forking for."""
    if len(items) > 64:
        return False
    total = 0
    for path in items:
        with contextlib.suppress(OSError):  # reported when the file is hashed
            total += os.stat(path).st_size
    return total < PARALLEL_MIN_BYTES


# Shared memory starts with the next unclaimed index and a stop flag (set by the
# parent); then comes one digest slot per file.
_HEADER = struct.Struct("=qq")
_STOP_FLAG = struct.Struct("=q")
_STOP_OFFSET = 8
_REPORT_EVERY_FILES = 128
_REPORT_EVERY_SECONDS = 0.005

# A worker's report: finished indices, failures (index, errno, strerror, path),
# and whether this is its last message (a worker that vanishes without one died).
_Report = tuple[list[int], list[tuple[int, int, str, str]], bool]


class _ForkedPool:
    """Worker processes hashing ``items`` by index; see the module docstring."""

    def __init__(self, items: Sequence[str | os.PathLike[str]], alg: str, workers: int) -> None:
        self._paths = [os.fspath(p) for p in items]
        self._alg = alg
        self._size = DIGEST_SIZE[alg]
        self._shm = mmap.mmap(-1, _HEADER.size + len(self._paths) * self._size)
        # A one-byte token in a pipe is the lock around the counter: it survives
        # fork and costs two syscalls per claim.
        self._lock_r, self._lock_w = os.pipe()
        os.write(self._lock_w, b"L")
        hash_constructor(alg)(b"").digest()  # warm OpenSSL's caches before forking
        self._pids: list[int] = []
        self._conns: list[Connection] = []
        try:
            for _ in range(workers):
                self._spawn()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: hash, report, and leave without running any cleanup
            code = 1
            try:
                os.close(read_fd)
                self._work(Connection(write_fd, readable=False))
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pids.append(pid)
        self._conns.append(Connection(read_fd, writable=False))

    def _claim(self) -> int:
        """The next index to hash, or len(paths) when there is none or we must stop."""
        os.read(self._lock_r, 1)
        try:
            index, stop = _HEADER.unpack_from(self._shm, 0)
            _HEADER.pack_into(self._shm, 0, index + 1, stop)
        finally:
            os.write(self._lock_w, b"L")
        return len(self._paths) if stop else int(index)

    def _work(self, conn: Connection) -> None:
        done: list[int] = []
        failed: list[tuple[int, int, str, str]] = []
        last_report = time.monotonic()
        while (index := self._claim()) < len(self._paths):
            path = self._paths[index]
            try:
                digest = digest_file(path, self._alg)
            except OSError as e:
                failed.append((index, e.errno or 0, e.strerror or str(e), path))
            else:
                start = _HEADER.size + index * self._size
                self._shm[start : start + self._size] = digest
                done.append(index)
            now = time.monotonic()
            if failed or len(done) >= _REPORT_EVERY_FILES or (
                    now - last_report >= _REPORT_EVERY_SECONDS):
                report: _Report = (done, failed, False)
                conn.send(report)
                done, failed, last_report = [], [], now
        conn.send((done, failed, True))

    def results(self) -> Iterator[tuple[int, bytes]]:
        """(index, digest) in index order, as soon as each is available."""
        count = len(self._paths)
        finished = bytearray(count)
        errors: dict[int, OSError] = {}
        live = list(self._conns)
        next_index = 0
        while next_index < count:
            if finished[next_index]:
                if next_index in errors:
                    raise errors.pop(next_index)
                start = _HEADER.size + next_index * self._size
                yield next_index, self._shm[start : start + self._size]
                next_index += 1
                continue
            if not live:  # every worker said goodbye, yet a file is missing
                raise CfsError("fs-verity workers finished without hashing every file")
            for ready in wait(live):
                assert isinstance(ready, Connection)
                try:
                    report: _Report = ready.recv()
                except EOFError:
                    raise CfsError("an fs-verity worker process died") from None
                done, failed, last = report
                for index in done:
                    finished[index] = 1
                for index, errno, strerror, filename in failed:
                    finished[index] = 1
                    errors[index] = OSError(errno, strerror, filename)
                if last:
                    live.remove(ready)

    def stop(self) -> None:
        """Make workers stop claiming files, then reap them and free resources."""
        if self._shm.closed:
            return
        _STOP_FLAG.pack_into(self._shm, _STOP_OFFSET, 1)
        # A spare token, in case a worker died holding the lock: the others then
        # see the stop flag instead of waiting forever.
        os.write(self._lock_w, b"L")
        for conn in self._conns:
            conn.close()  # a worker still reporting gets EPIPE and exits
        for pid in self._pids:
            os.waitpid(pid, 0)
        os.close(self._lock_r)
        os.close(self._lock_w)
        self._shm.close()
