"""Review 3d fixes in ``cfsboot oci``: skopeo's temporary archive copies are
removed (F3), symlinked layout blobs are followed but FIFOs/devices refused
(F6), and tag names / --jobs give one-line errors (F8)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import need_tool
from test_oci_support import base_tree, file_entry, make_layout, new_repo, py_tar

from cfsboot.cli.main import main
from cfsboot.errors import CfsError
from cfsboot.oci.pull import pull

VAR_TMP = Path("/var/tmp")  # skopeo 1.9 extracts archives here; TMPDIR is not honoured


def unique_layout(path: Path, size: int = 1000, layers: int = 1,
                  diff_ids: list[str] | None = None) -> str:
    """A layout whose manifest digest no other run shares; returns it."""
    tars = [py_tar([*base_tree(), file_entry(f"f{i}", os.urandom(size))]) for i in range(layers)]
    man, _ = make_layout(path, tars, None, diff_ids=diff_ids)
    return man


def archive_of(layout: Path, archive: Path) -> str:
    """skopeo's oci-archive of the layout; returns the archive's manifest
    digest (skopeo copy rewrites the manifest)."""
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:latest",
                    f"oci-archive:{archive}:latest"], check=True, capture_output=True)
    with tarfile.open(archive) as tf:
        member = tf.extractfile("index.json")
        assert member is not None
        return str(json.load(member)["manifests"][0]["digest"])


def tmp_copies(manifest: str) -> list[Path]:
    """skopeo's extracted copies of the archive holding ``manifest``.  Matched
    by content, not counted: other people's pulls come and go in /var/tmp."""
    return [d for d in VAR_TMP.glob("oci*")
            if (d / "blobs/sha256" / manifest[7:]).exists()]


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfsboot", *argv], capture_output=True,
                          text=True, timeout=timeout)


# ---- F3: no copy left in /var/tmp ------------------------------------------------------

def test_archive_copy_removed_after_pull(tmp_path: Path) -> None:
    need_tool("skopeo")
    from cfsboot.oci.registry import SkopeoSource
    unique_layout(tmp_path / "l")
    man = archive_of(tmp_path / "l", tmp_path / "a.tar")
    # The detector works: while the image is open, skopeo's copy exists.
    src = SkopeoSource(f"oci-archive:{tmp_path / 'a.tar'}")
    try:
        assert src.manifest()[0] == man
        assert len(tmp_copies(man)) == 1
    finally:
        src.close()
    assert tmp_copies(man) == []
    res = pull(new_repo(tmp_path / "repo"), f"oci-archive:{tmp_path / 'a.tar'}", "a")
    assert res.manifest_digest == man
    assert tmp_copies(man) == []


def test_archive_copy_removed_after_failed_pull(tmp_path: Path) -> None:
    need_tool("skopeo")
    unique_layout(tmp_path / "l", diff_ids=["sha256:" + "0" * 64])
    man = archive_of(tmp_path / "l", tmp_path / "a.tar")
    with pytest.raises(CfsError, match="diff_id"):
        pull(new_repo(tmp_path / "repo"), f"oci-archive:{tmp_path / 'a.tar'}", "a")
    assert tmp_copies(man) == []


