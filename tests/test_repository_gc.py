"""GC and fsck: property tests against an independent model of reachability,
a killed writer, and one test per fsck error kind (repository.md §13, §14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.fsverity import fsverity_digest
from cfsboot.repository.fsck import fsck
from cfsboot.repository.gc import GcError, gc
from cfsboot.repository.meta import SHA256
from cfsboot.repository.repo import Repository
from cfsboot.tree.model import Directory, External, Leaf, Stat

BLOBS = [bytes([i]) * (200 + 977 * i) for i in range(8)]


def _digest(data: bytes) -> bytes:
    return fsverity_digest(data, "sha256")  # independent of the repository code path


def _on_disk(root: Path) -> set[bytes]:
    out: set[bytes] = set()
    if not (root / "objects").is_dir():
        return out
    for sub in (root / "objects").iterdir():
        if sub.is_dir() and not sub.is_symlink():
            out |= {bytes.fromhex(sub.name + f.name) for f in sub.iterdir()}
    return out


def _image(blob_ids: list[int], salt: int) -> tuple[bytes, set[bytes]]:
    tree = Directory(Stat(0o755, 0, 0, salt, 0))
    for i in blob_ids:
        tree.entries[b"f%d" % i] = Leaf(Stat(0o644, 0, 0, 0, 0),
                                        External.from_digest(_digest(BLOBS[i]), len(BLOBS[i])))
    return mkfs_erofs(tree, 1), {_digest(BLOBS[i]) for i in blob_ids}


@dataclass
class Model:
    """What each name reaches, from the test's own bookkeeping."""
    streams: dict[str, tuple[bytes, set[bytes], list[bytes]]] = field(default_factory=dict)
    images: dict[bytes, set[bytes]] = field(default_factory=dict)  # image oid -> file objects
    stream_refs: dict[str, str] = field(default_factory=dict)
    image_refs: dict[str, bytes] = field(default_factory=dict)

    def live(self, roots: set[str]) -> set[bytes]:
        live: set[bytes] = set()
        for oid, objs in self.images.items():
            if oid in self.image_refs.values() or oid.hex() in roots:
                live |= {oid} | objs
        by_oid = {v[0]: k for k, v in self.streams.items()}
        todo = [n for n in self.streams if n in self.stream_refs.values() or n in roots]
        seen: set[str] = set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            oid, objs, named = self.streams[n]
            live |= {oid} | objs | set(named)
            todo += [by_oid[x] for x in named if x in by_oid]
            for x in named:  # an image a stream names is kept complete
                live |= self.images.get(x, set())
        return live


op = st.one_of(
    st.tuples(st.just("stream"), st.lists(st.integers(0, 7), max_size=3),
              st.lists(st.integers(0, 20), max_size=2)),
    st.tuples(st.just("image"), st.lists(st.integers(0, 7), max_size=3), st.just([])),
    st.tuples(st.just("unref"), st.integers(0, 20), st.just([])),
    st.tuples(st.just("ref"), st.integers(0, 20), st.just([])),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=14), extra_root=st.booleans(),
       loose=st.lists(st.integers(0, 7), max_size=3))
