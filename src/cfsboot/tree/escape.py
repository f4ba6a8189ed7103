"""Dumpfile field escaping (composefs-dump(5), spec dumpfile.md §3).

Decoding accepts ``\\\\ \\n \\r \\t \\xHH`` and nothing else after a backslash.
Encoding is the composefs-rs ``write_dumpfile`` one: named escapes for
backslash/LF/CR/TAB, ``\\xHH`` (lowercase) for every byte outside 0x21..0x7E,
and, in xattr keys and values, ``=`` as ``\\x3d``.

Both directions take a fast path through one precompiled regex search, so
fields that need no escaping (nearly all of them) cost no per-byte Python work.
"""

from __future__ import annotations

import re

from cfsboot.errors import CfsError


class EscapeError(CfsError):
    """A field with a malformed escape sequence (message: the reason only)."""


# ---- decoding --------------------------------------------------------------

def _escape_table() -> dict[bytes, bytes]:
    table = {b"\\\\": b"\\", b"\\n": b"\n", b"\\r": b"\r", b"\\t": b"\t"}
    digits = "0123456789abcdefABCDEF"
    for hi in digits:
        for lo in digits:
            table[f"\\x{hi}{lo}".encode()] = bytes([int(hi + lo, 16)])
    return table


_DECODE = _escape_table()
# A valid escape, or a lone backslash (which is then an error).
_ESCAPE_RE = re.compile(rb"\\(?:x[0-9a-fA-F]{2}|[\\nrt])|\\")


def _decode_one(m: re.Match[bytes]) -> bytes:
    seq = m.group()
    if seq == b"\\":
        rest = m.string[m.end():m.end() + 3]
        if not rest:
            raise EscapeError("backslash at end of field")
        if rest[:1] == b"x":
            raise EscapeError(f"invalid hex escape \\{_show(rest)}")
        raise EscapeError(f"invalid escape: backslash followed by '{_show(rest[:1])}'")
    return _DECODE[seq]


def _show(b: bytes) -> str:
    return repr(b)[2:-1]  # printable, on one line


def unescape(field: bytes) -> bytes:
    """Decode one escaped field (no ``-`` handling).  Raises EscapeError."""
    if b"\\" not in field:
        return field
    return _ESCAPE_RE.sub(_decode_one, field)


def unescape_optional(field: bytes) -> bytes | None:
    """Decode PATH/PAYLOAD/CONTENT style fields: ``-`` means "not set"."""
    if field == b"-":
        return None
    return unescape(field)


# ---- encoding --------------------------------------------------------------

def _encode_table(escape_equals: bool) -> list[bytes]:
    table = []
    for c in range(256):
        if c == 0x5C:
            table.append(b"\\\\")
        elif c == 0x0A:
            table.append(b"\\n")
        elif c == 0x0D:
            table.append(b"\\r")
        elif c == 0x09:
            table.append(b"\\t")
        elif not 0x21 <= c <= 0x7E or (escape_equals and c == 0x3D):
            table.append(b"\\x%02x" % c)
        else:
            table.append(bytes([c]))
    return table


_ENC_PLAIN = _encode_table(escape_equals=False)
_ENC_XATTR = _encode_table(escape_equals=True)
_NEEDS_PLAIN = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")
_NEEDS_XATTR = re.compile(rb"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]")


def escape_field(value: bytes, *, xattr: bool = False) -> bytes:
    """Per-byte encoding only (xattr keys and values use ``xattr=True``,
    which also escapes ``=``).  An empty value gives an empty field."""
    if xattr:
        if _NEEDS_XATTR.search(value) is None:
            return value
        table = _ENC_XATTR
    else:
        if _NEEDS_PLAIN.search(value) is None:
            return value
        table = _ENC_PLAIN
    return b"".join([table[c] for c in value])


def escape_optional(value: bytes) -> bytes:
    """PATH/PAYLOAD/CONTENT encoding: empty -> ``-``, ``-`` -> ``\\x2d``."""
    if not value:
        return b"-"
    if value == b"-":
        return b"\\x2d"
    return escape_field(value)
