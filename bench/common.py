"""Shared benchmark helpers: a generated file tree, timing, thread counts and the
hashing floor (plain hashlib over the same bytes, same threads, same large reads)."""

from __future__ import annotations

import hashlib
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

READ_SIZE = 1 << 20


def thread_count() -> int:
    """CPUs this process may run on (the default parallelism of cfsboot)."""
    return max(1, len(os.sched_getaffinity(0)))


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its reaped children)."""
    before = os.times()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.user + after.system + after.children_user + after.children_system
           - before.user - before.system - before.children_user - before.children_system)
    return wall, cpu


def best_of(repeat: int,
            cases: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """Minimum wall and minimum CPU time of each case over ``repeat`` rounds, cases
    interleaved so a burst of load from other processes hits all of them alike.
    On a shared machine the CPU time is the steadier figure; wall time is what a
    user sees (and what shows lock convoys)."""
    best = dict.fromkeys(cases, (float("inf"), float("inf")))
    for _ in range(repeat):
        for name, fn in cases.items():
            wall, cpu = timed(fn)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def make_tree(root: Path, total_bytes: int, *, seed: int = 1,
              max_file: int = 8 << 20) -> list[Path]:
    """Write files of log-uniform sizes (0 .. max_file bytes) adding up to about
    ``total_bytes`` under ``root``, 64 files per directory.  Content is random
    (taken from a pool, so generation is fast; hashing speed ignores content)."""
    rng = random.Random(seed)
    pool = rng.randbytes(max_file + (1 << 20))
    paths: list[Path] = []
    written = 0
    while written < total_bytes:
        size = min(int(2 ** rng.uniform(0, math.log2(max_file + 1))) - 1, total_bytes - written)
        folder = root / f"d{len(paths) // 64:04d}"
        if len(paths) % 64 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{len(paths):06d}"
        start = rng.randrange(0, 1 << 20)
        path.write_bytes(pool[start : start + size])
        paths.append(path)
        written += size
    return paths


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.buf = bytearray(READ_SIZE)


_buffers = _Buffers()


def plain_hash_file(path: Path, alg: str) -> bytes:
    """hashlib over the whole file, read with readv into a reused 1 MiB buffer."""
    buf = _buffers.buf
    view = memoryview(buf)
    h = hashlib.new(alg)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.digest()


def hashing_floor(paths: Sequence[Path], alg: str, threads: int) -> None:
    """The floor every digest is measured against."""
    if threads <= 1:
        for path in paths:
            plain_hash_file(path, alg)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(plain_hash_file, paths, [alg] * len(paths)):
            pass
