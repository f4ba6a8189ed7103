"""Placing and emitting the inode list as image bytes (spec sections 5, 6.9-7).

Two passes, as the spec describes, but only the first one makes decisions:
``place()`` walks the inodes once and records every offset, padding and
block address (none of which depends on a value only known later), and
``emit()`` writes each record at its recorded offset into a zeroed buffer,
asserting that what it writes has exactly the size the first pass assumed.
Padding is therefore never computed twice and cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cfsboot.erofs import format as fmt
from cfsboot.erofs.inodes import (
    BLKDEV,
    CHRDEV,
    CHUNKED,
    DIR,
    INLINE,
    SYMLINK,
    DirEntry,
    ErofsWriteError,
    Inode,
    Options,
    Xattr,
    entry_size,
    split_name,
)

_BS = fmt.BLOCK_SIZE
_U64 = (1 << 64) - 1
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_NULL_CHUNK = b"\xff\xff\xff\xff"
_V2_CHUNK_FORMAT = 31


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


@dataclass(slots=True)
class Placement:
    """Where inode ``i`` lives: everything ``emit`` needs besides the inode."""
    offset: int  # byte offset of the inode header (nid = offset / 32)
    compact: bool
    xattr_size: int
    layout: int  # fmt.LAYOUT_*
    blkaddr: int = 0  # first data block, if the inode has data blocks
    xattr_entries: bytes = b""  # the inline xattr entries, encoded once (by place)


@dataclass(slots=True)
class Layout:
    inodes: list[Placement]
    inodes_end: int
    table_offsets: list[int]
    data_start: int
    end: int
    min_mtime: tuple[int, int]


def min_mtime(inodes: list[Inode], opts: Options) -> tuple[int, int]:
    """(sec as u64, nsec) of the smallest mtime.  composefs-rs compares the
    seconds as u64, C as signed i64 (they differ only for negative mtimes)."""
    if not inodes:
        return (0, 0)
    if opts.c_compat:
        sec, nsec = min((i.stat.mtime_sec, i.stat.mtime_nsec) for i in inodes)
        return (sec & _U64, nsec)
    return min((i.stat.mtime_sec & _U64, i.stat.mtime_nsec) for i in inodes)


def xattr_size(inode: Inode, use_lustre: bool) -> int:
    if not inode.shared and not inode.xattrs:
        return 0
    return (fmt.XATTR_IBODY_HEADER.size + 4 * len(inode.shared)
            + sum(entry_size(n, v, use_lustre) for n, v in inode.xattrs))


def _xattr_entries(xattrs: list[Xattr], use_lustre: bool) -> bytes:
    """The encoded inline entries of one inode (their size is what place needs)."""
    if len(xattrs) == 1:
        return _xattr_entry(*xattrs[0], use_lustre)
    return b"".join([_xattr_entry(n, v, use_lustre) for n, v in xattrs])


def _fits_compact(inode: Inode, mtime: tuple[int, int]) -> bool:
    st = inode.stat
    return ((st.mtime_sec & _U64, st.mtime_nsec) == mtime and inode.nlink <= _U16
            and st.uid <= _U16 and st.gid <= _U16 and max(inode.size, inode.c_size) <= _U32)


def _data_layout(inode: Inode, opts: Options) -> int:
    k = inode.kind
    if k == DIR:
        return fmt.LAYOUT_FLAT_INLINE if inode.tail else fmt.LAYOUT_FLAT_PLAIN
    if k == INLINE:
        if inode.size == 0 or (inode.n_blocks and not inode.tail):
            return fmt.LAYOUT_FLAT_PLAIN
        return fmt.LAYOUT_FLAT_INLINE
    if k == CHUNKED:
        return fmt.LAYOUT_CHUNK_BASED
    if k == SYMLINK:
        if inode.n_blocks or (opts.c_compat and inode.size == 0):
            return fmt.LAYOUT_FLAT_PLAIN  # promoted; C also uses PLAIN for no tail
        return fmt.LAYOUT_FLAT_INLINE
    return fmt.LAYOUT_FLAT_PLAIN


def _pad_epoch1(inode: Inode, pos: int, hs: int, xs: int, layout: int) -> int:
    """Zero bytes before the inode so its inline tail stays in one block (7.2)."""
    in_block = pos % _BS
    if inode.kind == SYMLINK:
        if in_block == 0:
            return 0
        total = hs + xs + inode.size  # the pre-promotion size, as C
        if inode.n_blocks:
            return _BS - in_block if pos // _BS != (pos + total - 1) // _BS else 0
        return _BS - in_block if in_block + total > _BS else 0
    if inode.kind == CHUNKED and inode.n_blocks:
        return _BS - in_block if in_block else 0
    if layout == fmt.LAYOUT_FLAT_INLINE or (inode.kind == CHUNKED and inode.tail):
        start = (pos + hs + xs) % _BS
        inl = inode.tail
        if start and _BS - start < inl:
            return _round_up(_BS - start, fmt.SLOT_SIZE)
    return 0


def _pad_v2(inode: Inode, pos: int, xs: int, layout: int) -> int:
    """The legacy rule (7.3), replicated as written."""
    if layout != fmt.LAYOUT_FLAT_INLINE:
        return 0
    start = pos + fmt.EXTENDED_INODE.size + xs
    eom = start - 1
    iend = start + inode.size % _BS
    if eom // _BS == iend // _BS:
        return 0
    return _round_up(pos + _BS - eom % _BS, fmt.SLOT_SIZE) - pos


def _check_v2_tail(inode: Inode, start: int) -> None:
    """V2 never moves data to blocks: an inline part that does not fit in one
    block makes an image the kernel rejects (composefs-rs would write it; its
    own trees never hold such files), so refuse it."""
    if inode.tail and (inode.tail >= _BS or start // _BS != (start + inode.tail - 1) // _BS):
        what = "symlink target" if inode.kind == SYMLINK else "inline data"
        raise ErofsWriteError(f"format V2 cannot store {inode.tail} bytes of {what} "
                              "in one inode (use V1)")


def _promote_epoch1(inode: Inode, hs: int, xs: int) -> None:
    """Move a long symlink / oversized chunk index into a data block (6.9)."""
    if inode.kind == SYMLINK:
        promote = inode.tail > 0 and hs + xs + inode.tail >= _BS
    else:
        promote = inode.kind == CHUNKED and inode.tail + xs % fmt.SLOT_SIZE > _BS
    if promote:
        inode.n_blocks, inode.tail = 1, 0


def place(inodes: list[Inode], table: list[Xattr], opts: Options) -> Layout:
    use_lustre = not opts.epoch1
    mtime = min_mtime(inodes, opts) if opts.epoch1 else (0, 0)
    placements: list[Placement] = []
    append = placements.append
    pos = fmt.FIRST_INODE_OFFSET
    header = fmt.XATTR_IBODY_HEADER.size
    slot_mask = fmt.SLOT_SIZE - 1
    for inode in inodes:
        entries = _xattr_entries(inode.xattrs, use_lustre) if inode.xattrs else b""
        xs = header + 4 * len(inode.shared) + len(entries) if entries or inode.shared else 0
        if opts.epoch1:
            compact = _fits_compact(inode, mtime)
            hs = fmt.COMPACT_INODE.size if compact else fmt.EXTENDED_INODE.size
            _promote_epoch1(inode, hs, xs)
            layout = _data_layout(inode, opts)
            pos = (pos + slot_mask) & ~slot_mask
            pos += _pad_epoch1(inode, pos, hs, xs, layout)
        else:
            compact, hs = False, fmt.EXTENDED_INODE.size
            layout = _data_layout(inode, opts)
            pos = _round_up(pos, fmt.SLOT_SIZE)
            pos += _pad_v2(inode, pos, xs, layout)
            _check_v2_tail(inode, pos + hs + xs)
        append(Placement(pos, compact, xs, layout, 0, entries))
        pos += hs + xs + inode.tail
    inodes_end = _round_up(pos, fmt.SLOT_SIZE)
    table_offsets = []
    pos = inodes_end
    for name, value in table:
        table_offsets.append(pos)
        pos += entry_size(name, value, use_lustre)
    data_start = _round_up(pos, _BS)
    pos = data_start
    for inode, p in zip(inodes, placements, strict=True):
        if inode.n_blocks:
            p.blkaddr = pos // _BS
            pos += _BS * inode.n_blocks
    return Layout(placements, inodes_end, table_offsets, data_start, pos, mtime)


# ---- emission ----------------------------------------------------------------------


def _i_u(inode: Inode, p: Placement, opts: Options) -> int:
    k = inode.kind
    if k == CHUNKED:
        cf = inode.chunk_format if opts.epoch1 else _V2_CHUNK_FORMAT
        return (p.blkaddr & 0xFFFF0000) | cf if inode.n_blocks else cf
    if k in (CHRDEV, BLKDEV):
        return inode.rdev
    return p.blkaddr if inode.n_blocks else 0


def _dirent_chunk(entries: list[DirEntry], nids: list[int]) -> bytes:
    out = bytearray(fmt.DIRENT.size * len(entries))
    nameoff = len(out)
    for i, (name, idx, ftype) in enumerate(entries):
        fmt.DIRENT.pack_into(out, fmt.DIRENT.size * i, nids[idx], nameoff, ftype)
        nameoff += len(name)
    out += b"".join(e[0] for e in entries)
    return bytes(out)


# Zero padding after an entry, by the entry's unpadded length mod 4.
_XATTR_PAD = [bytes(-n % fmt.XATTR_ALIGN) for n in range(fmt.XATTR_ALIGN)]


def _xattr_entry(name: bytes, value: bytes, use_lustre: bool) -> bytes:
    head = _entry_head(name, len(value), use_lustre)
    return head + value + _XATTR_PAD[(len(head) + len(value)) & 3]


@lru_cache(maxsize=4096)
def _entry_head(name: bytes, value_size: int, use_lustre: bool) -> bytes:
    """Entry header and name suffix: the same for every file's metacopy (and
    redirect) xattr, whose values all have one length."""
    index, suffix = split_name(name, use_lustre)
    return fmt.XATTR_ENTRY.pack(len(suffix), index, value_size) + suffix


def _xattr_body(inode: Inode, refs: list[int], entries: bytes) -> bytes:
    head = fmt.XATTR_IBODY_HEADER.pack(~inode.bloom & _U32, len(inode.shared))
    if not inode.shared:
        return head + entries
    return b"".join([head, *[fmt.SHARED_REF.pack(refs[s]) for s in inode.shared], entries])


def _inline_part(inode: Inode, nids: list[int]) -> bytes:
    k = inode.kind
    if not inode.tail:
        return b""
    if k == DIR:
        return _dirent_chunk(inode.dir_inline, nids)
    if k == INLINE:
        return inode.payload[len(inode.payload) - inode.tail:]
    if k == CHUNKED:
        return _NULL_CHUNK * (inode.tail // fmt.CHUNK_ENTRY_SIZE)
    if k == SYMLINK:
        return inode.payload
    raise AssertionError(f"inode kind {k} has an inline tail")


def _data_blocks(inode: Inode, nids: list[int]) -> list[bytes]:
    k = inode.kind
    if k == DIR:
        return [_dirent_chunk(b, nids) for b in inode.dir_blocks]
    if k == INLINE:
        return [inode.payload[i * _BS:(i + 1) * _BS] for i in range(inode.n_blocks)]
    if k == SYMLINK:
        return [inode.payload[:_BS]]
    if k == CHUNKED:
        return [_NULL_CHUNK * fmt.MAX_CHUNK_ENTRIES_IN_BLOCK]
    raise AssertionError(f"inode kind {k} has data blocks")


def _pack_inode(buf: bytearray, idx: int, inode: Inode, p: Placement, opts: Options,
                xattr_icount: int) -> int:
    st = inode.stat
    i_u = _i_u(inode, p, opts)
    if p.compact:
        fmt.COMPACT_INODE.pack_into(
            buf, p.offset, fmt.i_format(p.layout, False), xattr_icount, inode.mode,
            inode.nlink, inode.size, i_u, idx, st.uid, st.gid)
        return fmt.COMPACT_INODE.size
    if st.uid > _U32 or st.gid > _U32 or inode.nlink > _U32:
        raise ErofsWriteError(f"uid/gid/nlink out of range ({st.uid}/{st.gid}/{inode.nlink})")
    epoch1 = opts.epoch1
    fmt.EXTENDED_INODE.pack_into(
        buf, p.offset, fmt.i_format(p.layout, True), xattr_icount, inode.mode,
        inode.size, i_u, idx if epoch1 else p.offset // fmt.SLOT_SIZE, st.uid, st.gid,
        st.mtime_sec & _U64, st.mtime_nsec if epoch1 else 0, inode.nlink)
    return fmt.EXTENDED_INODE.size


def emit(inodes: list[Inode], table: list[Xattr], lay: Layout, opts: Options,
         header_flags: int) -> bytes:
    use_lustre = not opts.epoch1
    buf = bytearray(lay.end)
    fmt.COMPOSEFS_HEADER.pack_into(buf, 0, fmt.COMPOSEFS_MAGIC, fmt.COMPOSEFS_HEADER_VERSION,
                                   header_flags, opts.version)
    root_nid = lay.inodes[0].offset // fmt.SLOT_SIZE
    if root_nid > _U16:
        raise ErofsWriteError("root inode does not fit in the superblock's 16-bit root_nid")
    epoch1 = opts.epoch1
    fmt.SUPERBLOCK.pack_into(
        buf, fmt.SUPERBLOCK_OFFSET, fmt.EROFS_MAGIC, 0,
        fmt.FEATURE_COMPAT_MTIME | fmt.FEATURE_COMPAT_XATTR_FILTER, fmt.BLOCK_BITS, 0,
        root_nid, len(inodes), lay.min_mtime[0], lay.min_mtime[1], lay.end // _BS, 0,
        lay.inodes_end // _BS if epoch1 else 0, b"", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)

    if epoch1:
        base = lay.inodes_end % _BS - lay.inodes_end
        refs = [(base + off) // 4 for off in lay.table_offsets]
    else:
        refs = [off // 4 for off in lay.table_offsets]
    nids = [p.offset // fmt.SLOT_SIZE for p in lay.inodes]

    for idx, (inode, p) in enumerate(zip(inodes, lay.inodes, strict=True)):
        xattr_icount = 0 if p.xattr_size == 0 else (p.xattr_size - 12) // 4 + 1
        if xattr_icount > _U16:
            raise ErofsWriteError(f"too many xattrs on one inode ({p.xattr_size} bytes)")
        pos = p.offset + _pack_inode(buf, idx, inode, p, opts, xattr_icount)
        if p.xattr_size:
            body = _xattr_body(inode, refs, p.xattr_entries)
            assert len(body) == p.xattr_size, "xattr size differs between passes"
            buf[pos:pos + len(body)] = body
            pos += len(body)
        tail = _inline_part(inode, nids)
        assert len(tail) == inode.tail, "inline size differs between passes"
        buf[pos:pos + len(tail)] = tail
        if inode.n_blocks:
            blocks = _data_blocks(inode, nids)
            assert len(blocks) == inode.n_blocks
            start = p.blkaddr * _BS
            for i, block in enumerate(blocks):
                buf[start + i * _BS:start + i * _BS + len(block)] = block

    for (name, value), off in zip(table, lay.table_offsets, strict=True):
        entry = _xattr_entry(name, value, use_lustre)
        buf[off:off + len(entry)] = entry
    assert len(buf) == lay.end
    return bytes(buf)
