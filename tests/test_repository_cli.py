"""``cfsboot repo …`` and ``create-image`` output (cfsctl-compatible texts)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from cfsboot.cli import image as image_cli
from cfsboot.cli import repo as repo_cli
from cfsboot.errors import CfsError
from cfsboot.repository.repo import Repository


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cfsboot")
    sub = parser.add_subparsers(dest="command", required=True)
    repo_cli.register(sub)
    image_cli.register(sub)
    args = parser.parse_args(list(argv))
    rc: int = args.func(args)
    return rc


def test_repo_path_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = argparse.Namespace
    assert repo_cli.repo_path(ns(repo="/x", user=False, system=False)) == "/x"
    assert repo_cli.repo_path(ns(repo=None, user=False, system=True)) == "/sysroot/composefs"
    monkeypatch.setenv("HOME", "/home/u")
    assert repo_cli.repo_path(ns(repo=None, user=True, system=False)) == \
        "/home/u/.var/lib/composefs"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert repo_cli.repo_path(ns(repo=None, user=False, system=False)) == "/sysroot/composefs"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert repo_cli.repo_path(ns(repo=None, user=False, system=False)) == \
        "/home/u/.var/lib/composefs"
    monkeypatch.delenv("HOME")
    with pytest.raises(CfsError, match="HOME"):
        repo_cli.repo_path(ns(repo=None, user=True, system=False))


def test_cli_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "parent" / "repo")
    assert _run("repo", "init", repo, "--insecure") == 0
    out = capsys.readouterr().out
    assert out == (f"Initialized composefs repository at {repo}\n"
                   "  algorithm: fsverity-sha512-12\n  verity:    not required (insecure)\n")
    assert _run("repo", "--repo", repo, "init", "--insecure") == 0
    assert capsys.readouterr().out == f"Repository already initialized at {repo}\n"
    assert _run("repo", "--repo", repo, "images") == 0
    assert capsys.readouterr().out == "No images found\n"

    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"z" * 1000)
    assert _run("create-image", "--repo", repo, str(src), "web") == 0
    image_id = capsys.readouterr().out.strip()
    assert image_id.startswith("sha512:") and len(image_id) == 7 + 128
    hexid = image_id[7:]

    assert _run("repo", "images", "--repo", repo, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"images": [{"name": "web",
                                                                "digest": hexid}]}
    assert _run("repo", "--repo", repo, "images") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["web", hexid[:12]]
    assert _run("repo", "--repo", repo, "image-objects", "web") == 0
    assert len(capsys.readouterr().out.split()) == 1

    with Repository.open(repo) as r:
        w = r.create_stream(0)
        w.write_inline(b"inline ")
        w.write_external(b"E" * 500)
        r.write_stream(w, "mystream", "tags/one")
    assert _run("repo", "--repo", repo, "cat", "refs/tags/one") == 0
    assert capsys.readouterr().out == "inline " + "E" * 500
    assert _run("repo", "--repo", repo, "refs") == 0
    assert capsys.readouterr().out == "tags/one\tmystream\n"
    assert _run("repo", "--repo", repo, "streams") == 0
    assert capsys.readouterr().out.startswith("mystream\tsha512:")

    assert _run("repo", "--repo", repo, "fsck") == 0
    assert capsys.readouterr().out == ("meta.json: ok\nobjects: 4/4 ok\nstreams: 1/1 ok\n"
                                       "images: 1/1 ok\nstatus: ok\n")
    assert _run("repo", "--repo", repo, "gc", "--dry-run") == 0
    assert capsys.readouterr().out == "Dry run (no files deleted):\nObjects: 0 removed (0 bytes)\n"
    from cfsboot.cli.main import main
    assert main(["repo", "--repo", repo, "gc", "--root", "no-such-stream"]) == 1
    assert "no image or stream named no-such-stream" in capsys.readouterr().err
    os.unlink(Path(repo) / "images/refs/web")
    assert _run("repo", "--repo", repo, "gc") == 0
    out = capsys.readouterr().out
    assert out.startswith("Objects: 2 removed (") and "Pruned symlinks: 1 images, 0 streams" in out

    # a broken object: text report fails, --json reports and exits 0
    victim = next(p for p in (Path(repo) / "objects").glob("*/*"))
    victim.write_bytes(b"tampered")
    assert _run("repo", "--repo", repo, "fsck") == 1
    assert "object-digest-mismatch" in capsys.readouterr().out
    assert _run("repo", "--repo", repo, "fsck", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["objects_corrupted"] == 1


def test_create_image_from_dumpfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = str(tmp_path / "repo")
    assert _run("repo", "init", repo, "--insecure", "--algorithm", "fsverity-sha256-12") == 0
    dump = tmp_path / "tree.dump"
    dump.write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n/f 5 100644 1 0 0 0 0.0 - hello -\n")
    capsys.readouterr()
    assert _run("create-image", "--repo", repo, str(dump), "fromdump") == 0
    assert capsys.readouterr().out.startswith("sha256:")
    missing = "ab/" + "c" * 62
    dump.write_bytes(b"/ 0 40755 2 0 0 0 0.0 - - -\n"
                     b"/f 100 100644 1 0 0 0 0.0 " + missing.encode() + b" - " +
                     missing.replace("/", "").encode() + b"\n")
    with pytest.raises(CfsError, match="not in the repository"):
        _run("create-image", "--repo", repo, str(dump))