def test_gc_keeps_exactly_what_refs_reach(tmp_path_factory: pytest.TempPathFactory,
                                          ops: list[tuple[str, object, object]],
                                          extra_root: bool, loose: list[int]) -> None:
    root = tmp_path_factory.mktemp("gc") / "r"
    model = Model()
    with Repository.init(root, SHA256, insecure=True)[0] as repo:
        for i in loose:  # objects nobody references
            repo.ensure_object(BLOBS[i] + b"loose")
        for n, (kind, a, b) in enumerate(ops):
            if kind == "stream":
                assert isinstance(a, list) and isinstance(b, list)
                w = repo.create_stream(0)
                w.write_inline(b"stream %d" % n)
                for i in a:
                    w.write_external(BLOBS[i])
                known = [v[0] for v in model.streams.values()] + list(model.images)
                named = [known[j % len(known)] for j in b] if known else []
                for j, oid in enumerate(named):
                    w.add_named_stream_ref(f"n{j}", oid)
                name = f"s{n}"
                oid = repo.write_stream(w, name, f"refs{n}/x" if n % 2 else None)
                model.streams[name] = (oid, {_digest(BLOBS[i]) for i in a}, named)
                if n % 2:
                    model.stream_refs[f"refs{n}/x"] = name
            elif kind == "image":
                assert isinstance(a, list)
                for i in a:
                    repo.ensure_object(BLOBS[i])
                data, objs = _image(a, n)
                oid = repo.write_image(f"i{n}" if n % 3 else None, data)
                model.images[oid] = objs
                if n % 3:
                    model.image_refs[f"i{n}"] = oid
            elif kind == "unref":
                assert isinstance(a, int)
                refs = sorted(model.stream_refs) + sorted(model.image_refs)
                if refs:
                    ref = refs[a % len(refs)]
                    if ref in model.stream_refs:
                        del model.stream_refs[ref]
                        repo.remove_stream_ref(ref)
                    else:
                        del model.image_refs[ref]
                        repo.remove_image_ref(ref)
            elif kind == "ref" and model.streams:
                assert isinstance(a, int)
                name = sorted(model.streams)[a % len(model.streams)]
                repo.name_stream(name, f"extra/{name}")
                model.stream_refs[f"extra/{name}"] = name
        roots = set()
        if extra_root and model.streams:
            roots.add(sorted(model.streams)[0])
        if extra_root and model.images:  # images are roots by their hex entry name
            roots.add(sorted(model.images)[0].hex())
        expected = model.live(roots)
        before = _on_disk(root)
        dry = gc(repo, roots, dry_run=True)
        assert _on_disk(root) == before
        result = gc(repo, roots)
        assert _on_disk(root) == expected
        assert (dry.objects_removed, dry.objects_bytes, dry.images_pruned,
                dry.streams_pruned) == (result.objects_removed, result.objects_bytes,
                                        result.images_pruned, result.streams_pruned)
        assert result.objects_removed == len(before - expected)
        check = fsck(repo)
        assert check.ok, check.errors
        assert gc(repo, roots).objects_removed == 0


def test_gc_refuses_dangling_ref_and_non_symlink(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with Repository.init(root, SHA256, insecure=True)[0] as repo:
        repo.ensure_object(b"x")
        repo.name_stream("does-not-exist", "dangling")
        with pytest.raises(GcError, match=r"GC: ref .*/streams/refs/dangling points at missing "
                                          "streams/does-not-exist; remove it"):
            gc(repo)
        assert _on_disk(root)  # nothing removed
        os.unlink(root / "streams/refs/dangling")
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / "plainfile").write_bytes(b"")
        with pytest.raises(GcError, match="non-symlink"):
            gc(repo)


