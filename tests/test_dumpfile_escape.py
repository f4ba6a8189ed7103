"""Dumpfile escaping (spec dumpfile.md §3), both directions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.errors import CfsError
from cfsboot.tree.dumpfile import (
    EscapeError,
    escape_field,
    escape_optional,
    unescape,
    unescape_optional,
)


@pytest.mark.parametrize(("raw", "encoded"), [
    (b"\\", b"\\\\"),
    (b"\n", b"\\n"),
    (b"\r", b"\\r"),
    (b"\t", b"\\t"),
    (b" ", b"\\x20"),
    (b"\0", b"\\x00"),
    (b"\x7f", b"\\x7f"),
    (b"\x80\xff", b"\\x80\\xff"),
    (b"\x1b", b"\\x1b"),
    ("é".encode(), b"\\xc3\\xa9"),
    (b"=", b"="),                        # '=' is literal outside xattrs
    (b"!~azAZ09/.-_@", b"!~azAZ09/.-_@"),  # 0x21..0x7E stay literal
    (b"a b\\c", b"a\\x20b\\\\c"),
])
def test_escape_plain(raw: bytes, encoded: bytes) -> None:
    assert escape_field(raw) == encoded
    assert unescape(encoded) == raw


def test_every_byte_encodes_as_spec_says() -> None:
    for c in range(256):
        b = bytes([c])
        named = {0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}
        if c in named:
            want = named[c]
        elif 0x21 <= c <= 0x7E:
            want = b
        else:
            want = b"\\x%02x" % c
        assert escape_field(b) == want
        want_x = b"\\x3d" if c == 0x3D else want
        assert escape_field(b, xattr=True) == want_x
        assert unescape(want) == b
        assert unescape(want_x) == b


def test_xattr_escapes_equals_only_there() -> None:
    assert escape_field(b"user.k=v", xattr=True) == b"user.k\\x3dv"
    assert escape_field(b"a=b", xattr=True) == b"a\\x3db"
    assert escape_field(b"a=b") == b"a=b"
    # empty and '-' are plain values in xattrs
    assert escape_field(b"", xattr=True) == b""
    assert escape_field(b"-", xattr=True) == b"-"


def test_optional_fields() -> None:
    assert escape_optional(b"") == b"-"
    assert escape_optional(b"-") == b"\\x2d"
    assert escape_optional(b"--") == b"--"
    assert escape_optional(b"a b") == b"a\\x20b"
    assert unescape_optional(b"-") is None
    assert unescape_optional(b"\\x2d") == b"-"
    assert unescape_optional(b"--") == b"--"


@pytest.mark.parametrize(("encoded", "raw"), [
    (b"\\x4A\\x4a", b"JJ"),       # either case of hex digits
    (b"\\xfF", b"\xff"),
    (b"a\\\\nb", b"a\\nb"),       # escaped backslash, then a literal n
    (b"\\\\\\\\", b"\\\\"),
    (b"", b""),
])
def test_unescape_accepts(encoded: bytes, raw: bytes) -> None:
    assert unescape(encoded) == raw


@pytest.mark.parametrize("bad", [
    b"\\", b"abc\\", b"\\q", b"\\0", b"\\a", b"\\x", b"\\x4", b"\\xg0", b"\\x0g",
    b"a\\ b", b"\\X41", b"\\u0041", b"\\N",
])
def test_unescape_rejects(bad: bytes) -> None:
    with pytest.raises(EscapeError) as e:
        unescape(bad)
    assert isinstance(e.value, CfsError)
    assert "\n" not in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.booleans())
def test_round_trip_and_output_alphabet(raw: bytes, xattr: bool) -> None:
    enc = escape_field(raw, xattr=xattr)
    assert unescape(enc) == raw
    assert all(0x21 <= c <= 0x7E for c in enc)
    if xattr:
        assert b"=" not in enc
    opt = escape_optional(raw)
    assert b" " not in opt and opt
    # empty and "not set" are the same thing in optional fields
    assert (unescape_optional(opt) or b"") == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=32))
def test_unescape_never_crashes(junk: bytes) -> None:
    try:
        out = unescape(junk)
    except EscapeError:
        return
    assert len(out) <= len(junk)
