"""User-facing repository errors: messages name ``<repo path>/<relative path>``
(never the ``/proc/self/fd/N`` aliases the code works through), image names
as ``repo images`` prints them resolve, and fsck fails on top-level areas
that are not directories.  Run through the real ``cfsboot`` entry point, so
what is checked is the line the user sees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cfsboot.cli.main import main
from cfsboot.repository import errpaths
from cfsboot.repository.meta import SHA256
from cfsboot.repository.repo import ImageNotFound, Repository

FD_ALIAS = "/proc/self/fd"


def _cfsboot(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one error line of a failing command."""
    rc, _, err = _cfsboot(capsys, *argv)
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cfsboot: "), err
    assert FD_ALIAS not in lines[0]
    return lines[0]


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An insecure repository with image ``a/b`` and stream ``layer`` (ref ``s/x``)."""
    root = tmp_path / "repo"
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "big").write_bytes(b"B" * 5000)  # an external object
    Repository.init(root, SHA256, insecure=True)[0].close()
    assert _cfsboot(capsys, "create-image", "--repo", str(root), str(src), "a/b")[0] == 0
    with Repository.open(root) as r:
        w = r.create_stream()
        w.write_inline(b"head")
        w.write_external(b"E" * 3000)
        r.write_stream(w, "layer", "s/x")
    capsys.readouterr()
    return root


def _replace_by_file(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.write_bytes(b"not a directory")


# ---- 1. errors name the repository path ------------------------------------------

@pytest.mark.parametrize(("area", "argv"), [
    ("images/refs", ["repo", "images"]),
    ("images", ["repo", "images"]),
    ("streams", ["repo", "streams"]),
    ("streams/refs", ["repo", "refs"]),
    ("images", ["repo", "gc", "--dry-run"]),
    ("streams", ["repo", "gc"]),
])
def test_listing_errors_name_repo_path(repo: Path, capsys: pytest.CaptureFixture[str],
                                       area: str, argv: list[str]) -> None:
    _replace_by_file(repo / area)
    line = _error(capsys, *argv, "--repo", str(repo))
    assert f"{repo}/{area.split('/')[0]}" in line


def test_relative_repo_path_is_kept(repo: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo.parent)
    _replace_by_file(repo / "images" / "refs")
    assert _error(capsys, "repo", "images", "--repo", "repo") == \
        "cfsboot: Not a directory: repo/images/refs"


def test_missing_stream_names_repo_path(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, "repo", "cat", "--repo", str(repo), "refs/nope")
    assert line == f"cfsboot: stream not found: refs/nope (no {repo}/streams/refs/nope)"


def test_unreadable_stream_names_repo_path(repo: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # streams/ replaced by a file: opening streams/refs/s/x fails below it
    _replace_by_file(repo / "streams")
    line = _error(capsys, "repo", "cat", "--repo", str(repo), "refs/s/x")
    assert line == f"cfsboot: Not a directory: {repo}/streams/refs/s/x"


def test_missing_object_names_repo_path(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Repository.open(repo) as r, r.open_stream("refs/s/x") as reader:
        (oid,) = reader.object_refs
    (repo / "objects" / oid[:1].hex() / oid[1:].hex()).unlink()
    line = _error(capsys, "repo", "cat", "--repo", str(repo), "refs/s/x")
    assert f"(no {repo}/objects/{oid[:1].hex()}/{oid[1:].hex()})" in line


def test_corrupt_image_names_repo_path(repo: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Insecure mode: the image is hashed before it is mounted (no kernel needed
    to get this far: the check comes before any mount call)."""
    with Repository.open(repo) as r:
        _, _, digest = r.open_image("refs/a/b")
    assert digest is not None
    obj = repo / "objects" / digest[:1].hex() / digest[1:].hex()
    obj.write_bytes(obj.read_bytes()[:-1] + b"\xff")
    (tmp_path / "mnt").mkdir()
    line = _error(capsys, "mount", "--repo", str(repo), "a/b", str(tmp_path / "mnt"))
    assert line.startswith(f"cfsboot: image {repo}/images/refs/a/b is corrupt")


