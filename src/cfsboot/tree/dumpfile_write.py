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
    S_IFDIR,
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
    content_type_bits,
    digest_from_object_path,
    dir_nlink,
    leaf_link_counts,
    object_path,
    walk,
)


def _xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    if not xattrs:
        return b""
    return b"".join([b" " + escape_field(k, xattr=True) + b"=" + escape_field(v, xattr=True)
                     for k, v in sorted(xattrs.items())])


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
    out: list[bytes] = []
    for path, node in walk(root):
        p = escape_optional(path)
        st = node.stat
        if isinstance(node, Directory):
            out.append(b"%s 0 %o %d %d %d 0 %d.%d - - -%s\n" % (
                p, st.mode | S_IFDIR, dir_nlink(node), st.uid, st.gid,
                st.mtime_sec, st.mtime_nsec, _xattrs(st.xattrs)))
            continue
        nlink = counts[node]
        if nlink > 1:
            target = first_path.get(node)
            if target is not None:
                out.append(b"%s 0 @120000 - - - - 0.0 %s - -\n" % (p, escape_optional(target)))
                continue
            first_path[node] = path
        size, rdev, payload, content, digest = _leaf_fields(node)
        out.append(b"%s %d %o %d %d %d %d %d.%d %s %s %s%s\n" % (
            p, size, st.mode | content_type_bits(node.content), nlink, st.uid, st.gid, rdev,
            st.mtime_sec, st.mtime_nsec, payload, content, digest, _xattrs(st.xattrs)))
    return b"".join(out)