@pytest.mark.parametrize("where", ["objects/ee", "streams/refs", "images/refs", "streams"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_never_reaches_outside_through_a_symlinked_directory(
        tmp_path: Path, where: str, dry_run: bool) -> None:
    """A symlinked directory in the repository would make a sweep delete files
    outside it: gc refuses before it deletes anything."""
    root, outside = tmp_path / "r", tmp_path / "outside"
    outside.mkdir()
    with Repository.init(root, SHA256, insecure=True)[0] as repo:
        unreferenced = repo.ensure_object(b"collect me")
        (outside / ("e" * 62)).write_bytes(b"not the repository's")
        os.symlink("../objects/aa/" + "b" * 62, outside / "ref")
        target = root / where
        if target.exists():
            os.rename(target, tmp_path / "moved")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside)
        before = _on_disk(root)
        with pytest.raises(GcError, match=f"{where} is a symlink, not a directory of the "
                                          "repository; refusing to collect"):
            gc(repo, dry_run=dry_run)
        assert sorted(p.name for p in outside.iterdir()) == ["e" * 62, "ref"]
        assert _on_disk(root) == before and unreferenced in before


_KILLED_IMPORT = r"""
import os, sys
from cfsboot.repository.repo import Repository
with Repository.open(sys.argv[1]) as repo:
    n = 0
    while True:
        w = repo.create_stream(0)
        for i in range(20):
            with repo.object_tmpfile() as t:
                t.write(os.urandom(2000 + i))
                oid = t.finalize().digest
            w.write_inline(b"hdr"); w.write_reference(oid); w.add_external_size(2000 + i)
        repo.write_stream(w, "layer%d" % n, "tag%d" % n)
        if n == 0:
            print("ready", flush=True)
        n += 1
"""


def test_gc_after_killed_import(tmp_path: Path) -> None:
    """A writer killed mid-import leaves unreferenced objects; GC removes exactly
    those and keeps every object of every tagged stream."""
    root = tmp_path / "r"
    Repository.init(root, SHA256, insecure=True)[0].close()
    p = subprocess.Popen([sys.executable, "-c", _KILLED_IMPORT, str(root)],
                         stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with Repository.open(root) as repo:
        tagged = {e.target.rsplit("/", 1)[-1] for e in repo.list_stream_refs()}
        keep: set[bytes] = set()
        for name in tagged:
            oid = repo.has_stream(name)
            assert oid is not None
            keep.add(oid)
            with repo.open_stream(name) as r:
                keep |= set(r.object_refs)
        result = gc(repo)
        assert _on_disk(root) == keep
        assert result.objects_removed >= 0
        assert fsck(repo).ok
        for name in tagged:  # every tagged stream still reconstructs
            out = bytearray()
            repo.cat(name, out.extend)
            assert len(out) == 20 * 3 + sum(2000 + i for i in range(20))


def test_gc_removes_stale_temporaries(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with Repository.init(root, SHA256, insecure=True)[0] as repo:
        repo.ensure_object(b"x")
        (root / "objects" / ".tmp-object-AAAAAAAAAAAA").write_bytes(b"partial")
        os.symlink("x", root / ".symlink-BBBBBBBBBBBB")
        assert gc(repo).tmpfiles_removed == 2
        assert not (root / "objects" / ".tmp-object-AAAAAAAAAAAA").exists()


# ---- fsck: each problem is reported precisely -------------------------------------------

def _populated(root: Path) -> tuple[Repository, dict[str, bytes]]:
    repo = Repository.init(root, SHA256, insecure=True)[0]
    ids = {}
    w = repo.create_stream(0)
    w.write_inline(b"a")
    w.write_external(BLOBS[1])
    w.add_named_stream_ref("img", repo.ensure_object(b"named target"))
    ids["stream"] = repo.write_stream(w, "s", "tag")
    ids["stream_obj"] = _digest(BLOBS[1])
    ids["named"] = _digest(b"named target")
    repo.ensure_object(BLOBS[2])
    data, _ = _image([2], 0)
    ids["image"] = repo.write_image("img", data)
    ids["image_obj"] = _digest(BLOBS[2])
    return repo, ids


def _objpath(root: Path, d: bytes) -> Path:
    return root / "objects" / d[:1].hex() / d[1:].hex()


def _errors(repo: Repository) -> list[str]:
    return fsck(repo).errors


def test_fsck_clean(tmp_path: Path) -> None:
    repo, _ = _populated(tmp_path / "r")
    with repo:
        result = fsck(repo)
        assert result.ok and result.objects_checked == 5
        assert (result.streams_checked, result.images_checked) == (1, 1)
        assert "status: ok" in result.report()


def test_fsck_object_digest_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo, ids = _populated(root)
    with repo:
        p = _objpath(root, ids["stream_obj"])
        data = bytearray(p.read_bytes())
        data[100] ^= 1
        p.write_bytes(bytes(data))
        errs = _errors(repo)
        assert errs == [f"fsck: object-digest-mismatch: objects/{ids['stream_obj'][:1].hex()}/"
                        f"{ids['stream_obj'][1:].hex()}: measured {_digest(bytes(data)).hex()}"]
        assert fsck(repo).objects_corrupted == 1


def test_fsck_missing_objects(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo, ids = _populated(root)
    with repo:
        for k in ("stream_obj", "named", "image_obj"):
            _objpath(root, ids[k]).unlink()
        result = fsck(repo)
        assert sorted(result.errors) == sorted([
            f"fsck: missing-object-ref: streams/s: {ids['stream_obj'].hex()}",
            f"fsck: missing-named-ref: streams/s: ref img: {ids['named'].hex()}",
            f"fsck: image-missing-object: images/{ids['image'].hex()}: "
            f"{ids['image_obj'].hex()}",
        ])
        assert result.missing_objects == 3
        assert "missing objects: 3" in result.report()


def test_fsck_broken_and_bad_entries(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo, ids = _populated(root)
    with repo:
        _objpath(root, ids["stream"]).unlink()
        (root / "images" / "junk").write_bytes(b"")
        (root / "streams/refs/odd").write_bytes(b"")
        (root / "objects" / "ab").mkdir(exist_ok=True)
        (root / "objects" / "ab" / "short").write_bytes(b"")
        errs = _errors(repo)
        assert "fsck: broken-symlink: streams/s" in errs
        assert "fsck: broken-symlink: streams/refs/tag" in errs
        assert "fsck: entry-not-symlink: images/junk" in errs
        assert any(e.startswith("fsck: unexpected-file-type: streams/refs/odd") for e in errs)
        assert any(e.startswith("fsck: object-invalid-name: objects/ab/short") for e in errs)
        assert len(errs) == 5


def test_fsck_corrupt_stream_and_image(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo, ids = _populated(root)
    with repo:
        for key in ("stream", "image"):
            p = _objpath(root, ids[key])
            p.write_bytes(b"garbage" + p.read_bytes()[7:])
        errs = _errors(repo)
        kinds = sorted(e.split(":")[1].strip() for e in errs)
        assert kinds == ["image-invalid", "object-digest-mismatch", "object-digest-mismatch",
                         "stream-open-failed"]


def test_fsck_metadata(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo, _ = _populated(root)
    with repo:
        (root / "meta.json").write_text('{"version":1,"algorithm":"fsverity-sha512-12"}')
        assert _errors(repo) == ["fsck: metadata-algorithm-mismatch: meta.json: expected "
                                 "fsverity-sha512-12, repository opened as sha256"]
        (root / "meta.json").write_text("{")
        assert _errors(repo)[0].startswith("fsck: metadata-parse-failed: meta.json:")
        assert "meta.json: error" in fsck(repo).report()


def test_gc_waits_for_other_handles(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "r"
    Repository.init(root, SHA256, insecure=True)[0].close()
    writer = Repository.open(root)  # another handle: holds LOCK_SH
    waited = threading.Event()
    done: list[int] = []

    def run_gc() -> None:
        with Repository.open(root) as repo:
            done.append(gc(repo, on_wait=waited.set).objects_removed)

    t = threading.Thread(target=run_gc)
    t.start()
    assert waited.wait(10)
    time.sleep(0.2)
    assert not done  # still blocked by the writer's shared lock
    writer.ensure_object(b"written while GC waits, then referenced")
    writer.close()
    t.join(10)
    assert done == [1]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deleted=st.sets(st.sampled_from(["B0", "B1", "B2", "B3", "S1", "S2", "I1", "I2"])))
def test_fsck_reports_exactly_the_deleted_objects(tmp_path_factory: pytest.TempPathFactory,
                                                  deleted: set[str]) -> None:
    root = tmp_path_factory.mktemp("fsck") / "r"
    ids: dict[str, bytes] = {f"B{i}": _digest(BLOBS[i]) for i in range(4)}
    with Repository.init(root, SHA256, insecure=True)[0] as repo:
        for i in range(4):
            repo.ensure_object(BLOBS[i])
        ids["I1"] = repo.write_image("i1", _image([2, 3], 1)[0])
        ids["I2"] = repo.write_image(None, _image([0], 2)[0])
        w = repo.create_stream(0)
        w.write_external(BLOBS[0])
        w.write_external(BLOBS[1])
        w.add_named_stream_ref("img", ids["I1"])
        ids["S1"] = repo.write_stream(w, "s1", "tag1")
        w = repo.create_stream(0)
        w.write_external(BLOBS[1])
        w.write_external(BLOBS[2])
        w.add_named_stream_ref("s1", ids["S1"])
        ids["S2"] = repo.write_stream(w, "s2", "tag2")
        for key in deleted:
            _objpath(root, ids[key]).unlink()
        expected: set[str] = set()
        h = {k: v.hex() for k, v in ids.items()}
        streams = {"s1": ("S1", "tag1", ["B0", "B1"], ("img", "I1")),
                   "s2": ("S2", "tag2", ["B1", "B2"], ("s1", "S1"))}
        for name, (key, tag, objs, (ref, target)) in streams.items():
            if key in deleted:
                expected |= {f"fsck: broken-symlink: streams/{name}",
                             f"fsck: broken-symlink: streams/refs/{tag}"}
                continue
            expected |= {f"fsck: missing-object-ref: streams/{name}: {h[o]}"
                         for o in objs if o in deleted}
            if target in deleted:
                expected.add(f"fsck: missing-named-ref: streams/{name}: ref {ref}: {h[target]}")
        for key, objs, ref in (("I1", ["B2", "B3"], "i1"), ("I2", ["B0"], None)):
            if key in deleted:
                expected.add(f"fsck: broken-symlink: images/{h[key]}")
                if ref:
                    expected.add(f"fsck: broken-symlink: images/refs/{ref}")
                continue
            expected |= {f"fsck: image-missing-object: images/{h[key]}: {h[o]}"
                         for o in objs if o in deleted}
        result = fsck(repo)
        assert set(result.errors) == expected
        assert len(result.errors) == len(expected)
        assert result.objects_checked == 8 - len(deleted)
        assert result.ok == (not deleted)
