"""A hostile repository (whoever could write it planted a FIFO, a device or a
link out of it) must never hang a reader, read outside the repository or run
out of memory: fsck reports it, other commands fail with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cfsboot.repository import SHA256, Repository


def cfsboot(*argv: str) -> subprocess.CompletedProcess[str]:
    # In a child with a timeout: a regression would hang, not fail.
    return subprocess.run([sys.executable, "-m", "cfsboot", *argv], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, bytes]:
    root, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(b"B" * 5000)
    Repository.init(root, SHA256, insecure=True)[0].close()
    done = cfsboot("create-image", "--repo", str(root), str(src), "img")
    assert done.returncode == 0, done.stderr
    with Repository.open(root) as r:
        _, _, digest = r.open_image("img")
    assert digest is not None
    return root, digest


def fsck_errors(root: Path) -> list[str]:
    done = cfsboot("repo", "fsck", "--repo", str(root), "--json")
    report = json.loads(done.stdout)
    assert report["ok"] is False, report
    assert cfsboot("repo", "fsck", "--repo", str(root)).returncode == 1
    return [json.dumps(e) for e in report["errors"]]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("cfsboot: ")
    return done.stderr


def test_fifo_among_the_objects(repo: tuple[Path, bytes]) -> None:
    root, _ = repo
    os.mkfifo(root / "objects/ab" if (root / "objects/ab").is_dir() else _mkdir(root))
    errors = fsck_errors(root)
    assert any("not a regular file" in e for e in errors), errors


def _mkdir(root: Path) -> Path:
    (root / "objects/ab").mkdir()
    return root / "objects/ab" / ("c" * 62)


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd"])
def test_image_link_out_of_the_repository(repo: tuple[Path, bytes], target: str,
                                          tmp_path: Path) -> None:
    root, digest = repo
    entry = root / "images" / digest.hex()
    entry.unlink()
    entry.symlink_to(target)
    errors = fsck_errors(root)
    assert any("leads outside the repository" in e for e in errors), errors
    assert "leads outside the repository" in one_line(
        cfsboot("repo", "image-objects", "--repo", str(root), "img"))
    (tmp_path / "mnt").mkdir()
    assert "leads outside the repository" in one_line(
        cfsboot("mount", "--repo", str(root), "img", str(tmp_path / "mnt")))


def test_image_that_is_a_fifo_or_device_inside(repo: tuple[Path, bytes]) -> None:
    root, digest = repo
    obj = root / "objects" / digest[:1].hex() / digest[1:].hex()
    obj.unlink()
    os.mkfifo(obj)
    assert "is not a regular file" in one_line(
        cfsboot("repo", "image-objects", "--repo", str(root), "img"))
    assert any("not a regular file" in e for e in fsck_errors(root))


def test_stream_link_out_of_the_repository(repo: tuple[Path, bytes]) -> None:
    root, _ = repo
    (root / "streams").mkdir(exist_ok=True)
    (root / "streams" / "secret").symlink_to("/etc/shadow")
    errors = fsck_errors(root)
    assert any("streams/secret" in e and "leads outside the repository" in e
               for e in errors), errors
