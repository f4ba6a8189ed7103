"""Repository layout, objects, streams, refs and crash safety (repository.md §2–§12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import need_tool

from cfsboot.errors import CfsError
from cfsboot.repository.fsck import fsck
from cfsboot.repository.meta import SHA256, SHA512, Algorithm, FormatConfig
from cfsboot.repository.objects import ObjectError
from cfsboot.repository.repo import ImageNotFound, Repository, RepositoryError
from cfsboot.repository.splitstream import CONTENT_OCI_LAYER


def _init(path: Path, alg: Algorithm = SHA256, **kw: object) -> Repository:
    repo, created = Repository.init(path, alg, insecure=True, **kw)  # type: ignore[arg-type]
    assert created
    return repo


def _fsverity_tool(path: Path, alg: str) -> bytes:
    tool = need_tool("fsverity")
    out = subprocess.run([tool, "digest", f"--hash-alg={alg}", "--block-size=4096", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return bytes.fromhex(out.split()[0].split(":")[1])


def test_init_layout_and_idempotence(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with _init(path, SHA512) as repo:
        assert repo.insecure and repo.algorithm == SHA512
    assert (path.stat().st_mode & 0o777) == 0o700
    meta = json.loads((path / "meta.json").read_text())
    assert meta["algorithm"] == "fsverity-sha512-12"
    repo, created = Repository.init(path, SHA512, insecure=True)
    repo.close()
    assert not created
    with pytest.raises(RepositoryError, match="different configuration"):
        Repository.init(path, SHA256, insecure=True)
    with pytest.raises(RepositoryError, match="configured for"):
        Repository.open(path, algorithm=SHA256)


def test_secure_init_fails_without_verity(tmp_path: Path) -> None:
    # This machine's filesystems have no fs-verity: secure init must refuse.
    with pytest.raises(RepositoryError, match="insecure"):
        Repository.init(tmp_path / "r", SHA256)
    assert not (tmp_path / "r" / "meta.json").exists()


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        Repository.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CfsError, match=r"meta\.json"):
        Repository.open(tmp_path / "empty")
    with _init(tmp_path / "r") as repo, pytest.raises(RepositoryError, match="fs-verity"):
        repo.require_verity()


def test_unknown_features(tmp_path: Path) -> None:
    path = tmp_path / "r"
    _init(path).close()
    meta = json.loads((path / "meta.json").read_text())
    meta["features"]["read-only-compatible"].append("new-index")
    (path / "meta.json").write_text(json.dumps(meta))
    with Repository.open(path) as repo, pytest.raises(RepositoryError, match="not writable"):
        repo.ensure_object(b"x")
    meta["features"]["incompatible"].append("fancy")
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CfsError, match="fancy"):
        Repository.open(path)


def test_objects_named_by_fsverity_digest(tmp_path: Path) -> None:
    with _init(tmp_path / "r", SHA512) as repo:
        data = os.urandom(3 * 4096 + 17)
        digest = repo.ensure_object(data)
        path = tmp_path / "r" / "objects" / digest[:1].hex() / digest[1:].hex()
        assert path.read_bytes() == data
        assert (path.stat().st_mode & 0o777) == 0o644
        assert _fsverity_tool(path, "sha512") == digest
        assert repo.store_object(data).method == "already-present"
        with repo.object_tmpfile() as t:
            t.write(b"a" * 5000)
            t.write(b"b" * 5000)
            res = t.finalize()
        objpath = tmp_path / "r" / "objects" / res.digest[:1].hex() / res.digest[1:].hex()
        assert _fsverity_tool(objpath, "sha512") == res.digest
        assert res.method == "copied" and res.size == 10000
        with repo.object_tmpfile() as t:
            t.write(b"a" * 5000 + b"b" * 5000)
            assert t.finalize().method == "already-present"
        with repo.open_object(res.digest) as f:
            assert len(f.read()) == 10000
        with pytest.raises(ObjectError, match="not found"):
            repo.open_object(bytes(64))
    # nothing but objects: no temporaries left over
    names = sorted(p.name for p in (tmp_path / "r" / "objects").iterdir())
    assert all(len(n) == 2 for n in names)


def test_tmpfile_size_check(tmp_path: Path) -> None:
    with _init(tmp_path / "r") as repo:
        t = repo.object_tmpfile()
        t.write(b"abc")
        with pytest.raises(ObjectError, match="size"):
            t.finalize(expected_size=4)


def test_streams_refs_and_cat(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with _init(root) as repo:
        w = repo.create_stream(CONTENT_OCI_LAYER)
        w.write_inline(b"head")
        w.write_external(b"E" * 1000)
        w.write_inline(b"tail")
        img = repo.write_image(None, b"not really an image")
        w.add_named_stream_ref("composefs.image", img)
        digest = repo.write_stream(w, "oci-layer-sha256:abc", "oci/quay.io%2Ffoo:1")
        assert repo.has_stream("oci-layer-sha256:abc") == digest
        assert repo.has_stream("nope") is None
        assert os.readlink(root / "streams" / "oci-layer-sha256:abc") == \
            f"../objects/{digest[:1].hex()}/{digest[1:].hex()}"
        assert os.readlink(root / "streams/refs/oci/quay.io%2Ffoo:1") == \
            "../../oci-layer-sha256:abc"
        repo.name_stream("oci-layer-sha256:abc", "oci-referrers/s/a")
        assert os.readlink(root / "streams/refs/oci-referrers/s/a") == \
            "../../../oci-layer-sha256:abc"
        out = bytearray()
        repo.cat("refs/oci/quay.io%2Ffoo:1", out.extend)
        assert bytes(out) == b"head" + b"E" * 1000 + b"tail"
        with repo.open_stream("x", digest, CONTENT_OCI_LAYER) as r:
            assert r.named_refs == {"composefs.image": img}
        assert sorted(e.name for e in repo.list_stream_refs()) == ["oci-referrers/s/a",
                                                                   "oci/quay.io%2Ffoo:1"]
        assert [e.name for e in repo.list_stream_refs("oci")] == ["oci/quay.io%2Ffoo:1"]
        # replace: the ref now follows another stream
        w2 = repo.create_stream()
        w2.write_inline(b"other")
        repo.write_stream(w2, "other", "oci/quay.io%2Ffoo:1")
        assert os.readlink(root / "streams/refs/oci/quay.io%2Ffoo:1") == "../../other"
        for bad in ("../x", "a//b", "", "/abs"):
            with pytest.raises(CfsError, match="invalid"):
                repo.name_stream("other", bad)


def test_images_refs_and_resolution(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with _init(root) as repo:
        digest = repo.write_image("a/b", b"image bytes")
        hexid = digest.hex()
        assert os.readlink(root / "images" / hexid) == f"../objects/{hexid[:2]}/{hexid[2:]}"
        assert os.readlink(root / "images/refs/a/b") == f"../../{hexid}"
        repo.write_image("top", b"image bytes")
        assert os.readlink(root / "images/refs/top") == f"../{hexid}"
        for name in (hexid, "top", "refs/a/b"):
            fd, _, found = repo.open_image(name)
            os.close(fd)
            assert found == digest
        with pytest.raises(ImageNotFound):
            repo.open_image("missing")
        assert [(e.name, e.target) for e in repo.list_image_refs()] == [
            ("a/b", f"../../{hexid}"), ("top", f"../{hexid}")]


def test_old_format_upgrade(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with _init(root, SHA512) as repo:
        repo.ensure_object(b"legacy object")
    (root / "meta.json").unlink()
    with pytest.raises(RepositoryError, match="old-format"):
        Repository.open(root)
    with Repository.open(root, upgrade=True) as repo:
        assert repo.algorithm == SHA512 and repo.format_config() == FormatConfig(1)


def test_concurrent_writers_threads_and_processes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _init(root).close()
    blobs = [bytes([i]) * (4096 * (i % 3) + i) for i in range(40)]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Repository.open(root) as repo:
                for b in blobs:
                    repo.ensure_object(b)
                    with repo.object_tmpfile() as t:
                        t.write(b + b"!")
                        t.finalize()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(root), "10"],
                              stdout=subprocess.DEVNULL) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait() == 0
    assert not errors
    with Repository.open(root) as repo:
        result = fsck(repo)
        assert result.ok, result.errors
        assert result.objects_checked >= 80


_WRITER_SCRIPT = r"""
import os, sys
from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.repository.repo import Repository
from cfsboot.tree.model import Directory, External, Leaf, Stat
root, loops = sys.argv[1], int(sys.argv[2])
with Repository.open(root) as repo:
    i = 0
    while True:
        blob = os.urandom(1000 + (i * 997) % 20000)
        with repo.object_tmpfile() as t:
            t.write(blob[:500]); t.write(blob[500:])
            oid = t.finalize().digest
        w = repo.create_stream(0)
        w.write_inline(b"hdr%d" % i)
        w.write_reference(oid); w.add_external_size(len(blob))
        w.write_external(os.urandom(3000))
        repo.write_stream(w, "s%d" % (i % 7), "ref/%d" % (i % 5))
        tree = Directory(Stat(0o755, 0, 0, i, 0))
        tree.entries[b"f"] = Leaf(Stat(0o644, 0, 0, 0, 0), External.from_digest(oid, len(blob)))
        repo.write_image("img%d" % (i % 3), mkfs_erofs(tree, 1))
        if i == 0:
            print("ready", flush=True)
        i += 1
        if loops and i >= loops:
            break
