"""Structural check ("fsck") of a composefs EROFS image.

``check_image`` first decodes the whole image with the reader (every bounds,
name, loop and nlink rule; the first fatal problem stops there), then walks
the raw structures again (same decoded caches) for the invariants a reader can
live without but the kernel or the composefs writers rely on.  A clean result
implies erofs-utils ``fsck.erofs`` accepts the image too (tested on mutated
images):

* superblock: block count, inode count, root inode placement;
* dirent file types agree with the inodes they point to ('.'/'..': directory);
* inline tails do not cross a block boundary (the kernel refuses such inodes:
  "inline data cross block boundary"; an inline layout whose size is a
  multiple of 4096 is such a case), and in V0/V1 fast symlinks fit in one
  block with their inode (kernels before 6.12; composefs-rs
  ``validate_v1_inline_layout``);
* the xattr name bloom filter does not hide a stored xattr;
* the composefs header ACL flag;
* chunk indexes of external files fit in the image and are null;
* special files (devices, fifos, sockets) have size 0;
* V0/V1: the 256 whiteout slots exist in the root and no native whiteout
  appears elsewhere; V2: no escaped whiteouts (composefs-rs
  ``validate_epoch_invariants``);
* V0/V1: no mtime earlier than the superblock build time (the minimum, as u64).
"""

from __future__ import annotations

from cfsboot.erofs import format as fmt
from cfsboot.erofs.reader import (
    ErofsError,
    ErofsImage,
    RawDirent,
    RawInode,
    Xattr,
    is_escaped_whiteout,
    is_native_whiteout,
    join_path,
    read_tree,
    show,
)
from cfsboot.erofs.xxh32 import xxh32
from cfsboot.tree.model import (
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFREG,
    S_IFSOCK,
    digest_from_object_path,
)

_FILE_TYPE_OF_MODE = {S_IFREG: fmt.FT_REG_FILE, S_IFDIR: fmt.FT_DIR, S_IFCHR: fmt.FT_CHRDEV,
                      S_IFBLK: fmt.FT_BLKDEV, S_IFIFO: fmt.FT_FIFO, S_IFSOCK: fmt.FT_SOCK,
                      S_IFLNK: fmt.FT_SYMLINK}
_LOWER_HEX = frozenset(b"0123456789abcdef")
_SPECIAL_TYPES = frozenset((S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK))


def check_image(image: bytes | bytearray | memoryview) -> list[str]:
    """Every problem found in the image, one line each; empty when it is fine."""
    try:
        img = ErofsImage(image)
        read_tree(img)
        return _Checker(img).run()
    except ErofsError as e:
        return [str(e)]


