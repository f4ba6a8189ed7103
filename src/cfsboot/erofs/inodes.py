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

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, compress
from operator import itemgetter

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
)


class ErofsWriteError(CfsError):
    """The tree cannot be written as a composefs image."""


# Inode kinds: what decides layout, i_u and the inline part.
DIR, INLINE, CHUNKED, EMPTY, SYMLINK, CHRDEV, BLKDEV, FIFO, SOCKET = range(9)

# Dirent file type by kind (an escaped whiteout's is changed to FT_REG_FILE).
_FILE_TYPE = [fmt.FT_DIR, fmt.FT_REG_FILE, fmt.FT_REG_FILE, fmt.FT_REG_FILE, fmt.FT_SYMLINK,
              fmt.FT_CHRDEV, fmt.FT_BLKDEV, fmt.FT_FIFO, fmt.FT_SOCK]

C_MAX_CHUNKS = 1024  # LCFS_MAX_NONINLINE_CHUNKS
C_MAX_SHARED_REFS = 128  # EROFS_XATTR_LONG_PREFIX, C's per-inode cap
MAX_SHARED_REFS = 255  # h_shared_count is a u8
C_XATTR_BUDGET = 32767  # LCFS_INODE_EXTERNAL_XATTR_MAX
C_XATTR_ENTRY_COST = 7  # 2 * LCFS_INODE_XATTRMETA_SIZE - 1
_SIZE_T = (1 << 64) - 1
V2_MAX_CHUNKED_SIZE = 1 << (fmt.BLOCK_BITS + fmt.CHUNK_FORMAT_BLKBITS_MASK)  # one 8 TiB chunk
V2_CHUNK_FORMAT = 31  # V2 i_u of every chunked file, whatever its size
ONE_CHUNK_MAX = V2_MAX_CHUNKED_SIZE  # V0/V1: larger files need more than one chunk entry
_METACOPY_HEADERS = fmt.METACOPY_HEADER_BY_LEN

Xattr = tuple[bytes, bytes]  # (full name, value)
DirEntry = tuple[bytes, int, int]  # (name, inode index, dirent file type)


@dataclass(frozen=True, slots=True)
class Options:
    version: int
    c_compat: bool
    epoch1: bool = field(init=False)  # V0/V1 layout family

    def __post_init__(self) -> None:
        object.__setattr__(self, "epoch1", fmt.is_epoch1(self.version))


class Inode:
    """One inode of the image, as the layout needs it.

    A plain slotted class rather than a dataclass: one is made per tree node
    (28k for a distribution image) and a generated ``__init__`` with list
    factories cost twice as much.  Fields only some kinds use default to
    shared immutable values (empty tuples) and are replaced, never mutated.
    """

    __slots__ = ("bloom", "c_size", "dir_blocks", "dir_inline", "ftype", "i_u", "kind",
                 "n_blocks", "nlink", "payload", "shared", "size", "stat", "tail", "xattrs")

    kind: int
    stat: Stat
    nlink: int
    size: int
    payload: bytes  # Inline data or symlink target
    c_size: int  # C mode: a device/fifo/socket's SIZE, only for compact vs extended
    ftype: int  # dirent file type (FT_REG_FILE for an escaped whiteout)
    xattrs: list[Xattr]  # inline ones after sharing
    bloom: int
    shared: tuple[int, ...]  # shared table positions
    i_u: int  # header i_u before block addresses: chunk format bits or device number
    n_blocks: int  # full data blocks (directories: dirent blocks)
    tail: int  # bytes stored inline after the xattrs
    dir_blocks: Sequence[Sequence[DirEntry]]
    dir_inline: Sequence[DirEntry]

    def __init__(self, kind: int, stat: Stat, nlink: int = 1, size: int = 0,
                 xattrs: list[Xattr] | None = None, bloom: int = 0, i_u: int = 0,
                 tail: int = 0) -> None:
        self.kind = kind
        self.stat = stat
        self.nlink = nlink
        self.size = size
        self.payload = b""
        self.c_size = 0
        self.ftype = _FILE_TYPE[kind]
        self.xattrs = [] if xattrs is None else xattrs
        self.bloom = bloom
        self.shared = ()
        self.i_u = i_u
        self.n_blocks = 0
        self.tail = tail
        self.dir_blocks = ()
        self.dir_inline = ()


