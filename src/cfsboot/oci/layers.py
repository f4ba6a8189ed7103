"""Layer splitstreams → tar entries → one merged tree (oci-import.md §6, §7.2).

Entries are applied in layer order; whiteouts (``.wh.NAME``) delete, the opaque
marker (``.wh..wh..opq``) empties its directory at the moment it is seen, and
a directory over a directory keeps the children.  Nothing is created
implicitly: a parent that is missing, a symlink or a file is an error, and so
is ``..`` anywhere, so no entry can land outside the tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cfsboot.oci.tarheader import (
    EndOfArchive,
    GlobalPax,
    Member,
    MemberChain,
    NeedMore,
    TarError,
    parse_chain,
    round_up,
)
from cfsboot.repository import ExternalChunk, SplitStreamReader
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    LeafContent,
    Stat,
    Symlink,
)

WHITEOUT_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"


@dataclass(slots=True)
class TarEntry:
    path: bytes  # normalised: "/a/b", b"" for the root
    member: Member
    content: bytes | ExternalChunk | None  # regular files only

    @property
    def stat(self) -> Stat:
        m = self.member
        return Stat(m.mode & 0o7777, m.uid, m.gid, m.mtime_sec, m.mtime_nsec, dict(m.xattrs))


def normalise_path(raw: bytes) -> bytes:
    """Strip one leading '/', prepend '/', strip trailing '/'s; '/' → b''."""
    p = raw[1:] if raw.startswith(b"/") else raw
    return (b"/" + p).rstrip(b"/")


def read_entries(reader: SplitStreamReader) -> Iterator[TarEntry]:
    """The members of a layer splitstream, global PAX headers skipped."""
    while True:
        buf = b""
        while True:
            result = parse_chain(buf)
            if not isinstance(result, NeedMore):
                break
            block = reader.read_inline_exact(512)
            if block is None:
                if buf in (b"", bytes(512)):
                    return
                raise TarError("layer stream ends inside a tar header")
            buf += block
        if isinstance(result, EndOfArchive):
            return
        if isinstance(result, GlobalPax):
            continue
        assert isinstance(result, MemberChain)
        m = result.member
        content: bytes | ExternalChunk | None = None
        if m.size:
            content = reader.read_exact(m.size, round_up(m.size))
        elif m.is_regular:
            content = b""
        yield TarEntry(normalise_path(m.path), m, content)


def _leaf_content(e: TarEntry) -> LeafContent:
    m = e.member
    t = m.typeflag
    if m.is_regular:
        if isinstance(e.content, ExternalChunk):
            if m.size <= 64:
                raise TarError(f"{_show(e.path)}: external content of only {m.size} bytes")
            return External.from_digest(e.content.digest, m.size)
        assert isinstance(e.content, bytes)
        if len(e.content) > 64:
            raise TarError(f"{_show(e.path)}: inline content of {len(e.content)} bytes")
        return Inline(e.content)
    if e.content is not None:
        raise TarError(f"{_show(e.path)}: unexpected content on a non-regular entry")
    if t == ord("2"):
        return Symlink(m.link)
    if t in b"34":
        if m.devmajor is None or m.devminor is None:
            raise TarError(f"{_show(e.path)}: device entry without device numbers")
        return CharDevice(m.rdev) if t == ord("3") else BlockDevice(m.rdev)
    if t == ord("6"):
        return Fifo()
    raise TarError(f"Unsupported entry type '{chr(t)}' for {_show(e.path)}")


def _show(path: bytes) -> str:
    return (path or b"/").decode("utf-8", "backslashreplace")


class MergeError(TarError):
    """A layer entry cannot be applied to the tree."""


def _lookup_dir(root: Directory, path: bytes, whole: bytes) -> Directory:
    node: Directory | Leaf = root
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            raise MergeError(f"Invalid filename '..' in {_show(whole)}")
        assert isinstance(node, Directory)
        child = node.entries.get(part)
        if child is None:
            raise MergeError(f"{_show(whole)}: parent directory {_show(path)} does not exist")
        if not isinstance(child, Directory):
            raise MergeError(f"{_show(whole)}: {_show(path)} is not a subdirectory")
        node = child
    assert isinstance(node, Directory)
    return node


def _split(path: bytes) -> tuple[bytes, bytes]:
    """(parent path, final name) with trailing '.' components ignored."""
    if b"\0" in path:
        raise MergeError(f"Invalid filename (NUL byte) in {_show(path)}")
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    if not parts:
        return b"", b""
    if parts[-1] == b"..":
        raise MergeError(f"Invalid filename '..' in {_show(path)}")
    return b"/".join(parts[:-1]), parts[-1]


def apply_entry(root: Directory, e: TarEntry) -> None:
    """Apply one tar entry to the merged tree (§7.2 ``process_entry``)."""
    parent_path, name = _split(e.path)
    t = e.member.typeflag
    if not name:
        if t != ord("5"):
            raise MergeError("the root entry of a layer must be a directory")
        root.stat = e.stat
        return
    parent = _lookup_dir(root, parent_path, e.path)
    inode: Directory | Leaf
    if t == ord("5"):
        inode = Directory(e.stat)
    elif t == ord("1"):
        inode = _hardlink_target(root, e)
    else:
        inode = Leaf(e.stat, _leaf_content(e))
    if name.startswith(WHITEOUT_PREFIX):
        if name == OPAQUE:
            parent.entries.clear()
        else:
            parent.entries.pop(name[len(WHITEOUT_PREFIX):], None)
        return
    old = parent.entries.get(name)
    if isinstance(old, Directory) and isinstance(inode, Directory):
        old.stat = inode.stat
    else:
        parent.entries[name] = inode


def _hardlink_target(root: Directory, e: TarEntry) -> Leaf:
    target = normalise_path(e.member.link)
    d, f = _split(target)
    if not f:
        raise MergeError(f"{_show(e.path)}: hard link to the root directory")
    parent = _lookup_dir(root, d, target)
    node = parent.entries.get(f)
    if node is None:
        raise MergeError(f"{_show(e.path)}: hard link target {_show(target)} does not exist")
    if isinstance(node, Directory):
        raise MergeError(f"{_show(e.path)}: hard link target {_show(target)} is a directory")
    return node


def new_root() -> Directory:
    """The merge starts from an uninitialised root (mode 0, ids and mtime 0)."""
    return Directory(Stat(0, 0, 0, 0, 0))
