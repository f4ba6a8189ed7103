"""fs-verity digests of open files and of paths, one at a time or in parallel.

Files are read with ``readv`` straight into a reused 1 MiB buffer and hashed
from slices of it, so a byte is never copied in Python (only the bytes of a
trailing partial block).  Buffers are pooled per thread because allocating a
fresh 1 MiB buffer per file costs page faults that show on trees of small files.

Parallelism uses forked worker processes, not threads.  fs-verity hashes every
4096-byte block separately, so a thread drops and retakes the GIL twice per
block; with two threads the waiting one keeps losing the handoff and the pair
took 1.6-2.3x the time of plain hashing on the same threads (bench/fsverity.py
--with-threads), while processes scale like the floor.  The parent pulls paths
from the caller lazily, writes them to a task pipe shared by the workers and
collects batched reports from each worker's own pipe, so walking a tree can
overlap hashing it, and the cost per file is a few microseconds.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import select
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar, cast

from cfsboot import native
from cfsboot.errors import CfsError
from cfsboot.fsverity.digest import KERNEL_ALG_ID, FsVerityHasher, hash_constructor, whole_digest
from cfsboot.fsverity.native_pool import NOT_REGULAR_CODE, NativePool, NativeResult

if TYPE_CHECKING:  # imported when a forked pool starts: the C path never needs it
    from multiprocessing.connection import Connection

_AnyPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]
P = TypeVar("P", bound=_AnyPath)

DEFAULT_BUFSIZE = 1 << 20
# Below this much data in total, forking workers (a few ms) costs more than it
# saves; lists longer than PARALLEL_STAT_LIMIT are not even measured (stat costs too).
PARALLEL_MIN_BYTES = 8 << 20
PARALLEL_STAT_LIMIT = 1024


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
    if sink is None and native.module is not None:
        return native.module.digest_fd(fd, KERNEL_ALG_ID[alg])
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


def digest_file(path: _AnyPath, alg: str = "sha512", *,
                follow_symlinks: bool = True) -> bytes:
    """fs-verity digest of the file at ``path``.

    ``follow_symlinks=False`` is for tree scanners: a symlink fails (ELOOP) and
    so does anything but a regular file (EINVAL; a FIFO is not waited for), in
    case the tree changed since it was listed.
    """
    fd = _open(path, follow_symlinks)
    try:
        return digest_fd(fd, alg)[0]
    finally:
        os.close(fd)


class FileDigest(NamedTuple):
    """What :func:`digest_file_detailed` saw: enough for a scanner to check that
    the file it hashed is the one it listed, and whether to cache the digest.
    The ``st_*`` fields are the open file's fstat before reading (a few fields,
    not an ``os.stat_result``: this crosses a pipe once per file)."""

    digest: bytes
    size: int  # bytes actually read
    st_mode: int
    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    unchanged: bool  # fstat after reading: same device, inode, size, mtime and ctime


def digest_file_detailed(path: _AnyPath, alg: str = "sha512", *,
                         follow_symlinks: bool = True) -> FileDigest:
    """:func:`digest_file`, plus the bytes read and the file's stat before/after."""
    fd, before = _open_stat(path, follow_symlinks)
    try:
        digest, size = digest_fd(fd, alg)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    return FileDigest(digest, size, before.st_mode, before.st_dev, before.st_ino,
                      before.st_size, before.st_mtime_ns, before.st_ctime_ns,
                      after.st_ino == before.st_ino and after.st_dev == before.st_dev
                      and after.st_size == before.st_size
                      and after.st_mtime_ns == before.st_mtime_ns
                      and after.st_ctime_ns == before.st_ctime_ns)


def _open(path: _AnyPath, follow_symlinks: bool) -> int:
    if follow_symlinks:
        return os.open(path, _OPEN_FLAGS[True])
    return _open_stat(path, follow_symlinks)[0]


