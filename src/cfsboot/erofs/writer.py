"""composefs EROFS image writer: a tree in, image bytes out.

Byte-identical to composefs-rs ``mkfs_erofs_versioned`` @0fbc853 for format
versions 0, 1 and 2 (SHA-256 or SHA-512 object ids), and with
``c_compat=True`` to C ``mkcomposefs`` for versions 0 and 1 (spec
erofs-image.md; section 11 lists what ``c_compat`` changes).

The work is split in two modules: ``inodes`` (tree -> ordered inode list with
xattrs and directory entries) and ``layout`` (offsets, padding, bytes).
It is the serial tail of every digest, so both are written for speed too.
"""

from __future__ import annotations

import gc

from cfsboot.erofs import format as fmt
from cfsboot.erofs.inodes import Collector, ErofsWriteError, Options
from cfsboot.erofs.layout import write_image
from cfsboot.erofs.xattrs import has_acl, share_xattrs
from cfsboot.tree.model import Directory, Leaf, is_whiteout

__all__ = ["ErofsWriteError", "c_effective_version", "mkfs_erofs"]

C_MAX_VERSION = 1  # LCFS_VERSION_MAX


def mkfs_erofs(root: Directory, version: int = 1, *, c_compat: bool = False) -> bytes:
    """The composefs image of ``root`` in format ``version`` (0, 1 or 2).

    ``c_compat`` reproduces C mkcomposefs (versions 0 and 1 only); pass the
    version from ``c_effective_version`` to mirror its automatic bump.  The
    tree is not modified.
    """
    if version not in fmt.FORMAT_VERSIONS:
        raise ErofsWriteError(f"unknown composefs format version {version}")
    if c_compat and version > C_MAX_VERSION:
        raise ErofsWriteError(f"C mkcomposefs has no format version {version}")
    opts = Options(version, c_compat)
    # The writer makes ~10 objects per inode and frees none until the end, so
    # the cyclic GC would rescan the growing heap (and the caller's tree) again
    # and again: that was half the time on 28k inodes.  It makes no cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        collector = Collector(root, opts)
        inodes = collector.collect()
        flags = (fmt.COMPOSEFS_FLAG_HAS_ACL
                 if opts.epoch1 and has_acl(collector.own_xattr_names, c_compat) else 0)
        table = share_xattrs(inodes, opts)
        return write_image(inodes, table, opts, flags)
    finally:
        if gc_was_enabled:
            gc.enable()


def c_effective_version(root: Directory, min_version: int, max_version: int) -> int:
    """The version C mkcomposefs writes for ``--min-version``/``--max-version``.

    C (``lcfs_write_update_version``) raises ``max_version`` to at least
    ``min_version`` and bumps a version below 1 to 1 when ``max_version >= 1``
    and the tree holds a whiteout (character device 0/0): version 1 changed
    how whiteouts are stored.
    """
    max_version = max(max_version, min_version)
    if min_version < 1 <= max_version and _has_whiteout(root):
        return 1
    return min_version


def _has_whiteout(root: Directory) -> bool:
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            elif isinstance(child, Leaf) and is_whiteout(child.content):
                return True
    return False
