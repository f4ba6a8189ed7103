"""Kernel fs-verity ioctls: clean fallback where unsupported, agreement where supported."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path

import pytest

from cfsboot.errors import CfsError
from cfsboot.fsverity import VerityUnsupported, digest_file, enable_verity, kernel, measure_verity


def ioc(direction: int, nr: int, size: int) -> int:
    """<asm-generic/ioctl.h> _IOC with type 'f'."""
    return (direction << 30) | (size << 16) | (ord("f") << 8) | nr


def test_ioctl_numbers_match_linux_uapi() -> None:
    assert ioc(1, 133, 128) == kernel.FS_IOC_ENABLE_VERITY   # _IOW, fsverity_enable_arg
    assert ioc(3, 134, 4) == kernel.FS_IOC_MEASURE_VERITY    # _IOWR, fsverity_digest
    assert kernel._ENABLE_ARG.size == 128


def candidate_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path]  # ext4 here
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        dirs.append(Path("/dev/shm"))  # tmpfs
    return dirs


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_enable_and_measure_fall_back_cleanly_or_agree(tmp_path: Path, alg: str) -> None:
    for folder in candidate_dirs(tmp_path):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            path = Path(tmp) / "f"
            path.write_bytes(random.Random(1).randbytes(3 * 4096 + 5))
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    before = measure_verity(fd)
                except VerityUnsupported as e:
                    assert isinstance(e, CfsError)
                    assert "\n" not in str(e) and "not supported" in str(e)
                    with pytest.raises(VerityUnsupported):
                        enable_verity(fd, alg)
                    continue
                assert before is None  # a fresh file never has verity
                try:
                    enable_verity(fd, alg)
                except VerityUnsupported:
                    continue  # fs knows the ioctl but has the feature off
                # A kernel with fs-verity: it must agree with our digest.
                assert measure_verity(fd) == (alg, digest_file(path, alg))
                enable_verity(fd, alg)  # already enabled, same algorithm: fine
            finally:
                os.close(fd)


def test_pipe_is_unsupported() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(VerityUnsupported):
            measure_verity(r)
    finally:
        os.close(r)
        os.close(w)


def test_other_errors_stay_oserrors() -> None:
    with pytest.raises(OSError) as info:
        measure_verity(987654)  # not an open descriptor
    assert info.value.errno == errno.EBADF
    assert not isinstance(info.value, CfsError)


def test_enable_rejects_unknown_algorithm(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(CfsError, match="sha1"):
            enable_verity(fd, "sha1")
    finally:
        os.close(fd)
