"""The EROFS reader against the public vectors (every image, not a sample).

Independent references: the composefs-rs vector set (its input dumpfiles and
the images composefs-rs wrote from them), the C mkcomposefs vectors, and the
worked example of spec/erofs-image.md 8.3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RS_VECTORS, VECTORS, need_vectors

from cfsboot.erofs.fsck import check_image
from cfsboot.erofs.reader import (
    ErofsError,
    ImageInfo,
    image_info,
    list_objects,
    read_erofs,
)
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Socket,
    Symlink,
    walk,
)

C_IMAGES = sorted(VECTORS.glob("*.cfs"))
RS_IMAGES = sorted(RS_VECTORS.glob("*.erofs"))
ALL_IMAGES = C_IMAGES + RS_IMAGES


def _rs_cases() -> list[dict[str, object]]:
    path = RS_VECTORS / "vectors.json"
    if not path.exists():
        return []
    cases: list[dict[str, object]] = json.loads(path.read_text())["cases"]
    return cases


RS_CASES = _rs_cases()


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_vector_sets_present() -> None:
    need_vectors()
    assert len(C_IMAGES) >= 20
    assert len(RS_IMAGES) == len(RS_CASES) == 18


@pytest.mark.parametrize("path", ALL_IMAGES, ids=_ids(ALL_IMAGES))
def test_every_vector_reads_and_passes_fsck(path: Path) -> None:
    data = path.read_bytes()
    root = read_erofs(data)
    assert isinstance(root, Directory)
    assert check_image(data) == []
    # memoryview input works the same
    assert len(list(walk(read_erofs(memoryview(data))))) == len(list(walk(root)))


@pytest.mark.parametrize("case", RS_CASES, ids=[str(c["image"]) for c in RS_CASES])
def test_rs_vector_header_info(case: dict[str, object]) -> None:
    data = (RS_VECTORS / str(case["image"])).read_bytes()
    info = image_info(data)
    assert isinstance(info, ImageInfo)
    assert info.composefs_version == case["erofs_format"]
    assert info.epoch == (2 if case["erofs_format"] == 2 else 1)
    assert info.blocks * 4096 == len(data) == case["image_size"]
    assert info.root_nid == 36


@pytest.mark.parametrize("case", RS_CASES, ids=[str(c["image"]) for c in RS_CASES])
def test_rs_vector_matches_its_dumpfile(case: dict[str, object]) -> None:
    """write_dumpfile(read_erofs(image)) == write_dumpfile(parse_dumpfile(input)).

    Section 10 differences do not arise in this set: its inputs carry no
    ExternalNoVerity files, no user xattrs named trusted.overlay.{opaque,...},
    and compact-inode mtimes equal the minimum by construction.
    """
    dumpfile = pytest.importorskip("cfsboot.tree.dumpfile")
    data = (RS_VECTORS / str(case["image"])).read_bytes()
    source = (RS_VECTORS / str(case["input"])).read_bytes()
    expected = dumpfile.write_dumpfile(dumpfile.parse_dumpfile(source, flavor="rs"))
    assert dumpfile.write_dumpfile(read_erofs(data)) == expected


@pytest.mark.parametrize("case", RS_CASES, ids=[str(c["image"]) for c in RS_CASES])
def test_rs_vector_rewrites_byte_identical(case: dict[str, object]) -> None:
    writer = pytest.importorskip("cfsboot.erofs.writer")
    data = (RS_VECTORS / str(case["image"])).read_bytes()
    version = case["erofs_format"]
    assert isinstance(version, int)
    assert writer.mkfs_erofs(read_erofs(data), version) == data


@pytest.mark.parametrize("version", [0, 1, 2])
def test_simple_tree_contents(version: int) -> None:
    """spec 8.3: the upstream "simple" tree, checked field by field."""
    data = (RS_VECTORS / f"simple.sha256.v{version}.erofs").read_bytes()
    root = read_erofs(data)
    assert sorted(root.entries) == [b"blkdev", b"chrdev", b"fifo", b"regular-external",
                                    b"regular-inline", b"socket", b"symlink"]
    assert root.stat.mode == 0o755 and root.stat.xattrs == {}  # opaque=y dropped

    def leaf(name: bytes) -> Leaf:
        node = root.entries[name]
        assert isinstance(node, Leaf)
        assert (node.stat.mode, node.stat.uid, node.stat.gid) == (0, 0, 0)
        assert (node.stat.mtime_sec, node.stat.mtime_nsec) == (0, 0)
        assert node.stat.xattrs == {}  # metacopy/redirect dropped
        return node

    assert leaf(b"blkdev").content == BlockDevice(123)
    assert leaf(b"chrdev").content == CharDevice(123)
    assert leaf(b"fifo").content == Fifo()
    assert leaf(b"socket").content == Socket()
    assert leaf(b"symlink").content == Symlink(b"/target")
    assert leaf(b"regular-inline").content == Inline(b"hihi")
    digest = b"\x5a" * 32
    assert leaf(b"regular-external").content == External(1234, b"5a/" + b"5a" * 31, digest)
    assert list_objects(data) == [b"5a/" + b"5a" * 31]


@pytest.mark.parametrize("version", [0, 1, 2])
def test_empty_tree(version: int) -> None:
    data = (RS_VECTORS / f"empty.sha512.v{version}.erofs").read_bytes()
    root = read_erofs(data)
    assert root.entries == {}  # the 256 whiteout stubs of V0/V1 are dropped
    assert list_objects(data) == []
    info = image_info(data)
    assert info.inos == (257 if version < 2 else 1)


def test_c_special_vector_semantics() -> None:
    """C mkcomposefs special.dump (V1): escaped whiteout and xattr escaping undone."""
    root = read_erofs((VECTORS / "special.dump.v1.cfs").read_bytes())
    whiteout = root.entries[b"whiteout"]
    assert isinstance(whiteout, Leaf)
    assert whiteout.content == CharDevice(0)
    assert whiteout.stat.xattrs == {b"trusted.foo": b"bar-2"}
    escaped = root.entries[b"escaped-xattr"]
    assert isinstance(escaped, Leaf)
    assert escaped.stat.xattrs == {b"trusted.overlay.redirect": b"/foo\n",
                                   b"user.overlay.redirect": b"/foo\n",
                                   b"user.foo": b"bar-2"}
    assert escaped.content == Inline(b"")
    assert root.stat.xattrs == {b"trusted.foo1": b"bar-1", b"user.foo2": b"bar-2"}
    large = root.entries[b"inline-large3"]
    assert isinstance(large, Leaf) and isinstance(large.content, Inline)
    assert len(large.content.data) == 4097
    assert large.stat.mtime_sec == 1665486376  # an extended inode's own mtime
    assert whiteout.stat.mtime_sec == 1633950376  # compact: the build time


def test_rs_special_external_paths() -> None:
    data = (RS_VECTORS / "special-sha512.sha512.v1.erofs").read_bytes()
    root = read_erofs(data)
    ext = root.entries[b"external"]
    assert isinstance(ext, Leaf) and isinstance(ext.content, External)
    assert ext.content.size == 42 and ext.content.digest is not None
    assert len(ext.content.digest) == 64
    assert ext.content.path == b"70/" + ext.content.digest[1:].hex().encode()
    assert list_objects(data) == [ext.content.path]


def test_hard_links_are_one_leaf() -> None:
    writer = pytest.importorskip("cfsboot.erofs.writer")
    from cfsboot.tree.model import Stat

    shared = Leaf(Stat(0o644, 0, 0, 5, 0), Inline(b"data"))
    sub = Directory(Stat(0o755, 0, 0, 5, 0), {b"b": shared})
    root = Directory(Stat(0o755, 0, 0, 5, 0), {b"a": shared, b"sub": sub})
    for version in (0, 1, 2):
        back = read_erofs(writer.mkfs_erofs(root, version))
        a = back.entries[b"a"]
        sub_back = back.entries[b"sub"]
        assert isinstance(sub_back, Directory)
        assert a is sub_back.entries[b"b"]


def test_not_an_image() -> None:
    with pytest.raises(ErofsError, match="too small"):
        read_erofs(b"")
    with pytest.raises(ErofsError, match="composefs magic"):
        read_erofs(b"\0" * 8192)
    assert check_image(b"\0" * 8192)[0].startswith("bad composefs magic")


def _c_cases() -> list[dict[str, object]]:
    path = VECTORS / "vectors.json"
    if not path.exists():
        return []
    return [c for c in json.loads(path.read_text())["cases"] if "image" in c]


C_CASES = _c_cases()


@pytest.mark.parametrize("case", C_CASES, ids=[str(c["image"]) for c in C_CASES])
def test_c_vector_matches_its_dumpfile_and_rewrites(case: dict[str, object]) -> None:
    """C mkcomposefs images: the decoded tree equals the C-flavour parse of the
    input, and the C-compatible writer reproduces the image byte for byte."""
    import gzip

    dumpfile = pytest.importorskip("cfsboot.tree.dumpfile")
    writer = pytest.importorskip("cfsboot.erofs.writer")
    data = (VECTORS / str(case["image"])).read_bytes()
    source = (VECTORS / str(case["input"])).read_bytes()
    if str(case["input"]).endswith(".gz"):
        source = gzip.decompress(source)
    tree = read_erofs(data)
    expected = dumpfile.write_dumpfile(dumpfile.parse_dumpfile(source, flavor="c"))
    assert dumpfile.write_dumpfile(tree) == expected
    version = case["composefs_version"]
    assert writer.mkfs_erofs(tree, version, c_compat=True) == data


# ---- write -> read round trips of random trees ---------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cfsboot.tree.model import Sparse, Stat  # noqa: E402

_RESERVED = {b"trusted.overlay.opaque", b"trusted.overlay.whiteout",
             b"trusted.overlay.whiteouts", b"user.overlay.opaque",
             b"user.overlay.whiteout", b"user.overlay.whiteouts"}
_names = st.builds(lambda a, b: a + b, st.sampled_from([b"g", b"q", b"z", b"-x", b"\xff"]),
                   st.binary(max_size=6).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"0")))
_xattr_names = st.builds(lambda p, s: p + s,
                         st.sampled_from([b"user.", b"trusted.", b"trusted.overlay.",
                                          b"security.", b"system.posix_acl_access", b"lustre."]),
                         st.binary(min_size=1, max_size=8).map(lambda b: b.replace(b"\0", b"0")))
_xattrs = st.dictionaries(_xattr_names.filter(lambda n: n not in _RESERVED),
                          st.binary(max_size=40), max_size=3)
_stats = st.builds(Stat, st.integers(0, 0o7777), st.sampled_from([0, 1, 70000]),
                   st.sampled_from([0, 5, 1 << 31]),
                   st.sampled_from([0, 1_700_000_000, -5, 1 << 33]),
                   st.sampled_from([0, 999_999_999]), _xattrs)
_contents = st.one_of(
    st.binary(max_size=300).map(Inline),
    st.builds(External.from_digest, st.binary(min_size=32, max_size=32) | st.binary(
        min_size=64, max_size=64), st.integers(0, 1 << 40)),
    st.integers(0, 1 << 40).map(Sparse),
    st.binary(min_size=1, max_size=200).map(lambda b: Symlink(b.replace(b"\0", b"."))),
    st.integers(0, 1 << 20).map(CharDevice), st.integers(1, 1 << 20).map(BlockDevice),
    st.just(Fifo()), st.just(Socket()))
_leaves = st.builds(Leaf, _stats, _contents)
_trees = st.recursive(
    _leaves,
    lambda children: st.builds(Directory, _stats, st.dictionaries(_names, children, max_size=6)),
    max_leaves=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_names, _trees, max_size=6), _stats, st.sampled_from([0, 1, 2]),
       st.data())
def test_random_tree_round_trip(entries: dict[bytes, Directory | Leaf], root_stat: Stat,
                                version: int, data: st.DataObject) -> None:
    """read_erofs(mkfs_erofs(tree)) == tree, with hard links added at random."""
    dumpfile = pytest.importorskip("cfsboot.tree.dumpfile")
    writer = pytest.importorskip("cfsboot.erofs.writer")
    root = Directory(root_stat, entries)
    dirs = [n for _, n in walk(root) if isinstance(n, Directory)]
    leaves = [n for _, n in walk(root) if isinstance(n, Leaf) and n.content != CharDevice(0)]
    if leaves:
        for i in range(data.draw(st.integers(0, 3))):
            target = data.draw(st.sampled_from(dirs))
            target.entries[b"hl%d" % i] = data.draw(st.sampled_from(leaves))
    if version == 2:
        for _, node in walk(root):
            node.stat.mtime_nsec = 0  # V2 does not store nanoseconds
    image = writer.mkfs_erofs(root, version)
    back = read_erofs(image)
    assert dumpfile.write_dumpfile(back) == dumpfile.write_dumpfile(root)
    assert check_image(image) == []
    assert writer.mkfs_erofs(back, version) == image
