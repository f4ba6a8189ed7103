"""Hashing threads for a scan that also copies file contents into an object
store (a sink): the walker queues each directory's files and the threads take
the largest known file first."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from cfsboot.tree.progress import ByteProgress


class _Sized(Protocol):
    @property
    def st(self) -> _HasSize: ...


class _HasSize(Protocol):
    @property
    def st_size(self) -> int: ...


J = TypeVar("J", bound=_Sized)


class HashPool(Generic[J]):
    """``threads`` hashing threads taking the largest pending file first.

    While the walker runs it is one of the busy threads, so only
    ``threads - 1`` background workers are started (at least one); once the
    walk is done, the walker joins them (``finish``).  That keeps exactly
    ``threads`` threads busy, never more, which matters when the threads are
    the CPUs.

    The first error stops the pool: workers finish their current file and
    exit, the walker stops at its next directory, and the error is re-raised
    in the calling thread.
    """

    def __init__(self, threads: int, work: Callable[[J], int],
                 progress: ByteProgress) -> None:
        self._caller_helps = threads > 1
        threads = max(1, threads - 1)
        self._work = work
        self._progress = progress
        self._heap: list[tuple[int, int, J]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._run, name=f"cfsboot-hash-{i}",
                                          daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, jobs: list[J]) -> None:
        """Queue the files of one directory (one lock round-trip for all)."""
        self._progress.add_total(sum(job.st.st_size for job in jobs))
        with self._cond:
            for job in jobs:
                self._seq += 1
                heapq.heappush(self._heap, (-job.st.st_size, self._seq, job))
            self._cond.notify(len(jobs))

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait until every submitted file is hashed; raise the first error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._caller_helps:
            self._run()
        for t in self._threads:
            t.join()
        self.check()

    def stop(self) -> None:
        """Abandon pending work (on error or interrupt) and wait for the workers."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if not self._heap or self._error is not None:
                    return
                _, _, job = heapq.heappop(self._heap)
            try:
                self._work(job)
            except BaseException as e:
                with self._cond:
                    if self._error is None:
                        self._error = e
                    self._heap.clear()
                    self._closed = True
                    self._cond.notify_all()
                return
            self._progress.advance(job.st.st_size)
