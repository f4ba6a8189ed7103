"""Placing and writing the inode list as image bytes (spec sections 5, 6.9-7).

One pass over the inodes decides where each one goes (alignment, padding,
promotion of a long tail to a data block) and emits its record at once, as
byte pieces in image order: padding, header, xattr body, inline tail.  The
pieces are joined once at the end.  Three kinds of values depend on
positions known only after the pass: the nids in directory entries (BFS
puts children after their directory), shared xattr references (they count
from the table that follows the inodes) and block addresses (data blocks
follow the table).  Their pieces are placeholders (or, for a header, a
bytearray) filled in before the join; the join checks the total size
against the positions the pass computed.

The pass handles the usual inode (an external file: 25k of a distribution's
28k) with as little work as it can: it is the serial tail of every digest.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate, compress

from cfsboot.erofs import format as fmt
from cfsboot.erofs.inodes import (
    CHUNKED,
    DIR,
    INLINE,
    SYMLINK,
    DirEntry,
    ErofsWriteError,
    Inode,
    Options,
    Xattr,
    split_name,
)

_BS = fmt.BLOCK_SIZE
_U64 = (1 << 64) - 1
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF
_SLOT = fmt.SLOT_SIZE
_SLOT_MASK = _SLOT - 1
_SLOT_ALIGN = ~_SLOT_MASK
_CHUNK_ENTRY = fmt.CHUNK_ENTRY_SIZE
_CHUNK_BASED = fmt.LAYOUT_CHUNK_BASED
_IBODY = fmt.XATTR_IBODY_HEADER.size  # 12
_COMPACT = fmt.COMPACT_INODE.size  # 32
_EXTENDED = fmt.EXTENDED_INODE.size  # 64
_SHIFT, _EXT = fmt.LAYOUT_SHIFT, fmt.INODE_FORMAT_EXTENDED  # i_format = layout << 1 | ext
_I_U_OFFSET = 16  # of i_u in both inode headers
_U32_AT = fmt.SHARED_REF  # "<I"
_COMPACT_INODE = fmt.COMPACT_INODE
_EXTENDED_INODE = fmt.EXTENDED_INODE
# An inode header and its xattr body header, packed by one call.
_COMPACT_INODE_X = struct.Struct(fmt.COMPACT_INODE.format + fmt.XATTR_IBODY_HEADER.format[1:])
_EXTENDED_INODE_X = struct.Struct(fmt.EXTENDED_INODE.format + fmt.XATTR_IBODY_HEADER.format[1:])
# A run of null chunk entries to slice an inline chunk index from.
_NULL_CHUNKS = b"\xff" * _BS
# Zero padding is sliced from here (a view: no copy).
_ZERO_BLOCKS = memoryview(bytes(2 * _BS))
# By dirent file type (an escaped whiteout is stored as a regular file).
_TYPE_BITS = [0, 0o100000, 0o040000, 0o020000, 0o060000, 0o010000, 0o140000, 0o120000]


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def min_mtime(inodes: list[Inode], opts: Options) -> tuple[int, int]:
    """(sec as u64, nsec) of the smallest mtime.  composefs-rs compares the
    seconds as u64, C as signed i64 (they differ only for negative mtimes)."""
    if not inodes:
        return (0, 0)
    secs = [inode.stat.mtime_sec for inode in inodes]
    sec = min(secs)  # signed
    if sec < 0 and not opts.c_compat:  # as u64, negative seconds are the largest
        return min([(i.stat.mtime_sec & _U64, i.stat.mtime_nsec) for i in inodes])
    # The nanoseconds of the few inodes with those seconds (selected in C).
    nsec = min([i.stat.mtime_nsec for i in compress(inodes, map(sec.__eq__, secs))])
    return (sec & _U64, nsec)


# ---- xattr entries -------------------------------------------------------------------

# Zero padding after an entry, by the entry's unpadded length mod 4.
_XATTR_PAD = [bytes(-n % fmt.XATTR_ALIGN) for n in range(fmt.XATTR_ALIGN)]


class _EntryEncoder:
    """Encodes xattr entries.  The entry header with the name suffix, and the
    padding after the value, are made once per (name, value length): the
    same for every file's metacopy and redirect xattr."""

    def __init__(self, use_lustre: bool) -> None:
        self.use_lustre = use_lustre
        self.frames: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}

    def _frame(self, name: bytes, value_size: int) -> tuple[bytes, bytes]:
        index, suffix = split_name(name, self.use_lustre)
        head = fmt.XATTR_ENTRY.pack(len(suffix), index, value_size) + suffix
        frame = self.frames[(name, value_size)] = (head, _XATTR_PAD[(len(head) + value_size) & 3])
        return frame

    def entry(self, name: bytes, value: bytes) -> bytes:
        head, pad = self.frames.get((name, len(value))) or self._frame(name, len(value))
        return head + value + pad

    def entries(self, xattrs: list[Xattr]) -> bytes:
        """The inline entries of one inode, concatenated."""
        frames = self.frames
        if len(xattrs) == 2:  # the usual: an external file's overlay pair
            (name1, value1), (name2, value2) = xattrs
            head1, pad1 = frames.get((name1, len(value1))) or self._frame(name1, len(value1))
            head2, pad2 = frames.get((name2, len(value2))) or self._frame(name2, len(value2))
            return b"".join((head1, value1, pad1, head2, value2, pad2))
        parts: list[bytes] = []
        for name, value in xattrs:
            head, pad = frames.get((name, len(value))) or self._frame(name, len(value))
            parts += (head, value, pad)
        return b"".join(parts)