# ---- xattr names ------------------------------------------------------------------


@lru_cache(maxsize=4096)
def split_name(name: bytes, use_lustre: bool) -> tuple[int, bytes]:
    return fmt.split_xattr_name(name, use_lustre)


@lru_cache(maxsize=4096)
def _bloom_bit(name: bytes, use_lustre: bool) -> int:
    index, suffix = split_name(name, use_lustre)
    return 1 << (xxh32(suffix, fmt.XATTR_FILTER_SEED + index) % fmt.XATTR_FILTER_BITS)


class _XattrAdder:
    def __init__(self, opts: Options) -> None:
        self.use_lustre = not opts.epoch1
        self.replace = opts.c_compat
        # C mode: lcfs_node_s.xattr_size of the writer's clone of each node.
        self.c_budgets: dict[Inode, int] = {}
        # The bloom bits of every external file's two overlay xattrs, once.
        self.overlay_bloom = (_bloom_bit(fmt.OVERLAY_METACOPY, self.use_lustre)
                              | _bloom_bit(fmt.OVERLAY_REDIRECT, self.use_lustre))
        # A stat xattr (name, value) -> (the xattr as stored, its bloom bit),
        # checked once: a labelled tree repeats a handful on every node.
        self.own: dict[tuple[bytes, bytes], tuple[Xattr, int]] = {}

    def add_own(self, inode: Inode, xattrs: dict[bytes, bytes]) -> None:
        """A node's own (stat) xattrs, in name order: names are already unique.
        ``trusted.overlay.*`` names are escaped (6.3)."""
        known = self.own
        for item in sorted(xattrs.items()) if len(xattrs) > 1 else xattrs.items():
            stored = known.get(item) or self._own(item)
            inode.bloom |= stored[1]
            inode.xattrs.append(stored[0])

    def _own(self, item: tuple[bytes, bytes]) -> tuple[Xattr, int]:
        name, value = item
        if name.startswith(fmt.OVERLAY_PREFIX):
            name = fmt.OVERLAY_ESCAPED_PREFIX + name[len(fmt.OVERLAY_PREFIX):]
        if len(split_name(name, self.use_lustre)[1]) > 255:
            raise ErofsWriteError(f"xattr name too long: {name!r}")
        if len(value) > 0xFFFF:
            raise ErofsWriteError(f"xattr value too long ({len(value)} bytes) for {name!r}")
        stored = self.own[item] = ((name, value), _bloom_bit(name, self.use_lustre))
        return stored

    def add(self, inode: Inode, name: bytes, value: bytes) -> None:
        """An xattr the writer adds (overlay metacopy/redirect, markers)."""
        inode.bloom |= _bloom_bit(name, self.use_lustre)
        if self.replace:
            _c_set_xattr(inode, name, value, self.c_budgets)
        else:  # composefs-rs appends blindly, even a duplicate name
            inode.xattrs.append((name, value))


def _c_set_xattr(inode: Inode, name: bytes, value: bytes, budgets: dict[Inode, int]) -> None:
    """C ``lcfs_node_set_xattr`` on the writer's cloned node: replace an existing
    name, with C's per-node size budget.  The clone starts that budget at 0
    although the node keeps its xattrs, and removing an entry subtracts its
    cost in size_t arithmetic, so replacing a name the writer did not add
    itself can wrap around and fail; C then refuses to write the image."""
    budget = budgets.get(inode, 0)
    for i, (n, old) in enumerate(inode.xattrs):
        if n == name:
            del inode.xattrs[i]
            budget = ((budget - C_XATTR_ENTRY_COST - len(name) - len(old)) & _SIZE_T
                      if inode.xattrs else 0)
            break
    cost = C_XATTR_ENTRY_COST + len(name) + len(value)
    if not inode.xattrs:
        cost += fmt.XATTR_IBODY_HEADER.size
    if (budget + cost) & _SIZE_T > C_XATTR_BUDGET:
        raise ErofsWriteError(f"cannot add xattr {name.decode(errors='replace')!r}: C mkcomposefs "
                              "fails here (Numerical result out of range)")
    budgets[inode] = (budget + cost) & _SIZE_T
    inode.xattrs.append((name, value))


# ---- inode creation -----------------------------------------------------------------


