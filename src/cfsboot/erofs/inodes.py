"""Turning a tree into the ordered inode list of a composefs image.

Covers spec/erofs-image.md sections 6.1-6.8: whiteout stubs, per-inode xattr
lists (overlay metacopy/redirect, ``trusted.overlay.`` escaping, whiteout
markers), inode order (BFS for V0/V1, DFS for V2), hard links, directory
entry blocks, leaf data/tail sizes and xattr sharing.  Byte placement is in
``layout.py``.

``Options.c_compat`` switches the places where C mkcomposefs differs from
composefs-rs (spec section 11): duplicate xattr names are replaced (with C's
size budget, see ``_c_set_xattr``), every user whiteout is escaped, nlink
comes from ``Leaf.nlink``, a hard-linked inode is placed at ``Leaf.primary``,
device sizes (``Leaf.c_size``) count for compact vs extended, size-0
external files are plain empty files, more than 1024 chunks are refused, at
most 128 shared xattrs per inode, the ACL flag tests exact names.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

from cfsboot.erofs import format as fmt
from cfsboot.erofs.xxh32 import xxh32
from cfsboot.errors import CfsError
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Socket,
    Sparse,
    Stat,
    Symlink,
    is_whiteout,
    leaf_link_counts,
)


class ErofsWriteError(CfsError):
    """The tree cannot be written as a composefs image."""


# Inode kinds: what decides layout, i_u and the inline part.
DIR, INLINE, CHUNKED, EMPTY, SYMLINK, CHRDEV, BLKDEV, FIFO, SOCKET = range(9)

_FILE_TYPE = {DIR: fmt.FT_DIR, INLINE: fmt.FT_REG_FILE, CHUNKED: fmt.FT_REG_FILE,
              EMPTY: fmt.FT_REG_FILE, SYMLINK: fmt.FT_SYMLINK, CHRDEV: fmt.FT_CHRDEV,
              BLKDEV: fmt.FT_BLKDEV, FIFO: fmt.FT_FIFO, SOCKET: fmt.FT_SOCK}
_TYPE_BITS = {fmt.FT_DIR: 0o040000, fmt.FT_REG_FILE: 0o100000, fmt.FT_SYMLINK: 0o120000,
              fmt.FT_CHRDEV: 0o020000, fmt.FT_BLKDEV: 0o060000, fmt.FT_FIFO: 0o010000,
              fmt.FT_SOCK: 0o140000}

C_MAX_CHUNKS = 1024  # LCFS_MAX_NONINLINE_CHUNKS
C_MAX_SHARED_REFS = 128  # EROFS_XATTR_LONG_PREFIX, C's per-inode cap
MAX_SHARED_REFS = 255  # h_shared_count is a u8
C_XATTR_BUDGET = 32767  # LCFS_INODE_EXTERNAL_XATTR_MAX
C_XATTR_ENTRY_COST = 7  # 2 * LCFS_INODE_XATTRMETA_SIZE - 1
_SIZE_T = (1 << 64) - 1
V2_MAX_CHUNKED_SIZE = 1 << (fmt.BLOCK_BITS + fmt.CHUNK_FORMAT_BLKBITS_MASK)  # one 8 TiB chunk

Xattr = tuple[bytes, bytes]  # (full name, value)
DirEntry = tuple[bytes, int, int]  # (name, inode index, dirent file type)


@dataclass(frozen=True, slots=True)
class Options:
    version: int
    c_compat: bool
    epoch1: bool = field(init=False)  # V0/V1 layout family

    def __post_init__(self) -> None:
        object.__setattr__(self, "epoch1", fmt.is_epoch1(self.version))


@dataclass(eq=False, slots=True)
class Inode:
    kind: int
    stat: Stat
    nlink: int = 1
    size: int = 0
    payload: bytes = b""  # Inline data or symlink target
    rdev: int = 0
    c_size: int = 0  # C mode: a device/fifo/socket's SIZE, only for compact vs extended
    c_budget: int = 0  # C mode: lcfs_node_s.xattr_size of the writer's clone
    escaped_whiteout: bool = False
    xattrs: list[Xattr] = field(default_factory=list)  # inline ones after sharing
    bloom: int = 0
    shared: list[int] = field(default_factory=list)  # shared table positions
    chunk_format: int = 0  # CHUNKED, V0/V1: log2(chunk size) - BLOCK_BITS
    n_blocks: int = 0  # full data blocks (directories: dirent blocks)
    tail: int = 0  # bytes stored inline after the xattrs
    dir_blocks: list[list[DirEntry]] = field(default_factory=list)
    dir_inline: list[DirEntry] = field(default_factory=list)

    @property
    def file_type(self) -> int:
        return fmt.FT_REG_FILE if self.escaped_whiteout else _FILE_TYPE[self.kind]

    @property
    def mode(self) -> int:
        return _TYPE_BITS[self.file_type] | (self.stat.mode & 0o7777)


# ---- xattr names ------------------------------------------------------------------


@lru_cache(maxsize=4096)
def split_name(name: bytes, use_lustre: bool) -> tuple[int, bytes]:
    return fmt.split_xattr_name(name, use_lustre)


@lru_cache(maxsize=4096)
def _bloom_bit(name: bytes, use_lustre: bool) -> int:
    index, suffix = split_name(name, use_lustre)
    return 1 << (xxh32(suffix, fmt.XATTR_FILTER_SEED + index) % fmt.XATTR_FILTER_BITS)


def entry_size(name: bytes, value: bytes, use_lustre: bool) -> int:
    """On-disk size of one xattr entry (header, suffix, value, pad to 4)."""
    suffix = split_name(name, use_lustre)[1]
    return (fmt.XATTR_ENTRY.size + len(suffix) + len(value) + 3) & ~3


class _XattrAdder:
    def __init__(self, opts: Options) -> None:
        self.use_lustre = not opts.epoch1
        self.replace = opts.c_compat
        # The bloom bits of every external file's two overlay xattrs, once.
        self.overlay_bloom = (_bloom_bit(fmt.OVERLAY_METACOPY, self.use_lustre)
                              | _bloom_bit(fmt.OVERLAY_REDIRECT, self.use_lustre))

    def add_own(self, inode: Inode, name: bytes, value: bytes) -> None:
        """One of the node's own (stat) xattrs: names are already unique."""
        suffix = split_name(name, self.use_lustre)[1]
        if len(suffix) > 255:
            raise ErofsWriteError(f"xattr name too long: {name!r}")
        if len(value) > 0xFFFF:
            raise ErofsWriteError(f"xattr value too long ({len(value)} bytes) for {name!r}")
        inode.bloom |= _bloom_bit(name, self.use_lustre)
        inode.xattrs.append((name, value))

    def add(self, inode: Inode, name: bytes, value: bytes) -> None:
        """An xattr the writer adds (overlay metacopy/redirect, markers)."""
        inode.bloom |= _bloom_bit(name, self.use_lustre)
        if self.replace:
            _c_set_xattr(inode, name, value)
        else:  # composefs-rs appends blindly, even a duplicate name
            inode.xattrs.append((name, value))


