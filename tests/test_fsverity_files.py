"""fs-verity digests of files: digest_fd (+ sink), digest_file, digest_files."""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_fsverity import reference_digest

from cfsboot.errors import CfsError
from cfsboot.fsverity import digest_fd, digest_file, digest_files, files, fsverity_digest
from cfsboot.fsverity.files import PARALLEL_MIN_BYTES

# Every test here runs twice: pure Python (forked workers) and the C accelerator (threads).
pytestmark = pytest.mark.usefixtures("verity_impl")


def write(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("bufsize", [1, 1000, 4096, 5000, 1 << 20])
def test_digest_fd_sink_sees_exactly_the_file(tmp_path: Path, bufsize: int) -> None:
    size = 3 * 4096 + 123 if bufsize < 1000 else 2 * (1 << 20) + 4097
    data = write(tmp_path / "f", size, bufsize)
    chunks: list[bytes] = []
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        digest, count = digest_fd(fd, "sha256", sink=lambda c: chunks.append(bytes(c)),
                                  bufsize=bufsize)
    finally:
        os.close(fd)
    assert count == size
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= bufsize for c in chunks)
    assert digest == reference_digest(data, "sha256")


@pytest.mark.parametrize("size", [0, 8191, 8192, 8193, 2 * 8192])
def test_digest_fd_sizes_around_the_buffer_size(tmp_path: Path, size: int) -> None:
    data = write(tmp_path / "f", size, size)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert digest_fd(fd, "sha512", bufsize=8192) == (reference_digest(data, "sha512"), size)
    finally:
        os.close(fd)


def test_digest_fd_reads_from_the_current_position_and_reentrant_sink(tmp_path: Path) -> None:
    data = write(tmp_path / "f", 10000, 1)
    inner = write(tmp_path / "g", 70000, 2)
    seen: list[bytes] = []

    def sink(chunk: memoryview) -> None:
        # A sink that itself digests a file must not disturb the outer buffer.
        fd = os.open(tmp_path / "g", os.O_RDONLY)
        try:
            assert digest_fd(fd)[0] == reference_digest(inner, "sha512")
        finally:
            os.close(fd)
        seen.append(bytes(chunk))

    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        digest, count = digest_fd(fd, sink=sink)
    finally:
        os.close(fd)
    assert (digest, count) == (fsverity_digest(data[100:]), len(data) - 100)
    assert b"".join(seen) == data[100:]


def test_digest_fd_on_a_pipe() -> None:
    data = random.Random(5).randbytes(50000)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        for i in range(0, len(data), 777):
            os.write(w, data[i:i + 777])
        os._exit(0)
    os.close(w)
    try:
        assert digest_fd(r, "sha256") == (reference_digest(data, "sha256"), len(data))
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_digest_file_missing_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        digest_file(tmp_path / "nope")