def test_missing_archive_leaves_no_tmp_dir(tmp_path: Path) -> None:
    """skopeo 1.9 makes its /var/tmp/ociNNN directory before opening the file
    and keeps it when the file is missing: cfsboot checks first."""
    need_tool("skopeo")
    before = set(VAR_TMP.glob("oci*"))
    with pytest.raises(CfsError, match=r"nope\.tar: no such OCI archive$"):
        pull(new_repo(tmp_path / "repo"), f"oci-archive:{tmp_path}/nope.tar:latest", "x")
    # Others may be pulling: only an *empty* new directory could be ours.
    assert not [d for d in set(VAR_TMP.glob("oci*")) - before
                if d.is_dir() and not any(d.iterdir())]


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5])
def test_archive_copy_removed_after_ctrl_c(tmp_path: Path, delay: float) -> None:
    """SIGINT to the whole foreground process group, as a terminal's Ctrl-C,
    ``delay`` seconds after skopeo has extracted the archive."""
    need_tool("skopeo")
    unique_layout(tmp_path / "l", size=4 << 20, layers=4)
    man = archive_of(tmp_path / "l", tmp_path / "a.tar")
    assert main(["repo", "init", "--insecure", str(tmp_path / "repo")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "cfsboot", "oci", "--repo",
                             str(tmp_path / "repo"), "pull", "--jobs", "1",
                             f"oci-archive:{tmp_path / 'a.tar'}", "a"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not tmp_copies(man) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print("pull exit status", proc.returncode)
    assert proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert err == "cfsboot: interrupted\n"
    assert tmp_copies(man) == []


# ---- F6: symlinked blobs -----------------------------------------------------------------

def test_symlinked_blobs_are_followed(tmp_path: Path) -> None:
    man = unique_layout(tmp_path / "plain")
    shutil.copytree(tmp_path / "plain", tmp_path / "store")
    linked = tmp_path / "linked"
    (linked / "blobs/sha256").mkdir(parents=True)
    for blob in (tmp_path / "store/blobs/sha256").iterdir():  # as Bazel rules_oci does
        (linked / "blobs/sha256" / blob.name).symlink_to(blob)
    (linked / "index.json").symlink_to("../store/index.json")
    (linked / "oci-layout").symlink_to(tmp_path / "store/oci-layout")
    a = pull(new_repo(tmp_path / "r1"), f"oci:{tmp_path / 'plain'}", "a")
    b = pull(new_repo(tmp_path / "r2"), f"oci:{linked}", "b")
    assert a.manifest_digest == b.manifest_digest == man
    assert a.image_id is not None and a.image_id == b.image_id


@pytest.mark.parametrize("which", ["manifest", "layer", "index", "dev-zero"])
def test_non_regular_blob_refused(tmp_path: Path, which: str) -> None:
    layout = tmp_path / "l"
    man = unique_layout(layout)
    blobs = layout / "blobs/sha256"
    if which == "manifest":
        victim = blobs / man[7:]
    elif which == "index":
        victim = layout / "index.json"
    else:
        victim = max(blobs.iterdir(), key=lambda p: p.stat().st_size)  # the layer
    victim.unlink()
    if which == "dev-zero":
        victim.symlink_to("/dev/zero")
    else:
        os.mkfifo(victim)
    assert main(["repo", "init", "--insecure", str(tmp_path / "repo")]) == 0
    r = cli("oci", "--repo", str(tmp_path / "repo"), "pull", f"oci:{layout}", "x", timeout=30)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cfsboot: ")
    what = "index.json" if which == "index" else "blob sha256:"
    assert what in r.stderr and "is not a regular file" in r.stderr, r.stderr


# ---- F8: tag names and --jobs ------------------------------------------------------------

@pytest.fixture
def pulled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """(repository, layout) with the layout pulled as tag "t"."""
    repo, layout = str(tmp_path / "repo"), str(tmp_path / "l")
    unique_layout(tmp_path / "l")
    assert main(["repo", "init", "--insecure", repo]) == 0
    assert main(["oci", "--repo", repo, "pull", f"oci:{layout}", "t"]) == 0
    capsys.readouterr()
    return repo, layout


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 1
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("cfsboot: "), err
    return err.strip()


@pytest.mark.parametrize("name, message", [
    ("", "cfsboot: empty tag name"),
    ("..", "cfsboot: invalid tag name '..'"),
    (".", "cfsboot: invalid tag name '.'"),
    ("a\nb", "cfsboot: invalid tag name 'a\\nb' (control characters are not allowed)"),
])
def test_bad_new_tag(pulled: tuple[str, str], capsys: pytest.CaptureFixture[str],
                     name: str, message: str) -> None:
    repo, layout = pulled
    assert one_line_error(capsys, "oci", "--repo", repo, "pull", f"oci:{layout}",
                          name) == message
    digest = subprocess.run(["readlink", f"{repo}/streams/refs/oci/t"], capture_output=True,
                            text=True, check=True).stdout.strip().rsplit("oci-manifest-")[1]
    assert one_line_error(capsys, "oci", "--repo", repo, "tag", digest, name) == message
    assert sorted(os.listdir(f"{repo}/streams/refs/oci")) == ["t"]


@pytest.mark.parametrize("command", [["inspect"], ["compute-id"], ["mount"], ["untag"]])
@pytest.mark.parametrize("name", [".", ".."])
def test_dot_tags_in_lookups(pulled: tuple[str, str], capsys: pytest.CaptureFixture[str],
                             tmp_path: Path, command: list[str], name: str) -> None:
    repo, _ = pulled
    extra = [str(tmp_path)] if command == ["mount"] else []
    assert one_line_error(capsys, "oci", "--repo", repo, *command, name,
                          *extra) == f"cfsboot: invalid tag name '{name}'"


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_jobs_must_be_positive(pulled: tuple[str, str], capsys: pytest.CaptureFixture[str],
                               jobs: str) -> None:
    repo, layout = pulled
    err = one_line_error(capsys, "oci", "--repo", repo, "pull", "--jobs", jobs,
                         f"oci:{layout}", "j")
    assert err == f"cfsboot: --jobs must be at least 1 (got {jobs})"


def test_upstream_style_names_still_work(pulled: tuple[str, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    repo, layout = pulled
    for name in ("docker://quay.io/fedora/fedora:42", "a/b%2Fc@d", "..x", "sha256:abc", "é"):
        assert main(["oci", "--repo", repo, "pull", f"oci:{layout}", name]) == 0
        assert main(["oci", "--repo", repo, "inspect", "--manifest", name]) == 0
    # NAME absent: the source is the tag, as cfsctl
    assert main(["oci", "--repo", repo, "pull", f"oci:{layout}"]) == 0
    out, _ = capsys.readouterr()
    assert f"tagged   oci:{layout}\n" in out


def test_control_characters_escaped_in_images(pulled: tuple[str, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A tag made by another tool (upstream allows newlines) stays one line in
    ``oci images`` and can still be removed."""
    repo, _ = pulled
    os.symlink(os.readlink(f"{repo}/streams/refs/oci/t"), f"{repo}/streams/refs/oci/a\nb")
    assert main(["oci", "--repo", repo, "images"]) == 0
    out, _ = capsys.readouterr()
    assert len(out.splitlines()) == 3 and out.splitlines()[1].startswith("a\\nb ")
    assert main(["oci", "--repo", repo, "untag", "a\nb"]) == 0


# ---- F9: a corrupt tar header names its layer -------------------------------------------

def test_corrupt_tar_header_names_the_layer(tmp_path: Path) -> None:
    tar = bytearray(py_tar([*base_tree(), file_entry("f", b"x" * 100)]))
    tar[148:156] = b"0000000\0"  # the first header's checksum field
    man, _ = make_layout(tmp_path / "l", [bytes(tar)], None)
    layers = json.loads((tmp_path / "l/blobs/sha256" / man[7:]).read_bytes())["layers"]
    with pytest.raises(CfsError) as caught:
        pull(new_repo(tmp_path / "r"), f"oci:{tmp_path / 'l'}", "x")
    assert str(caught.value) == (f"layer {layers[0]['digest']}: tar header checksum mismatch "
                                 "(corrupt or not a tar archive)")
