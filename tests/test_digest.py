"""`cfsboot container compute-composefs-digest` against the bootc reference tree
(vectors/trees: digest and dumpfile produced by composefs-rs at bootc's pin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TREE_VECTORS, load_json, need_root

from cfsboot.boot.digest import ROOT_REFUSAL, DigestOptions, compute_composefs_digest
from cfsboot.cli.main import main


def need_tree_vectors() -> dict[str, str]:
    if not (TREE_VECTORS / "expected.json").exists():
        pytest.skip(f"tree vectors not found at {TREE_VECTORS}")
    expected: dict[str, str] = load_json(TREE_VECTORS / "expected.json")
    return expected


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tree_vectors()
    need_root()  # owners, device nodes
    root = tmp_path_factory.mktemp("sample") / "root"
    subprocess.run([sys.executable, str(TREE_VECTORS / "make-sample-root.py"), str(root)],
                   check=True)
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["container", "compute-composefs-digest", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sample_tree_digest_and_dumpfile(sample_root: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    expected = need_tree_vectors()
    dump = tmp_path / "out.dump"
    rc, out, err = run_cli(capsys, str(sample_root), "--write-dumpfile-to", str(dump))
    assert (rc, err) == (0, "")
    assert out == expected["compute_composefs_digest"] + "\n"  # the digest and nothing else
    assert dump.read_bytes() == (TREE_VECTORS / "sample-root.dump").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["out.dump"]  # no temporaries left


def test_sample_tree_v2(sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = need_tree_vectors()
    rc, out, _ = run_cli(capsys, str(sample_root), "--format", "2")
    assert rc == 0 and out.strip() == expected["erofs_v2_sha512"]


@pytest.mark.usefixtures("verity_impl")  # pure Python and the C accelerator
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_sample_tree_any_thread_count_and_cache(sample_root: Path, tmp_path: Path,
                                                threads: int) -> None:
    expected = need_tree_vectors()["compute_composefs_digest"]
    options = DigestOptions(threads=threads, cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # cold, then with the cache file present
        assert compute_composefs_digest(str(sample_root), options).hexdigest == expected


def test_json_output(sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = need_tree_vectors()
    rc, out, _ = run_cli(capsys, str(sample_root), "--json")
    report = json.loads(out)
    assert rc == 0
    assert set(report) == {"digest", "format", "hash", "counts", "time", "cached", "hashing"}
    assert report["cached"] is False
    assert report["hashing"] in ("c", "python")
    assert report["digest"] == expected["compute_composefs_digest"]
    assert (report["format"], report["hash"]) == (1, "sha512")
    counts = report["counts"]
    # make-sample-root.py: 10 files over 64 bytes + 2 policy files... counted before transforms
    assert counts["hardlinks"] == 1 and counts["inline_files"] >= 1
    assert counts["bytes_hashed"] == counts["bytes_external"] > 3 << 20
    assert report["time"]["total"] > 0


def test_sha256_variant(sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, str(sample_root), "--hash", "sha256")
    assert rc == 0 and len(out.strip()) == 64
    assert out.strip() != need_tree_vectors()["compute_composefs_digest"][:64]


def test_no_boot_transform_keeps_boot_contents(sample_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "d"
    rc, out, _ = run_cli(capsys, str(sample_root), "--no-boot-transform",
                         "--write-dumpfile-to", str(dump))
    assert rc == 0
    assert out.strip() != need_tree_vectors()["compute_composefs_digest"]
    text = dump.read_bytes()
    assert b"/boot/loader/junk.conf " in text and b"security.selinux" not in text


# ---- errors: one line, exit 1, nothing written -------------------------------

def test_root_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for path in ("/", "/usr/..", "//"):
        rc, out, err = run_cli(capsys, path)
        assert (rc, out) == (1, "")
        assert err == f"cfsboot: {ROOT_REFUSAL}\n"


def make_minimal_root(root: Path) -> None:
    for d in ("usr/bin", "boot", "sysroot"):
        (root / d).mkdir(parents=True)
    (root / "usr/bin/sh").write_bytes(b"#!" + b"x" * 100)


@pytest.mark.parametrize("broken", ["usr", "boot", "sysroot"])
def test_missing_toplevel_dir(tmp_path: Path, broken: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    make_minimal_root(tmp_path / "root")
    dump = tmp_path / "out.dump"
    subprocess.run(["rm", "-rf", str(tmp_path / "root" / broken)], check=True)
    rc, out, err = run_cli(capsys, str(tmp_path / "root"), "--write-dumpfile-to", str(dump))
    assert (rc, out) == (1, "")
    assert err.count("\n") == 1 and f"/{broken} is missing" in err
    assert not dump.exists()
    (tmp_path / "root" / broken).write_bytes(b"")  # a file, not a directory
    rc, _, err = run_cli(capsys, str(tmp_path / "root"))
    assert rc == 1 and f"/{broken} in" in err and "not a directory" in err


def test_policy_directory_is_an_error(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    make_minimal_root(root)
    (root / "etc/selinux/config").mkdir(parents=True)
    rc, out, err = run_cli(capsys, str(root))
    assert (rc, out) == (1, "")
    assert err.startswith("cfsboot: ") and err.count("\n") == 1


def test_not_a_directory_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_bytes(b"")
    rc, _, err = run_cli(capsys, str(tmp_path / "file"))
    assert rc == 1 and err == f"cfsboot: {tmp_path / 'file'} is not a directory\n"
    rc, _, err = run_cli(capsys, str(tmp_path / "nope"))
    assert rc == 1 and "No such file or directory" in err and err.count("\n") == 1
    os.symlink(tmp_path, tmp_path / "link")
    rc, _, err = run_cli(capsys, str(tmp_path / "link"))
    assert rc == 1 and "symlink" in err


def test_minimal_root_is_deterministic(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """bootc's own unit test shape: the same tree gives the same 128-hex digest."""
    make_minimal_root(tmp_path / "root")
    rc1, out1, _ = run_cli(capsys, str(tmp_path / "root"))
    rc2, out2, _ = run_cli(capsys, str(tmp_path / "root"), "--threads", "1")
    assert rc1 == rc2 == 0 and out1 == out2
    assert len(out1.strip()) == 128 and int(out1, 16) >= 0