def test_corrupt_image_object_names_repo_path(repo: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An image object replaced by a directory: reading it fails."""
    with Repository.open(repo) as r:
        _, _, digest = r.open_image("a/b")
    assert digest is not None
    obj = repo / "objects" / digest[:1].hex() / digest[1:].hex()
    obj.unlink()
    obj.mkdir()
    line = _error(capsys, "repo", "image-objects", "--repo", str(repo), "a/b")
    assert line == f"cfsboot: {repo}/images/refs/a/b is not a regular file"


def test_write_errors_name_the_link_not_its_target(repo: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _replace_by_file(repo / "images")
    src = tmp_path / "src2"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    line = _error(capsys, "create-image", "--repo", str(repo), str(src), "new")
    assert line.startswith(f"cfsboot: Not a directory: {repo}/images/")
    assert "../objects" not in line


def test_old_format_upgrade_error_names_repo_path(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "old"
    root.mkdir()
    (root / "objects").write_bytes(b"")  # no meta.json, objects/ not a directory
    assert _error(capsys, "repo", "images", "--repo", str(root)) == \
        f"cfsboot: Not a directory: {root}/objects"


def test_rewrite_rules() -> None:
    e: OSError = NotADirectoryError(20, "Not a directory", "/proc/self/fd/7/images/refs")
    errpaths.rewrite(e, "R", {7: "R"})
    assert e.filename == "R/images/refs"
    errpaths.rewrite(e, "X", {7: "X"})  # once only: nested handlers keep the first
    assert e.filename == "R/images/refs"
    e = FileNotFoundError(2, "No such file", "streams/a", None, "/abs/b")
    errpaths.rewrite(e, "/r/", {})
    assert (e.filename, e.filename2) == ("/r/streams/a", "/abs/b")
    assert errpaths.replace_fd_paths(
        "fsconfig lowerdir=/proc/self/fd/5::/proc/self/fd/6: bad; /proc/self/fd/9/x",
        {5: "image", 6: "R/objects"}) == \
        "fsconfig lowerdir=image::R/objects: bad; /proc/self/fd/9/x"
    assert errpaths.join("R", ".") == "R" and errpaths.join("/", "a") == "/a"
    e = IsADirectoryError(21, "Is a directory", 15)  # os.fdopen(15).read()
    errpaths.rewrite(e, "R", {})
    assert e.filename is None


def test_mount_error_names_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may quote the /proc/self/fd sources back; they are renamed."""
    from cfsboot.repository import mount, sysapi
    monkeypatch.setattr(sysapi, "fs_context_messages",
                        lambda fd: ["overlayfs: failed to resolve '/proc/self/fd/6': -2"])
    err = mount._mount_error("overlay", -1, OSError(22, "fsconfig: bad"), {6: "R/objects"})
    assert str(err) == "mounting overlay failed: overlayfs: failed to resolve 'R/objects': -2"
    monkeypatch.setattr(sysapi, "fs_context_messages", lambda fd: [])
    err = mount._mount_error("erofs", -1, OSError(22, "fsconfig source=/proc/self/fd/5: bad"),
                             {5: "R/images/x"})
    assert str(err) == "mounting erofs failed: fsconfig source=R/images/x: bad"


# ---- 2. image names as ``repo images`` prints them -----------------------------------

def test_listed_image_names_resolve(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cfsboot(capsys, "repo", "images", "--repo", str(repo), "--json")
    assert rc == 0
    (entry,) = json.loads(out)["images"]
    assert entry["name"] == "a/b"
    with Repository.open(repo) as r:
        results = []
        for name in ("a/b", "refs/a/b", entry["digest"]):
            fd, _, digest = r.open_image(name)
            os.close(fd)
            results.append(digest)
        assert results == [bytes.fromhex(entry["digest"])] * 3
        assert r.image_relpath("a/b") == "images/refs/a/b"
        with pytest.raises(ImageNotFound) as info:
            r.open_image("a/c")
        assert str(info.value) == (f"image not found: a/c (no {repo}/images/a/c or "
                                   f"{repo}/images/refs/a/c)")
        with pytest.raises(ImageNotFound):
            r.open_image("refs/b")  # refs/ names are not prefixed again
    rc, out, _ = _cfsboot(capsys, "repo", "image-objects", "--repo", str(repo), "a/b")
    assert rc == 0 and len(out.split()) == 1  # d/big


# ---- 3. fsck: top-level areas must be directories ------------------------------------

@pytest.mark.parametrize("area", ["objects", "images", "streams", "images/refs",
                                  "streams/refs"])
def test_fsck_reports_non_directory(repo: Path, capsys: pytest.CaptureFixture[str],
                                    area: str) -> None:
    assert _cfsboot(capsys, "repo", "fsck", "--repo", str(repo))[0] == 0
    _replace_by_file(repo / area)
    rc, out, err = _cfsboot(capsys, "repo", "fsck", "--repo", str(repo))
    assert rc == 1
    assert f"  - fsck: unexpected-file-type: {area}: not a directory" in out.splitlines()
    assert "integrity check failed" in err
    rc, out, _ = _cfsboot(capsys, "repo", "fsck", "--repo", str(repo), "--json",
                          "--metadata-only")
    report = json.loads(out)
    assert not report["ok"]
    assert f"fsck: unexpected-file-type: {area}: not a directory" in report["errors"]


def test_fsck_reports_a_file_among_object_directories(
        repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "objects" / "ab").write_bytes(b"not an object directory")
    rc, out, _ = _cfsboot(capsys, "repo", "fsck", "--repo", str(repo))
    assert rc == 1
    assert "  - fsck: unexpected-file-type: objects/ab: not a directory" in out.splitlines()


def test_fsck_reports_dangling_area_symlink(repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(repo / "images")
    (repo / "images").symlink_to("gone")
    rc, out, _ = _cfsboot(capsys, "repo", "fsck", "--repo", str(repo))
    assert rc == 1
    assert "  - fsck: broken-symlink: images" in out.splitlines()


def test_stray_file_in_refs_names_repo_path(repo: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "images" / "refs" / "stray").write_bytes(b"")
    assert _error(capsys, "repo", "images", "--repo", str(repo)) == \
        f"cfsboot: unexpected file type in repository: {repo}/images/refs/stray"


def test_full_disk_while_storing_an_object_says_so(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write into the object store that fails is reported as such, naming the
    file being stored and the repository, never as a failure to read the source."""
    import errno

    from cfsboot.repository import objects

    def full(fd: int, data: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(objects, "_write_all", full)
    src = tmp_path / "src3"
    src.mkdir()
    (src / "big").write_bytes(b"Z" * 10_000)
    line = _error(capsys, "create-image", "--repo", str(repo), str(src), "new")
    assert line.startswith(f"cfsboot: cannot store {src}/big in the object store: "
                           f"No space left on device ({repo}/objects"), line