def _c_set_xattr(inode: Inode, name: bytes, value: bytes) -> None:
    """C ``lcfs_node_set_xattr`` on the writer's cloned node: replace an existing
    name, with C's per-node size budget.  The clone starts that budget at 0
    although the node keeps its xattrs, and removing an entry subtracts its
    cost in size_t arithmetic, so replacing a name the writer did not add
    itself can wrap around and fail; C then refuses to write the image."""
    for i, (n, old) in enumerate(inode.xattrs):
        if n == name:
            del inode.xattrs[i]
            inode.c_budget = ((inode.c_budget - C_XATTR_ENTRY_COST - len(name) - len(old))
                              & _SIZE_T if inode.xattrs else 0)
            break
    cost = C_XATTR_ENTRY_COST + len(name) + len(value)
    if not inode.xattrs:
        cost += fmt.XATTR_IBODY_HEADER.size
    if (inode.c_budget + cost) & _SIZE_T > C_XATTR_BUDGET:
        raise ErofsWriteError(f"cannot add xattr {name.decode(errors='replace')!r}: C mkcomposefs "
                              "fails here (Numerical result out of range)")
    inode.c_budget = (inode.c_budget + cost) & _SIZE_T
    inode.xattrs.append((name, value))


# ---- inode creation -----------------------------------------------------------------


