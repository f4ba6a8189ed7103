"""OCI normalisation of a merged tree (oci-import.md §7.3, composefs-rs
``transform_for_oci``): root metadata from ``/usr``, ``/run`` emptied, xattrs
filtered.  ``cfsboot.boot.transform.transform_for_oci`` is the same transform
for the allowlist mode; it lives above this layer, hence this copy (a test
checks they agree)."""

from __future__ import annotations

from cfsboot.errors import CfsError
from cfsboot.tree.model import Directory

XATTR_MODES = ("allowlist-only", "keep-user-xattrs")
ALLOWLIST = frozenset({b"security.capability"})


class NormalizeError(CfsError):
    """The merged tree cannot be made into a composefs image."""


def keep_xattr(mode: str, name: bytes) -> bool:
    if mode == "allowlist-only":
        return name in ALLOWLIST
    if mode == "keep-user-xattrs":
        return name in ALLOWLIST or name.startswith(b"user.")
    raise NormalizeError(f"unknown xattr mode {mode!r} (expected {' or '.join(XATTR_MODES)})")


def normalize_for_oci(root: Directory, xattr_mode: str = "allowlist-only") -> None:
    usr = root.entries.get(b"usr")
    if not isinstance(usr, Directory):
        raise NormalizeError("the image has no /usr directory (composefs images need one)")
    root.stat = usr.stat.copy()
    run = root.entries.get(b"run")
    if isinstance(run, Directory):
        run.entries.clear()
        run.stat.mtime_sec = usr.stat.mtime_sec
        run.stat.mtime_nsec = usr.stat.mtime_nsec
    seen: set[int] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        d.stat.xattrs = {k: v for k, v in d.stat.xattrs.items() if keep_xattr(xattr_mode, k)}
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            elif id(child) not in seen:
                seen.add(id(child))
                child.stat.xattrs = {k: v for k, v in child.stat.xattrs.items()
                                     if keep_xattr(xattr_mode, k)}
