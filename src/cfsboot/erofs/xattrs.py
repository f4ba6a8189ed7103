"""Xattr sharing and the ACL flag (spec/erofs-image.md sections 6.6 and 6.7):
the last step before layout, over the inode list ``inodes.Collector`` made."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import chain, compress
from operator import itemgetter

from cfsboot.erofs.inodes import (
    C_MAX_SHARED_REFS,
    MAX_SHARED_REFS,
    ErofsWriteError,
    Inode,
    Options,
    Xattr,
    split_name,
)


def has_acl(xattr_names: Iterable[bytes], c_compat: bool) -> bool:
    """Header flag, from the stat xattr names (the writer adds no ACLs): C
    tests the exact ACL names, composefs-rs the prefix index."""
    acl = (b"system.posix_acl_access", b"system.posix_acl_default")
    if c_compat:
        return any(name in acl for name in xattr_names)
    return any(name.startswith(acl) for name in xattr_names)


def _full_key(x: Xattr) -> tuple[bytes, int, bytes]:
    return (x[0], len(x[1]), x[1])


def _sort_epoch1(xattrs: list[Xattr]) -> None:
    """V0/V1 order: by name, then value length, then value.  Plain tuple order
    (name, then value) is the same while names differ, and needs no key
    function; a repeated name (a writer marker beside the node's own xattr
    of that name) takes the full key."""
    xattrs.sort()
    if len(set(map(_xattr_name, xattrs))) < len(xattrs):
        xattrs.sort(key=_full_key)


_xattr_name = itemgetter(0)


def share_xattrs(inodes: list[Inode], opts: Options) -> list[Xattr]:
    """Move xattrs used more than once to the shared table; returns the table."""
    use_lustre = not opts.epoch1
    if opts.epoch1:
        for inode in inodes:
            xattrs = inode.xattrs
            # Usually already in order (an external file's overlay pair, after
            # any label): two comparisons instead of a sort.
            n = len(xattrs)
            if n > 1 and not ((n == 2 and xattrs[0][0] < xattrs[1][0])
                              or (n == 3 and xattrs[0][0] < xattrs[1][0] < xattrs[2][0])):
                _sort_epoch1(xattrs)
    counts = Counter(chain.from_iterable([inode.xattrs for inode in inodes]))
    table = list(compress(counts.keys(), map((1).__lt__, counts.values())))  # used twice+
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
    table_position, is_unshared = position.get, position.keys().isdisjoint
    limit = C_MAX_SHARED_REFS if opts.c_compat else MAX_SHARED_REFS + 1  # C: the rest inline
    for inode in inodes:
        xattrs = inode.xattrs
        if not xattrs or is_unshared(xattrs):
            continue
        # A plain loop: lists this short are quicker to walk than to map.
        shared: list[int] = []
        local: list[Xattr] = []
        for x in xattrs:
            pos = table_position(x)
            if pos is None or len(shared) == limit:
                local.append(x)
            else:
                shared.append(pos)
        if len(shared) > MAX_SHARED_REFS:
            n = len(shared) + sum(table_position(x) is not None for x in local)
            raise ErofsWriteError(f"an inode references {n} shared xattrs "
                                  f"(at most {MAX_SHARED_REFS})")
        inode.shared = tuple(shared)
        inode.xattrs = local
    return table
