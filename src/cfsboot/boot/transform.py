"""The tree transforms bootc applies before building the composefs image
(composefs-rs ``transform_for_oci`` and ``transform_for_boot``).

``transform_for_oci`` (default ``XattrFiltering::AllowlistOnly``):
root metadata from ``/usr``, ``/run`` emptied, only ``security.capability``
kept.  ``transform_for_boot``: boot entries validated, ``/boot`` and
``/sysroot`` emptied (seconds of ``/usr``'s mtime only), SELinux labels from
the image's own policy.  Both modify the tree in place.

Leaves that become unreferenced need no "compact" step here: the tree model
holds leaves by reference, so they simply disappear with their entries.
"""

from __future__ import annotations

from collections.abc import Callable

from cfsboot.boot.bootloader import BootEntryError, get_boot_resources
from cfsboot.boot.selabel import SelinuxPolicyError, selabel
from cfsboot.errors import CfsError
from cfsboot.tree.model import Directory, Leaf

CONTAINER_XATTR_ALLOWLIST = frozenset({b"security.capability"})
EMPTIED_FOR_BOOT = (b"boot", b"sysroot")


class TransformError(CfsError):
    """The tree cannot be transformed (missing /usr, bad boot entries, bad policy…)."""


def _toplevel_dir(root: Directory, name: bytes) -> Directory | None:
    node = root.entries.get(name)
    if node is None:
        return None
    if not isinstance(node, Directory):
        raise TransformError(f"/{name.decode('utf-8', 'backslashreplace')} is not a directory")
    return node


def _required_dir(root: Directory, name: bytes) -> Directory:
    node = _toplevel_dir(root, name)
    if node is None:
        raise TransformError(f"/{name.decode('utf-8', 'backslashreplace')} does not exist")
    return node


def filter_xattrs(root: Directory, allowed: frozenset[bytes]) -> None:
    """Keep only the xattrs named in ``allowed``, on every node.

    Runs over every node of the tree, so it does no more than it must: most
    nodes have no xattrs at all, and filtering is idempotent, so a hard-linked
    leaf met under several names is simply filtered again.
    """
    stack = [root]
    while stack:
        d = stack.pop()
        if d.stat.xattrs:
            d.stat.xattrs = {k: v for k, v in d.stat.xattrs.items() if k in allowed}
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            elif child.stat.xattrs:
                child.stat.xattrs = {k: v for k, v in child.stat.xattrs.items() if k in allowed}


def transform_for_oci(root: Directory) -> None:
    """Root metadata from /usr, /run emptied, xattrs filtered to the allowlist."""
    usr = _required_dir(root, b"usr")
    root.stat.mode = usr.stat.mode
    root.stat.uid = usr.stat.uid
    root.stat.gid = usr.stat.gid
    root.stat.mtime_sec = usr.stat.mtime_sec
    root.stat.mtime_nsec = usr.stat.mtime_nsec
    root.stat.xattrs = dict(usr.stat.xattrs)
    run = _toplevel_dir(root, b"run")
    if run is not None:
        run.stat.mtime_sec = usr.stat.mtime_sec
        run.stat.mtime_nsec = usr.stat.mtime_nsec
        run.entries.clear()
    filter_xattrs(root, CONTAINER_XATTR_ALLOWLIST)


def empty_toplevel_dirs(root: Directory) -> None:
    """Empty /boot and /sysroot; their mtime *seconds* become /usr's (the
    nanoseconds stay their own, as composefs-rs sets only ``st_mtim_sec``)."""
    usr_mtime_sec = _required_dir(root, b"usr").stat.mtime_sec
    for name in EMPTIED_FOR_BOOT:
        d = _required_dir(root, name)
        d.stat.mtime_sec = usr_mtime_sec
        d.entries.clear()


def transform_for_boot(root: Directory, read_file: Callable[[Leaf], bytes]) -> None:
    """Validate boot entries, empty /boot and /sysroot, apply SELinux labels.

    ``read_file`` returns a regular-file leaf's content (boot entry ``.conf``
    files and the policy files are read through it)."""
    try:
        get_boot_resources(root, read_file)
        empty_toplevel_dirs(root)
        selabel(root, read_file)
    except (BootEntryError, SelinuxPolicyError) as e:
        raise TransformError(str(e)) from e
