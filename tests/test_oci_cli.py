"""``cfsboot oci`` end to end: pull/images/inspect/compute-id/tag/untag/mount,
umoci-built layouts, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_root, need_tool
from test_oci_support import base_tree, gnu_tar, make_layout, py_tar, write_tree

from cfsboot.boot.digest import DigestOptions, compute_composefs_digest
from cfsboot.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "repo")
    assert run(capsys, "repo", "init", "--insecure", path)[0] == 0
    return path


def tree_with_files(root: Path) -> None:
    write_tree(root, {"usr/bin/sh": os.urandom(20_000), "usr/lib/os-release": b"ID=x\n",
                      "usr/lib/l": "->os-release", "etc/hostname": b"box\n", "boot": None,
                      "sysroot": None, "var": None})
    os.link(root / "usr/bin/sh", root / "usr/bin/bash")


def test_cli_flow(repo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "tree"
    tree_with_files(src)
    man, cfg = make_layout(tmp_path / "l", [gnu_tar(src)], "zstd")
    rc, out, _ = run(capsys, "oci", "--repo", repo, "pull", f"oci:{tmp_path / 'l'}", "img")
    assert rc == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["manifest"] == man and lines["config"] == cfg and lines["tagged"] == "img"
    assert lines["objects"].startswith("1 new + 0 already present objects; 19.53 KiB stored")
    rc, out, _ = run(capsys, "oci", "--repo", repo, "images", "--json")
    data = json.loads(out)["images"]
    assert [(i["name"], i["manifest_digest"], i["layer_count"]) for i in data] == \
        [("img", man, 1)]
    rc, out, _ = run(capsys, "oci", "--repo", repo, "images")
    assert [c.strip() for c in out.splitlines()[1].split("│")][:2] == ["img", man[7:19]]
    expected = compute_composefs_digest(str(src), DigestOptions()).hexdigest
    for ref in ("img", f"@{cfg}", f"@{man}"):
        rc, out, _ = run(capsys, "oci", "--repo", repo, "compute-id", "--bootable", ref)
        assert (rc, out.strip()) == (0, expected)
    rc, out, _ = run(capsys, "oci", "--repo", repo, "inspect", "img")
    info = json.loads(out)
    assert json.loads(info["manifest"])["config"]["digest"] == cfg
    assert info["composefs_erofs"] is not None and info["composefs_boot_erofs"] is None
    rc, out, _ = run(capsys, "oci", "--repo", repo, "inspect", "img", "--config")
    assert json.loads(out)["rootfs"]["type"] == "layers"
    rc, out, _ = run(capsys, "oci", "--repo", repo, "tag", man, "second/name%x")
    assert out.strip() == f"Tagged {man} as second/name%x"
    assert os.path.islink(f"{repo}/streams/refs/oci/second%2Fname%25x")
    rc, out, _ = run(capsys, "oci", "--repo", repo, "untag", "second/name%x")
    assert rc == 0 and out.strip() == "Removed tag second/name%x"
    # --bootable pull links the boot image; it equals compute-composefs-digest
    rc, out, _ = run(capsys, "oci", "--repo", repo, "pull", "--bootable",
                     f"oci:{tmp_path / 'l'}", "img")
    assert out.splitlines()[-1] == f"Boot image: {expected}"
    rc, out, _ = run(capsys, "oci", "--repo", repo, "inspect", "img")
    assert json.loads(out)["composefs_boot_erofs"] == expected


@pytest.mark.parametrize(("argv", "match"), [
    (["pull", "docker:foo"], "docker://"),
    (["pull", "nonsense"], "invalid image reference"),
    (["pull", "oci:/nonexistent/dir"], "no such OCI layout"),
    (["compute-id", "missing"], "OCI reference not found"),
    (["inspect", "@sha256:1234"], "invalid OCI digest"),
    (["untag", "missing"], "not found"),
    (["pull", "oci:/tmp", "@bad"], "must not start with '@'"),
])
def test_cli_errors_are_one_line(repo: str, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], match: str) -> None:
    rc, _, err = run(capsys, "oci", "--repo", repo, *argv)
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("cfsboot: ") and match in err


def test_mount_matches_tree(repo: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    need_root()
    src = tmp_path / "tree"
    tree_with_files(src)
    make_layout(tmp_path / "l", [gnu_tar(src)], "gzip")
    assert run(capsys, "oci", "--repo", repo, "pull", f"oci:{tmp_path / 'l'}", "m")[0] == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, _, err = run(capsys, "oci", "--repo", repo, "mount", "m", str(mnt))
    if rc != 0:
        pytest.skip(f"mount failed: {err.strip()}")
    try:
        # rsync-style comparison by an independent walker: diff -r + stat fields
        diff = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(mnt)],
                              capture_output=True, text=True)
        assert diff.returncode == 0, diff.stdout
        for dirpath, dirnames, filenames in os.walk(src):
            for name in dirnames + filenames:
                a = os.lstat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), src)
                b = os.lstat(mnt / rel)
                assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns, a.st_nlink) == \
                    (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns, b.st_nlink), rel
        assert os.lstat(mnt / "usr/bin/sh").st_ino == os.lstat(mnt / "usr/bin/bash").st_ino
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    rc, _, err = run(capsys, "oci", "--repo", repo, "mount", "--bootable", "m", str(mnt))
    assert rc == 1 and "pulling with --bootable" in err


def test_umoci_layout(repo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A layout written by umoci (Go archive/tar, gzip) from a known tree."""
    umoci = need_tool("umoci")
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"
    subprocess.run([umoci, "init", "--layout", str(layout)], check=True)
    subprocess.run([umoci, "new", "--image", f"{layout}:t"], check=True)
    subprocess.run([umoci, "unpack", "--image", f"{layout}:t", str(bundle)], check=True,
                   capture_output=True)
    rootfs = bundle / "rootfs"
    tree_with_files(rootfs)
    # umoci's tars carry whole seconds only: give the tree whole-second mtimes
    subprocess.run(["find", str(rootfs), "-exec", "touch", "-h", "-d", "@1700000000", "{}",
                    "+"], check=True)
    subprocess.run([umoci, "repack", "--image", f"{layout}:t", str(bundle)], check=True,
                   capture_output=True)
    rc, out, err = run(capsys, "oci", "--repo", repo, "pull", f"oci:{layout}:t", "u")
    assert rc == 0, err
    rc, out, _ = run(capsys, "oci", "--repo", repo, "compute-id", "--bootable", "u")
    assert out.strip() == compute_composefs_digest(str(rootfs), DigestOptions()).hexdigest


def test_cli_module_runs(tmp_path: Path) -> None:
    make_layout(tmp_path / "l", [py_tar(base_tree())])
    r = subprocess.run([sys.executable, "-m", "cfsboot", "oci", "--repo", str(tmp_path / "no"),
                        "images"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("cfsboot: no repository")
