"""Every public vector dumpfile through both parser flavours and the writer.

References: vectors.json (which inputs C mkcomposefs rejects, which only its
lenient parser accepts), the composefs-rs vector set and trees/sample-root.dump
(written by composefs-rs ``write_dumpfile``), and the tree facts below, read
from the upstream sources and the inputs by hand.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import RS_VECTORS, TREE_VECTORS, VECTORS, load_json, need_vectors
from strategies import canonical_tree

from cfsboot.tree.dumpfile import DumpfileError, parse_dumpfile, write_dumpfile
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Inline,
    Leaf,
    Sparse,
    Symlink,
    walk,
)

ONE_LINE_ERROR = re.compile(r"line [1-9][0-9]*: [^\n]+")


def _cases() -> list[dict[str, Any]]:
    if not (VECTORS / "vectors.json").exists():
        return []
    cases: list[dict[str, Any]] = load_json(VECTORS / "vectors.json")["cases"]
    return cases


def _inputs() -> dict[str, dict[str, Any]]:
    """One entry per distinct input, with must_fail / lenient_parse_only."""
    out: dict[str, dict[str, Any]] = {}
    for c in _cases():
        e = out.setdefault(c["input"], {})
        e["must_fail"] = e.get("must_fail", False) or c.get("must_fail", False)
        e["lenient"] = e.get("lenient", False) or c.get("lenient_parse_only", False)
    return out


INPUTS = _inputs()
GOOD = sorted(k for k, v in INPUTS.items() if not v["must_fail"])
BAD = sorted(k for k, v in INPUTS.items() if v["must_fail"])

# Which accepted C inputs composefs-rs also accepts (spec §4.1), and why not.
RS_REJECTS = {
    "longlink.dump": "symlink target > 1024",
    "honggfuzz-long-symlink.dump": "symlink target > 1024",
    "honggfuzz-longlink-unterminated.dump": "line with 9 fields",
    "no-newline.dump": "RDEV on a directory",
    "special.dump": "inline content > 512",
}

# composefs-rs vector dumps that are exactly what its write_dumpfile emits.
RS_CANONICAL = {"empty.dump", "simple.dump", "special-sha512.dump"}


def read_input(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def test_vectors_present() -> None:
    need_vectors()
    assert GOOD and BAD


def test_every_dump_file_is_a_case() -> None:
    need_vectors()
    files = {p.name for p in VECTORS.iterdir() if ".dump" in p.name and not p.name.endswith(
        (".cfs", ".erofs"))}
    assert files == set(INPUTS)
    assert set(RS_REJECTS) <= set(GOOD)


def check_error(e: DumpfileError) -> None:
    assert ONE_LINE_ERROR.fullmatch(str(e)), str(e)


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize(("flavor", "strict"), [("rs", False), ("c", False), ("c", True)])
def test_should_fail(name: str, flavor: Any, strict: bool) -> None:
    with pytest.raises(DumpfileError) as e:
        parse_dumpfile(read_input(VECTORS / name), flavor=flavor, strict=strict)
    check_error(e.value)


@pytest.mark.parametrize("name", GOOD)
def test_c_accepts(name: str) -> None:
    data = read_input(VECTORS / name)
    tree = parse_dumpfile(data, flavor="c")
    assert isinstance(tree, Directory)
    if INPUTS[name]["lenient"]:
        with pytest.raises(DumpfileError) as e:
            parse_dumpfile(data, flavor="c", strict=True)
        check_error(e.value)
    else:
        strict = parse_dumpfile(data, flavor="c", strict=True)
        assert canonical_tree(strict, with_nlink=True) == canonical_tree(tree, with_nlink=True)
    for _, node in walk(tree):
        if isinstance(node, Leaf):
            assert node.nlink is not None


@pytest.mark.parametrize("name", GOOD)
def test_rs_flavor(name: str) -> None:
    data = read_input(VECTORS / name)
    if name in RS_REJECTS:
        with pytest.raises(DumpfileError) as e:
            parse_dumpfile(data)
        check_error(e.value)
        return
    tree = parse_dumpfile(data)
    for _, node in walk(tree):
        if isinstance(node, Leaf):
            assert node.nlink is None
    # the same tree as C's, apart from Leaf.nlink
    assert canonical_tree(tree) == canonical_tree(parse_dumpfile(data, flavor="c"))


@pytest.mark.parametrize("name", GOOD)
def test_c_tree_survives_write(name: str) -> None:
    """write_dumpfile keeps everything a C tree holds (C reads it back)."""
    tree = parse_dumpfile(read_input(VECTORS / name), flavor="c")
    text = write_dumpfile(tree)
    again = parse_dumpfile(text, flavor="c", strict=True)
    assert canonical_tree(again) == canonical_tree(tree)
    assert write_dumpfile(again) == text


def _rs_dumps() -> list[Path]:
    if not RS_VECTORS.exists():
        return []
    return [*sorted(RS_VECTORS.glob("*.dump")), TREE_VECTORS / "sample-root.dump"]


@pytest.mark.parametrize("path", _rs_dumps(), ids=lambda p: p.name)
def test_rs_vectors(path: Path) -> None:
    data = path.read_bytes()
    tree = parse_dumpfile(data)
    text = write_dumpfile(tree)
    if path.name in RS_CANONICAL or path.name == "sample-root.dump":
        assert text == data
    else:
        assert text != data
    # writing is a fixed point after one round
    assert write_dumpfile(parse_dumpfile(text)) == text
    assert canonical_tree(parse_dumpfile(text)) == canonical_tree(tree)


def test_rs_canonical_list_is_complete() -> None:
    """special_v1.dump is the only non-canonical one (root SIZE 4096, xattr order)."""
    if not RS_VECTORS.exists():
        pytest.skip("no composefs-rs vectors")
    names = {p.name for p in RS_VECTORS.glob("*.dump")}
    assert names == RS_CANONICAL | {"special_v1.dump"}


# ---- facts about particular vectors ------------------------------------------

def _c(name: str) -> Directory:
    need_vectors()
    return parse_dumpfile(read_input(VECTORS / name), flavor="c")


def _leaf(root: Directory, path: bytes) -> Leaf:
    node = root.get_path(path)
    assert isinstance(node, Leaf)
    return node


def test_fact_mode_high_bits_make_a_symlink() -> None:
    # MODE 20720777: bit 15 is part of S_IFMT, so the type is 0o120000.
    leaf = _leaf(_c("honggfuzz-longlink-unterminated.dump"), b"/chardev")
    assert leaf.content == Symlink(b"a" * 4095)
    assert leaf.stat.mode == 0o777 and leaf.nlink == 1


def test_fact_special_dump() -> None:
    root = _c("special.dump")
    assert root.stat.mode == 0o555 and root.stat.mtime_sec == 1633950376
    assert root.stat.xattrs == {b"trusted.foo1": b"bar-1", b"user.foo2": b"bar-2"}
    assert _leaf(root, b"/blockdev").content == BlockDevice(107690)
    assert _leaf(root, b"/chardev").content == CharDevice(10769)
    assert _leaf(root, b"/whiteout").content == CharDevice(0)
    assert _leaf(root, b"/inline").content == Inline(b"FOOBAR\nINAFILE\n")
    for name, size in [(b"/inline-large1", 4095), (b"/inline-large2", 4096),
                       (b"/inline-large3", 4097)]:
        content = _leaf(root, name).content
        assert isinstance(content, Inline) and len(content.data) == size
    assert _leaf(root, b"/escaped-xattr").stat.xattrs == {
        b"trusted.overlay.redirect": b"/foo\n", b"user.overlay.redirect": b"/foo\n",
        b"user.foo": b"bar-2"}


def test_fact_sizes_without_data() -> None:
    assert _leaf(_c("bigfile.dump"), b"/bigfile").content == Sparse(9000000000000000)
    acl = _leaf(_c("honggfuzz-bigfile-with-acl.dump"), b"/something-with-acls-and-overlay")
    assert acl.content == Sparse(8960932074941261)
    assert acl.stat.xattrs == {b"system.posix_acl_default": b"x", b"user.foo": b"xxxxxx"}
    assert _leaf(_c("bigfile-xattr.dump"), b"/bigfile").stat.xattrs == {b"user.foo": b""}
    # rdev 0 makes it a whiteout; C keeps the device's SIZE (its writer zeroes it)
    dev = _leaf(_c("honggfuzz-chardev-nonzero-size.dump"), b"/chardev")
    assert dev.content == CharDevice(0) and dev.c_size == 1


def test_fact_external_digest() -> None:
    root = _c("composefs-rs-special.dump")
    hexd = "70a9125438f7255245f596c54cebb6621cb9a64f062752cf26763c1b690e7340"
    assert _leaf(root, b"/external").content == External.from_digest(bytes.fromhex(hexd), 42)
    rs = parse_dumpfile((VECTORS / "composefs-rs-special.dump").read_bytes())
    assert _leaf(rs, b"/external").content == External.from_digest(bytes.fromhex(hexd), 42)


def test_fact_sha512_external() -> None:
    need_vectors()
    root = parse_dumpfile((RS_VECTORS / "special-sha512.dump").read_bytes())
    content = _leaf(root, b"/external").content
    assert isinstance(content, External) and content.digest is not None
    assert len(content.digest) == 64 and content.size == 42
    # C mkcomposefs only knows SHA-256: it keeps the first 32 bytes
    c = parse_dumpfile((RS_VECTORS / "special-sha512.dump").read_bytes(), flavor="c")
    assert _leaf(c, b"/external").content == External(42, content.path, content.digest[:32])


def test_fact_sample_root_hard_link() -> None:
    need_vectors()
    root = parse_dumpfile((TREE_VECTORS / "sample-root.dump").read_bytes())
    a, b = root.get_path(b"/usr/bin/tool"), root.get_path(b"/usr/bin/tool-alias")
    assert isinstance(a, Leaf) and a is b
