"""``cfsboot composefs-info``: inspect composefs images like C ``composefs-info``.

Sub-commands (output formats of composefs C ``tools/composefs-info.c``):

* ``ls IMAGE...``: every path below the root, pre-order; directories end in
  ``/`` + TAB, symlinks get ``TAB-> TARGET``, external files ``TAB@ OBJECT``;
  the second and later names of a hard-linked file are printed bare.
* ``dump IMAGE``: the composefs-rs ``write_dumpfile`` text of the decoded tree.
* ``objects IMAGE...``: the backing objects referenced, sorted, unique.
* ``missing-objects --basedir DIR IMAGE...``: those not present under DIR.
* ``measure-file FILE...``: the fs-verity digest of each file (the kernel's
  value when verity is enabled with that hash, otherwise computed).

Images are decoded with the composefs-rs reader semantics
(:mod:`cfsboot.erofs.reader`); a corrupt image is a one-line error.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterable

from cfsboot.erofs.reader import ErofsError, list_objects, read_erofs
from cfsboot.errors import CfsError
from cfsboot.fsverity import VerityUnsupported, digest_fd, measure_verity
from cfsboot.inputs import read_input
from cfsboot.tree.dumpfile import write_dumpfile
from cfsboot.tree.model import Directory, External, Leaf, Symlink, walk


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "composefs-info", help="print information about composefs images",
        description="Print information about composefs images (C composefs-info).")
    p.add_argument("--basedir", dest="group_basedir", metavar="DIR",
                   help="backing object store for missing-objects (C option placement)")
    p.add_argument("--filter", action="append", default=[], metavar="NAME",
                   help="only show these top-level entries (repeatable)")
    cmds = p.add_subparsers(dest="info_command", metavar="COMMAND", required=True)

    ls = cmds.add_parser("ls", help="list files with their backing object or symlink target")
    ls.add_argument("images", nargs="+", metavar="IMAGE")
    ls.set_defaults(func=cmd_ls)

    dump = cmds.add_parser("dump", help="print the image as a composefs-rs dumpfile")
    dump.add_argument("images", nargs="+", metavar="IMAGE")
    dump.set_defaults(func=cmd_dump)

    objects = cmds.add_parser("objects", help="list the backing objects referenced")
    objects.add_argument("images", nargs="+", metavar="IMAGE")
    objects.set_defaults(func=cmd_objects)

    missing = cmds.add_parser("missing-objects",
                              help="list the referenced objects missing from --basedir")
    missing.add_argument("--basedir", metavar="DIR", help="backing object store")
    missing.add_argument("images", nargs="+", metavar="IMAGE")
    missing.set_defaults(func=cmd_missing_objects)

    measure = cmds.add_parser("measure-file", help="print the fs-verity digest of files")
    measure.add_argument("--hash", choices=("sha256", "sha512"), default="sha256",
                         help="fs-verity hash algorithm (default sha256, as C)")
    measure.add_argument("files", nargs="+", metavar="FILE")
    measure.set_defaults(func=cmd_measure_file)


# ---- helpers -------------------------------------------------------------------

def load_tree(path: str, filters: Iterable[str] = ()) -> Directory:
    """Decode the image at ``path``; errors name the file."""
    data = read_input(path, "composefs image")
    try:
        root = read_erofs(data)
    except ErofsError as e:
        raise ErofsError(f"{path}: {e}") from None
    names = {os.fsencode(n) for n in filters}
    for name in names:
        if b"/" in name:
            raise CfsError(f"filter must be a single name: {os.fsdecode(name)}")
    if names:
        root.entries = {n: c for n, c in root.entries.items() if n in names}
    return root


def _encoding_table(keep_space: bool) -> list[bytes]:
    """C composefs-info ``print_escaped``: backslash, \\n, \\r, \\t; other
    bytes outside isgraph (isprint with NOESCAPE_SPACE) as \\xNN."""
    table = []
    for c in range(256):
        special = {0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}.get(c)
        if special is not None:
            table.append(special)
        elif 0x21 <= c <= 0x7E or (keep_space and c == 0x20):
            table.append(bytes([c]))
        else:
            table.append(b"\\x%02x" % c)
    return table


_ESC_PATH = _encoding_table(keep_space=True)
_ESC_STANDARD = _encoding_table(keep_space=False)


def c_escape(value: bytes, *, keep_space: bool = False) -> bytes:
    table = _ESC_PATH if keep_space else _ESC_STANDARD
    return b"".join(table[c] for c in value)


def ls_lines(root: Directory) -> list[bytes]:
    """C ``print_node`` output for one image (the root itself is not listed)."""
    lines: list[bytes] = []
    seen: set[int] = set()
    for path, node in walk(root):
        if node is root:
            continue
        line = c_escape(path, keep_space=True)
        if isinstance(node, Directory):
            line += b"/\t"
        elif id(node) in seen:
            pass  # C lists a hard link's later names as bare link nodes
        else:
            seen.add(id(node))
            line += _leaf_suffix(node)
        lines.append(line + b"\n")
    return lines


def _leaf_suffix(leaf: Leaf) -> bytes:
    content = leaf.content
    if isinstance(content, Symlink):
        return b"\t-> " + c_escape(content.target)
    if isinstance(content, External):
        return b"\t@ " + c_escape(content.path)
    return b""


def _write(chunks: Iterable[bytes]) -> None:
    sys.stdout.flush()
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.flush()


def _objects(paths: list[str], filters: list[str]) -> list[bytes]:
    found: set[bytes] = set()
    for path in paths:
        if filters:
            found.update(_tree_objects(load_tree(path, filters)))
            continue
        data = read_input(path, "composefs image")
        try:
            found.update(list_objects(data))
        except ErofsError as e:
            raise ErofsError(f"{path}: {e}") from None
    return sorted(found)


def _tree_objects(root: Directory) -> set[bytes]:
    return {n.content.path for _, n in walk(root)
            if isinstance(n, Leaf) and isinstance(n.content, External)}


# ---- commands --------------------------------------------------------------------

def cmd_ls(args: argparse.Namespace) -> int:
    for path in args.images:
        _write(ls_lines(load_tree(path, args.filter)))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    for path in args.images:
        _write([write_dumpfile(load_tree(path, args.filter))])
    return 0


def cmd_objects(args: argparse.Namespace) -> int:
    _write(obj + b"\n" for obj in _objects(args.images, args.filter))
    return 0


def cmd_missing_objects(args: argparse.Namespace) -> int:
    basedir = args.basedir or args.group_basedir
    if basedir is None:
        raise CfsError("missing-objects needs --basedir DIR")
    try:
        dirfd = os.open(basedir, os.O_RDONLY | os.O_DIRECTORY | os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise CfsError(f"can't open basedir '{basedir}': {e.strerror}") from None
    try:
        missing = [obj for obj in _objects(args.images, args.filter)
                   if not _exists(dirfd, obj.lstrip(b"/"))]
    finally:
        os.close(dirfd)
    _write(obj + b"\n" for obj in missing)
    return 0


def _exists(dirfd: int, relpath: bytes) -> bool:
    try:
        os.stat(relpath, dir_fd=dirfd)
    except OSError:
        return False
    return True


def measure_file(path: str, alg: str) -> bytes:
    """The kernel's fs-verity digest when enabled with ``alg``, else computed."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CfsError(f"failed to measure '{path}': not a regular file")
        try:
            measured = measure_verity(fd)
        except VerityUnsupported:
            measured = None
        if measured is not None and measured[0] == alg:
            return measured[1]
        os.set_blocking(fd, True)
        digest, _size = digest_fd(fd, alg)  # the file we checked, not the path again
        return digest
    finally:
        os.close(fd)


def cmd_measure_file(args: argparse.Namespace) -> int:
    for path in args.files:
        try:
            digest = measure_file(path, args.hash)
        except OSError as e:
            raise CfsError(f"failed to measure '{path}': {e.strerror or e}") from None
        _write([digest.hex().encode() + b"\n"])
    return 0