class _Checker:
    def __init__(self, img: ErofsImage) -> None:
        self.img = img
        self.problems: list[str] = []
        self.epoch1 = img.info.epoch == 1
        self.has_acl_index = False
        self.has_acl_name = False

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def run(self) -> list[str]:
        img = self.img
        info = img.info
        if info.image_size % fmt.BLOCK_SIZE:
            self.add(f"image size {info.image_size} is not a multiple of {fmt.BLOCK_SIZE}")
        if info.blocks * fmt.BLOCK_SIZE != info.image_size:
            self.add(f"superblock blocks {info.blocks} does not match the image size "
                     f"({info.image_size} bytes = {info.image_size / fmt.BLOCK_SIZE:g} blocks)")
        inodes = self._walk()
        if info.inos != len(inodes):
            self.add(f"superblock inos {info.inos} but {len(inodes)} inodes are reachable")
        for ino in inodes.values():
            self._check_inode(ino)
        self._check_acl_flag()
        return self.problems

    # -- tree walk --

    def _walk(self) -> dict[int, RawInode]:
        """Every reachable inode (whiteout stubs included), checking dirents."""
        img = self.img
        root = img.inode(img.info.root_nid)
        seen: dict[int, RawInode] = {root.nid: root}
        root_slots: set[bytes] = set()
        stack: list[tuple[RawInode, bytes]] = [(root, b"/")]
        while stack:
            ino, path = stack.pop()
            is_root = ino.nid == root.nid
            for ent in img.dirents(ino, f"directory '{show(path)}' (nid {ino.nid})"):
                if ent.name in (b".", b".."):
                    if ent.file_type != fmt.FT_DIR:
                        self.add(f"directory '{show(path)}' (nid {ino.nid}): "
                                 f"'{ent.name.decode()}' has dirent file type {ent.file_type}")
                    continue
                child = img.inode(ent.nid)
                child_path = join_path(path, ent.name)
                self._check_dirent(ent, child, child_path)
                if is_root and len(ent.name) == 2 and set(ent.name) <= _LOWER_HEX:
                    root_slots.add(ent.name)
                if child.nid in seen:
                    continue
                seen[child.nid] = child
                if child.file_type == S_IFDIR:
                    stack.append((child, child_path))
                self._check_whiteouts(child, child_path, is_root)
        if self.epoch1 and len(root_slots) != fmt.WHITEOUT_STUB_COUNT:
            self.add(f"V0/V1 image has {len(root_slots)} of the 256 whiteout slots "
                     "('00'..'ff') in the root directory")
        return seen

    def _check_dirent(self, ent: RawDirent, child: RawInode, path: bytes) -> None:
        expected = _FILE_TYPE_OF_MODE[child.file_type]
        if ent.file_type != expected:
            self.add(f"'{show(path)}' (nid {child.nid}): dirent file type {ent.file_type} "
                     f"does not match the inode's ({expected})")

    def _check_whiteouts(self, ino: RawInode, path: bytes, in_root: bool) -> None:
        if self.epoch1:
            if not in_root and is_native_whiteout(ino):
                self.add(f"'{show(path)}' (nid {ino.nid}): native whiteout outside the root "
                         "stub table in a V0/V1 image")
        elif is_escaped_whiteout(self.img, ino):
            self.add(f"'{show(path)}' (nid {ino.nid}): escaped whiteout in a V2 image")

    # -- per inode --

    def _check_inode(self, ino: RawInode) -> None:
        info = self.img.info
        where = f"inode nid {ino.nid}"
        if ino.offset < fmt.FIRST_INODE_OFFSET:
            self.add(f"{where}: offset {ino.offset} overlaps the header or superblock")
        # The writers take the minimum over seconds as u64 (composefs-rs
        # calculate_min_mtime), so compare that way.
        u64 = (1 << 64) - 1
        if self.epoch1 and ino.extended and \
                (ino.mtime & u64, ino.mtime_nsec) < (info.build_time & u64, info.build_time_nsec):
            self.add(f"{where}: mtime {ino.mtime}.{ino.mtime_nsec} is earlier than the "
                     f"superblock build time {info.build_time}.{info.build_time_nsec}")
        self._check_inline_tail(ino, where)
        self._check_xattrs(ino, where)
        if ino.layout == fmt.LAYOUT_CHUNK_BASED:
            self._check_chunks(ino, where)
        if ino.file_type == S_IFLNK and ino.size == 0:
            self.add(f"{where}: empty symlink target")
        if ino.file_type in _SPECIAL_TYPES and ino.size:
            # Both writers store 0; a size makes the kernel map data blocks.
            self.add(f"{where}: special file (mode {ino.mode:#o}) has size {ino.size}")

    def _check_inline_tail(self, ino: RawInode, where: str) -> None:
        if ino.layout != fmt.LAYOUT_FLAT_INLINE or ino.size == 0:
            return
        if ino.inline_size == 0:
            # The kernel then takes the whole last block as the inline tail.
            self.add(f"{where}: inline layout with size {ino.size}, a multiple of the "
                     "block size (the kernel sees a 4096-byte tail crossing a block)")
            return
        start = ino.inline_offset
        if start % fmt.BLOCK_SIZE + ino.inline_size > fmt.BLOCK_SIZE:
            self.add(f"{where}: inline data ({ino.inline_size} bytes at offset {start}) "
                     "crosses a block boundary")
        elif self.epoch1 and ino.file_type == S_IFLNK and \
                ino.offset % fmt.BLOCK_SIZE + (ino.end - ino.offset) > fmt.BLOCK_SIZE:
            self.add(f"{where}: fast symlink inode and target cross a block boundary "
                     "(kernels before 6.12 reject it)")

    def _check_xattrs(self, ino: RawInode, where: str) -> None:
        xattrs = self.img.xattrs(ino)
        if not xattrs:
            return
        for x in xattrs:
            if x.name_index in fmt.ACL_PREFIX_INDEXES:
                self.has_acl_index = True
                self.has_acl_name = self.has_acl_name or not x.suffix
        self._check_metacopy_matches_redirect(xattrs, where)
        if not self.img.info.feature_compat & fmt.FEATURE_COMPAT_XATTR_FILTER:
            return
        (name_filter, _count) = fmt.XATTR_IBODY_HEADER.unpack_from(
            self.img.data, ino.offset + ino.header_size)
        for x in xattrs:
            bit = xxh32(x.suffix, fmt.XATTR_FILTER_SEED + x.name_index) % fmt.XATTR_FILTER_BITS
            if name_filter & (1 << bit):
                self.add(f"{where}: xattr name filter {name_filter:#010x} hides "
                         f"'{show(x.name)}' (bit {bit})")

    def _check_metacopy_matches_redirect(self, xattrs: list[Xattr], where: str) -> None:
        values = {x.name: x.value for x in xattrs}
        meta = values.get(fmt.OVERLAY_METACOPY)
        redirect = values.get(fmt.OVERLAY_REDIRECT)
        if not meta or redirect is None:
            return
        digest = fmt.parse_metacopy_value(meta)
        if digest is None:
            return
        named = digest_from_object_path(redirect, len(digest))
        if named is not None and named != digest:
            self.add(f"{where}: metacopy digest {digest.hex()} differs from the redirect "
                     f"'{show(redirect)}'")

    def _check_chunks(self, ino: RawInode, where: str) -> None:
        if ino.u & fmt.CHUNK_FORMAT_INDEXES:
            self.add(f"{where}: chunk format {ino.u:#x} uses chunk indexes "
                     "(composefs writes block maps)")
            return
        chunk_bits = fmt.BLOCK_BITS + (ino.u & fmt.CHUNK_FORMAT_BLKBITS_MASK)
        count = -(-ino.size // (1 << chunk_bits))
        index_end = ino.inline_offset + count * fmt.CHUNK_ENTRY_SIZE
        if index_end > len(self.img.data):
            self.add(f"{where}: chunk index ({count} entries for size {ino.size}) extends "
                     f"past the end of the image ({len(self.img.data)} bytes)")
            return
        if not self.epoch1 or ino.size == 0 or ino.u & ~fmt.CHUNK_FORMAT_BLKBITS_MASK:
            return  # V2 writes no index for some kinds; promoted indexes live in a block
        if count > 1:
            # Several chunks (files > 8 TiB): C mkcomposefs leaves these entries
            # zero in its test vectors; only the single-chunk case is checked.
            return
        start = ino.inline_offset
        entry = self.img.data[start:start + fmt.CHUNK_ENTRY_SIZE]
        if int.from_bytes(entry, "little") != fmt.NULL_CHUNK:
            self.add(f"{where}: chunk index at offset {start} is not null "
                     "(an external file's data must not live in the image)")

    def _check_acl_flag(self) -> None:
        info = self.img.info
        flag = info.has_acl
        if info.epoch == 2:
            if info.flags:
                self.add(f"composefs header flags {info.flags:#x} should be 0 in a V2 image")
        elif self.has_acl_name and not flag:
            self.add("image has POSIX ACL xattrs but the header HAS_ACL flag is not set")
        elif flag and not self.has_acl_index:
            self.add("header HAS_ACL flag is set but the image has no POSIX ACL xattrs")