def _chunk_bits(size: int) -> int:
    bits = (size - 1).bit_length() if size > 1 else 1
    return min(max(bits, fmt.BLOCK_BITS), fmt.BLOCK_BITS + fmt.CHUNK_FORMAT_BLKBITS_MASK)


def _link_counts(root: Directory) -> dict[Directory | Leaf, int]:
    """Directory entries referring to each node (identity keyed), counted by
    ``Counter`` in C.  A directory found twice (or in a cycle, which would
    never end) is refused: its subtree would be written twice."""
    dirs = [root]
    seen = {root}  # directories compare by identity
    for d in dirs:  # grows while it is walked: every directory, once
        for sub in [c for c in d.entries.values() if isinstance(c, Directory)]:
            if sub in seen:
                raise ErofsWriteError("invalid tree: a directory appears more than once")
            seen.add(sub)
            dirs.append(sub)
    return Counter(chain.from_iterable([d.entries.values() for d in dirs]))


class Collector:
    """Builds the inode list for one image (spec 6.2-6.8)."""

    def __init__(self, root: Directory, opts: Options) -> None:
        self.opts = opts
        self.xattrs = _XattrAdder(opts)
        self.inodes: list[Inode] = []
        self.counts = _link_counts(root)
        self.hardlinks: dict[Leaf, int] = {}
        self.stubs: set[Leaf] = set()
        for node, n in self.counts.items():
            if n > 1 and isinstance(node, Leaf) and is_whiteout(node.content):
                raise ErofsWriteError("invalid tree: a whiteout (char device 0/0) "
                                      f"has {n} hard links")
        self.root = self._with_stubs(root) if opts.epoch1 else root
        self.rs_mode = not opts.c_compat
        self.epoch1 = opts.epoch1
        self.one_chunk_max = ONE_CHUNK_MAX if opts.epoch1 else 0  # 0: no fast chunk index
        self.c_fast = opts.c_compat and opts.epoch1  # _make_c_external applies
        self.overlay_bloom = self.xattrs.overlay_bloom

    @property
    def own_xattr_names(self) -> Iterable[bytes]:
        """Every stat xattr name met (the only names that can be ACLs)."""
        return (name for name, _ in self.xattrs.own)

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

    def _new_dir(self, d: Directory) -> int:
        inode = Inode(DIR, d.stat)
        if d.stat.xattrs:
            self.xattrs.add_own(inode, d.stat.xattrs)
        return self._push(inode)

    def _leaf_inode(self, leaf: Leaf) -> int:
        """collect_leaf: the inode of ``leaf``, created on first use."""
        count = self.counts[leaf]
        if count > 1:
            known = self.hardlinks.get(leaf)
            if known is not None:
                return known
        idx = self._push(self._make_leaf(leaf, count))
        if count > 1:
            self.hardlinks[leaf] = idx
        return idx

    def _make_leaf(self, leaf: Leaf, count: int) -> Inode:
        c = leaf.content
        if type(c) is External and self.rs_mode:
            # The usual leaf of a container tree (25k of 28k inodes): an
            # external file in composefs-rs mode, written out here.
            digest = c.digest
            if digest is None:
                metacopy = b""
            elif (header := _METACOPY_HEADERS.get(len(digest))) is not None:
                metacopy = header + digest
            else:
                raise ErofsWriteError(f"fs-verity digest of {len(digest)} bytes "
                                      "(must be 32 or 64)")
            size = c.size
            if 0 < size <= self.one_chunk_max:  # V0/V1: a one-entry null chunk index (6.9)
                i_u = (size - 1).bit_length() - fmt.BLOCK_BITS if size > fmt.BLOCK_SIZE else 0
                tail = fmt.CHUNK_ENTRY_SIZE
            else:
                i_u = tail = 0
            overlay = [(fmt.OVERLAY_METACOPY, metacopy), (fmt.OVERLAY_REDIRECT, b"/" + c.path)]
            own = leaf.stat.xattrs
            if own and self.epoch1:
                # V0/V1 sort the xattrs by name later; own names (a label, a
                # capability) usually sort first, so this order needs no sort.
                inode = Inode(CHUNKED, leaf.stat, count, size, None, self.overlay_bloom,
                              i_u, tail)
                self.xattrs.add_own(inode, own)
                inode.xattrs += overlay
            else:  # V2 keeps this order: overlay xattrs first
                inode = Inode(CHUNKED, leaf.stat, count, size, overlay, self.overlay_bloom,
                              i_u, tail)
                if own:
                    self.xattrs.add_own(inode, own)
            if not tail:
                self._initial_tail(inode, c)
            return inode
        if type(c) is External and c.size and c.path and self.c_fast:
            made = self._make_c_external(leaf, c, count)
            if made is not None:
                return made
        return self._make_other_leaf(leaf, count)

    def _make_c_external(self, leaf: Leaf, c: External, count: int) -> Inode | None:
        """The usual leaf in C mode (``mkcomposefs DIR``): a non-empty external
        file with a payload, as ``_make_other_leaf`` makes it, without the
        general xattr machinery.  None when C's per-node xattr budget could be
        exceeded: the general path then fails exactly as C does."""
        size = c.size
        if size > self.one_chunk_max:
            return None
        metacopy = _metacopy(c.digest)
        redirect = b"/" + c.path
        own = leaf.stat.xattrs
        # _c_set_xattr's budget for the two overlay xattrs (own names never
        # collide: trusted.overlay.* ones are escaped).
        cost = (2 * C_XATTR_ENTRY_COST + len(fmt.OVERLAY_METACOPY) + len(metacopy)
                + len(fmt.OVERLAY_REDIRECT) + len(redirect)
                + (0 if own else fmt.XATTR_IBODY_HEADER.size))
        if cost > C_XATTR_BUDGET:
            return None
        i_u = (size - 1).bit_length() - fmt.BLOCK_BITS if size > fmt.BLOCK_SIZE else 0
        nlink = leaf.nlink if leaf.nlink is not None else count
        inode = Inode(CHUNKED, leaf.stat, nlink, size, None, self.overlay_bloom, i_u,
                      fmt.CHUNK_ENTRY_SIZE)
        if own:
            self.xattrs.add_own(inode, own)
        inode.xattrs += [(fmt.OVERLAY_METACOPY, metacopy), (fmt.OVERLAY_REDIRECT, redirect)]
        return inode

    def _make_other_leaf(self, leaf: Leaf, count: int) -> Inode:
        opts = self.opts
        c = leaf.content
        kind = type(c)  # exact-type dispatch
        nlink = leaf.nlink if opts.c_compat and leaf.nlink is not None else count
        inode = Inode(INLINE, leaf.stat, nlink)
        # Order matters only for C's replace-and-budget rule (V0/V1 sort later):
        # C's node has its own xattrs before the writer adds any.
        if opts.c_compat and leaf.stat.xattrs:
            self.xattrs.add_own(inode, leaf.stat.xattrs)
        add = self.xattrs.add
        if kind is Inline:
            inode.payload = c.data  # type: ignore[union-attr]
            inode.size = len(inode.payload)
        elif kind is Symlink:
            inode.kind, inode.ftype = SYMLINK, fmt.FT_SYMLINK
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
                    add(inode, fmt.OVERLAY_METACOPY, _metacopy(c.digest))
                    if c.path or not opts.c_compat:  # C skips an empty payload
                        add(inode, fmt.OVERLAY_REDIRECT, b"/" + c.path)
                else:
                    add(inode, fmt.OVERLAY_METACOPY, b"")
        elif kind is CharDevice or kind is BlockDevice:
            inode.kind = CHRDEV if kind is CharDevice else BLKDEV
            inode.ftype = _FILE_TYPE[inode.kind]
            rdev = c.rdev  # type: ignore[union-attr]
            if opts.c_compat and rdev >= 0:
                rdev &= 0xFFFFFFFF  # C truncates (its whiteout test saw the full value)
            if not 0 <= rdev <= 0xFFFFFFFF:
                raise ErofsWriteError(f"device number {rdev:#x} does not fit in 32 bits")
            inode.i_u = rdev
        elif kind is Fifo:
            inode.kind, inode.ftype = FIFO, fmt.FT_FIFO
        elif kind is Socket:
            inode.kind, inode.ftype = SOCKET, fmt.FT_SOCK
        else:
            raise TypeError(f"unknown leaf content {c!r}")
        if opts.c_compat and leaf.c_size and inode.kind in (CHRDEV, BLKDEV, FIFO, SOCKET):
            inode.c_size = leaf.c_size
        if not opts.c_compat and leaf.stat.xattrs:  # composefs-rs: overlay xattrs first
            self.xattrs.add_own(inode, leaf.stat.xattrs)
        self._initial_tail(inode, c)
        return inode

    @staticmethod
    def _v2_null_chunk(inode: Inode) -> None:
        """V2: one null chunk (only with a digest) of the largest chunk size."""
        inode.tail = fmt.CHUNK_ENTRY_SIZE
        if inode.size > V2_MAX_CHUNKED_SIZE:  # that one chunk must cover the file
            raise ErofsWriteError(f"format V2 cannot describe a {inode.size}-byte "
                                  "external file (more than 8 TiB; use V1)")

    def _initial_tail(self, inode: Inode, content: object) -> None:
        """n_blocks/tail before promotion (6.9)."""
        kind, size = inode.kind, inode.size
        if not self.opts.epoch1:
            if kind in (INLINE, SYMLINK):
                inode.tail = size
            elif kind == CHUNKED:
                inode.i_u = V2_CHUNK_FORMAT
                if isinstance(content, External) and content.digest is not None:
                    self._v2_null_chunk(inode)
            return
        if kind == CHUNKED:
            if size:
                bits = _chunk_bits(size)
                inode.i_u = bits - fmt.BLOCK_BITS
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
        stack = [(me, iter(sorted(root.entries.items())),
                  [(b".", me, fmt.FT_DIR), (b"..", me, fmt.FT_DIR)])]
        while stack:
            me, it, entries = stack[-1]
            for name, child in it:
                if isinstance(child, Directory):
                    c = self._new_dir(child)
                    entries.append((name, c, fmt.FT_DIR))
                    stack.append((c, iter(sorted(child.entries.items())),
                                  [(b".", c, fmt.FT_DIR), (b"..", me, fmt.FT_DIR)]))
                    break
                c = self._leaf_inode(child)
                entries.append((name, c, self.inodes[c].ftype))
            else:
                stack.pop()
                self._layout_dir(self.inodes[me], entries)

    # -- 6.5, V0/V1
    def _canonical_entries(self) -> dict[Leaf, tuple[Directory, bytes]]:
        """(directory, name) of the entry that places each multi-link leaf's
        inode: C's "real" node of a hard-link group.  That is the first path
        in pre-order (the dumpfile line order), or in C mode the path of the
        leaf's full dumpfile line when the parser recorded it.

        Pre-order visits paths in the order of their name lists, so the first
        path of a leaf is the least (directory path + (name,)); only the few
        directories holding a hard link are looked into."""
        counts = self.counts
        multi = set(compress(counts.keys(), map((1).__lt__, counts.values())))
        canonical: dict[Leaf, tuple[Directory, bytes]] = {}
        if not multi:
            return canonical
        if self.opts.c_compat:
            for leaf in multi:
                if isinstance(leaf, Leaf) and leaf.primary is not None:
                    parent_path, _, name = leaf.primary.rpartition(b"/")
                    parent = self.root.get_path(parent_path)
                    if isinstance(parent, Directory) and parent.entries.get(name) is leaf:
                        canonical[leaf] = (parent, name)
        first: dict[Leaf, tuple[tuple[bytes, ...], Directory, bytes]] = {}
        stack: list[tuple[Directory, tuple[bytes, ...]]] = [(self.root, ())]
        while stack:
            d, path = stack.pop()
            stack += [(sub, (*path, name)) for name, sub in d.entries.items()
                      if isinstance(sub, Directory)]
            if multi.isdisjoint(d.entries.values()):
                continue
            for name, child in d.entries.items():
                if isinstance(child, Leaf) and child in multi and child not in canonical:
                    where = (*path, name)
                    known = first.get(child)
                    if known is None or where < known[0]:
                        first[child] = (where, d, name)
        for leaf, (_, d, name) in first.items():
            canonical[leaf] = (d, name)
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
        inodes, counts, make_leaf = self.inodes, self.counts, self._make_leaf
        root_idx = self._new_dir(self.root)
        queue: deque[tuple[Directory, int, int]] = deque([(self.root, root_idx, root_idx)])
        dirs: list[tuple[int, list[tuple[bytes, int | Leaf, int]], bool]] = []
        while queue:
            d, parent, me = queue.popleft()
            entries: list[tuple[bytes, int | Leaf, int]] = [
                (b".", me, fmt.FT_DIR), (b"..", parent, fmt.FT_DIR)]
            unresolved = had_whiteout = False
            for name, child in sorted(d.entries.items()):
                if isinstance(child, Directory):
                    c = self._new_dir(child)
                    queue.append((child, me, c))
                    entries.append((name, c, fmt.FT_DIR))
                    continue
                if counts[child] == 1:  # no hard links: the inode is made here
                    ref = len(inodes)
                    inode = make_leaf(child, 1)
                    inodes.append(inode)
                    is_canonical = True
                else:
                    where = canonical.get(child)
                    is_canonical = where is None or (where[0] is d and where[1] == name)
                    if is_canonical:
                        ref = self._leaf_inode(child)
                    elif child in self.hardlinks:
                        ref = self.hardlinks[child]
                    else:  # a later link: its inode does not exist yet (resolved below)
                        entries.append((name, child, fmt.FT_UNKNOWN))
                        unresolved = True
                        continue
                    inode = inodes[ref]
                if (inode.kind == CHRDEV and is_canonical and inode.i_u == 0  # a whiteout
                        and inode.ftype == fmt.FT_CHRDEV  # not escaped yet
                        and not (me == root_idx and self._is_stub(name, child))):
                    self._escape_whiteout(inode)
                    had_whiteout = True
                entries.append((name, ref, inode.ftype))
            if had_whiteout:
                self._mark_whiteout_dir(inodes[me])
            dirs.append((me, entries, unresolved))
        for me, entries, unresolved in dirs:
            if unresolved:
                self._layout_dir(inodes[me], [self._resolve(e) for e in entries])
            else:
                self._layout_dir(inodes[me], entries)  # type: ignore[arg-type]

    def _escape_whiteout(self, inode: Inode) -> None:
        """A whiteout in the tree becomes a regular file with escaped whiteout
        xattrs (V0/V1: the real whiteouts are the root stubs)."""
        inode.ftype = fmt.FT_REG_FILE
        inode.c_size = 0  # C: "a chardev with nonzero size ... discard that"
        self.xattrs.add(inode, fmt.ESCAPED_WHITEOUT, b"")
        self.xattrs.add(inode, fmt.USER_WHITEOUT, b"")

    def _mark_whiteout_dir(self, inode: Inode) -> None:
        add = self.xattrs.add
        add(inode, fmt.ESCAPED_WHITEOUTS, b"")
        add(inode, fmt.USER_WHITEOUTS, b"")
        if self.opts.version >= 1:
            add(inode, fmt.ESCAPED_OPAQUE, b"x")
            add(inode, fmt.USER_OPAQUE, b"x")

    def _resolve(self, e: tuple[bytes, int | Leaf, int]) -> DirEntry:
        name, ref, ftype = e
        if isinstance(ref, int):
            return (name, ref, ftype)
        idx = self.hardlinks[ref]
        return (name, idx, self.inodes[idx].ftype)

    # -- 6.8
    def _layout_dir(self, inode: Inode, entries: list[DirEntry]) -> None:
        """Entries in name order, split into full blocks and an inline tail.
        ``entries`` holds "." and ".." first, then the children in name order."""
        if len(entries) > 2 and entries[2][0] < b"..":  # a name sorts before "."/".."
            entries.sort(key=_entry_name)
        used = fmt.DIRENT.size * len(entries)
        nlink = 0
        for name, _, ftype in entries:
            used += len(name)
            if ftype == fmt.FT_DIR:
                nlink += 1
        inode.nlink = nlink
        if used <= fmt.INLINE_DIRENTS_MAX:  # the usual directory: all inline
            inode.dir_inline = entries
            inode.tail = inode.size = used
            return
        blocks: list[list[DirEntry]] = []
        cur: list[DirEntry] = []
        used = 0
        for e in entries:
            sz = fmt.DIRENT.size + len(e[0])
            if sz > fmt.BLOCK_SIZE:
                raise ErofsWriteError(f"file name too long ({len(e[0])} bytes)")
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


_entry_name = itemgetter(0)


def _metacopy(digest: bytes | None) -> bytes:
    if digest is not None and len(digest) not in (32, 64):
        raise ErofsWriteError(f"fs-verity digest of {len(digest)} bytes (must be 32 or 64)")
    return fmt.metacopy_value(digest)
