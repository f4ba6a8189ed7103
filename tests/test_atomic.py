"""Outputs replace regular files atomically and write through everything else."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from cfsboot.atomic import atomic_open, atomic_write_bytes, current_umask


def test_new_file_gets_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o600


def test_existing_mode_kept_and_explicit_mode_wins(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"old")
    p.chmod(0o640)
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == 0o640
    atomic_write_bytes(p, b"newer", 0o600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_error_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write(b"half")
        raise RuntimeError
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_symlink_target_replaced_link_kept(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    os.symlink("real", tmp_path / "link")
    atomic_write_bytes(tmp_path / "link", b"new")
    assert os.readlink(tmp_path / "link") == "real"
    assert (tmp_path / "real").read_bytes() == b"new"


def test_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write_bytes(fifo, b"through the fifo")
    reader.join(10)
    assert got == [b"through the fifo"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_dev_null_stays_a_device() -> None:
    atomic_write_bytes("/dev/null", b"discarded")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_missing_directory_names_the_output(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        atomic_write_bytes(tmp_path / "missing" / "out", b"x")
    assert e.value.filename == str(tmp_path / "missing" / "out")
