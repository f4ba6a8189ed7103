"""Whether one path lies inside another directory, the way the kernel sees it.

Many commands write somewhere while reading or owning a tree: a cache, a
dumpfile or unsigned files next to a root filesystem, an ESP directory next
to a repository.  Writing into the tree itself silently changes what was just
digested (or breaks a repository's layout), so such outputs are refused.

Comparing path strings is not enough: a bind mount or a second symlinked
spelling reaches the same directory.  So the output's nearest existing
ancestor is resolved, each directory up from it is compared with the tree by
(device, inode), and on a match the rest of the path must lead to the same
directory from the tree too (a filesystem mounted below the tree is not part
of a non-recursive bind of it).  Imported on the path of a cached rebuild:
os only.
"""

from __future__ import annotations

import os


def _existing_ancestor(path: str) -> str:
    """``path`` resolved, or its nearest ancestor that exists (an output may
    not exist yet)."""
    current = os.path.realpath(path)
    while not os.path.lexists(current) and current != os.path.dirname(current):
        current = os.path.dirname(current)
    return current


def is_within(directory: str, path: str) -> bool:
    """True when ``path`` is ``directory`` or lies below it as a walk of
    ``directory`` would reach it (symlinks, ``..`` and bind mounts of the tree
    or its parents included).  A directory mounted over part of the tree but
    absent from a non-recursive bind of it is not inside that bind; a bind
    mount of one of the tree's subdirectories elsewhere is not recognised.
    False when ``directory`` cannot be stat'ed."""
    try:
        top = os.stat(directory)
    except OSError:
        return False
    target = _existing_ancestor(path)
    try:
        target_st = os.stat(target)
    except OSError:
        return False
    current = target
    while True:
        try:
            st = os.stat(current)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) == (top.st_dev, top.st_ino):
            # The same directory; is the rest of the path the same below it?
            rest = os.path.relpath(target, current)
            try:
                seen = os.stat(os.path.join(directory, rest))
            except OSError:
                seen = None
            if seen is not None and os.path.samestat(seen, target_st):
                return True
        parent = os.path.dirname(current)
        if parent == current:
            return False
        current = parent


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: by device and inode when both exist (hard
    links, symlinks and bind mounts included), else by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