def make_files(root: Path, count: int) -> list[Path]:
    """``count`` files of assorted sizes, more than PARALLEL_MIN_BYTES in total."""
    rng = random.Random(count)
    sizes = [rng.choice([0, 1, 4095, 4096, 4097, 30000, 300000]) for _ in range(count)]
    sizes[count // 2] = PARALLEL_MIN_BYTES + 1  # a big one in the middle
    paths = []
    for i, size in enumerate(sizes):
        path = root / f"f{i:04d}"
        write(path, size, i)
        paths.append(path)
    return paths


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_digest_files_parallel_equals_sequential_in_input_order(
        tmp_path: Path, alg: str, monkeypatch: pytest.MonkeyPatch, verity_impl: str) -> None:
    paths = make_files(tmp_path, 300)
    paths.reverse()
    pools: list[object] = []
    pool_name = "NativePool" if verity_impl == "c" else "_ForkedPool"

    class SpyPool(getattr(files, pool_name)):  # type: ignore[misc]
        def __init__(self, *args: Any) -> None:
            pools.append(self)
            super().__init__(*args)

    monkeypatch.setattr(files, pool_name, SpyPool)
    sequential = [(p, digest_file(p, alg)) for p in paths]
    assert list(digest_files(paths, alg, threads=1)) == sequential
    parallel = list(digest_files(iter(paths), alg, threads=2))
    assert parallel == sequential
    assert len(pools) == 1  # the workers (processes or C threads) did it
    assert all(got is given for (got, _), given in zip(parallel, paths, strict=True))
    as_str = [str(p) for p in paths[:3]]
    assert list(digest_files(as_str, alg, threads=3)) == [
        (s, d) for s, (_, d) in zip(as_str, sequential, strict=False)]


def test_digest_files_error_comes_in_order_and_workers_exit(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 100)
    paths.insert(70, tmp_path / "missing")
    results = digest_files(paths, threads=2)
    got = []
    with pytest.raises(FileNotFoundError) as info:
        for path, digest in results:
            got.append(path)
            assert digest == digest_file(path)
    assert info.value.filename == str(tmp_path / "missing")
    assert got == paths[:70]
    assert_no_children()


def test_digest_files_closed_early_stops_workers(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 200)
    results = digest_files(paths, threads=2)
    assert next(results)[0] == paths[0]
    start = time.monotonic()
    results.close()
    assert time.monotonic() - start < 5
    assert_no_children()


def test_digest_files_empty_and_single(tmp_path: Path) -> None:
    assert list(digest_files([], threads=2)) == []
    data = write(tmp_path / "one", 5000, 9)
    assert list(digest_files([tmp_path / "one"], threads=2)) == [
        (tmp_path / "one", fsverity_digest(data))]


def assert_no_children() -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_digest_files_worker_death_is_a_clean_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_files(tmp_path, 100)
    real = files.digest_file

    def dies_on_f0042(path: str | os.PathLike[str], alg: str = "sha512", **kw: Any) -> bytes:
        if os.fspath(path).endswith("f0042"):
            os._exit(3)  # runs in a forked worker
        return real(path, alg, **kw)

    monkeypatch.setattr(files, "digest_file", dies_on_f0042)
    got = []
    with pytest.raises(CfsError, match="worker process died"):
        for path, _ in digest_files(paths, threads=2):
            got.append(path)
    assert got == paths[:len(got)] and len(got) <= 42
    assert_no_children()


def test_digest_files_all_workers_dead_is_a_clean_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_files(tmp_path, 400)

    def always_dies(path: str | os.PathLike[str], alg: str = "sha512", **kw: Any) -> bytes:
        os._exit(3)

    monkeypatch.setattr(files, "digest_file", always_dies)
    with pytest.raises(CfsError, match="died"):
        list(digest_files(paths, threads=2))
    assert_no_children()


def test_digest_files_with_sizes_hashes_largest_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verity_impl: str) -> None:
    paths = make_files(tmp_path, 150)
    sizes = [p.stat().st_size for p in paths]
    fed: list[int] = []
    pool_name = "NativePool" if verity_impl == "c" else "_ForkedPool"

    class SpyPool(getattr(files, pool_name)):  # type: ignore[misc]
        def run(self, tasks: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
            def spy() -> Iterator[tuple[int, Any]]:
                for task in tasks:
                    fed.append(task[0])
                    yield task
            return super().run(spy())

    monkeypatch.setattr(files, pool_name, SpyPool)
    got = list(digest_files(paths, "sha256", threads=2, sizes=sizes))
    assert got == [(p, digest_file(p, "sha256")) for p in paths]
    assert sorted(fed) == list(range(len(paths)))
    assert [sizes[i] for i in fed] == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="one entry per path"):
        list(digest_files(paths, sizes=sizes[1:]))


def test_forked_pool_takes_tasks_in_the_order_fed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    paths = make_files(folder, 40)
    log = tmp_path / "log"
    real = files.digest_file

    def logged(path: str | os.PathLike[str], alg: str = "sha512", **kw: Any) -> bytes:
        with open(log, "a") as f:  # written by the (single) worker process
            f.write(os.fspath(path) + "\n")
        return real(path, alg, **kw)

    monkeypatch.setattr(files, "digest_file", logged)
    order = list(range(len(paths)))
    random.Random(4).shuffle(order)
    pool = files._ForkedPool("sha512", 1, True)
    try:
        got = list(pool.run(iter([(i, paths[i]) for i in order])))
    finally:
        pool.stop()
    assert log.read_text().splitlines() == [str(paths[i]) for i in order]
    assert got == [(i, real(paths[i])) for i in order]
    assert_no_children()


