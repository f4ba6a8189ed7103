"""Read a composefs EROFS image back into the shared tree model.

Semantics follow composefs-rs ``erofs/reader.rs`` @0fbc853
(``erofs_to_filesystem`` on an image opened with ``restrict_to_composefs``),
see spec/erofs-image.md section 10:

* whiteout stubs (root entries named by two hex digits that are native or
  escaped whiteouts) are dropped; escaped whiteouts elsewhere become
  ``CharDevice(0)``;
* ``trusted.overlay.metacopy`` with a digest gives ``External(size, path,
  digest)``, a redirect without a digest ``External(size, path, None)``, a
  chunk-based file with neither ``Sparse``;
* ``trusted.overlay.overlay.X`` is unescaped to ``trusted.overlay.X``; the
  writer's whiteout/opaque markers and every other ``trusted.overlay.*`` name
  are dropped;
* compact inodes take the superblock build time as mtime;
* a hard link is the same ``Leaf`` object under several names.

Deliberate differences from composefs-rs (none affects an image either
upstream writer produces from a valid tree):

* a redirect that is not an object path still gives ``External`` (the model
  keeps the path; composefs-rs falls back to Sparse/Inline);
* entries sharing a nid always share one ``Leaf``, also when the on-disk
  nlink is 1 (composefs-rs copies; C mkcomposefs writes such images from
  dumpfiles with a low NLINK) -- other nlink mismatches are errors as upstream;
* stricter validation: entry names (non-empty, no '/' or NUL, strictly sorted
  across the directory), a directory reachable twice, a hard-linked whiteout;
  the last directory block is bounded by the directory size (as the kernel).

Hostile images: every offset and size is bounds-checked, each inode, xattr
list and directory is decoded at most once (a directory reachable twice is an
error, so loops cannot occur), the tree is walked with an explicit stack, and
the bytes decoded are capped at the image size (see ``ErofsImage``).  Every
problem raises ``ErofsError`` with one line naming the inode (nid) or offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from cfsboot.erofs import format as fmt
from cfsboot.errors import CfsError
from cfsboot.tree.model import (
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    S_IFSOCK,
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    LeafContent,
    Socket,
    Sparse,
    Stat,
    Symlink,
    object_path,
)

MAX_IMAGE_SIZE = 1 << 30  # composefs-rs DEFAULT_MAX_IMAGE_SIZE
MAX_DIRECTORY_DEPTH = 4096 // 2  # composefs-rs MAX_DIRECTORY_DEPTH
V2_MAX_INLINE_CONTENT = 512  # composefs-rs MAX_INLINE_CONTENT (checked for V2 only)
V2_SYMLINK_MAX = 1024  # composefs-rs SYMLINK_MAX (checked for V2 only)
_FEATURE_COMPAT_KNOWN = (fmt.FEATURE_COMPAT_SB_CHKSUM | fmt.FEATURE_COMPAT_MTIME
                         | fmt.FEATURE_COMPAT_XATTR_FILTER)
_MAX_NAME_INDEX = 6
_KNOWN_TYPES = frozenset((S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK))
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_METACOPY_SUFFIX = b"overlay.metacopy"
# Writer-internal markers that never reach the tree (composefs-rs transform_xattr).
_DROPPED_XATTRS = frozenset((
    fmt.OVERLAY_METACOPY, fmt.OVERLAY_REDIRECT,
    fmt.ESCAPED_WHITEOUT, fmt.ESCAPED_WHITEOUTS, fmt.ESCAPED_OPAQUE,
    fmt.USER_WHITEOUT, fmt.USER_WHITEOUTS, fmt.USER_OPAQUE,
))


class ErofsError(CfsError):
    """A corrupt, hostile or non-composefs EROFS image."""


def show(name: bytes) -> str:
    """A byte string for a one-line message (non-printables escaped)."""
    return repr(bytes(name))[2:-1]


# ---- header and superblock ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImageInfo:
    """Header and superblock facts of a composefs image."""
    image_size: int
    composefs_version: int  # 0, 1 (C-compatible layout) or 2
    epoch: int  # layout family: 1 for V0/V1, 2 for V2
    flags: int  # composefs header flags (bit 0: has POSIX ACLs)
    feature_compat: int
    feature_incompat: int
    root_nid: int
    inos: int
    blocks: int
    build_time: int  # seconds, signed (as composefs-rs reads it)
    build_time_nsec: int
    meta_blkaddr: int
    xattr_blkaddr: int

    @property
    def has_acl(self) -> bool:
        return bool(self.flags & fmt.COMPOSEFS_FLAG_HAS_ACL)


def _parse_info(data: bytes) -> ImageInfo:
    """Validate header and superblock like composefs-rs ``Image::open`` +
    ``restrict_to_composefs``."""
    if len(data) > MAX_IMAGE_SIZE:
        raise ErofsError(f"image size {len(data)} exceeds maximum {MAX_IMAGE_SIZE}")
    if len(data) < fmt.FIRST_INODE_OFFSET:
        raise ErofsError(f"image too small ({len(data)} bytes) for the composefs header "
                         f"and EROFS superblock ({fmt.FIRST_INODE_OFFSET} bytes)")
    hdr = fmt.ComposefsHeader._make(fmt.COMPOSEFS_HEADER.unpack_from(data, 0))
    if hdr.magic != fmt.COMPOSEFS_MAGIC:
        raise ErofsError(f"bad composefs magic {hdr.magic:#x} at offset 0 "
                         f"(expected {fmt.COMPOSEFS_MAGIC:#x}): not a composefs image")
    if hdr.version != fmt.COMPOSEFS_HEADER_VERSION:
        raise ErofsError(f"unsupported composefs header version {hdr.version} at offset 4")
    if hdr.composefs_version not in fmt.FORMAT_VERSIONS:
        raise ErofsError(f"unknown composefs_version {hdr.composefs_version} at offset 12 "
                         "(expected 0, 1 or 2)")
    sb = fmt.Superblock._make(fmt.SUPERBLOCK.unpack_from(data, fmt.SUPERBLOCK_OFFSET))
    where = f"in the superblock (offset {fmt.SUPERBLOCK_OFFSET})"
    if sb.magic != fmt.EROFS_MAGIC:
        raise ErofsError(f"bad EROFS magic {sb.magic:#x} {where}")
    checks = (
        (sb.blkszbits == fmt.BLOCK_BITS, f"blkszbits {sb.blkszbits} (composefs needs 12)"),
        (sb.feature_compat & ~_FEATURE_COMPAT_KNOWN == 0,
         f"unsupported feature_compat flags {sb.feature_compat & ~_FEATURE_COMPAT_KNOWN:#x}"),
        (sb.feature_incompat & ~fmt.FEATURE_INCOMPAT_CHUNKED_FILE == 0,
         "unsupported feature_incompat flags "
         f"{sb.feature_incompat & ~fmt.FEATURE_INCOMPAT_CHUNKED_FILE:#x}"),
        (sb.available_compr_algs == 0, "compression is not supported"),
        (sb.extra_devices == 0, f"extra_devices {sb.extra_devices} is not supported"),
        (sb.sb_extslots == 0, f"sb_extslots {sb.sb_extslots} is not supported"),
        (sb.packed_nid == 0, f"packed_nid {sb.packed_nid} is not supported"),
        (sb.meta_blkaddr == 0, f"meta_blkaddr {sb.meta_blkaddr} (composefs needs 0)"),
        (sb.xattr_prefix_count == 0, "custom xattr prefixes are not supported"),
        (sb.xattr_blkaddr * fmt.BLOCK_SIZE <= len(data),
         f"xattr_blkaddr {sb.xattr_blkaddr} is past the end of the image"),
    )
    for ok, what in checks:
        if not ok:
            raise ErofsError(f"{what} {where}")
    return ImageInfo(
        image_size=len(data), composefs_version=hdr.composefs_version,
        epoch=1 if fmt.is_epoch1(hdr.composefs_version) else 2, flags=hdr.flags,
        feature_compat=sb.feature_compat, feature_incompat=sb.feature_incompat,
        root_nid=sb.root_nid, inos=sb.inos, blocks=sb.blocks,
        build_time=_signed64(sb.build_time),
        build_time_nsec=sb.build_time_nsec, meta_blkaddr=sb.meta_blkaddr,
        xattr_blkaddr=sb.xattr_blkaddr)


def _signed64(value: int) -> int:
    """Times are i64 stored as u64 (two's complement), as composefs-rs reads them."""
    return value - (1 << 64) if value >= 1 << 63 else value


# ---- raw structures ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RawInode:
    """One decoded inode header plus where its xattr body and inline part are."""
    nid: int
    offset: int
    extended: bool
    i_format: int
    layout: int  # fmt.LAYOUT_*
    xattr_icount: int
    mode: int  # full st_mode (type | permissions)
    nlink: int
    size: int
    u: int  # block address, rdev or chunk format
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    header_size: int  # 32 or 64
    xattr_size: int  # 0, or 12 + 4 * (xattr_icount - 1)
    inline_size: int  # bytes after the xattr body (composefs-rs additional_bytes)

    @property
    def file_type(self) -> int:
        return self.mode & S_IFMT

    @property
    def inline_offset(self) -> int:
        return self.offset + self.header_size + self.xattr_size

    @property
    def end(self) -> int:
        return self.offset + self.header_size + self.xattr_size + self.inline_size

    def block_count(self) -> int:
        """Full data blocks in the data area (composefs-rs ``raw_blocks``)."""
        if self.layout == fmt.LAYOUT_FLAT_PLAIN:
            return -(-self.size // fmt.BLOCK_SIZE)
        if self.layout == fmt.LAYOUT_FLAT_INLINE:
            return self.size // fmt.BLOCK_SIZE
        return 0


def _inline_size(layout: int, size: int) -> int:
    if layout == fmt.LAYOUT_FLAT_INLINE:
        return size % fmt.BLOCK_SIZE
    if layout == fmt.LAYOUT_CHUNK_BASED:
        return fmt.CHUNK_ENTRY_SIZE  # composefs-rs always reserves one chunk entry
    return 0


class Xattr(NamedTuple):
    name_index: int
    suffix: bytes
    value: bytes
    shared: bool
    name: bytes  # prefix + suffix


class RawDirent(NamedTuple):
    name: bytes
    nid: int
    file_type: int


class ErofsImage:
    """Bounds-checked access to the structures of one image.

    Inodes and shared xattrs are decoded once and cached.  Every decoded inode
    record, shared xattr entry and data block is charged to a budget equal to
    the image size: in a well-formed image these never overlap, so a hostile
    image cannot make the work or memory grow faster than its own size.
    """

    def __init__(self, image: bytes | bytearray | memoryview) -> None:
        self.data = bytes(image)
        self.info = _parse_info(self.data)
        self._inodes: dict[int, RawInode] = {}
        self._xattr_lists: dict[int, list[Xattr]] = {}
        self._shared: dict[int, Xattr] = {}
        self._dirents: dict[int, list[RawDirent]] = {}
        self._budget = len(self.data)

    # -- inodes --

    def inode(self, nid: int) -> RawInode:
        cached = self._inodes.get(nid)
        if cached is not None:
            return cached
        ino = self._decode_inode(nid)
        self._inodes[nid] = ino
        return ino

    def _decode_inode(self, nid: int) -> RawInode:
        data = self.data
        off = nid * fmt.SLOT_SIZE
        if off + fmt.COMPACT_INODE.size > len(data):
            raise ErofsError(f"inode nid {nid}: offset {off} is past the end of the image "
                             f"({len(data)} bytes)")
        i_format = int.from_bytes(data[off:off + 2], "little")
        extended = bool(i_format & fmt.INODE_FORMAT_EXTENDED)
        if i_format & ~0xF:
            raise ErofsError(f"inode nid {nid} (offset {off}): unknown i_format {i_format:#x}")
        layout = (i_format >> fmt.LAYOUT_SHIFT) & fmt.LAYOUT_MASK
        if layout not in (fmt.LAYOUT_FLAT_PLAIN, fmt.LAYOUT_FLAT_INLINE, fmt.LAYOUT_CHUNK_BASED):
            raise ErofsError(f"inode nid {nid} (offset {off}): unsupported data layout "
                             f"{layout} in i_format {i_format:#x}")
        if extended:
            if off + fmt.EXTENDED_INODE.size > len(data):
                raise ErofsError(f"inode nid {nid}: extended header at offset {off} is "
                                 f"truncated by the end of the image ({len(data)} bytes)")
            (_, icount, mode, size, u, ino_nr, uid, gid, mtime, mtime_nsec,
             nlink) = fmt.EXTENDED_INODE.unpack_from(data, off)
            mtime = _signed64(mtime)
            header_size = fmt.EXTENDED_INODE.size
        else:
            (_, icount, mode, nlink, size, u, ino_nr, uid,
             gid) = fmt.COMPACT_INODE.unpack_from(data, off)
            mtime, mtime_nsec = self.info.build_time, self.info.build_time_nsec
            header_size = fmt.COMPACT_INODE.size
        xattr_size = fmt.XATTR_IBODY_HEADER.size + (icount - 1) * 4 if icount else 0
        ino = RawInode(nid, off, extended, i_format, layout, icount, mode, nlink, size, u,
                       ino_nr, uid, gid, mtime, mtime_nsec, header_size, xattr_size,
                       _inline_size(layout, size))
        if ino.file_type not in _KNOWN_TYPES:
            raise ErofsError(f"inode nid {nid} (offset {off}): unknown file type "
                             f"{ino.mode:#o} in i_mode")
        if ino.end > len(data):
            raise ErofsError(f"inode nid {nid}: record (offset {off}, {ino.end - off} bytes "
                             f"with xattrs and inline data) extends past the end of the image "
                             f"({len(data)} bytes)")
        self._charge(ino.end - off, f"inode nid {nid}: record overlaps other inodes")
        return ino

    # -- xattrs --

    def xattrs(self, ino: RawInode) -> list[Xattr]:
        """Shared xattrs (in reference order) then inline ones, as stored."""
        cached = self._xattr_lists.get(ino.nid)
        if cached is not None:
            return cached
        result: list[Xattr] = []
        if ino.xattr_size:
            body = ino.offset + ino.header_size
            end = body + ino.xattr_size
            _filter, shared_count = fmt.XATTR_IBODY_HEADER.unpack_from(self.data, body)
            pos = body + fmt.XATTR_IBODY_HEADER.size
            if pos + 4 * shared_count > end:
                raise ErofsError(f"inode nid {ino.nid}: {shared_count} shared xattr references "
                                 f"do not fit in its {ino.xattr_size}-byte xattr body")
            for _ in range(shared_count):
                (ref,) = fmt.SHARED_REF.unpack_from(self.data, pos)
                result.append(self._shared_xattr(ref, ino.nid))
                pos += 4
            while pos < end:
                entry, pos = self._xattr_entry(pos, end, f"inode nid {ino.nid}", shared=False)
                result.append(entry)
        self._xattr_lists[ino.nid] = result
        return result

    def shared_xattr_offset(self, ref: int) -> int:
        return self.info.xattr_blkaddr * fmt.BLOCK_SIZE + 4 * ref

    def _shared_xattr(self, ref: int, nid: int) -> Xattr:
        cached = self._shared.get(ref)
        if cached is None:
            off = self.shared_xattr_offset(ref)
            where = f"shared xattr {ref} (offset {off}, used by nid {nid})"
            cached, end = self._xattr_entry(off, len(self.data), where, shared=True)
            self._charge(end - off, f"{where}: overlaps other shared xattrs")
            self._shared[ref] = cached
        return cached

    def _xattr_entry(self, pos: int, end: int, where: str, shared: bool) -> tuple[Xattr, int]:
        if pos + fmt.XATTR_ENTRY.size > end:
            raise ErofsError(f"{where}: truncated xattr entry header at offset {pos}")
        name_len, index, value_size = fmt.XATTR_ENTRY.unpack_from(self.data, pos)
        body = pos + fmt.XATTR_ENTRY.size
        nxt = body + -(-(name_len + value_size) // 4) * 4
        if nxt > end:
            raise ErofsError(f"{where}: xattr entry at offset {pos} ({name_len}-byte name, "
                             f"{value_size}-byte value) extends past its area (ends at {end})")
        if index > _MAX_NAME_INDEX:
            raise ErofsError(f"{where}: xattr entry at offset {pos} has unknown name index "
                             f"{index}")
        if index == 0 and name_len == 0:
            raise ErofsError(f"{where}: xattr entry at offset {pos} has an empty name")
        suffix = self.data[body:body + name_len]
        value = self.data[body + name_len:body + name_len + value_size]
        return Xattr(index, suffix, value, shared, fmt.join_xattr_name(index, suffix)), nxt

    # -- data --

    def _charge(self, nbytes: int, what: str) -> None:
        self._budget -= nbytes
        if self._budget < 0:
            raise ErofsError(f"{what} (more bytes referenced than the image holds)")

    def _blocks(self, ino: RawInode) -> tuple[int, int]:
        """(start offset, byte length) of the inode's data blocks, bounds-checked."""
        count = ino.block_count()
        if count == 0:
            return 0, 0
        start = ino.u * fmt.BLOCK_SIZE
        if start + count * fmt.BLOCK_SIZE > len(self.data):
            raise ErofsError(f"inode nid {ino.nid}: data blocks {ino.u}..{ino.u + count - 1} "
                             f"are past the end of the image ({len(self.data)} bytes)")
        return start, count * fmt.BLOCK_SIZE

    def _check_size(self, ino: RawInode) -> None:
        if ino.size > len(self.data):
            raise ErofsError(f"inode nid {ino.nid}: size {ino.size} exceeds the image size "
                             f"({len(self.data)} bytes)")

    def file_data(self, ino: RawInode) -> bytes:
        """Content of an inline file or symlink: data blocks then the inline tail."""
        self._check_size(ino)
        if ino.size == 0:
            return b""
        start, length = self._blocks(ino)
        inline = self.data[ino.inline_offset:ino.end]
        self._charge(length, f"inode nid {ino.nid}: data blocks overlap other data")
        return (self.data[start:start + length] + inline)[:ino.size]

    def dirents(self, ino: RawInode, where: str) -> list[RawDirent]:
        """All entries of a directory (with '.' and '..'), validated and in order."""
        cached = self._dirents.get(ino.nid)
        if cached is None:
            cached = self._decode_dirents(ino, where)
            self._dirents[ino.nid] = cached
        return cached

    def _decode_dirents(self, ino: RawInode, where: str) -> list[RawDirent]:
        if ino.layout == fmt.LAYOUT_CHUNK_BASED:
            raise ErofsError(f"{where}: directory with chunk-based data layout")
        self._check_size(ino)
        start, length = self._blocks(ino)
        self._charge(length, f"{where}: directory blocks overlap other data")
        chunks: list[tuple[int, int]] = []
        for blk in range(start, start + length, fmt.BLOCK_SIZE):
            # Like the kernel, the directory size bounds the last block.
            chunks.append((blk, min(fmt.BLOCK_SIZE, start + ino.size - blk)))
        if ino.inline_size:
            chunks.append((ino.inline_offset, ino.inline_size))
        entries: list[RawDirent] = []
        for off, size in chunks:
            self._dirent_chunk(off, size, where, entries)
        return entries

    def _dirent_chunk(self, off: int, size: int, where: str, out: list[RawDirent]) -> None:
        data = self.data
        if size < fmt.DIRENT.size:
            raise ErofsError(f"{where}: dirent chunk at offset {off} is too small ({size} bytes)")
        first_nameoff = int.from_bytes(data[off + 8:off + 10], "little")
        if first_nameoff < fmt.DIRENT.size or first_nameoff % fmt.DIRENT.size \
                or first_nameoff >= size:
            raise ErofsError(f"{where}: invalid first nameoff {first_nameoff} in dirent chunk "
                             f"at offset {off} ({size} bytes)")
        count = first_nameoff // fmt.DIRENT.size
        heads = [fmt.Dirent._make(fmt.DIRENT.unpack_from(data, off + i * fmt.DIRENT.size))
                 for i in range(count)]
        for i, head in enumerate(heads):
            name_end = heads[i + 1].nameoff if i + 1 < count else size
            if not first_nameoff <= head.nameoff <= name_end <= size:
                raise ErofsError(f"{where}: dirent {i} of the chunk at offset {off} has nameoff "
                                 f"{head.nameoff} out of order or out of bounds")
            name = data[off + head.nameoff:off + name_end]
            if i + 1 == count:
                name = name.split(b"\0", 1)[0]  # the last name runs to the padding
            if not name or b"/" in name or b"\0" in name:
                raise ErofsError(f"{where}: invalid entry name '{show(name)}' at offset "
                                 f"{off + head.nameoff}")
            if out and name <= out[-1].name:
                raise ErofsError(f"{where}: entry '{show(name)}' at offset {off + head.nameoff} "
                                 f"is not sorted after '{show(out[-1].name)}' (or duplicated)")
            out.append(RawDirent(name, head.nid, head.file_type))


def image_info(image: bytes | bytearray | memoryview) -> ImageInfo:
    """Header and superblock facts (validated; no tree walk)."""
    return _parse_info(bytes(image))


# ---- tree reconstruction -------------------------------------------------------

def is_escaped_whiteout(img: ErofsImage, ino: RawInode) -> bool:
    """A V0/V1 escaped whiteout: a regular file carrying
    ``trusted.overlay.overlay.whiteout``."""
    return ino.file_type == S_IFREG and any(
        x.name == fmt.ESCAPED_WHITEOUT for x in img.xattrs(ino))


def is_native_whiteout(ino: RawInode) -> bool:
    return ino.file_type == S_IFCHR and ino.u == 0


def is_stub_name(name: bytes) -> bool:
    """Two hex digits (either case, as composefs-rs tests ``is_ascii_hexdigit``)."""
    return len(name) == 2 and name[0] in _HEXDIGITS and name[1] in _HEXDIGITS


def _stat(img: ErofsImage, ino: RawInode) -> Stat:
    xattrs: dict[bytes, bytes] = {}
    for x in img.xattrs(ino):
        name = x.name
        if name in _DROPPED_XATTRS:
            continue
        if name.startswith(fmt.OVERLAY_ESCAPED_PREFIX):
            name = fmt.OVERLAY_PREFIX + name[len(fmt.OVERLAY_ESCAPED_PREFIX):]
        elif name.startswith(fmt.OVERLAY_PREFIX):
            continue
        xattrs[name] = x.value
    return Stat(ino.mode & 0o7777, ino.uid, ino.gid, ino.mtime, ino.mtime_nsec, xattrs)


def _first_values(xattrs: list[Xattr], names: frozenset[bytes]) -> dict[bytes, bytes]:
    """The first value of each of ``names`` present (composefs-rs takes the first
    match, shared references before inline entries)."""
    found: dict[bytes, bytes] = {}
    for x in xattrs:
        if x.name in names and x.name not in found:
            found[x.name] = x.value
    return found


_REGULAR_FILE_MARKERS = frozenset((fmt.ESCAPED_WHITEOUT, fmt.OVERLAY_REDIRECT))


def _metacopy_digest(xattrs: list[Xattr], where: str) -> bytes | None:
    for x in xattrs:
        if x.name != fmt.OVERLAY_METACOPY or not x.value:
            continue
        digest = fmt.parse_metacopy_value(x.value)
        if digest is None:
            raise ErofsError(f"{where}: malformed trusted.overlay.metacopy value "
                             f"({len(x.value)} bytes: {x.value[:4].hex()}...)")
        return digest
    return None


def _redirect_path(value: bytes | None, where: str) -> bytes | None:
    if value is None:
        return None
    path = value[1:] if value.startswith(b"/") else value
    if not path or b"\0" in path:
        raise ErofsError(f"{where}: invalid trusted.overlay.redirect '{show(value)}'")
    return path


def leaf_content(img: ErofsImage, ino: RawInode, where: str) -> LeafContent:
    """The content of a non-directory inode (composefs-rs populate_directory)."""
    v2 = img.info.composefs_version == 2
    kind = ino.file_type
    if kind == S_IFREG:
        xattrs = img.xattrs(ino)
        markers = _first_values(xattrs, _REGULAR_FILE_MARKERS) if xattrs else {}
        if fmt.ESCAPED_WHITEOUT in markers:
            return CharDevice(0)
        digest = _metacopy_digest(xattrs, where)
        path = _redirect_path(markers.get(fmt.OVERLAY_REDIRECT), where)
        if digest is not None:
            return External(ino.size, path if path is not None else object_path(digest), digest)
        if path is not None:
            return External(ino.size, path, None)
        if ino.layout == fmt.LAYOUT_CHUNK_BASED:
            return Sparse(ino.size)
        if v2 and ino.size > V2_MAX_INLINE_CONTENT:
            raise ErofsError(f"{where}: inline regular file has size {ino.size} "
                             f"(V2 allows at most {V2_MAX_INLINE_CONTENT})")
        return Inline(img.file_data(ino))
    if kind == S_IFLNK:
        if v2 and ino.size > V2_SYMLINK_MAX:
            raise ErofsError(f"{where}: symlink target is {ino.size} bytes "
                             f"(V2 allows at most {V2_SYMLINK_MAX})")
        return Symlink(img.file_data(ino))
    if kind == S_IFCHR:
        return CharDevice(ino.u)
    if kind == S_IFBLK:
        return BlockDevice(ino.u)
    if kind == S_IFIFO:
        return Fifo()
    if kind == S_IFSOCK:
        return Socket()
    raise ErofsError(f"{where}: unexpected file type {ino.mode:#o}")


def join_path(parent: bytes, name: bytes) -> bytes:
    return (parent if parent.endswith(b"/") else parent + b"/") + name


class _TreeReader:
    def __init__(self, img: ErofsImage) -> None:
        self.img = img
        self.leaves: dict[int, Leaf] = {}
        self.leaf_refs: dict[int, int] = {}
        self.leaf_paths: dict[int, bytes] = {}

    def read(self) -> Directory:
        img = self.img
        root_nid = img.info.root_nid
        root_ino = img.inode(root_nid)
        if root_ino.file_type != S_IFDIR:
            raise ErofsError(f"root inode nid {root_nid} is not a directory "
                             f"(mode {root_ino.mode:#o})")
        root = Directory(_stat(img, root_ino))
        visited = {root_nid}
        stack: list[tuple[RawInode, int, Directory, int, bytes]] = [
            (root_ino, root_nid, root, 0, b"/")]
        while stack:
            ino, parent_nid, node, depth, path = stack.pop()
            for child_ino, name, child_path in self._children(ino, parent_nid, path):
                if child_ino.file_type == S_IFDIR:
                    if child_ino.nid in visited:
                        raise ErofsError(f"directory '{show(child_path)}' (nid {child_ino.nid}) "
                                         "is reachable twice (directory hard link or loop)")
                    if depth + 1 >= MAX_DIRECTORY_DEPTH:
                        raise ErofsError(f"directory '{show(child_path)}' (nid {child_ino.nid}) "
                                         f"is nested deeper than {MAX_DIRECTORY_DEPTH} levels")
                    visited.add(child_ino.nid)
                    sub = Directory(_stat(img, child_ino))
                    node.entries[name] = sub
                    stack.append((child_ino, ino.nid, sub, depth + 1, child_path))
                else:
                    node.entries[name] = self._leaf(child_ino, child_path)
        self._check_leaf_nlinks()
        return root

    def _children(self, ino: RawInode, parent_nid: int,
                  path: bytes) -> list[tuple[RawInode, bytes, bytes]]:
        """Validated child inodes of one directory, whiteout stubs dropped;
        checks '.', '..' and the directory's nlink."""
        img = self.img
        where = f"directory '{show(path)}' (nid {ino.nid})"
        dots: dict[bytes, int] = {}
        children: list[tuple[RawInode, bytes, bytes]] = []
        subdirs = 0
        is_root = ino.nid == img.info.root_nid
        for ent in img.dirents(ino, where):
            if ent.name in (b".", b".."):
                dots[ent.name] = ent.nid
                continue
            child = img.inode(ent.nid)
            if is_root and is_stub_name(ent.name) and (
                    is_native_whiteout(child) or is_escaped_whiteout(img, child)):
                continue  # a whiteout stub (or an entry written in its place)
            if child.file_type == S_IFDIR:
                subdirs += 1
            children.append((child, ent.name, join_path(path, ent.name)))
        if dots.get(b".") != ino.nid:
            raise ErofsError(f"{where}: '.' entry is missing or points to nid "
                             f"{dots.get(b'.')}")
        if dots.get(b"..") != parent_nid:
            raise ErofsError(f"{where}: '..' entry is missing or points to nid "
                             f"{dots.get(b'..')} instead of the parent {parent_nid}")
        if ino.nlink != 2 + subdirs:
            raise ErofsError(f"{where}: nlink is {ino.nlink}, expected {2 + subdirs} "
                             f"(2 + {subdirs} subdirectories)")
        return children

    def _leaf(self, ino: RawInode, path: bytes) -> Leaf:
        leaf = self.leaves.get(ino.nid)
        if leaf is not None:
            self.leaf_refs[ino.nid] += 1
            return leaf
        where = f"'{show(path)}' (nid {ino.nid})"
        content = leaf_content(self.img, ino, where)
        if isinstance(content, CharDevice) and content.rdev == 0 and ino.nlink > 1:
            raise ErofsError(f"{where}: whiteout inode has nlink {ino.nlink} > 1")
        leaf = Leaf(_stat(self.img, ino), content)
        self.leaves[ino.nid] = leaf
        self.leaf_refs[ino.nid] = 1
        self.leaf_paths[ino.nid] = path
        return leaf

    def _check_leaf_nlinks(self) -> None:
        """On-disk nlink must count the entries, except that nlink 1 with several
        entries is accepted: composefs-rs reads those (as copies) and C
        mkcomposefs writes them from dumpfiles whose NLINK field undercounts a
        hard-link group.  Like C's reader, entries with one nid share one Leaf."""
        for nid, refs in self.leaf_refs.items():
            nlink = self.img.inode(nid).nlink
            where = f"'{show(self.leaf_paths[nid])}' (nid {nid})"
            if nlink != refs and not (nlink == 1 and refs > 1):
                raise ErofsError(f"{where}: nlink is {nlink} but {refs} directory entries "
                                 "refer to it")
            if refs > 1 and self.leaves[nid].content == CharDevice(0):
                raise ErofsError(f"{where}: whiteout referenced by {refs} directory entries")


def read_tree(img: ErofsImage) -> Directory:
    """``read_erofs`` on an already opened image (its caches are kept)."""
    return _TreeReader(img).read()


def read_erofs(image: bytes | bytearray | memoryview) -> Directory:
    """Decode a composefs image into the tree it was made from (section 10)."""
    return read_tree(ErofsImage(image))


def list_objects(image: bytes | bytearray | memoryview) -> list[bytes]:
    """Backing-object paths (redirect targets, no leading '/') referenced by
    the image's regular files: sorted, unique."""
    root = read_erofs(image)
    found: set[bytes] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            elif isinstance(child.content, External):
                found.add(child.content.path)
    return sorted(found)
