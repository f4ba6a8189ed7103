"""Image references, digests, tag encoding (oci-import.md §2, §4.1, §4.2) and
the merge rules for entries within one layer (§7.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.oci.layers import MergeError, TarEntry, apply_entry, new_root
from cfsboot.oci.reference import (
    ReferenceError,
    decode_tag,
    encode_tag,
    parse_digest,
    parse_image_ref,
    split_layout_tag,
)
from cfsboot.oci.tarheader import Member
from cfsboot.tree.model import Directory, Inline, Leaf


def test_parse_image_ref() -> None:
    r = parse_image_ref("docker://quay.io/fedora/fedora:42")
    assert (r.transport, r.details) == ("docker", "//quay.io/fedora/fedora:42")
    assert parse_image_ref("oci-archive:/x.tar:tag").transport == "oci-archive"
    for bad in ("docker:foo", "nope:x", "justaname", "oci:"):
        with pytest.raises(ReferenceError):
            parse_image_ref(bad)


@pytest.mark.parametrize(("details", "expected"), [
    ("/a/b", ("/a/b", None)),
    ("/a/b:tag", ("/a/b", "tag")),
    ("/a:b/c", ("/a:b/c", None)),
    ("/a/oci:", ("/a/oci", "")),
    ("oci:tag:with:colons", ("oci:tag:with", "colons")),
])
def test_split_layout_tag(details: str, expected: tuple[str, str | None]) -> None:
    assert split_layout_tag(details) == expected


def test_encode_tag_examples() -> None:
    assert encode_tag("docker://quay.io/a/b:1") == "docker:%2F%2Fquay.io%2Fa%2Fb:1"
    assert encode_tag("50%/x") == "50%25%2Fx"
    assert decode_tag("a%2Fb%25c%41") == "a/b%c%41"
    with pytest.raises(ReferenceError):
        encode_tag("@sha256:00")


@settings(max_examples=200)
@given(st.text(min_size=1).filter(lambda s: not s.startswith("@") and "\0" not in s))
def test_tag_roundtrip(name: str) -> None:
    enc = encode_tag(name)
    assert "/" not in enc and decode_tag(enc) == name


def test_parse_digest() -> None:
    d = "sha256:" + "a" * 64
    assert parse_digest(d) == d
    for bad in ("sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32, "sha256:" + "a" * 64 + "\n"):
        with pytest.raises(ReferenceError):
            parse_digest(bad)


def entry(path: bytes, kind: bytes = b"0", data: bytes = b"", link: bytes = b"") -> TarEntry:
    m = Member(kind[0], path, link, 0o644, 0, 0, 0, 0, len(data), 0, 0)
    return TarEntry(b"/" + path.lstrip(b"/"), m, data if kind == b"0" else None)


def test_duplicate_entries_in_one_layer_last_wins() -> None:
    root = new_root()
    apply_entry(root, entry(b"usr", b"5"))
    apply_entry(root, entry(b"usr/f", data=b"one"))
    apply_entry(root, entry(b"usr/g", b"1", link=b"usr/f"))
    apply_entry(root, entry(b"usr/f", data=b"two"))
    f, g = root.get_path(b"/usr/f"), root.get_path(b"/usr/g")
    assert isinstance(f, Leaf) and f.content == Inline(b"two")
    assert isinstance(g, Leaf) and g.content == Inline(b"one") and g is not f
    apply_entry(root, entry(b"usr/d", b"5"))
    apply_entry(root, entry(b"usr/d/x", data=b"x"))
    apply_entry(root, entry(b"usr/d", b"5"))  # dir over dir keeps children
    d = root.get_path(b"/usr/d")
    assert isinstance(d, Directory) and list(d.entries) == [b"x"]
    apply_entry(root, entry(b"usr/d", data=b"file"))  # file over dir drops it
    assert isinstance(root.get_path(b"/usr/d"), Leaf)


def test_opaque_marker_clears_earlier_siblings_only() -> None:
    root = new_root()
    apply_entry(root, entry(b"usr", b"5"))
    apply_entry(root, entry(b"usr/a", data=b"a"))
    apply_entry(root, entry(b"usr/.wh..wh..opq"))
    apply_entry(root, entry(b"usr/b", data=b"b"))
    usr = root.get_path(b"/usr")
    assert isinstance(usr, Directory) and list(usr.entries) == [b"b"]


def test_dot_components_and_dotdot() -> None:
    root = new_root()
    apply_entry(root, entry(b"./usr/", b"5"))
    apply_entry(root, entry(b"./usr/./f", data=b"x"))
    assert isinstance(root.get_path(b"/usr/f"), Leaf)
    with pytest.raises(MergeError, match="Invalid filename"):
        apply_entry(root, entry(b"usr/..", b"5"))
