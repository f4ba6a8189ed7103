"""fs-verity digest: known answers, an independent reference, streaming, fsverity-utils."""

from __future__ import annotations

import hashlib
import itertools
import random
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.errors import CfsError
from cfsboot.fsverity import (
    DIGEST_SIZE,
    FsVerityHasher,
    UnknownAlgorithm,
    digest_file,
    fsverity_digest,
)

ALGS = ("sha256", "sha512")

# /work/shared/spec/fsverity.md §3 (the `hello world` rows are composefs-rs' own).
KNOWN_INPUTS = {
    "empty": b"",
    "hello": b"hello\n",
    "zeros4096": bytes(4096),
    "zeros4097": bytes(4097),
    "pattern1m": bytes(i % 251 for i in range(1 << 20)),
    "hello world": b"hello world",
}
KNOWN_ANSWERS = {
    ("empty", "sha256"): "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
    ("hello", "sha256"): "9c76eecc7b76fcb46199cb27b90cf59a660e10575bb0412128905129d5b1c2aa",
    ("zeros4096", "sha256"): "babc284ee4ffe7f449377fbf6692715b43aec7bc39c094a95878904d34bac97e",
    ("zeros4097", "sha256"): "093756e4ea9683329106d4a16982682ed182c14bf076463a9e7f97305cbac743",
    ("pattern1m", "sha256"): "93c995656d665b81c3a87eed032fcf06a8f9cecef51e3f5e5af7fa59fef1d439",
    ("hello world", "sha256"):
        "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64",
    ("empty", "sha512"):
        "ccf9e5aea1c2a64efa2f2354a6024b90dffde6bbc017825045dce374474e13d1"
        "0adb9dadcc6ca8e17a3c075fbd31336e8f266ae6fa93a6c3bed66f9e784e5abf",
    ("hello", "sha512"):
        "21fe275216d7dafb8afa8f8257ae96215b74c1dad980238e6fdbbd0c41a44adb"
        "8d3e1f95c7e3dad3e25037369d1c87dd107ceb7eb9c9c868eb2b18b57ddd4125",
    ("zeros4096", "sha512"):
        "928922686c4caf32175f5236a7f964e9925d10a74dc6d8344a8bd08b23c228ff"
        "5792573987d7895f628f39c4f4ebe39a7367d7aeb16aaa0cd324ac1d53664e61",
    ("zeros4097", "sha512"):
        "4339f5da3788e60fa6857bd7040fadccd6f125b2c2334777eb14ed55179ad887"
        "d9131e9ce78485afc23051392b71e015528abbb7be07ed7073c56480b15cedf1",
    ("pattern1m", "sha512"):
        "41af04461110f14941d920ec99e22353f53c2368e05d2855b3a991c5d3efa270"
        "08353a81a3c09cfa37e0c967525ec7481991133cf4249c4df70545c91cead118",
    ("hello world", "sha512"):
        "18430270729d162d4e469daca123ae61893db4b0583d8f7081e3bf4f92b88ba5"
        "14e7982f10733fb6aa895195c5ae8fd2eb2c47a8be05513ce5a0c51a6f570409",
}

# Sizes around every boundary the tree has: a block, one hash block of SHA-512
# (64 hashes) and of SHA-256 (128 hashes), and a third tree level for SHA-512.
BOUNDARY_SIZES = [0, 1, 4095, 4096, 4097, 64 * 4096, 64 * 4096 + 1, 128 * 4096,
                  128 * 4096 + 1, 3 * 1024 * 1024 + 7, 64 * 64 * 4096 + 1]


def reference_digest(data: bytes, alg: str) -> bytes:
    """The spec's whole-buffer algorithm, written independently of the module."""
    block = 4096

    def h(b: bytes) -> bytes:
        return hashlib.new(alg, b).digest()

    if not data:
        root = bytes(hashlib.new(alg).digest_size)
    else:
        level = [h(data[i:i + block].ljust(block, b"\0")) for i in range(0, len(data), block)]
        while len(level) > 1:
            packed = b"".join(level)
            level = [h(packed[i:i + block].ljust(block, b"\0"))
                     for i in range(0, len(packed), block)]
        root = level[0]
    desc = (bytes([1, 1 if alg == "sha256" else 2, 12, 0]) + bytes(4)
            + len(data).to_bytes(8, "little") + root.ljust(64, b"\0") + bytes(32 + 144))
    assert len(desc) == 256
    return h(desc)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize(("name", "alg"), sorted(KNOWN_ANSWERS))
