"""Tar header chains (oci-import.md §5.2, §6): the parser shared by the
splitter (tar → splitstream) and the entry reader (splitstream → entries).

A *chain* is zero or more extension headers (PAX ``x``, GNU long name ``L`` /
long link ``K``) with their data, ended by one member header.  The limits are
tar-core's defaults; the two "probably rejected" cases of §5.2 (a stray zero
block mid-archive, a non-zero size on a header-only type) are rejected.
Pure functions over bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cfsboot.errors import CfsError

BLOCK = 512
MAX_PATH = 4096
MAX_PAX = 1 << 20
MAX_EXTENSIONS = 16
REGULAR_TYPES = frozenset(b"07\0")
HEADER_ONLY_TYPES = frozenset(b"123456")
EXTENSION_TYPES = frozenset(b"xgLK")
ZERO_BLOCK = bytes(BLOCK)


class TarError(CfsError):
    """A tar stream is malformed or uses something we do not accept."""


def round_up(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def parse_numeric(field_: bytes, what: str) -> int:
    """Octal ASCII (spaces/NULs trimmed, cut at the first NUL) or GNU base-256."""
    if field_ and field_[0] & 0x80:
        if field_[0] == 0xFF:
            raise TarError(f"negative {what} in tar header")
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    text = field_.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise TarError(f"invalid {what} {text!r} in tar header")
    return int(text, 8)


def verify_checksum(hdr: bytes) -> None:
    stored = parse_numeric(hdr[148:156], "checksum")
    masked = hdr[:148] + b" " * 8 + hdr[156:]
    unsigned = sum(masked)
    if stored == unsigned:
        return
    # old BSD tars summed signed chars: subtract 256 for every byte >= 128
    signed = unsigned - 256 * sum(1 for b in masked if b > 127)
    if stored != signed:
        raise TarError("tar header checksum mismatch (corrupt or not a tar archive)")


def _cstr(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records ``"<len> <key>=<value>\\n"``; later records win."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record
            break
        sp = data.find(b" ", pos)
        if sp < 0 or not data[pos:sp].isdigit():
            raise TarError("malformed PAX record length")
        length = int(data[pos:sp])
        end = pos + length
        if length <= sp - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise TarError("malformed PAX record")
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq:
            raise TarError("PAX record without '='")
        out[key] = value
        pos = end
    return out


def _pax_int(pax: dict[bytes, bytes], key: bytes) -> int | None:
    v = pax.get(key)
    if v is None:
        return None
    if not v.isdigit():
        raise TarError(f"invalid PAX {key.decode()} value {v!r}")
    return int(v)


@dataclass(slots=True)
class Member:
    """A resolved member header (extensions applied)."""
    typeflag: int
    path: bytes  # raw, not normalised
    link: bytes
    mode: int
    uid: int
    gid: int
    mtime_sec: int
    mtime_nsec: int
    size: int  # effective size (PAX size wins)
    devmajor: int | None
    devminor: int | None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_regular(self) -> bool:
        return self.typeflag in REGULAR_TYPES

    @property
    def rdev(self) -> int:
        return os.makedev(self.devmajor or 0, self.devminor or 0)


@dataclass(frozen=True, slots=True)
class NeedMore:
    total: int  # the chain needs at least this many bytes


@dataclass(frozen=True, slots=True)
class EndOfArchive:
    pass


@dataclass(frozen=True, slots=True)
class GlobalPax:
    length: int  # header + padded data (its content is ignored)


@dataclass(frozen=True, slots=True)
class MemberChain:
    length: int  # bytes of the whole chain (extension headers and data, member header)
    member: Member


ChainResult = NeedMore | EndOfArchive | GlobalPax | MemberChain


def parse_chain(buf: bytes) -> ChainResult:
    """Parse the header chain at the start of ``buf`` (a multiple of 512 bytes)."""
    pos = 0
    pax: dict[bytes, bytes] | None = None
    long_name: bytes | None = None
    long_link: bytes | None = None
    extensions = 0
    while True:
        if len(buf) < pos + BLOCK:
            return NeedMore(pos + BLOCK)
        hdr = buf[pos:pos + BLOCK]
        if hdr == ZERO_BLOCK:
            if pos:
                raise TarError("tar extension header not followed by a member "
                               "(orphaned metadata)")
            if len(buf) < 2 * BLOCK:
                return NeedMore(2 * BLOCK)
            if buf[BLOCK:2 * BLOCK] != ZERO_BLOCK:
                raise TarError("stray zero block in the middle of a tar archive")
            return EndOfArchive()
        verify_checksum(hdr)
        typeflag = hdr[156]
        ustar = hdr[257:263] == b"ustar\0" and hdr[263:265] == b"00"
        gnu = hdr[257:265] == b"ustar  \0"
        size = parse_numeric(hdr[124:136], "size")
        if typeflag in EXTENSION_TYPES and (ustar or gnu):
            limit = MAX_PAX if typeflag in b"xg" else MAX_PATH + 1
            if size > limit:
                raise TarError(f"tar extension header '{chr(typeflag)}' of {size} bytes "
                               f"exceeds the limit of {limit}")
            end = pos + BLOCK + round_up(size)
            if len(buf) < end:
                return NeedMore(end)
            data = buf[pos + BLOCK:pos + BLOCK + size]
            if typeflag == ord("g"):
                if pos:
                    raise TarError("global PAX header inside a header chain")
                parse_pax(data)  # validate only: its content is ignored (§6)
                return GlobalPax(end)
            extensions += 1
            if extensions > MAX_EXTENSIONS:
                raise TarError(f"more than {MAX_EXTENSIONS} chained tar extension headers")
            if typeflag == ord("x"):
                if pax is not None:
                    raise TarError("duplicate PAX header before one tar member")
                pax = parse_pax(data)
            elif typeflag == ord("L"):
                if long_name is not None:
                    raise TarError("duplicate GNU long name before one tar member")
                long_name = data[:-1] if data.endswith(b"\0") else data
            else:
                if long_link is not None:
                    raise TarError("duplicate GNU long link before one tar member")
                long_link = data[:-1] if data.endswith(b"\0") else data
            pos = end
            continue
        member = _member(hdr, typeflag, ustar, gnu, size, pax or {}, long_name, long_link)
        return MemberChain(pos + BLOCK, member)


def _member(hdr: bytes, typeflag: int, ustar: bool, gnu: bool, size: int,
            pax: dict[bytes, bytes], long_name: bytes | None,
            long_link: bytes | None) -> Member:
    if typeflag == ord("S") or any(k.startswith(b"GNU.sparse.") for k in pax):
        raise TarError("sparse tar entries are not supported")
    if b"path" in pax:
        path = pax[b"path"]
    elif long_name is not None:
        path = long_name
    else:
        path = _cstr(hdr[0:100])
        prefix = _cstr(hdr[345:500]) if ustar else b""
        if prefix:
            path = prefix + b"/" + path
    if b"linkpath" in pax:
        link = pax[b"linkpath"]
    elif long_link is not None:
        link = long_link
    else:
        link = _cstr(hdr[157:257])
    if len(path) > MAX_PATH or len(link) > MAX_PATH:
        raise TarError(f"tar path longer than {MAX_PATH} bytes")
    pax_size = _pax_int(pax, b"size")
    if pax_size is not None:
        size = pax_size
    if typeflag in HEADER_ONLY_TYPES and size:
        raise TarError(f"tar entry {_show(path)} of type '{chr(typeflag)}' has a "
                       f"non-zero size {size}")
    uid = _pax_int(pax, b"uid")
    gid = _pax_int(pax, b"gid")
    mtime_sec = parse_numeric(hdr[136:148], "mtime")
    mtime_nsec = 0
    if b"mtime" in pax:
        mtime_sec, mtime_nsec = _pax_mtime(pax[b"mtime"])
    dev = ustar or gnu
    return Member(
        typeflag=typeflag, path=path, link=link,
        mode=parse_numeric(hdr[100:108], "mode"),
        uid=(uid if uid is not None else parse_numeric(hdr[108:116], "uid")) & 0xFFFFFFFF,
        gid=(gid if gid is not None else parse_numeric(hdr[116:124], "gid")) & 0xFFFFFFFF,
        mtime_sec=mtime_sec, mtime_nsec=mtime_nsec, size=size,
        devmajor=parse_numeric(hdr[329:337], "devmajor") if dev else None,
        devminor=parse_numeric(hdr[337:345], "devminor") if dev else None,
        xattrs={k[len(b"SCHILY.xattr."):]: v for k, v in pax.items()
                if k.startswith(b"SCHILY.xattr.") and len(k) > len(b"SCHILY.xattr.")},
    )


def _pax_mtime(value: bytes) -> tuple[int, int]:
    whole, _, frac = value.partition(b".")
    negative = whole.startswith(b"-")
    digits = whole[1:] if negative else whole
    if not digits.isdigit():
        raise TarError(f"invalid PAX mtime {value!r}")
    sec = -int(digits) if negative else int(digits)
    nsec = int(frac[:9].ljust(9, b"0")) if frac.isdigit() else 0
    return sec, nsec


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
