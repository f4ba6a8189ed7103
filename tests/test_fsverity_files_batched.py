"""digest_files with ``cost``: several files per task message to the workers.

Checked against the `fsverity digest` tool's algorithm (reference_digest),
including a failure in the middle of a batch and paths up to PATH_MAX.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest
from test_fsverity import reference_digest
from test_fsverity_files import assert_no_children

from cfsboot.fsverity import files
from cfsboot.fsverity.files import FileDigest, digest_files, digest_files_detailed


def make(tmp_path: Path, count: int) -> list[tuple[Path, bytes]]:
    rng = random.Random(count)
    out = []
    for i in range(count):
        data = rng.randbytes(rng.choice([0, 1, 100, 4096, 4097, 20000, 300_000]))
        path = tmp_path / f"f{i:04d}"
        path.write_bytes(data)
        out.append((path, data))
    return out


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_batched_messages_give_the_same_digests_in_order(tmp_path: Path, alg: str) -> None:
    made = make(tmp_path, 400)
    paths = [p for p, _ in made]
    sizes = {p: len(d) for p, d in made}
    got = list(digest_files(iter(paths), alg, threads=2, cost=sizes.__getitem__))
    assert got == [(p, reference_digest(d, alg)) for p, d in made]
    assert all(g is p for (g, _), p in zip(got, paths, strict=True))
    assert_no_children()


def test_batched_failure_is_raised_at_its_turn(tmp_path: Path) -> None:
    made = make(tmp_path, 120)
    paths: list[Path] = [p for p, _ in made]
    missing = tmp_path / "missing"
    deep = tmp_path / "/".join(["d" * 200] * 19)  # ~3.8 KiB: one to a message at most 8
    deep.mkdir(parents=True)
    long_name = deep / "x"
    long_name.write_bytes(b"z" * 5000)
    feed = [*paths[:60], long_name, missing, *paths[60:]]
    seen: list[Path] = []
    with pytest.raises(OSError) as info:
        for path, result in digest_files_detailed(iter(feed), "sha256", threads=2,
                                                  cost=lambda p: 1):
            assert isinstance(result, FileDigest)
            seen.append(path)
    assert seen == [*paths[:60], long_name]
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)
    assert_no_children()


def test_pool_worker_takes_a_whole_batch_in_order(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    made = make(tmp_path, 50)
    log = tmp_path / "log"
    real = files.digest_file_detailed

    def logged(path: str, alg: str = "sha512", **kw: Any) -> FileDigest:
        with open(log, "a") as f:  # one worker: the order it hashed in
            f.write(os.fspath(path) + "\n")
        return real(path, alg, **kw)

    order = list(range(len(made)))
    random.Random(7).shuffle(order)
    pool = files._ForkedPool("sha512", 1, False, logged, lambda p: 1)
    try:
        got = list(pool.run(iter([(i, made[i][0]) for i in order])))
    finally:
        pool.stop()
    assert log.read_text().splitlines() == [str(made[i][0]) for i in order]
    assert all(isinstance(r, FileDigest) for _, r in got)
    assert [(i, r.digest) for i, r in got if isinstance(r, FileDigest)] == [
        (i, reference_digest(made[i][1], "sha512")) for i in order]
    assert_no_children()