def test_known_answers(name: str, alg: str) -> None:
    expected = KNOWN_ANSWERS[(name, alg)]
    assert fsverity_digest(KNOWN_INPUTS[name], alg).hex() == expected
    assert reference_digest(KNOWN_INPUTS[name], alg).hex() == expected


@pytest.mark.parametrize("alg", ALGS)
def test_default_algorithm_is_sha512(alg: str) -> None:
    assert fsverity_digest(b"hello\n") == fsverity_digest(b"hello\n", "sha512")
    assert len(fsverity_digest(b"x", alg)) == DIGEST_SIZE[alg]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_matches_reference_at_boundaries(size: int, alg: str) -> None:
    data = random_bytes(size, size)
    expected = reference_digest(data, alg)
    assert fsverity_digest(data, alg) == expected
    hasher = FsVerityHasher(alg)
    for start in range(0, size, 65537):
        hasher.update(data[start:start + 65537])
    assert hasher.digest() == expected


@settings(max_examples=60, deadline=None)
@given(size=st.one_of(st.integers(0, 3 * 4096),
                      st.sampled_from(BOUNDARY_SIZES[:-1]),
                      st.integers(0, 70 * 4096)),
       cuts=st.lists(st.floats(0, 1), max_size=12),
       alg=st.sampled_from(ALGS))
def test_streaming_any_chunking_equals_one_shot(size: int, cuts: list[float], alg: str) -> None:
    data = random_bytes(size, size * 31 + len(cuts))
    points = sorted({0, size, *(int(c * size) for c in cuts)})
    hasher = FsVerityHasher(alg)
    for start, end in itertools.pairwise(points):
        hasher.update(memoryview(data)[start:end])
    assert hasher.digest() == fsverity_digest(data, alg) == reference_digest(data, alg)


def test_streaming_byte_at_a_time_and_digest_is_repeatable() -> None:
    data = random_bytes(2 * 4096 + 5, 7)
    hasher = FsVerityHasher("sha256")
    for i in range(len(data)):
        hasher.update(data[i:i + 1])
        if i == 4096:
            assert hasher.digest() == fsverity_digest(data[:4097], "sha256")
    assert hasher.digest() == hasher.digest() == reference_digest(data, "sha256")
    assert hasher.hexdigest() == hasher.digest().hex()


def test_update_accepts_bytearray_and_non_byte_memoryviews() -> None:
    data = random_bytes(10000, 3)
    hasher = FsVerityHasher()
    hasher.update(bytearray(data[:16]))
    hasher.update(memoryview(data[16:9016]).cast("I"))  # 9000 bytes viewed as u32s
    hasher.update(data[9016:])
    assert hasher.digest() == reference_digest(data, "sha512")


def test_unknown_algorithm_is_a_one_line_cfs_error() -> None:
    with pytest.raises(UnknownAlgorithm, match="sha384") as info:
        FsVerityHasher("sha384")
    assert isinstance(info.value, CfsError)
    with pytest.raises(CfsError):
        fsverity_digest(b"", "md5")


def test_fsverity_utils_agrees(tmp_path: Path) -> None:
    tool = need_tool("fsverity")
    sizes = [*BOUNDARY_SIZES[:-1], 5 * 1024 * 1024 + 4096]
    paths = []
    for size in sizes:
        path = tmp_path / f"f{size}"
        path.write_bytes(random_bytes(size, size + 1))
        paths.append(path)
    for alg in ALGS:
        out = subprocess.run([tool, "digest", f"--hash-alg={alg}", "--block-size=4096",
                              *map(str, paths)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
        assert len(out) == len(paths)
        for line, path in zip(out, paths, strict=True):
            digest, name = line.split(" ", 1)
            assert name == str(path)
            assert digest == f"{alg}:{digest_file(path, alg).hex()}", path.name
