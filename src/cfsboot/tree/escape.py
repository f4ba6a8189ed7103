"""Dumpfile field escaping (composefs-dump(5), spec dumpfile.md §3).

Decoding accepts ``\\\\ \\n \\r \\t \\xHH`` and nothing else after a backslash.
Encoding is the composefs-rs ``write_dumpfile`` one: named escapes for
backslash/LF/CR/TAB, ``\\xHH`` (lowercase) for every byte outside 0x21..0x7E,
and, in xattr keys and values, ``=`` as ``\\x3d``.

Both directions take a fast path through one precompiled regex search, so
fields that need no escaping (nearly all of them) cost no per-byte Python work.
Fields that do go through the C codecs behind Python's bytes literals and
``repr``: our escapes are a subset of what they read and write, and anything
they would handle differently is tested for first (see ``unescape`` and
``_encode``).
"""

from __future__ import annotations

import re
from codecs import escape_decode, escape_encode

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


# A backslash followed by something other than one of our escape letters.  It
# may be the second half of an escaped backslash (then only the fast path is
# skipped); every backslash that starts an invalid escape is found by it,
# except a trailing one and a bad ``\x``, which the codec itself rejects.
_NOT_OURS = re.compile(rb"\\[^\\nrtx]")


def unescape(field: bytes) -> bytes:
    """Decode one escaped field (no ``-`` handling).  Raises EscapeError."""
    if b"\\" not in field:
        return field
    if _NOT_OURS.search(field) is None:
        try:
            return escape_decode(field)[0]
        except ValueError:
            pass  # the exact path below says what is wrong
    return _ESCAPE_RE.sub(_decode_one, field)


def unescape_optional(field: bytes) -> bytes | None:
    """Decode PATH/PAYLOAD/CONTENT style fields: ``-`` means "not set"."""
    if field == b"-":
        return None
    return unescape(field)


# ---- encoding --------------------------------------------------------------

# Bytes outside 0x21..0x7E, or a backslash (and in xattrs '='): need escaping.
_NEEDS_PLAIN = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")
_NEEDS_XATTR = re.compile(rb"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]")


def _encode(value: bytes) -> bytes:
    """The plain encoding, through the C codec behind Python's ``repr(bytes)``:
    it writes ``\\\\ \\n \\r \\t`` and lowercase ``\\xHH`` for every byte
    outside 0x20..0x7E as we do, but leaves the space alone and writes ``'`` as
    ``\\'``.  A ``\\'`` in its output is always that quote (a quote is never
    literal there), and a space never part of an escape."""
    out = escape_encode(value)[0]
    if b"'" in value:
        out = out.replace(b"\\'", b"'")
    if b" " in value:
        out = out.replace(b" ", b"\\x20")
    return out


def escape_field(value: bytes, *, xattr: bool = False) -> bytes:
    """Per-byte encoding only (xattr keys and values use ``xattr=True``,
    which also escapes ``=``).  An empty value gives an empty field."""
    if xattr:
        if _NEEDS_XATTR.search(value) is None:
            return value
        out = _encode(value)
        return out.replace(b"=", b"\\x3d") if b"=" in value else out
    if _NEEDS_PLAIN.search(value) is None:
        return value
    return _encode(value)


def escape_optional(value: bytes) -> bytes:
    """PATH/PAYLOAD/CONTENT encoding: empty -> ``-``, ``-`` -> ``\\x2d``."""
    if not value:
        return b"-"
    if value == b"-":
        return b"\\x2d"
    return escape_field(value)