# ---- placement rules (spec 6.9, 7) -----------------------------------------------------


def _data_layout(inode: Inode, c_compat: bool) -> int:
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
        if inode.n_blocks or (c_compat and inode.size == 0):
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
        return _pad_for_tail(pos + hs + xs, inode.tail)
    return 0


def _pad_for_tail(start: int, tail: int) -> int:
    """Padding that moves an inline tail starting at ``start`` into one block."""
    start %= _BS
    if start and _BS - start < tail:
        return _round_up(_BS - start, fmt.SLOT_SIZE)
    return 0


def _pad_v2(inode: Inode, pos: int, xs: int, layout: int) -> int:
    """The legacy rule (7.3), replicated as written."""
    if layout != fmt.LAYOUT_FLAT_INLINE:
        return 0
    start = pos + _EXTENDED + xs
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


# ---- deferred parts ------------------------------------------------------------------

def _dirents(entries: Sequence[DirEntry], nids: list[int]) -> bytes:
    """One directory block (or inline part): the headers, then the names."""
    nameoff = fmt.DIRENT.size * len(entries)
    pack = fmt.DIRENT.pack
    pieces = []
    for name, idx, ftype in entries:
        pieces.append(pack(nids[idx], nameoff, ftype))
        nameoff += len(name)
    pieces += [e[0] for e in entries]
    return b"".join(pieces)


def _data_blocks(inode: Inode, nids: list[int]) -> list[bytes]:
    k = inode.kind
    if k == DIR:
        return [_dirents(b, nids) for b in inode.dir_blocks]
    if k == INLINE:
        return [inode.payload[i * _BS:(i + 1) * _BS] for i in range(inode.n_blocks)]
    if k == SYMLINK:
        return [inode.payload[:_BS]]
    if k == CHUNKED:
        return [_NULL_CHUNKS]
    raise AssertionError(f"inode kind {k} has data blocks")


def _header_error(inode: Inode, xs: int) -> ErofsWriteError:
    """What did not fit in an inode header (its packing failed)."""
    st = inode.stat
    if xs and (xs - _IBODY) // 4 + 1 > _U16:
        return ErofsWriteError(f"too many xattrs on one inode ({xs} bytes)")
    if not all(0 <= v <= _U32 for v in (st.uid, st.gid, inode.nlink)):
        return ErofsWriteError(f"uid/gid/nlink out of range ({st.uid}/{st.gid}/{inode.nlink})")
    return ErofsWriteError(f"inode field out of range (size {inode.size}, "
                           f"mtime {st.mtime_sec}.{st.mtime_nsec}, mode {st.mode:#o})")


def _zeros(n: int) -> memoryview:
    assert n <= len(_ZERO_BLOCKS), "no gap in an image is that long"
    return _ZERO_BLOCKS[:n]


