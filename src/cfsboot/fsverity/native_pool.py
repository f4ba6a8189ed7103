"""Hashing many files on threads with the C accelerator (``cfsboot.native``).

The C code reads and hashes whole files without the GIL, so plain threads
scale across CPUs and no process boundary is crossed: the caller's thread
(typically walking a tree) fills batches of paths, the workers hash each batch
in one C call, and results come back as the C code made them.  Cheap files
travel together (one queue round trip and one C call for up to 32 of them),
so the cost per file is about a microsecond of Python.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from cfsboot.native import NativeModule

# One C result: (digest, bytes read, st_mode, st_dev, st_ino, st_size,
# st_mtime_ns, st_ctime_ns, unchanged), or an errno (-1: not a regular file).
NativeResult = tuple[bytes, int, int, int, int, int, int, int, bool] | int
NOT_REGULAR_CODE = -1

_BATCH_COST = 256 << 10  # cheap files travel together while their costs add up to less
_BATCH_FILES = 32
_TASKS_AHEAD_PER_WORKER = 512

K = TypeVar("K")  # what the caller tells its files apart by (a sequence number, a job)
_AnyPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class NativePool(Generic[K]):
    """``workers`` threads hashing batches of paths in C.

    ``run`` takes (key, path) tasks lazily, at most a window of files ahead
    of the results, and yields (key, result) as batches complete.  ``stop``
    makes the workers skip what is still queued and waits for them (a file
    being hashed is finished first).
    """

    def __init__(self, module: NativeModule, alg_id: int, workers: int, nofollow: bool,
                 cost: Callable[[Any], int] | None = None) -> None:
        self._digest_paths = module.digest_paths
        self._alg_id = alg_id
        self._nofollow = nofollow
        self._cost = cost
        self._window = _TASKS_AHEAD_PER_WORKER * workers
        self._todo: queue.SimpleQueue[tuple[list[K], list[bytes]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[list[K], list[NativeResult]] | BaseException] = (
            queue.SimpleQueue())
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"cfsboot-verity-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        digest_paths, alg_id, nofollow = self._digest_paths, self._alg_id, self._nofollow
        while (batch := self._todo.get()) is not None:
            if self._stopped:
                continue  # drain without hashing
            keys, paths = batch
            try:
                self._done.put((keys, digest_paths(paths, alg_id, nofollow)))
            except BaseException as e:  # a bug (bad argument), or out of memory
                self._done.put(e)

    def run(self, tasks: Iterator[tuple[K, _AnyPath]]) -> Iterator[tuple[K, NativeResult]]:
        cost = self._cost
        seqs: list[K] = []
        paths: list[bytes] = []
        batch_cost = 0
        in_flight = 0
        exhausted = False
        while True:
            while not exhausted and in_flight < self._window:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                seq, path = task
                this_cost = _BATCH_COST if cost is None else cost(path)
                if seqs and (batch_cost + this_cost >= _BATCH_COST or len(seqs) >= _BATCH_FILES):
                    self._todo.put((seqs, paths))
                    seqs, paths, batch_cost = [], [], 0
                seqs.append(seq)
                paths.append(os.fsencode(path))
                batch_cost += this_cost
                in_flight += 1
            if seqs:  # send what there is rather than wait for more
                self._todo.put((seqs, paths))
                seqs, paths, batch_cost = [], [], 0
            if in_flight == 0:
                return  # (the loop above only stops early when tasks remain in flight)
            item = self._done.get()
            if isinstance(item, BaseException):
                raise item
            done, results = item
            in_flight -= len(done)
            yield from zip(done, results, strict=True)

    def stop(self) -> None:
        self._stopped = True
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join()
