"""FlatDigestStore (``DIR/xx/rest`` like C mkcomposefs --digest-store) fed by a scan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_scan import fsverity_tool

from cfsboot.tree.digest_store import FlatDigestStore
from cfsboot.tree.model import External, object_path, walk
from cfsboot.tree.scan import ScanOptions, scan_directory


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a": b"A" * 100,
        "b": b"B" * 70_000,
        "dup": b"A" * 100,          # same content as "a": one object
        "sub/c": bytes(range(256)) * 1000,
        "sub/small": b"inline",
        "sub/empty": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def stored_objects(store: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(store):
        for name in names:
            full = Path(dirpath) / name
            out[str(full.relative_to(store))] = full.read_bytes()
    return out


@pytest.mark.parametrize("use_tmpfile", [True, False])
def test_scan_copies_objects_into_store(tmp_path: Path, use_tmpfile: bool) -> None:
    src, store_dir = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    files = make_tree(src)
    store = FlatDigestStore(str(store_dir), use_tmpfile=use_tmpfile)
    result = scan_directory(str(src), ScanOptions(sink=store, threads=2, bufsize=4096))

    big = ["a", "b", "sub/c"]
    tool = fsverity_tool([src / rel for rel in big])
    expected = {object_path(tool[src / rel]).decode(): files[rel] for rel in big}
    assert stored_objects(store_dir) == expected  # no temporaries, no inline files
    for rel in big:
        assert store.contains(tool[src / rel])
    mode = os.stat(store_dir / next(iter(expected))).st_mode & 0o777
    assert mode == 0o644
    for _path, node in walk(result.root):
        content = getattr(node, "content", None)
        if isinstance(content, External):
            assert content.path.decode() in expected


def test_existing_object_is_kept(tmp_path: Path) -> None:
    src, store_dir = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    make_tree(src)
    scan_directory(str(src), ScanOptions(sink=FlatDigestStore(str(store_dir))))
    before = {p: os.stat(store_dir / p).st_ino for p in stored_objects(store_dir)}
    scan_directory(str(src), ScanOptions(sink=FlatDigestStore(str(store_dir))))
    after = {p: os.stat(store_dir / p).st_ino for p in stored_objects(store_dir)}
    assert before == after  # nothing replaced, nothing left over


def test_failed_hash_leaves_no_object(tmp_path: Path) -> None:
    src, store_dir = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    (src / "f").write_bytes(b"f" * 5000)
    store = FlatDigestStore(str(store_dir), use_tmpfile=False)
    pending = store.begin(5000)
    pending.write(b"partial")
    pending.abort()
    assert stored_objects(store_dir) == {}


def test_store_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    from cfsboot.errors import CfsError
    with pytest.raises(CfsError, match="digest store"):
        FlatDigestStore(str(tmp_path / "file"))


@pytest.mark.parametrize("use_tmpfile", [True, False])
def test_read_error_mid_file_leaves_nothing(tmp_path: Path, use_tmpfile: bool) -> None:
    from cfsboot.errors import CfsError
    from cfsboot.tree import scan as scan_mod

    src, store_dir = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    (src / "f").write_bytes(b"f" * 5000)

    def half_then_eio(fd: int, alg: str, *, sink: object = None, **kw: object) -> None:
        assert callable(sink)
        sink(memoryview(b"f" * 2500))
        raise OSError(5, "Input/output error")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_mod, "digest_fd", half_then_eio)
        with pytest.raises(CfsError, match="Input/output error"):
            scan_directory(str(src), ScanOptions(
                sink=FlatDigestStore(str(store_dir), use_tmpfile=use_tmpfile)))
    assert stored_objects(store_dir) == {}


def test_verity_is_enabled_where_possible(tmp_path: Path) -> None:
    from cfsboot.fsverity import measure_verity

    src, store_dir = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    make_tree(src)
    store = FlatDigestStore(str(store_dir))
    result = scan_directory(str(src), ScanOptions(sink=store))
    assert len(stored_objects(store_dir)) == 3
    if not store.try_verity:
        return  # no fs-verity on this filesystem: asked once, objects stored anyway
    for digest in result.sources:
        fd = os.open(store.path_of(digest), os.O_RDONLY)
        try:
            assert measure_verity(fd) == ("sha512", digest)
        finally:
            os.close(fd)