"""


def test_killed_writer_leaves_no_partial_state(tmp_path: Path) -> None:
    """SIGKILL a writer at random points: every visible object has the digest
    its name says, and no ref dangles."""
    root = tmp_path / "r"
    _init(root).close()
    for delay in (0.0, 0.013, 0.05, 0.1, 0.3):
        p = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(root), "0"],
                             stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        time.sleep(delay)  # then kill it somewhere in the middle of writing
        p.send_signal(signal.SIGKILL)
        p.wait()
        with Repository.open(root) as repo:
            result = fsck(repo)
            assert result.ok, result.errors
    assert not list((root / "objects").glob(".tmp-object-*"))


def test_named_tmpfile_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems without O_TMPFILE: hidden named temporaries, renamed without
    replacing; nothing is left behind."""
    import errno

    from cfsboot.repository import objects

    real_open = os.open

    def no_tmpfile(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    with _init(tmp_path / "r") as repo:
        monkeypatch.setattr(objects.os, "open", no_tmpfile)
        d1 = repo.ensure_object(b"fallback" * 700)
        with repo.object_tmpfile() as t:
            t.write(b"streamed fallback")
            res = t.finalize()
        with repo.object_tmpfile() as t:
            t.write(b"streamed fallback")
            assert t.finalize().method == "already-present"
        monkeypatch.undo()
        with repo.open_object(d1) as f1, repo.open_object(res.digest) as f2:
            assert (f1.read(), f2.read()) == (b"fallback" * 700, b"streamed fallback")
        assert fsck(repo).ok
    assert not list((tmp_path / "r" / "objects").glob(".tmp-object-*"))
