"""Pieces shared by the two dumpfile parsers: the error type, line splitting
and the numeric field parsers."""

from __future__ import annotations

from cfsboot.errors import CfsError

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# Field indexes (composefs-dump(5) order).
PATH, SIZE, MODE, NLINK, UID, GID, RDEV, MTIME, PAYLOAD, CONTENT, DIGEST = range(11)
N_FIXED = 11

# Regular files whose size needs more than 1024 EROFS chunks (C refuses them:
# "File too large"); 1024 chunks of the largest chunk size (2**43) = 2**53.
MAX_CHUNKED_SIZE = 2**53


class DumpfileError(CfsError):
    """A rejected dumpfile; the message is ``line N: reason`` (N is 1-based)."""


class LineError(Exception):
    """Raised inside a parser with the reason only; the line loop adds ``line N:``."""


def split_lines(data: bytes) -> tuple[list[bytes], int]:
    """(lines without their ``\\n``, how many of them were terminated).

    A final newline does not start an extra (empty) line.  Line N is
    ``lines[N - 1]``."""
    lines = data.split(b"\n")
    terminated = len(lines) - 1
    if not lines[-1]:
        lines.pop()
    return lines, terminated


def parse_dec(field: bytes, limit: int, what: str) -> int:
    """Rust ``uN::from_str``: optional ``+``, ASCII digits, no overflow."""
    digits = field[1:] if field[:1] == b"+" else field
    if not digits.isdigit():
        raise LineError(f"invalid {what} '{_show(field)}'")
    value = int(digits)
    if value > limit:
        raise LineError(f"{what} {value} out of range")
    return value


_OCTAL = bytes(range(ord("0"), ord("8")))


def parse_oct(field: bytes, limit: int, what: str) -> int:
    """Rust ``u32::from_str_radix(_, 8)``: optional ``+``, octal digits."""
    if field.isdigit() and b"8" not in field and b"9" not in field:
        value = int(field, 8)
        if value <= limit:
            return value
    digits = field[1:] if field[:1] == b"+" else field
    if not digits or digits.translate(None, _OCTAL):
        raise LineError(f"invalid {what} '{_show(field)}'")
    value = int(digits, 8)
    if value > limit:
        raise LineError(f"{what} {field.decode()} out of range")
    return value


# Memos live for one parse and hold only fields that parsed without error, so
# a hit is exactly what parsing the field again would give.  They are bounded
# so that a dumpfile of all-different values cannot make them grow with it.
MEMO_MAX = 4096


def fixed_numbers(fields: list[bytes], small_max: int,
                  memo: dict[bytes, int]) -> tuple[int, int, int, int, int, int, int]:
    """(size, nlink, uid, gid, rdev, mtime_sec, mtime_nsec) of a full line.

    NLINK/UID/GID must fit ``small_max``.  This runs for every line: NLINK,
    UID, GID and RDEV (a handful of distinct values in a whole dumpfile) come
    from ``memo``, SIZE and MTIME take a fast path for plain digits, and
    anything else goes through the field parsers that name the error."""
    size_f, _, nlink_f, uid_f, gid_f, rdev_f, mtime_f = fields[1:8]
    nlink = memo.get(nlink_f)
    uid = memo.get(uid_f)
    gid = memo.get(gid_f)
    rdev = memo.get(rdev_f)
    sec_f, _, nsec_f = mtime_f.partition(b".")
    if (nlink is not None and uid is not None and gid is not None and rdev is not None
            and size_f.isdigit() and sec_f.isdigit() and nsec_f.isdigit()):
        size, sec, nsec = int(size_f), int(sec_f), int(nsec_f)
        if size <= U64_MAX and sec < 2**63 and nsec < 10**9:
            return size, nlink, uid, gid, rdev, sec, nsec
    # Slow path: new values, '+' signs, wrapping seconds, or an error to
    # report (in this order of fields, the first bad one).
    sec, nsec = parse_mtime(mtime_f)
    numbers = (parse_dec(size_f, U64_MAX, "size"), parse_dec(nlink_f, small_max, "nlink"),
               parse_dec(uid_f, small_max, "uid"), parse_dec(gid_f, small_max, "gid"),
               parse_dec(rdev_f, U64_MAX, "rdev"), sec, nsec)
    if len(memo) < MEMO_MAX:
        memo[nlink_f], memo[uid_f], memo[gid_f] = numbers[1:4]
        if numbers[4] <= small_max:  # one memo for all four: keep it valid for each
            memo[rdev_f] = numbers[4]
    return numbers


def parse_mtime(field: bytes) -> tuple[int, int]:
    """``SEC.NSEC`` (split at the first ``.``; NSEC counts nanoseconds, < 10**9).

    SEC is a u64 stored as i64 (two's complement wrap, as both upstreams do).
    A negative SEC is accepted too: composefs-rs's writer prints a pre-1970
    mtime that way (its own parser then refuses it; we read our output back)."""
    sec_s, dot, nsec_s = field.partition(b".")
    if not dot:
        raise LineError(f"invalid mtime '{_show(field)}' (missing '.')")
    if sec_s.startswith(b"-") and sec_s[1:].isdigit():
        sec = -int(sec_s[1:])
        if sec < -(2**63):
            raise LineError(f"mtime seconds {sec} out of range")
    else:
        sec = parse_dec(sec_s, U64_MAX, "mtime seconds")
    nsec = parse_dec(nsec_s, U64_MAX, "mtime nanoseconds")
    if nsec >= 10**9:
        raise LineError(f"mtime nanoseconds {nsec} not below 10^9")
    if sec >= 2**63:
        sec -= 2**64
    return sec, nsec


def _show(b: bytes, limit: int = 40) -> str:
    s = b[:limit].decode("utf-8", "backslashreplace")
    if not s.isprintable():  # keep messages on one line and terminal-safe
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s + "..." if len(b) > limit else s


def show(b: bytes, limit: int = 60) -> str:
    """A field for an error message: decoded, shortened, printable, one line."""
    return _show(b, limit)