def _open_stat(path: _AnyPath, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """The open file and its fstat (one fstat serves the regular-file check too)."""
    fd = os.open(path, _OPEN_FLAGS[follow_symlinks])
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not follow_symlinks and not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, NOT_REGULAR, os.fspath(path))
    return fd, st


_OPEN_FLAGS = {True: os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY,
               False: os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK}


NOT_REGULAR = "not a regular file"  # strerror of the EINVAL for follow_symlinks=False


def default_threads() -> int:
    """Worker count for :func:`digest_files`: the CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def digest_files(paths: Iterable[P], alg: str = "sha512", threads: int | None = None,
                 *, sizes: Sequence[int] | None = None, follow_symlinks: bool = True,
                 cost: Callable[[P], int] | None = None
                 ) -> Generator[tuple[P, bytes], None, None]:
    """fs-verity digests of many files, hashed in parallel; yields (path, digest)
    **in input order**.

    ``threads`` is the number of workers (default: usable CPUs); they are
    forked processes (see the module docstring).  ``paths`` is consumed lazily,
    a bounded number of files ahead of the hashing, so a generator walking a
    tree can feed it and the walk overlaps the hashing.  Files are hashed in
    input order, or largest first when ``sizes`` (one per path, e.g. st_size
    from a scan) is given: that keeps a big file from finishing alone at the
    end, but reads all of ``paths`` first.  With 1 worker, or a list of at most
    1024 files holding under 8 MiB, the calling thread hashes everything
    itself.  An OSError from a file is raised by the iterator when that file's
    turn comes; closing the iterator early stops the workers.

    ``cost`` (e.g. a file's listed size in bytes) lets the workers take
    several cheap files per task message: consecutive files are sent together
    while their costs add up to under 256 KiB.  Without it every file is its
    own message, so a big file never waits behind another in one worker.
    """
    results = _digest_many(paths, alg, threads, sizes, follow_symlinks, digest_file, cost)
    return cast(Generator[tuple[P, bytes], None, None], results)


def digest_files_detailed(paths: Iterable[P], alg: str = "sha512", threads: int | None = None,
                          *, sizes: Sequence[int] | None = None, follow_symlinks: bool = True,
                          cost: Callable[[P], int] | None = None
                          ) -> Generator[tuple[P, FileDigest], None, None]:
    """:func:`digest_files` yielding (path, :class:`FileDigest`): the bytes read
    and the file's stat too, for scanners that must notice a file that changed
    or was replaced since it was listed."""
    results = _digest_many(paths, alg, threads, sizes, follow_symlinks, digest_file_detailed,
                           cost)
    return cast(Generator[tuple[P, FileDigest], None, None], results)


# How one file is hashed (digest_file or digest_file_detailed); workers
# inherit it through fork, so it need not be picklable.
_OneFile = Callable[..., "bytes | FileDigest"]
# The hashing functions the C accelerator reproduces, and whether each wants
# the details: anything else (a test's stand-in) runs on the forked workers.
_NATIVE_SHAPES: dict[_OneFile, bool] = {}


def _digest_many(paths: Iterable[P], alg: str, threads: int | None,
                 sizes: Sequence[int] | None, follow_symlinks: bool,
                 one_file: _OneFile, cost: Callable[[P], int] | None = None
                 ) -> Generator[tuple[P, bytes | FileDigest], None, None]:
    hash_constructor(alg)
    workers = default_threads() if threads is None else threads
    if sizes is not None:
        items = list(paths)
        if len(sizes) != len(items):
            raise ValueError("digest_files: sizes must have one entry per path")
        order = sorted(range(len(items)), key=sizes.__getitem__, reverse=True)
        tasks: Iterator[tuple[int, P]] = ((i, items[i]) for i in order)
        parallel = len(items) > 1 and (len(items) > PARALLEL_STAT_LIMIT
                                       or sum(sizes) >= PARALLEL_MIN_BYTES)
    elif isinstance(paths, Sequence):
        tasks = enumerate(paths)
        parallel = len(paths) > 1 and not _small(paths)
    else:
        source = iter(paths)
        first = list(itertools.islice(source, 2))
        tasks = enumerate(itertools.chain(first, source))
        parallel = len(first) > 1
    if workers <= 1 or not parallel:
        yield from _in_order(tasks, lambda t: _digest_here(t, alg, follow_symlinks, one_file))
        return
    if native.module is not None and one_file in _NATIVE_SHAPES:
        detailed = _NATIVE_SHAPES[one_file]
        native_pool: NativePool[int] = NativePool(native.module, KERNEL_ALG_ID[alg], workers,
                                                  not follow_symlinks, cost)
        try:
            yield from _in_order(tasks, lambda t: (
                (seq, _from_native(raw, detailed)) for seq, raw in native_pool.run(t)))
        finally:
            native_pool.stop()
        return
    if not hasattr(os, "fork"):
        yield from _in_order(tasks, lambda t: _digest_here(t, alg, follow_symlinks, one_file))
        return
    pool = _ForkedPool(alg, workers, follow_symlinks, one_file,
                       cast("Callable[[object], int] | None", cost))
    try:
        yield from _in_order(tasks, pool.run)
    finally:
        pool.stop()


def _from_native(raw: NativeResult, detailed: bool) -> bytes | FileDigest | _Failure:
    if type(raw) is int:
        if raw == NOT_REGULAR_CODE:
            return _Failure(errno.EINVAL, NOT_REGULAR)
        return _Failure(raw, os.strerror(raw))
    assert not isinstance(raw, int)
    # C-level construction, no NamedTuple __new__ call per file
    return tuple.__new__(FileDigest, raw) if detailed else raw[0]


def _small(items: Sequence[_AnyPath]) -> bool:
    """Whether a short list of files is too little data to be worth forking for."""
    if len(items) > PARALLEL_STAT_LIMIT:
        return False
    total = 0
    for path in items:
        with contextlib.suppress(OSError):  # reported when the file is hashed
            total += os.stat(path).st_size
    return total < PARALLEL_MIN_BYTES


class _Failure(NamedTuple):
    """An OSError from hashing one file, as it crosses the process boundary."""

    errno: int
    strerror: str


_Result = bytes | FileDigest | _Failure
_Engine = Callable[[Iterator[tuple[int, _AnyPath]]],
                   Iterator[tuple[int, _Result]]]


def _in_order(tasks: Iterator[tuple[int, P]], engine: _Engine
              ) -> Iterator[tuple[P, bytes | FileDigest]]:
    """Run ``tasks`` (sequence number, path) on ``engine``, which yields results
    as they complete; yield (path, digest) by sequence number."""
    paths: dict[int, P] = {}

    def recorded() -> Iterator[tuple[int, P]]:
        for seq, path in tasks:
            paths[seq] = path
            yield seq, path

    ready: dict[int, _Result] = {}
    next_seq = 0
    for seq, result in engine(recorded()):
        ready[seq] = result
        while next_seq in ready:
            result = ready.pop(next_seq)
            path = paths.pop(next_seq)
            if isinstance(result, _Failure):
                name: _AnyPath = path
                raise OSError(result.errno, result.strerror, os.fspath(name))
            yield path, result
            next_seq += 1


def _digest_here(tasks: Iterator[tuple[int, _AnyPath]], alg: str,
                 follow_symlinks: bool, one_file: _OneFile) -> Iterator[tuple[int, _Result]]:
    for seq, path in tasks:
        try:
            yield seq, one_file(path, alg, follow_symlinks=follow_symlinks)
        except OSError as e:
            yield seq, _Failure(e.errno or 0, e.strerror or str(e))


# A task message holds one or more tasks, each a sequence number and the
# length of the path bytes that follow.
_TASK_HEAD = struct.Struct("=qH")
_PATH_MAX = 4096  # Linux, counting the terminating NUL
_MAX_MESSAGE = 32 << 10  # a receive buffer for any message (one task fits easily)
_BATCH_COST = 256 << 10  # cheap files travel together while their costs add up to less
_BATCH_FILES = 32
_STOP_FLAG = struct.Struct("=q")  # in shared memory, set by the parent to stop workers
_TASKS_AHEAD_PER_WORKER = 512
_REPORT_EVERY_FILES = 128
_REPORT_EVERY_SECONDS = 0.004

# A worker's report: finished (seq, digest or FileDigest fields), failed (seq,
# errno, strerror), and whether this is its last message (a worker that
# vanishes without one died).
_Report = tuple[list[tuple[int, bytes | tuple[object, ...]]], list[tuple[int, int, str]], bool]


class _ForkedPool:
    """Forked workers hashing files named in a shared task queue.

    The queue is a SOCK_SEQPACKET socket pair: every receive returns exactly
    one whole message, so the workers share one end without any lock.  With a
    ``cost`` per task, consecutive cheap files share one message (one send and
    one receive for all of them).  The parent sends without blocking (it never
    stops reading reports, so neither side can wedge the other); each worker
    reports results in batches over its own pipe.
    """

    def __init__(self, alg: str, workers: int, follow_symlinks: bool,
                 one_file: _OneFile | None = None,
                 cost: Callable[[object], int] | None = None) -> None:
        self._alg = alg
        self._follow = follow_symlinks
        self._one_file = one_file or digest_file  # looked up now: tests patch it
        self._cost = cost
        self._window = _TASKS_AHEAD_PER_WORKER * workers
        self._shm = mmap.mmap(-1, _STOP_FLAG.size)
        self._feed, self._queue = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        hash_constructor(alg)(b"").digest()  # warm OpenSSL's caches before forking
        self._pids: list[int] = []
        self._conns: list[Connection] = []
        try:
            for _ in range(workers):
                self._spawn()
        except BaseException:
            self.stop()
            raise
        self._queue.close()  # the workers' end
        self._feed.setblocking(False)

    def _spawn(self) -> None:
        from multiprocessing.connection import Connection
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: hash, report, and leave without running any cleanup
            code = 1
            try:
                os.close(read_fd)
                self._feed.close()  # or the queue would never reach its end
                self._work(Connection(write_fd, readable=False))
                code = 0
            except (BrokenPipeError, KeyboardInterrupt):
                pass  # the parent stopped us or is going away
            except BaseException:
                traceback.print_exc()  # a bug: show it, the parent reports the death
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pids.append(pid)
        self._conns.append(Connection(read_fd, writable=False))

    # ---- worker side ------------------------------------------------------

    def _work(self, conn: Connection) -> None:
        done: list[tuple[int, bytes | tuple[object, ...]]] = []
        one_file = self._one_file
        alg, follow = self._alg, self._follow
        failed: list[tuple[int, int, str]] = []
        last_report = time.monotonic()
        queue = self._queue
        head_size = _TASK_HEAD.size
        while not _STOP_FLAG.unpack_from(self._shm)[0]:
            try:
                message = queue.recv(_MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:  # about to wait for work: report first
                if done or failed:
                    conn.send(([*done], [*failed], False))
                    done.clear()
                    failed.clear()
                    last_report = time.monotonic()
                message = queue.recv(_MAX_MESSAGE)
            if not message:
                break  # the parent closed its end and the queue is empty
            at = 0
            while at < len(message):
                seq, length = _TASK_HEAD.unpack_from(message, at)
                at += head_size
                path = os.fsdecode(message[at : at + length])
                at += length
                try:
                    result = one_file(path, alg, follow_symlinks=follow)
                    # A FileDigest goes as a plain tuple: pickling a NamedTuple
                    # calls Python code for every file on both sides.
                    done.append((seq, tuple(result) if type(result) is FileDigest else result))
                except OSError as e:
                    failed.append((seq, e.errno or 0, e.strerror or str(e)))
            now = time.monotonic()
            if (len(done) + len(failed) >= _REPORT_EVERY_FILES
                    or now - last_report >= _REPORT_EVERY_SECONDS):
                conn.send(([*done], [*failed], False))
                done.clear()
                failed.clear()
                last_report = now
        report: _Report = (done, failed, True)
        conn.send(report)

    # ---- parent side ------------------------------------------------------

    def run(self, tasks: Iterator[tuple[int, _AnyPath]]
            ) -> Iterator[tuple[int, _Result]]:
        """Feed ``tasks`` to the workers; yield (seq, result) as they complete."""
        by_fd = {conn.fileno(): conn for conn in self._conns}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        outbox: deque[bytes] = deque()  # task messages the queue has not taken yet
        batch: list[bytes] = []  # encoded tasks of the message being filled
        batch_cost = batch_bytes = 0
        cost = self._cost
        pack = _TASK_HEAD.pack
        in_flight = 0
        exhausted = False
        feed_fd = self._feed.fileno()
        watching_feed = False
        while True:
            while not exhausted and in_flight < self._window:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                seq, path = task
                encoded = os.fsencode(path)
                if len(encoded) >= _PATH_MAX:  # open() would refuse it; don't send it
                    yield seq, _Failure(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
                    continue
                this_cost = _BATCH_COST if cost is None else cost(path)
                if batch and (batch_cost + this_cost >= _BATCH_COST or len(batch) >= _BATCH_FILES
                              or batch_bytes + len(encoded) + 16 > _MAX_MESSAGE):
                    outbox.append(b"".join(batch))
                    batch.clear()
                    batch_cost = batch_bytes = 0
                batch.append(pack(seq, len(encoded)))
                batch.append(encoded)
                batch_cost += this_cost
                batch_bytes += _TASK_HEAD.size + len(encoded)
                in_flight += 1
            if batch:  # send what there is rather than wait for more
                outbox.append(b"".join(batch))
                batch.clear()
                batch_cost = batch_bytes = 0
            try:
                while outbox:
                    self._feed.send(outbox[0])
                    outbox.popleft()
            except BlockingIOError:
                pass  # the queue is full: wait for room below
            except ConnectionError:  # EPIPE: no worker is left to take tasks
                raise CfsError("the fs-verity worker processes died") from None
            if bool(outbox) != watching_feed:  # wake up for queue space only if needed
                watching_feed = bool(outbox)
                if watching_feed:
                    poller.register(feed_fd, select.POLLOUT)
                else:
                    poller.unregister(feed_fd)
            if exhausted and not outbox and self._feed.fileno() >= 0:
                self._feed.close()  # workers finish the queue, then see its end
            if exhausted and in_flight == 0:
                return
            for fd, _ in poller.poll():
                conn = by_fd.get(fd)
                if conn is None:
                    continue  # the queue has room again
                try:
                    report: _Report = conn.recv()
                except EOFError:
                    raise CfsError("an fs-verity worker process died") from None
                done, failed, last = report
                in_flight -= len(done) + len(failed)
                for seq, sent in done:
                    if isinstance(sent, bytes):
                        yield seq, sent
                    else:  # a FileDigest's fields (see _work); C-level, no __new__ call
                        yield seq, tuple.__new__(FileDigest, sent)
                for seq, code, strerror in failed:
                    yield seq, _Failure(code, strerror)
                if last:
                    poller.unregister(fd)
                    del by_fd[fd]
            if not by_fd and in_flight:
                raise CfsError("fs-verity workers stopped before hashing every file")

    def stop(self) -> None:
        """Make workers stop, then reap them and free everything."""
        if self._shm.closed:
            return
        _STOP_FLAG.pack_into(self._shm, 0, 1)
        self._feed.close()  # a worker waiting for a task sees the end of the queue
        self._queue.close()
        for conn in self._conns:
            conn.close()  # a worker still reporting gets EPIPE and exits
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):  # SIGCHLD ignored: auto-reaped
                os.waitpid(pid, 0)
        self._shm.close()


_NATIVE_SHAPES.update({digest_file: False, digest_file_detailed: True})
