"""Dumpfile writer: composefs-rs ``write_dumpfile`` output (spec dumpfile.md §5).

Pre-order walk, children in bytewise name order; the first path of a
hard-linked leaf gets the full line, later paths a short ``@120000`` line.
NLINK is recomputed (directories: 2 + subdirectories; leaves: number of
paths), never taken from ``Leaf.nlink``.

External files are written with their backing path and digest.  For trees
from the composefs-rs parser the path is always ``object_path(digest)``, so
this is exactly composefs-rs's output.  A digest-less External whose path ends
in an object path is written like composefs-rs writes ExternalNoVerity (the
object id becomes the DIGEST).  Trees from the C parser can hold what
composefs-rs cannot (arbitrary payloads, payload-less digests, content over
512 bytes); those are written as they are, which C mkcomposefs reads back.
"""

from __future__ import annotations

from cfsboot.tree.escape import escape_field, escape_optional
from cfsboot.tree.model import (
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFREG,
    S_IFSOCK,
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Socket,
    Sparse,
    Symlink,
    digest_from_object_path,
    dir_nlink,
    leaf_link_counts,
    object_path,
)

# The S_IFMT bits of each leaf content kind (model.content_type_bits as a table).
_TYPE_BITS: dict[type, int] = {
    Inline: S_IFREG, External: S_IFREG, Sparse: S_IFREG, Symlink: S_IFLNK,
    CharDevice: S_IFCHR, BlockDevice: S_IFBLK, Fifo: S_IFIFO, Socket: S_IFSOCK}


def _xattrs(xattrs: dict[bytes, bytes], memo: dict[tuple[tuple[bytes, bytes], ...], bytes]
            ) -> bytes:
    """The xattr fields of a line; ``memo`` keeps those of earlier lines
    (a handful of label sets repeat over a whole tree)."""
    if not xattrs:
        return b""
    key = tuple(sorted(xattrs.items())) if len(xattrs) > 1 else tuple(xattrs.items())
    text = memo.get(key)
    if text is None:
        text = b"".join([b" " + escape_field(k, xattr=True) + b"=" + escape_field(v, xattr=True)
                         for k, v in key])
        if len(memo) < 4096:
            memo[key] = text
    return text


def _external(c: External) -> tuple[bytes, bytes]:
    """(PAYLOAD, DIGEST) fields of an external file."""
    if c.digest is not None:
        return escape_optional(c.path), c.digest.hex().encode()
    for n in (32, 64):
        obj = digest_from_object_path(c.path, n)
        if obj is not None and len(obj) == n:
            return object_path(obj), obj.hex().encode()
    return escape_optional(c.path), b"-"


def _leaf_fields(leaf: Leaf) -> tuple[int, int, bytes, bytes, bytes]:
    """(SIZE, RDEV, PAYLOAD, CONTENT, DIGEST) of a leaf's full line."""
    match leaf.content:
        case Inline(data):
            return len(data), 0, b"-", escape_optional(data), b"-"
        case External() as c:
            payload, digest = _external(c)
            return c.size, 0, payload, b"-", digest
        case Sparse(size):
            return size, 0, b"-", b"-", b"-"
        case Symlink(target):
            return len(target), 0, escape_optional(target), b"-", b"-"
        case CharDevice(rdev) | BlockDevice(rdev):
            return 0, rdev, b"-", b"-", b"-"
        case Fifo() | Socket():
            return 0, 0, b"-", b"-", b"-"
    raise TypeError(leaf.content)


def write_dumpfile(root: Directory) -> bytes:
    """The composefs-rs ``write_dumpfile`` text for ``root`` (every line ends in \\n)."""
    counts = leaf_link_counts(root)
    first_path: dict[Leaf, bytes] = {}
    xattr_memo: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}
    out: list[bytes] = []
    # Pre-order, children in name order (as model.walk), carrying each path
    # already escaped: escaping is per byte and keeps '/', so a child's field
    # is its parent's plus '/' plus its escaped name.
    stack: list[tuple[bytes, Directory | Leaf]] = [(b"/", root)]
    while stack:
        p, node = stack.pop()
        st = node.stat
        if isinstance(node, Directory):
            out.append(b"%s 0 %o %d %d %d 0 %d.%d - - -%s\n" % (
                p, st.mode | S_IFDIR, dir_nlink(node), st.uid, st.gid,
                st.mtime_sec, st.mtime_nsec, _xattrs(st.xattrs, xattr_memo)))
            base = b"" if p == b"/" else p
            stack += [(base + b"/" + escape_field(name), child)
                      for name, child in sorted(node.entries.items(), reverse=True)]
            continue
        nlink = counts[node]
        if nlink > 1:
            target = first_path.get(node)
            if target is not None:
                out.append(b"%s 0 @120000 - - - - 0.0 %s - -\n" % (p, target))
                continue
            first_path[node] = p
        size, rdev, payload, content, digest = _leaf_fields(node)
        out.append(b"%s %d %o %d %d %d %d %d.%d %s %s %s%s\n" % (
            p, size, st.mode | _TYPE_BITS[type(node.content)], nlink, st.uid, st.gid, rdev,
            st.mtime_sec, st.mtime_nsec, payload, content, digest,
            _xattrs(st.xattrs, xattr_memo)))
    return b"".join(out)