# ---- the image -----------------------------------------------------------------------


def write_image(inodes: list[Inode], table: list[Xattr], opts: Options,
                header_flags: int) -> bytes:
    """The image: a list of byte pieces in image order, joined once (one copy,
    into memory allocated once).  Pieces whose content is known only later
    are placeholders, replaced before the join."""
    epoch1, c_compat = opts.epoch1, opts.c_compat
    encode_entries = (encoder := _EntryEncoder(use_lustre=not epoch1)).entries
    msec, mnsec = min_mtime(inodes, opts) if epoch1 else (0, 0)
    pack_compact, pack_compact_x = _COMPACT_INODE.pack, _COMPACT_INODE_X.pack
    pack_extended, pack_extended_x = _EXTENDED_INODE.pack, _EXTENDED_INODE_X.pack

    # [0]: the composefs header and superblock, made last.
    parts: list[bytes | bytearray | memoryview] = [b""]
    nids: list[int] = []
    dirs: list[tuple[Inode, int]] = []  # (directory, index of its inline dirents piece)
    refs: list[tuple[int, tuple[int, ...]]] = []  # (piece index, shared table positions)
    blocked: list[tuple[Inode, bytearray]] = []  # (inode with data blocks, its header)
    end = pos = fmt.FIRST_INODE_OFFSET
    for idx, inode in enumerate(inodes):
        xattrs, shared, kind, st, tail = (inode.xattrs, inode.shared, inode.kind, inode.stat,
                                          inode.tail)
        entries = encode_entries(xattrs) if xattrs else b""
        xs = _IBODY + 4 * len(shared) + len(entries) if xattrs or shared else 0
        pos = (pos + _SLOT_MASK) & _SLOT_ALIGN
        if epoch1:
            compact = ((st.mtime_sec & _U64) == msec and st.mtime_nsec == mnsec
                       and inode.nlink <= _U16 and st.uid <= _U16 and st.gid <= _U16
                       and inode.size <= _U32 and inode.c_size <= _U32)
            hs = _COMPACT if compact else _EXTENDED
            if kind == CHUNKED and tail <= _CHUNK_ENTRY:
                # The usual inode (an external file): a one-entry chunk index
                # is never promoted and, 4-byte aligned, never crosses a block.
                layout = _CHUNK_BASED
            else:
                _promote_epoch1(inode, hs, xs)
                tail = inode.tail
                layout = _data_layout(inode, c_compat)
                pos += _pad_epoch1(inode, pos, hs, xs, layout)
        else:
            compact, hs = False, _EXTENDED
            layout = _data_layout(inode, c_compat)
            pos += _pad_v2(inode, pos, xs, layout)
            _check_v2_tail(inode, pos + hs + xs)
        if pos != end:  # alignment and padding (at most a block and a slot)
            parts.append(_ZERO_BLOCKS[:pos - end])
        nids.append(pos >> 5)

        # The header, and the xattr body header after it in the same call.
        # Out-of-range fields (uid, nlink, xattr count...) fail the packing.
        mode = _TYPE_BITS[inode.ftype] | (st.mode & 0o7777)
        try:
            if xs:
                icount = (xs - _IBODY) // 4 + 1
                if compact:
                    header = pack_compact_x(layout << _SHIFT, icount, mode, inode.nlink,
                                            inode.size, inode.i_u, idx, st.uid, st.gid,
                                            ~inode.bloom & _U32, len(shared))
                else:
                    header = pack_extended_x((layout << _SHIFT) | _EXT, icount, mode,
                                             inode.size, inode.i_u, idx if epoch1 else pos >> 5,
                                             st.uid, st.gid, st.mtime_sec & _U64,
                                             st.mtime_nsec if epoch1 else 0, inode.nlink,
                                             ~inode.bloom & _U32, len(shared))
            elif compact:
                header = pack_compact(layout << _SHIFT, 0, mode, inode.nlink, inode.size,
                                      inode.i_u, idx, st.uid, st.gid)
            else:
                header = pack_extended((layout << _SHIFT) | _EXT, 0, mode, inode.size,
                                       inode.i_u, idx if epoch1 else pos >> 5, st.uid, st.gid,
                                       st.mtime_sec & _U64, st.mtime_nsec if epoch1 else 0,
                                       inode.nlink)
        except struct.error:
            raise _header_error(inode, xs) from None
        if inode.n_blocks:  # i_u gets the block address, known after this pass
            patchable = bytearray(header)
            blocked.append((inode, patchable))
            parts.append(patchable)
        else:
            parts.append(header)
        if shared:
            refs.append((len(parts), shared))
            parts.append(b"")
        if entries:
            parts.append(entries)
        if tail:
            if kind == CHUNKED:
                parts.append(_NULL_CHUNKS[:tail])
            elif kind == DIR:
                dirs.append((inode, len(parts)))
                parts.append(b"")
            elif kind == INLINE:
                parts.append(inode.payload[len(inode.payload) - tail:])
            elif kind == SYMLINK:
                parts.append(inode.payload)
            else:
                raise AssertionError(f"inode kind {kind} has an inline tail")
        end = pos = pos + hs + xs + tail

    inodes_end = (pos + _SLOT_MASK) & _SLOT_ALIGN
    parts.append(_zeros(inodes_end - pos))
    table_entries = [encoder.entry(name, value) for name, value in table]
    parts += table_entries
    table_offsets = list(accumulate(map(len, table_entries), initial=inodes_end))
    table_end = table_offsets.pop()
    data_start = _round_up(table_end, _BS)
    parts.append(_zeros(data_start - table_end))

    # Shared refs count 4-byte units from the table's block (V0/V1) or from 0 (V2).
    base = inodes_end % _BS - inodes_end if epoch1 else 0
    ref_values = [(base + off) // 4 for off in table_offsets]
    ref_bytes: dict[tuple[int, ...], bytes] = {}  # inodes share few distinct sets
    for at, positions in refs:
        packed = ref_bytes.get(positions)
        if packed is None:
            packed = ref_bytes[positions] = b"".join(
                map(_U32_AT.pack, map(ref_values.__getitem__, positions)))
        parts[at] = packed
    for inode, at in dirs:
        parts[at] = _dirents(inode.dir_inline, nids)
    blkaddr = data_start // _BS
    for inode, patchable in blocked:
        i_u = blkaddr if inode.kind != CHUNKED else (blkaddr & 0xFFFF0000) | inode.i_u
        _U32_AT.pack_into(patchable, _I_U_OFFSET, i_u)
        blocks = _data_blocks(inode, nids)
        assert len(blocks) == inode.n_blocks
        for block in blocks:
            parts += (block, _zeros(_BS - len(block)))
        blkaddr += inode.n_blocks
    image_end = blkaddr * _BS

    parts[0] = _header_and_superblock(opts, header_flags, nids[0], len(inodes),
                                      (msec, mnsec), inodes_end, image_end)
    image = b"".join(parts)
    assert len(image) == image_end, "a piece's size differs from its placement"
    return image


def _header_and_superblock(opts: Options, header_flags: int, root_nid: int,
                           inode_count: int, mtime: tuple[int, int], inodes_end: int,
                           image_end: int) -> bytearray:
    """The image's first 1152 bytes: composefs header, zeros, EROFS superblock."""
    out = bytearray(fmt.FIRST_INODE_OFFSET)
    fmt.COMPOSEFS_HEADER.pack_into(out, 0, fmt.COMPOSEFS_MAGIC, fmt.COMPOSEFS_HEADER_VERSION,
                                   header_flags, opts.version)
    if root_nid > _U16:
        raise ErofsWriteError("root inode does not fit in the superblock's 16-bit root_nid")
    fmt.SUPERBLOCK.pack_into(
        out, fmt.SUPERBLOCK_OFFSET, fmt.EROFS_MAGIC, 0,
        fmt.FEATURE_COMPAT_MTIME | fmt.FEATURE_COMPAT_XATTR_FILTER, fmt.BLOCK_BITS, 0,
        root_nid, inode_count, mtime[0], mtime[1], image_end // _BS, 0,
        inodes_end // _BS if opts.epoch1 else 0, b"", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return out
