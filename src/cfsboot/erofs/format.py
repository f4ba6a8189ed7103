"""On-disk constants and struct layouts of a composefs EROFS image.

Shared by the writer and the reader.  Every multi-byte integer is little
endian.  Each struct is a ``struct.Struct`` plus a NamedTuple with the same
field order, so ``Superblock._make(SUPERBLOCK.unpack_from(buf, 1024))``
decodes and ``SUPERBLOCK.pack(*sb)`` encodes.  Reserved bytes are pad bytes
(``x``) in the formats and are therefore not fields.

Reference: spec/erofs-image.md sections 4 and 5 (composefs-rs
``erofs/format.rs`` @0fbc853, Linux ``fs/erofs/erofs_fs.h``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# ---- geometry --------------------------------------------------------------

BLOCK_BITS = 12
BLOCK_SIZE = 1 << BLOCK_BITS  # 4096
SLOT_BITS = 5
SLOT_SIZE = 1 << SLOT_BITS  # nid = offset >> 5
INLINE_DIRENTS_MAX = BLOCK_SIZE // 2  # dirent bytes kept inline in the inode at most
XATTR_ALIGN = 4

# ---- composefs header (offset 0) --------------------------------------------

COMPOSEFS_MAGIC = 0xD078629A
COMPOSEFS_HEADER_VERSION = 1
COMPOSEFS_FLAG_HAS_ACL = 0x1


class ComposefsHeader(NamedTuple):
    magic: int
    version: int
    flags: int
    composefs_version: int


COMPOSEFS_HEADER = struct.Struct("<IIII16x")  # 32 bytes, then zeros up to 1024

# ---- EROFS superblock (offset 1024) ----------------------------------------

SUPERBLOCK_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2
FEATURE_COMPAT_SB_CHKSUM = 0x1
FEATURE_COMPAT_MTIME = 0x2
FEATURE_COMPAT_XATTR_FILTER = 0x4
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4  # never set by composefs writers


class Superblock(NamedTuple):
    magic: int
    checksum: int
    feature_compat: int
    blkszbits: int
    sb_extslots: int
    root_nid: int
    inos: int
    build_time: int
    build_time_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    volume_name: bytes
    feature_incompat: int
    available_compr_algs: int
    extra_devices: int
    devt_slotoff: int
    dirblkbits: int
    xattr_prefix_count: int
    xattr_prefix_start: int
    packed_nid: int
    xattr_filter_reserved: int


SUPERBLOCK = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB23x")  # 128 bytes
SUPERBLOCK_SIZE = SUPERBLOCK.size
FIRST_INODE_OFFSET = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE  # 1152, nid 36

# ---- inodes ----------------------------------------------------------------

# i_format: bit 0 = extended header; bits 1..3 = data layout.
INODE_FORMAT_EXTENDED = 0x1
LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
LAYOUT_CHUNK_BASED = 4
LAYOUT_SHIFT = 1
LAYOUT_MASK = 0x7


def i_format(layout: int, extended: bool) -> int:
    """The i_format word for a data layout (LAYOUT_*) and header kind."""
    return (layout << LAYOUT_SHIFT) | (INODE_FORMAT_EXTENDED if extended else 0)


# i_u of a chunk-based inode: low 5 bits = chunkbits - BLOCK_BITS.
CHUNK_FORMAT_BLKBITS_MASK = 0x1F
CHUNK_FORMAT_INDEXES = 0x20  # never set: chunk entries are 4-byte block maps
CHUNK_ENTRY_SIZE = 4
NULL_CHUNK = 0xFFFFFFFF
MAX_CHUNK_ENTRIES_IN_BLOCK = BLOCK_SIZE // CHUNK_ENTRY_SIZE  # 1024


class CompactInode(NamedTuple):
    format: int
    xattr_icount: int
    mode: int
    nlink: int
    size: int
    u: int
    ino: int
    uid: int
    gid: int


COMPACT_INODE = struct.Struct("<HHHHI4xIIHH4x")  # 32 bytes


class ExtendedInode(NamedTuple):
    format: int
    xattr_icount: int
    mode: int
    size: int
    u: int
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int


EXTENDED_INODE = struct.Struct("<HHH2xQIIIIQII16x")  # 64 bytes

# ---- xattrs ----------------------------------------------------------------


class XattrIbodyHeader(NamedTuple):
    name_filter: int  # bitwise NOT of the bloom bits
    shared_count: int


XATTR_IBODY_HEADER = struct.Struct("<IB7x")  # 12 bytes, then u32 shared refs
SHARED_REF = struct.Struct("<I")


class XattrEntryHeader(NamedTuple):
    name_len: int  # length of the suffix
    name_index: int  # prefix index (XATTR_PREFIXES)
    value_size: int


XATTR_ENTRY = struct.Struct("<BBH")  # 4 bytes, then suffix, value, pad to 4

XATTR_FILTER_SEED = 0x25BBE08F
XATTR_FILTER_BITS = 32

# e_name_index -> prefix.  Index 0 stores the whole name.
XATTR_PREFIXES: dict[int, bytes] = {
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    5: b"lustre.",
    6: b"security.",
}
XATTR_INDEX_LUSTRE = 5  # not used by the epoch-1 (V0/V1) layout, like C
ACL_PREFIX_INDEXES = (2, 3)


def split_xattr_name(name: bytes, use_lustre: bool) -> tuple[int, bytes]:
    """(prefix index, suffix) of a full xattr name; (0, name) if no prefix fits."""
    for index, prefix in XATTR_PREFIXES.items():
        if index == XATTR_INDEX_LUSTRE and not use_lustre:
            continue
        if name.startswith(prefix):
            return index, name[len(prefix):]
    return 0, name


def join_xattr_name(index: int, suffix: bytes) -> bytes:
    """Full xattr name from (prefix index, suffix); unknown indexes give suffix."""
    return XATTR_PREFIXES.get(index, b"") + suffix


# ---- directories -----------------------------------------------------------


class Dirent(NamedTuple):
    nid: int
    nameoff: int
    file_type: int


DIRENT = struct.Struct("<QHBx")  # 12 bytes

FT_UNKNOWN = 0
FT_REG_FILE = 1
FT_DIR = 2
FT_CHRDEV = 3
FT_BLKDEV = 4
FT_FIFO = 5
FT_SOCK = 6
FT_SYMLINK = 7

# ---- overlayfs xattrs --------------------------------------------------------

OVERLAY_METACOPY = b"trusted.overlay.metacopy"
OVERLAY_REDIRECT = b"trusted.overlay.redirect"
OVERLAY_OPAQUE = b"trusted.overlay.opaque"
OVERLAY_PREFIX = b"trusted.overlay."
OVERLAY_ESCAPED_PREFIX = b"trusted.overlay.overlay."
ESCAPED_WHITEOUT = b"trusted.overlay.overlay.whiteout"
ESCAPED_WHITEOUTS = b"trusted.overlay.overlay.whiteouts"
ESCAPED_OPAQUE = b"trusted.overlay.overlay.opaque"
USER_WHITEOUT = b"user.overlay.whiteout"
USER_WHITEOUTS = b"user.overlay.whiteouts"
USER_OPAQUE = b"user.overlay.opaque"

WHITEOUT_STUB_COUNT = 256  # root entries "00".."ff" in V0/V1

METACOPY_HEADER = struct.Struct("<BBBB")  # version 0, len, flags 0, digest algo
METACOPY_ALGO_SHA256 = 1
METACOPY_ALGO_SHA512 = 2
_METACOPY_ALGO_BY_LEN = {32: METACOPY_ALGO_SHA256, 64: METACOPY_ALGO_SHA512}
_DIGEST_LEN_BY_ALGO = {v: k for k, v in _METACOPY_ALGO_BY_LEN.items()}


# The header for each digest length, packed once (one value per external file).
METACOPY_HEADER_BY_LEN = {n: METACOPY_HEADER.pack(0, METACOPY_HEADER.size + n, 0, algo)
                          for n, algo in _METACOPY_ALGO_BY_LEN.items()}


def metacopy_value(digest: bytes | None) -> bytes:
    """``trusted.overlay.metacopy`` value: header + digest, or empty (no digest)."""
    if digest is None:
        return b""
    header = METACOPY_HEADER_BY_LEN.get(len(digest))
    if header is None:
        raise ValueError(f"fs-verity digest must be 32 or 64 bytes, not {len(digest)}")
    return header + digest


def parse_metacopy_value(value: bytes) -> bytes | None:
    """The digest in a metacopy value, or None when it carries none (empty or
    not a well-formed version-0 header with a known algorithm)."""
    if len(value) < METACOPY_HEADER.size:
        return None
    version, length, _flags, algo = METACOPY_HEADER.unpack_from(value)
    digest_len = _DIGEST_LEN_BY_ALGO.get(algo)
    if version != 0 or digest_len is None or length != len(value):
        return None
    if length != METACOPY_HEADER.size + digest_len:
        return None
    return value[METACOPY_HEADER.size:]


# ---- format versions ----------------------------------------------------------

FORMAT_VERSIONS = (0, 1, 2)


def is_epoch1(version: int) -> bool:
    """V0 and V1 share the C-compatible layout family; V2 is the legacy one."""
    return version in (0, 1)