def test_invalid_thread_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, str(tmp_path), "--threads", "0")
    assert rc == 1 and "thread" in err


@pytest.mark.parametrize("where", ["var/cache/cfsboot", ".", "link-into-tree/c"])
def test_cache_inside_the_tree_is_refused(tmp_path: Path, where: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A cache inside the tree would become part of the image it digests."""
    root = tmp_path / "root"
    make_minimal_root(root)
    (tmp_path / "link-into-tree").symlink_to(root / "usr")
    cache = tmp_path / where if where.startswith("link") else root / where
    before = sorted(p.name for p in root.rglob("*"))
    rc, out, err = run_cli(capsys, str(root), "--cache", str(cache))
    assert (rc, out) == (1, "")
    assert err == (f"cfsboot: cache directory {cache} is inside {root}: its files would become "
                   "part of the image; give a directory outside the tree\n")
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing created
    # Beside the tree (a name that merely starts the same) is fine.
    rc, out, _ = run_cli(capsys, str(root), "--cache", str(tmp_path / "root-cache"))
    assert rc == 0 and len(out.strip()) == 128


def test_dumpfile_inside_the_tree_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Written after the digest, it would make the tree differ from its digest."""
    root = tmp_path / "root"
    make_minimal_root(root)
    rc, out, err = run_cli(capsys, str(root), "--write-dumpfile-to", str(root / "tree.dump"))
    assert (rc, out) == (1, "") and not (root / "tree.dump").exists()
    assert err == (f"cfsboot: dumpfile {root / 'tree.dump'} is inside {root}: writing it would "
                   "change the tree after its digest was taken; write it outside the tree\n")
    rc, out, _ = run_cli(capsys, str(root), "--write-dumpfile-to", str(tmp_path / "tree.dump"))
    assert rc == 0 and (tmp_path / "tree.dump").read_text().startswith("/ ")


def test_root_refusal_comes_before_the_dumpfile_check(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "/", "--write-dumpfile-to", "/tmp/never.dump")
    assert (rc, err) == (1, f"cfsboot: {ROOT_REFUSAL}\n")
