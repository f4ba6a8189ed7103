"""The filesystem tree shared by every layer: dumpfiles, scans, EROFS images.

It mirrors composefs-rs's ``generic_tree``: a root directory whose entries map a
name (bytes) to a child directory or to a leaf.  A leaf that appears under
several names is one ``Leaf`` object referenced from several directories; that
*identity* is what makes hard links (``Leaf`` compares by identity, not value).

Stat keeps what the image stores: permission bits (``mode & 0o7777``; the file
type is implied by the node kind), uid, gid, mtime with nanoseconds and the
xattrs (raw bytes names and values).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

S_IFMT = 0o170000
S_IFREG = 0o100000
S_IFDIR = 0o040000
S_IFLNK = 0o120000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
S_IFIFO = 0o010000
S_IFSOCK = 0o140000


@dataclass(slots=True)
class Stat:
    mode: int  # permission bits only (mode & 0o7777)
    uid: int
    gid: int
    mtime_sec: int
    mtime_nsec: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    def copy(self) -> Stat:
        return Stat(self.mode, self.uid, self.gid, self.mtime_sec, self.mtime_nsec,
                    dict(self.xattrs))


def object_path(digest: bytes) -> bytes:
    """``xx/rest`` relative path of an object named by its fs-verity digest."""
    h = digest.hex().encode()
    return h[:2] + b"/" + h[2:]


def digest_from_object_path(path: bytes, digest_size: int) -> bytes | None:
    """Parse the trailing ``xx/yyyy…`` of ``path`` (composefs-rs
    ``from_object_pathname``); None when it does not end in an object path."""
    n = 2 * digest_size + 1
    tail = path[-n:]
    if len(tail) != n or tail[2:3] != b"/":
        return None
    try:
        return bytes.fromhex((tail[:2] + tail[3:]).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


# ---- leaf contents ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Inline:
    """Regular file whose bytes live in the image."""
    data: bytes


@dataclass(frozen=True, slots=True)
class External:
    """Regular file whose bytes live in a backing object.

    ``path`` is the backing path relative to the object store, normally
    ``object_path(digest)``.  ``digest`` is the asserted fs-verity digest, or
    None when it is not asserted (composefs-rs ``ExternalNoVerity``; C
    mkcomposefs payloads without a DIGEST field).
    """
    size: int
    path: bytes
    digest: bytes | None

    @staticmethod
    def from_digest(digest: bytes, size: int) -> External:
        return External(size, object_path(digest), digest)


@dataclass(frozen=True, slots=True)
class Sparse:
    """Regular file with a size but no data (reads as zeros)."""
    size: int


@dataclass(frozen=True, slots=True)
class Symlink:
    target: bytes


@dataclass(frozen=True, slots=True)
class CharDevice:
    rdev: int


@dataclass(frozen=True, slots=True)
class BlockDevice:
    rdev: int


@dataclass(frozen=True, slots=True)
class Fifo:
    pass


@dataclass(frozen=True, slots=True)
class Socket:
    pass


LeafContent: TypeAlias = (
    Inline | External | Sparse | Symlink | CharDevice | BlockDevice | Fifo | Socket
)


def content_type_bits(content: LeafContent) -> int:
    """The S_IFMT bits of a leaf content kind."""
    match content:
        case Inline() | External() | Sparse():
            return S_IFREG
        case Symlink():
            return S_IFLNK
        case CharDevice():
            return S_IFCHR
        case BlockDevice():
            return S_IFBLK
        case Fifo():
            return S_IFIFO
        case Socket():
            return S_IFSOCK
    raise TypeError(content)


def is_whiteout(content: LeafContent) -> bool:
    """An overlayfs whiteout: a character device with rdev 0."""
    return isinstance(content, CharDevice) and content.rdev == 0


# ---- nodes -----------------------------------------------------------------

@dataclass(eq=False, slots=True)
class Leaf:
    """A non-directory inode.  Hard links are the same object under several names.

    ``nlink`` is None for every tree except one parsed with C mkcomposefs
    semantics, where every leaf carries the NLINK field of its own (non-``@``)
    line: the link count the C writer stores (hard links do not change it;
    composefs-rs always counts references).

    ``primary`` is likewise None except in C-parsed trees, where a hard-linked
    leaf records the path of its full (non-``@``) dumpfile line: C's "real"
    node, whose directory places the inode in the V0/V1 breadth-first order.
    That path need not be the first in pre-order (forward hard links, or an
    unsorted dumpfile).  None means: the first path in pre-order.

    ``c_size`` (C-parsed trees only, else None) is the nonzero SIZE field of a
    device, fifo or socket line, which C keeps as ``st_size``: its writer makes
    the inode extended when it exceeds 2**32 - 1 (and zeroes it for whiteouts).
    """
    stat: Stat
    content: LeafContent
    nlink: int | None = None
    primary: bytes | None = None
    c_size: int | None = None


@dataclass(eq=False, slots=True)
class Directory:
    stat: Stat
    entries: dict[bytes, Directory | Leaf] = field(default_factory=dict)

    def sorted_entries(self) -> list[tuple[bytes, Directory | Leaf]]:
        """Entries in bytewise name order (the order every format uses)."""
        return sorted(self.entries.items())

    def get_path(self, path: bytes) -> Directory | Leaf | None:
        """Look up ``/a/b`` (or ``a/b``) without following symlinks."""
        node: Directory | Leaf = self
        for part in path.strip(b"/").split(b"/"):
            if not part:
                continue
            if not isinstance(node, Directory):
                return None
            child = node.entries.get(part)
            if child is None:
                return None
            node = child
        return node


Node: TypeAlias = Directory | Leaf


def walk(root: Directory, prefix: bytes = b"/") -> Iterator[tuple[bytes, Node]]:
    """Pre-order walk: (absolute path, node), a directory before its children,
    children in bytewise name order.  This is the dumpfile line order."""
    yield prefix, root
    stack: list[Iterator[tuple[bytes, Node]]] = [iter(_children(root, prefix))]
    while stack:
        for path, node in stack[-1]:
            yield path, node
            if isinstance(node, Directory):
                stack.append(iter(_children(node, path)))
                break
        else:
            stack.pop()


def _children(d: Directory, path: bytes) -> list[tuple[bytes, Node]]:
    base = path if path.endswith(b"/") else path + b"/"
    return [(base + name, child) for name, child in d.sorted_entries()]


def leaf_link_counts(root: Directory) -> dict[Leaf, int]:
    """Number of directory entries referring to each leaf (identity keyed)."""
    counts: dict[Leaf, int] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            else:
                counts[child] = counts.get(child, 0) + 1
    return counts


def dir_nlink(d: Directory) -> int:
    """2 + number of subdirectories."""
    return 2 + sum(1 for c in d.entries.values() if isinstance(c, Directory))