def _chunk_bits(size: int) -> int:
    bits = (size - 1).bit_length() if size > 1 else 1
    return min(max(bits, fmt.BLOCK_BITS), fmt.BLOCK_BITS + fmt.CHUNK_FORMAT_BLKBITS_MASK)


def chunk_format(size: int) -> int:
    return _chunk_bits(size) - fmt.BLOCK_BITS


def chunk_count(size: int) -> int:
    return -(-size // (1 << _chunk_bits(size)))


class Collector:
    """Builds the inode list for one image (spec 6.2-6.8)."""

    def __init__(self, root: Directory, opts: Options) -> None:
        self.opts = opts
        self.xattrs = _XattrAdder(opts)
        self.inodes: list[Inode] = []
        self.counts = leaf_link_counts(root)
        self.hardlinks: dict[Leaf, int] = {}
        self.stubs: set[Leaf] = set()
        self.seen_dirs: set[Directory] = set()
        for leaf, n in self.counts.items():
            if n > 1 and is_whiteout(leaf.content):
                raise ErofsWriteError("invalid tree: a whiteout (char device 0/0) "
                                      f"has {n} hard links")
        self.root = self._with_stubs(root) if opts.epoch1 else root

    # -- 6.2
    def _with_stubs(self, root: Directory) -> Directory:
        entries = dict(root.entries)
        selinux = root.stat.xattrs.get(b"security.selinux")
        st = root.stat
        for i in range(fmt.WHITEOUT_STUB_COUNT):
            name = b"%02x" % i
            if name in entries:
                continue
            xattrs = {} if selinux is None else {b"security.selinux": selinux}
            stub = Leaf(Stat(0o644, st.uid, st.gid, st.mtime_sec, st.mtime_nsec, xattrs),
                        CharDevice(0))
            self.stubs.add(stub)
            self.counts[stub] = 1
            entries[name] = stub
        return Directory(root.stat, entries)

    def collect(self) -> list[Inode]:
        if self.opts.epoch1:
            self._collect_bfs()
            self.xattrs.add(self.inodes[0], fmt.OVERLAY_OPAQUE, b"y")
        else:
            self._collect_dfs(self.root)
        return self.inodes

    def _push(self, inode: Inode) -> int:
        self.inodes.append(inode)
        return len(self.inodes) - 1

    def _add_stat_xattrs(self, inode: Inode, stat: Stat) -> None:
        if not stat.xattrs:
            return
        for name, value in sorted(stat.xattrs.items()):
            if name.startswith(fmt.OVERLAY_PREFIX):
                name = fmt.OVERLAY_ESCAPED_PREFIX + name[len(fmt.OVERLAY_PREFIX):]
            self.xattrs.add_own(inode, name, value)

    def _new_dir(self, d: Directory) -> int:
        if d in self.seen_dirs:  # would loop forever or duplicate a subtree
            raise ErofsWriteError("invalid tree: a directory appears more than once")
        self.seen_dirs.add(d)
        inode = Inode(DIR, d.stat)
        self._add_stat_xattrs(inode, d.stat)
        return self._push(inode)

    def _leaf_inode(self, leaf: Leaf) -> int:
        """collect_leaf: the inode of ``leaf``, created on first use."""
        count = self.counts[leaf]
        if count > 1:
            known = self.hardlinks.get(leaf)
            if known is not None:
                return known
        inode = self._make_leaf(leaf, count)
        idx = self._push(inode)
        if count > 1:
            self.hardlinks[leaf] = idx
        return idx

    def _make_leaf(self, leaf: Leaf, count: int) -> Inode:
        opts = self.opts
        c = leaf.content
        nlink = leaf.nlink if opts.c_compat and leaf.nlink is not None else count
        inode = Inode(INLINE, leaf.stat, nlink=nlink)
        # Order matters only for C's replace-and-budget rule (V0/V1 sort later):
        # C's node has its own xattrs before the writer adds any.
        if opts.c_compat:
            self._add_stat_xattrs(inode, leaf.stat)
        add = self.xattrs.add
        kind = type(c)  # exact-type dispatch: this runs once per leaf
        if kind is Inline:
            inode.payload = c.data  # type: ignore[union-attr]
            inode.size = len(inode.payload)
        elif kind is Symlink:
            inode.kind = SYMLINK
            inode.payload = c.target  # type: ignore[union-attr]
            inode.size = len(inode.payload)
        elif kind is External or kind is Sparse:
            size = c.size  # type: ignore[union-attr]
            if opts.c_compat and size == 0:
                inode.kind = EMPTY  # C: a size-0 file without content is a plain empty file
            else:
                inode.kind = CHUNKED
                inode.size = size
                if isinstance(c, External):
                    self._add_overlay_xattrs(inode, c)
                else:
                    add(inode, fmt.OVERLAY_METACOPY, b"")
        elif kind is CharDevice or kind is BlockDevice:
            inode.kind = CHRDEV if kind is CharDevice else BLKDEV
            rdev = c.rdev  # type: ignore[union-attr]
            if opts.c_compat and rdev >= 0:
                rdev &= 0xFFFFFFFF  # C truncates (its whiteout test saw the full value)
            if not 0 <= rdev <= 0xFFFFFFFF:
                raise ErofsWriteError(f"device number {rdev:#x} does not fit in 32 bits")
            inode.rdev = rdev
        elif kind is Fifo:
            inode.kind = FIFO
        elif kind is Socket:
            inode.kind = SOCKET
        else:
            raise TypeError(f"unknown leaf content {c!r}")
        if opts.c_compat and leaf.c_size and inode.kind in (CHRDEV, BLKDEV, FIFO, SOCKET):
            inode.c_size = leaf.c_size
        if not opts.c_compat:  # composefs-rs: overlay xattrs first (V2 keeps this order)
            self._add_stat_xattrs(inode, leaf.stat)
        self._initial_tail(inode, c)
        return inode

    def _add_overlay_xattrs(self, inode: Inode, c: External) -> None:
        digest = c.digest
        if digest is not None and len(digest) not in (32, 64):
            raise ErofsWriteError(f"fs-verity digest of {len(digest)} bytes (must be 32 or 64)")
        metacopy = fmt.metacopy_value(digest)
        if not self.opts.c_compat:  # the common case (one per external file), inlined
            inode.bloom |= self.xattrs.overlay_bloom
            inode.xattrs += ((fmt.OVERLAY_METACOPY, metacopy),
                             (fmt.OVERLAY_REDIRECT, b"/" + c.path))
            return
        self.xattrs.add(inode, fmt.OVERLAY_METACOPY, metacopy)
        if c.path:  # C skips an empty payload
            self.xattrs.add(inode, fmt.OVERLAY_REDIRECT, b"/" + c.path)

    def _initial_tail(self, inode: Inode, content: object) -> None:
        """n_blocks/tail before promotion (6.9)."""
        if not self.opts.epoch1:
            if inode.kind == INLINE:
                inode.tail = inode.size
            elif isinstance(content, External) and content.digest is not None:
                inode.tail = fmt.CHUNK_ENTRY_SIZE  # V2: one null chunk, only with a digest
                if inode.size > V2_MAX_CHUNKED_SIZE:  # that one chunk must cover the file
                    raise ErofsWriteError(f"format V2 cannot describe a {inode.size}-byte "
                                          "external file (more than 8 TiB; use V1)")
            elif inode.kind == SYMLINK:
                inode.tail = inode.size
            return
        kind, size = inode.kind, inode.size
        if kind == CHUNKED:  # the usual leaf of a container tree first
            if size:
                bits = _chunk_bits(size)  # once per file: layout reuses chunk_format
                inode.chunk_format = bits - fmt.BLOCK_BITS
                count = -(-size >> bits)
                if self.opts.c_compat and count > C_MAX_CHUNKS:
                    raise ErofsWriteError(f"File too large: {size} bytes needs {count} "
                                          f"chunks (C mkcomposefs allows {C_MAX_CHUNKS})")
                inode.tail = fmt.CHUNK_ENTRY_SIZE * count
        elif kind == INLINE and size:
            n, t = divmod(size, fmt.BLOCK_SIZE)
            if t > fmt.BLOCK_SIZE // 2:
                n, t = n + 1, 0
            inode.n_blocks, inode.tail = n, t
        elif kind == SYMLINK:
            inode.tail = size

    # -- 6.5, V2
    def _collect_dfs(self, root: Directory) -> None:
        """Pre-order: a directory's inode, then each child in name order with a
        subdirectory's whole subtree before the next sibling (iterative, so
        deep trees don't hit the recursion limit)."""
        me = self._new_dir(root)
        stack = [(me, iter(root.sorted_entries()),
                  [(b".", me, fmt.FT_DIR), (b"..", me, fmt.FT_DIR)])]
        while stack:
            me, it, entries = stack[-1]
            for name, child in it:
                if isinstance(child, Directory):
                    c = self._new_dir(child)
                    entries.append((name, c, fmt.FT_DIR))
                    stack.append((c, iter(child.sorted_entries()),
                                  [(b".", c, fmt.FT_DIR), (b"..", me, fmt.FT_DIR)]))
                    break
                c = self._leaf_inode(child)
                entries.append((name, c, self.inodes[c].file_type))
            else:
                stack.pop()
                entries.sort(key=_entry_name)
                self._layout_dir(self.inodes[me], entries)

    # -- 6.5, V0/V1
    def _canonical_entries(self) -> dict[Leaf, tuple[Directory, bytes]]:
        """(directory, name) of the entry that places each multi-link leaf's
        inode: C's "real" node of a hard-link group.  That is the first path
        in pre-order (the dumpfile line order), or in C mode the path of the
        leaf's full dumpfile line when the parser recorded it."""
        canonical: dict[Leaf, tuple[Directory, bytes]] = {}
        if all(n == 1 for n in self.counts.values()):
            return canonical
        if self.opts.c_compat:
            for leaf, n in self.counts.items():
                if n > 1 and leaf.primary is not None:
                    parent_path, _, name = leaf.primary.rpartition(b"/")
                    parent = self.root.get_path(parent_path)
                    if isinstance(parent, Directory) and parent.entries.get(name) is leaf:
                        canonical[leaf] = (parent, name)
        it_stack = [(self.root, iter(self.root.sorted_entries()))]
        while it_stack:
            d, it = it_stack[-1]
            for name, child in it:
                if isinstance(child, Directory):
                    it_stack.append((child, iter(child.sorted_entries())))
                    break
                if self.counts[child] > 1 and child not in canonical:
                    canonical[child] = (d, name)
            else:
                it_stack.pop()
        return canonical

    def _is_stub(self, name: bytes, leaf: Leaf) -> bool:
        if self.opts.c_compat:
            return leaf in self.stubs
        root = self.root.stat
        st = leaf.stat
        want = {} if b"security.selinux" not in root.xattrs else {
            b"security.selinux": root.xattrs[b"security.selinux"]}
        return (len(name) == 2 and all(ch in b"0123456789abcdef" for ch in name)
                and st.mode == 0o644 and st.uid == root.uid and st.gid == root.gid
                and st.mtime_sec == root.mtime_sec and st.mtime_nsec == root.mtime_nsec
                and st.xattrs == want)

    def _collect_bfs(self) -> None:
        canonical = self._canonical_entries()
        add = self.xattrs.add
        root_idx = self._new_dir(self.root)
        queue: deque[tuple[Directory, int, int]] = deque([(self.root, root_idx, root_idx)])
        dirs: list[tuple[int, list[tuple[bytes, int | Leaf, int]]]] = []
        while queue:
            d, parent, me = queue.popleft()
            entries: list[tuple[bytes, int | Leaf, int]] = [
                (b".", me, fmt.FT_DIR), (b"..", parent, fmt.FT_DIR)]
            had_whiteout = False
            for name, child in d.sorted_entries():
                if isinstance(child, Directory):
                    c = self._new_dir(child)
                    queue.append((child, me, c))
                    entries.append((name, c, fmt.FT_DIR))
                    continue
                where = canonical.get(child)
                is_canonical = where is None or (where[0] is d and where[1] == name)
                if is_canonical:
                    ref: int | Leaf = self._leaf_inode(child)
                else:  # a later link: its inode may not exist yet (resolved below)
                    ref = self.hardlinks.get(child, child)
                if isinstance(ref, Leaf):
                    entries.append((name, ref, fmt.FT_UNKNOWN))
                    continue
                inode = self.inodes[ref]
                if (is_canonical and inode.kind == CHRDEV and inode.rdev == 0
                        and not inode.escaped_whiteout
                        and not (me == root_idx and self._is_stub(name, child))):
                    inode.escaped_whiteout = True
                    inode.c_size = 0  # C: "a chardev with nonzero size ... discard that"
                    add(inode, fmt.ESCAPED_WHITEOUT, b"")
                    add(inode, fmt.USER_WHITEOUT, b"")
                    had_whiteout = True
                entries.append((name, ref, inode.file_type))
            if had_whiteout:
                inode = self.inodes[me]
                add(inode, fmt.ESCAPED_WHITEOUTS, b"")
                add(inode, fmt.USER_WHITEOUTS, b"")
                if self.opts.version >= 1:
                    add(inode, fmt.ESCAPED_OPAQUE, b"x")
                    add(inode, fmt.USER_OPAQUE, b"x")
            dirs.append((me, entries))
        for me, entries in dirs:
            resolved = [self._resolve(e) for e in entries]
            resolved.sort(key=_entry_name)
            self._layout_dir(self.inodes[me], resolved)

    def _resolve(self, e: tuple[bytes, int | Leaf, int]) -> DirEntry:
        name, ref, ftype = e
        if isinstance(ref, int):
            return (name, ref, ftype)
        idx = self.hardlinks[ref]
        return (name, idx, self.inodes[idx].file_type)

    # -- 6.8
    def _layout_dir(self, inode: Inode, entries: list[DirEntry]) -> None:
        blocks: list[list[DirEntry]] = []
        cur: list[DirEntry] = []
        used = 0
        nlink = 0
        for e in entries:
            sz = fmt.DIRENT.size + len(e[0])
            if sz > fmt.BLOCK_SIZE:
                raise ErofsWriteError(f"file name too long ({len(e[0])} bytes)")
            if e[2] == fmt.FT_DIR:
                nlink += 1
            used += sz
            if used <= fmt.BLOCK_SIZE:
                cur.append(e)
            else:
                blocks.append(cur)
                cur, used = [e], sz
        if used > fmt.INLINE_DIRENTS_MAX:
            blocks.append(cur)
            cur, used = [], 0
        inode.dir_blocks = blocks
        inode.dir_inline = cur
        inode.n_blocks = len(blocks)
        inode.tail = used
        inode.size = fmt.BLOCK_SIZE * len(blocks) + used
        inode.nlink = nlink


def _entry_name(e: DirEntry) -> bytes:
    return e[0]


# ---- 6.6, 6.7 ----------------------------------------------------------------------


def has_acl(inodes: list[Inode], c_compat: bool) -> bool:
    """Header flag: C tests the exact ACL names, composefs-rs the prefix index."""
    for inode in inodes:
        for name, _value in inode.xattrs:
            if c_compat:
                if name in (b"system.posix_acl_access", b"system.posix_acl_default"):
                    return True
            elif name.startswith((b"system.posix_acl_access", b"system.posix_acl_default")):
                return True
    return False


def _full_key(x: Xattr) -> tuple[bytes, int, bytes]:
    return (x[0], len(x[1]), x[1])


def share_xattrs(inodes: list[Inode], opts: Options) -> list[Xattr]:
    """Move xattrs used more than once to the shared table; returns the table."""
    use_lustre = not opts.epoch1
    counts: dict[Xattr, int] = {}
    for inode in inodes:
        if opts.epoch1 and len(inode.xattrs) > 1:
            inode.xattrs.sort(key=_full_key)
        for x in inode.xattrs:
            counts[x] = counts.get(x, 0) + 1
    table = [x for x, n in counts.items() if n > 1]
    if not table:
        return table
    if opts.epoch1:
        table.sort(key=_full_key, reverse=True)
    else:
        def v2_key(x: Xattr) -> tuple[int, bytes, bytes]:
            index, suffix = split_name(x[0], use_lustre)
            return (index, suffix, x[1])
        table.sort(key=v2_key)
    position = {x: i for i, x in enumerate(table)}
    limit = C_MAX_SHARED_REFS if opts.c_compat else None
    for inode in inodes:
        if not inode.xattrs:
            continue
        local: list[Xattr] = []
        for x in inode.xattrs:
            pos = position.get(x)
            if pos is not None and (limit is None or len(inode.shared) < limit):
                inode.shared.append(pos)
            else:
                local.append(x)
        if len(inode.shared) > MAX_SHARED_REFS:
            raise ErofsWriteError(f"an inode references {len(inode.shared)} shared xattrs "
                                  f"(at most {MAX_SHARED_REFS})")
        inode.xattrs = local
    return table