def test_digest_files_lazy_input_long_paths_and_symlinks(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 120)
    deep = tmp_path / "/".join(["d" * 200] * 12)  # ~2.4 KiB paths fill the task pipe
    deep.mkdir(parents=True)
    for i in range(150):
        target = deep / f"long{i:03d}"
        write(target, i * 100, i)
        paths.append(target)
    (tmp_path / "link").symlink_to(paths[3])
    paths.append(tmp_path / "link")
    expected = [(p, digest_file(p)) for p in paths]

    def walk() -> Iterator[Path]:
        yield from paths

    assert list(digest_files(walk(), threads=2)) == expected
    results = digest_files(walk(), threads=2, follow_symlinks=False)
    with pytest.raises(OSError) as info:
        for (path, digest), (want_path, want) in zip(results, expected, strict=False):
            assert (path, digest) == (want_path, want)
    assert info.value.filename == str(tmp_path / "link")
    assert list(digest_files(iter(paths[:1]), threads=2)) == expected[:1]
    assert_no_children()


def test_digest_files_too_long_path_fails_like_open(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 80)
    too_long = tmp_path / ("x" * 250) / ("y" * 5000)
    with pytest.raises(OSError) as direct:
        digest_file(too_long)
    got = []
    with pytest.raises(OSError) as info:
        for path, _ in digest_files(iter([*paths, too_long]), threads=2):
            got.append(path)
    assert got == paths
    assert info.value.errno == direct.value.errno == errno.ENAMETOOLONG
    assert info.value.filename == str(too_long)


def test_digest_file_without_following_refuses_links_and_special_files(tmp_path: Path) -> None:
    data = write(tmp_path / "f", 5000, 1)
    (tmp_path / "link").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "fifo")
    assert digest_file(tmp_path / "link") == fsverity_digest(data)
    assert digest_file(tmp_path / "f", follow_symlinks=False) == fsverity_digest(data)
    with pytest.raises(OSError) as info:
        digest_file(tmp_path / "link", follow_symlinks=False)
    assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError) as info:
        digest_file(tmp_path / "fifo", follow_symlinks=False)  # must not hang
    assert info.value.errno == errno.EINVAL
    assert info.value.filename == str(tmp_path / "fifo")


def test_digest_files_detailed_reports_size_and_stat(tmp_path: Path) -> None:
    """The richer result: same digests as digest_files, the bytes read and the
    fstat identity of what was read, in input order, lazily fed, in parallel."""
    paths = make_files(tmp_path, 60)
    expected = dict(digest_files(paths, "sha256", 1))
    got = list(files.digest_files_detailed(iter(paths), "sha256", 2, follow_symlinks=False))
    assert [p for p, _ in got] == paths
    for path, result in got:
        st = os.lstat(path)
        assert result.digest == expected[path] == reference_digest(path.read_bytes(), "sha256")
        assert result.size == st.st_size
        assert (result.st_mode, result.st_dev, result.st_ino, result.st_size,
                result.st_mtime_ns, result.st_ctime_ns) == (
            st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        assert result.unchanged
    assert_no_children()


def test_digest_file_detailed_sees_growth_and_refuses_links(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    grows = tmp_path / "grows"
    grows.write_bytes(b"g" * 5000)
    real = files.digest_fd

    def growing(fd: int, alg: str = "sha512", **kw: Any) -> tuple[bytes, int]:
        with open(grows, "ab") as f:
            f.write(b"more")
        return real(fd, alg, **kw)

    monkeypatch.setattr(files, "digest_fd", growing)
    result = files.digest_file_detailed(grows)
    assert (result.st_size, result.size, result.unchanged) == (5000, 5004, False)
    monkeypatch.undo()
    os.symlink(grows, tmp_path / "link")
    with pytest.raises(OSError) as info:
        files.digest_file_detailed(tmp_path / "link", follow_symlinks=False)
    assert info.value.errno == errno.ELOOP
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError) as info:
        files.digest_file_detailed(tmp_path / "fifo", follow_symlinks=False)
    assert (info.value.errno, info.value.strerror) == (errno.EINVAL, files.NOT_REGULAR)
