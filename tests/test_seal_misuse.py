"""Seal outputs and inputs that would land inside what they seal or read:
each is refused with one line before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_seal import keydir, make_sample, snapshot  # noqa: F401 (fixture)
from test_seal_oci import one_line_error, stored  # noqa: F401 (fixture)

from cfsboot.repository import Repository

Stored = tuple[Repository, Path]


def test_external_signing_outdir_inside_rootfs(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sample(tmp_path / "root")
    before = snapshot(root)
    for out in (root / "out", root / "boot/out"):
        err = one_line_error(["seal", str(root), "--external-signing", str(out)], capsys)
        assert f"OUTDIR {out} is inside {root}: the unsigned files would become part" in err
    assert snapshot(root) == before


def test_cache_inside_rootfs(tmp_path: Path, keydir: Path,  # noqa: F811
                             capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sample(tmp_path / "root")
    before = snapshot(root)
    cache = root / "var/cache/cfs"
    for mode in (["--unsigned"], ["--external-signing", str(tmp_path / "out")]):
        err = one_line_error(["seal", str(root), "--cache", str(cache), *mode], capsys)
        assert f"cache directory {cache} is inside {root}" in err
    assert snapshot(root) == before  # in particular, no cache files in the tree


def test_signing_key_inside_rootfs(tmp_path: Path, keydir: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sample(tmp_path / "root")
    shutil.copy(keydir / "db.key", root / "etc/db.key")
    before = snapshot(root)
    err = one_line_error(["seal", str(root), "--key", str(root / "etc/db.key"),
                          "--cert", str(keydir / "db.crt")], capsys)
    assert "signing key" in err and "it would ship in the sealed image" in err
    assert snapshot(root) == before


def test_inject_inputs_inside_rootfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sample(tmp_path / "root")
    out = tmp_path / "out"
    from cfsboot.cli.main import main
    assert main(["seal", str(root), "--external-signing", str(out)]) == 0
    shutil.copytree(out, root / "var/signed")
    before = snapshot(root)
    signed = [str(p) for p in sorted((root / "var/signed").glob("*.efi"))]
    err = one_line_error(["seal", "inject", *signed, "--manifest",
                          str(out / "manifest.json"), str(root)], capsys)
    assert f"signed file {signed[0]} is inside {root}" in err
    assert snapshot(root) == before


@pytest.mark.parametrize("where", ["images/esp", "objects/ab", "."])
def test_oci_outputs_inside_the_repository(stored: Stored, where: str,  # noqa: F811
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = stored
    out = Path(repo.path) / where
    common = ["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img"]
    before = sorted(p.name for p in Path(repo.path).rglob("*"))
    for argv in ([*common, "--output", str(out), "--unsigned"],
                 [*common, "--external-signing", str(out)],
                 ["seal", "inject", "x.efi", "--manifest", str(tmp_path / "m.json"),
                  "--output", str(out)]):
        if argv[1] == "inject":  # needs an OCI manifest to get as far as the output
            assert main_ok([*common, "--external-signing", str(tmp_path / "ext")])
            argv[2:3] = [str(p) for p in sorted((tmp_path / "ext").glob("*.efi"))]
            argv[argv.index("--manifest") + 1] = str(tmp_path / "ext/manifest.json")
        err = one_line_error(argv, capsys)
        assert f"is inside the repository {repo.path}" in err, err
    assert sorted(p.name for p in Path(repo.path).rglob("*")) == before


def main_ok(argv: list[str]) -> bool:
    from cfsboot.cli.main import main
    return main(argv) == 0


def test_a_directory_that_only_looks_like_a_repository_is_fine(
        stored: Stored, tmp_path: Path) -> None:  # noqa: F811
    repo, _ = stored
    project = tmp_path / "project"
    (project / "objects").mkdir(parents=True)
    (project / "images").mkdir()
    assert main_ok(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                    "--output", str(project / "esp"), "--unsigned"])


def test_a_tree_being_sealed_is_not_sealed_twice(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys
    root = make_sample(tmp_path / "root")
    before = snapshot(root)
    # Another cfsboot holding the tree's seal lock (a real second process).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from cfsboot.boot.seal_install import rootfs_locked\n"
         "with rootfs_locked(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
         str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        err = one_line_error(["seal", str(root), "--unsigned"], capsys)
        assert err == f"cfsboot: {root} is being sealed by another cfsboot process\n"
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(root) == before
    # The lock went with its holder (kill -9 included), leaving nothing behind;
    # a caller serialising its own work with flock(1) on ROOTFS is not refused.
    done = subprocess.run(["flock", str(root), sys.executable, "-m", "cfsboot", "seal",
                           str(root), "--unsigned"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_lock_available_seals_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the lock cannot be taken (say, a sandbox without Unix sockets),
    sealing goes on as it did before there was a lock."""
    import errno
    import socket

    from cfsboot.boot import seal_install

    class NoBind(socket.socket):
        def bind(self, address: object) -> None:
            raise OSError(errno.EACCES, "Permission denied")

    root = make_sample(tmp_path / "root")
    monkeypatch.setattr(seal_install.socket, "socket", NoBind)
    assert main_ok(["seal", str(root), "--unsigned"])


def test_tmpdir_inside_rootfs_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import tempfile
    root = make_sample(tmp_path / "root")
    before = snapshot(root)
    monkeypatch.setattr(tempfile, "tempdir", str(root / "tmp"))
    err = one_line_error(["seal", str(root), "--unsigned"], capsys)
    assert f"the temporary directory (TMPDIR) {root / 'tmp'} is inside {root}" in err
    assert snapshot(root) == before
