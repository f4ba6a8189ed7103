"""``cfsboot mkcomposefs``: a drop-in for C ``mkcomposefs`` (and composefs-rs's).

Without ``--format``/``--hash`` it follows C mkcomposefs exactly: dumpfiles
are parsed with C semantics, the version is chosen from ``--min-version`` /
``--max-version`` with C's automatic bump, object ids are SHA-256 and a
directory is scanned the way C does (all xattrs, hard links not detected).
``--format N`` (and/or ``--hash``) selects composefs-rs semantics instead.

C opens (creates or truncates) IMAGE before it scans SOURCE, so an IMAGE
inside a SOURCE directory is in its own image, as an empty file.  We match
that without giving up the atomic write: see ``OutputInSource``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import time
from dataclasses import dataclass

from cfsboot.atomic import atomic_write_bytes
from cfsboot.erofs.writer import c_effective_version, mkfs_erofs
from cfsboot.errors import CfsError
from cfsboot.fsverity import fsverity_digest
from cfsboot.inputs import read_input
from cfsboot.paths import is_within, same_file
from cfsboot.tree.digest_store import FlatDigestStore, copy_objects
from cfsboot.tree.dumpfile import parse_dumpfile
from cfsboot.tree.model import BlockDevice, CharDevice, Directory, Inline, Leaf, walk
from cfsboot.tree.scan import ScanOptions, scan_directory

# C mkcomposefs defaults (LCFS_DEFAULT_VERSION_MIN/MAX).
C_DEFAULT_MIN_VERSION = 0
C_DEFAULT_MAX_VERSION = 1
C_MAX_SUPPORTED_VERSION = 1


@dataclass(frozen=True)
class Mode:
    """What kind of image to make: C-compatible or composefs-rs."""
    c_compat: bool
    hash_alg: str
    min_version: int
    max_version: int


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mkcomposefs",
        help="make a composefs image from a directory or a dumpfile",
        description="Make a composefs EROFS image, compatible with C mkcomposefs "
        "(default) or composefs-rs (--format/--hash).")
    p.add_argument("source", metavar="SOURCE",
                   help="directory, or dumpfile with --from-file ('-' = stdin)")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="output image, '-' for stdout")
    p.add_argument("--from-file", action="store_true", help="SOURCE is a dumpfile")
    p.add_argument("--min-version", type=int, metavar="N",
                   help="minimal format version (C: default 0)")
    p.add_argument("--max-version", type=int, metavar="N",
                   help="maximal format version (C: default 1)")
    p.add_argument("--format", type=int, choices=(0, 1, 2),
                   help="composefs-rs EROFS format version (selects composefs-rs semantics)")
    p.add_argument("--hash", choices=("sha256", "sha512"),
                   help="fs-verity hash of object ids and the digest "
                   "(selects composefs-rs semantics)")
    p.add_argument("--digest-store", metavar="DIR",
                   help="copy file contents into DIR/xx/rest")
    p.add_argument("--print-digest", action="store_true", help="print the image digest")
    p.add_argument("--print-digest-only", action="store_true",
                   help="print the image digest, don't write the image")
    p.add_argument("--use-epoch", action="store_true", help="make all mtimes zero")
    p.add_argument("--skip-devices", action="store_true", help="don't store device nodes")
    p.add_argument("--skip-xattrs", action="store_true", help="don't store file xattrs")
    p.add_argument("--user-xattrs", action="store_true", help="only store user.* xattrs")
    p.add_argument("--threads", type=int, metavar="N", help="hashing threads (default: CPUs)")
    p.set_defaults(func=run)


def choose_mode(args: argparse.Namespace) -> Mode:
    if args.format is not None or args.hash is not None:
        if args.min_version is not None or args.max_version is not None:
            raise CfsError("--min-version/--max-version are C options; use --format with --hash")
        fmt = 1 if args.format is None else args.format
        return Mode(False, args.hash or "sha256", fmt, fmt)
    if args.min_version is None and args.max_version is None:
        lo, hi = C_DEFAULT_MIN_VERSION, C_DEFAULT_MAX_VERSION
    else:
        # As C: setting either option starts both from 0; max is raised to min.
        lo = args.min_version or 0
        hi = max(args.max_version or 0, lo)
    if any(v is not None and not 0 <= v <= C_MAX_SUPPORTED_VERSION
           for v in (args.min_version, args.max_version)):
        raise CfsError("unsupported format version (C mkcomposefs knows "
                       f"0..{C_MAX_SUPPORTED_VERSION}; use --format 2 for composefs-rs V2)")
    return Mode(True, "sha256", lo, hi)


def run(args: argparse.Namespace) -> int:
    mode = choose_mode(args)
    if args.print_digest_only and args.image is not None:
        raise CfsError("cannot specify an output image with --print-digest-only")
    if not args.print_digest_only and args.image is None:
        raise CfsError("no output image specified")
    if args.skip_xattrs and args.user_xattrs:
        raise CfsError("--skip-xattrs and --user-xattrs conflict")
    if args.threads is not None and args.threads <= 0:
        raise CfsError(f"invalid thread count {args.threads}")
    if args.image == "-" and sys.stdout.isatty():
        raise CfsError("stdout is a tty; refusing to write an image to it")
    if not args.source:
        raise CfsError("empty source path")
    if (args.from_file and args.image not in (None, "-") and args.source != "-"
            and same_file(args.source, args.image)):
        # C truncates its input and then fails on it; refuse before that.
        raise CfsError(f"IMAGE {args.image} is the dumpfile being read; write the image "
                       "elsewhere")

    if args.digest_store:
        check_digest_store(args.digest_store, mode.hash_alg, hash_given=args.hash is not None)

    in_source = None
    if (mode.c_compat and not args.from_file and args.image not in (None, "-")
            and os.path.isdir(args.source)):
        in_source = OutputInSource.prepare(args.source, args.image)
    try:
        root = load_source(args, mode)
        if in_source is not None:
            in_source.show_empty(root)
        if not args.from_file:  # as C: the LCFS_BUILD_* flags only shape a directory scan
            apply_build_flags(root, use_epoch=args.use_epoch, skip_devices=args.skip_devices,
                              skip_xattrs=args.skip_xattrs, user_xattrs=args.user_xattrs)
        version = (c_effective_version(root, mode.min_version, mode.max_version)
                   if mode.c_compat else mode.min_version)
        image = mkfs_erofs(root, version, c_compat=mode.c_compat)

        if args.image == "-":
            sys.stdout.buffer.write(image)
            sys.stdout.buffer.flush()
        elif args.image is not None:
            atomic_write_bytes(args.image, image)
    except BaseException:
        if in_source is not None:
            in_source.discard()
        raise
    if args.print_digest or args.print_digest_only:
        print(fsverity_digest(image, mode.hash_alg).hex())
    return 0


@dataclass
class OutputInSource:
    """An IMAGE that lies inside the SOURCE directory, in C mode.

    C mkcomposefs opens IMAGE with ``O_CREAT|O_TRUNC`` before scanning, so
    its image holds IMAGE as an empty regular file: a new one (0666 less the
    umask, ours, its creation also the parent directory's mtime) or the
    existing one truncated (its own mode, owner and xattrs; mtime: when it
    was truncated).  We write IMAGE atomically instead, so:

    * a new IMAGE: ``prepare`` creates it empty, exactly as C would, before
      the scan; the image is then written to a temporary name (after the
      scan, so that is not in it) and renamed over it.  On failure the empty
      file is removed again (C would leave it behind).
    * an existing IMAGE is never truncated (on failure it must stay whole):
      ``show_empty`` makes its scanned entry empty, as C would have seen it.
    """
    path: str            # IMAGE, symlinks resolved
    relative: bytes      # its path inside SOURCE
    created: tuple[int, int] | None  # (st_dev, st_ino) of the empty file we made
    opened_ns: int       # when C would have truncated it

    @classmethod
    def prepare(cls, source: str, image: str) -> OutputInSource | None:
        path = os.path.realpath(image)
        relative = os.path.relpath(path, os.path.realpath(source))
        if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
            return None
        try:
            existing = os.stat(path)
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            return cls(path, os.fsencode(relative), (st.st_dev, st.st_ino), time.time_ns())
        if not stat.S_ISREG(existing.st_mode):
            return None  # a device or fifo: C and atomic_open both write through it
        return cls(path, os.fsencode(relative), None, time.time_ns())

    def show_empty(self, root: Directory) -> None:
        """An existing IMAGE's entry as C sees it: the file truncated."""
        node = root.get_path(self.relative)
        if self.created is None and isinstance(node, Leaf):
            node.content = Inline(b"")
            node.stat.mtime_sec, node.stat.mtime_nsec = divmod(self.opened_ns, 10**9)

    def discard(self) -> None:
        """Remove the empty IMAGE ``prepare`` made, if it is still there."""
        if self.created is None:
            return
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self.created and st.st_size == 0:
                os.unlink(self.path)


def check_digest_store(store: str, hash_alg: str, *, hash_given: bool) -> None:
    """Refuse a ``--digest-store`` that would break a composefs repository: its
    root or another directory in it (stray entries that fsck and gc reject or
    never see), or its ``objects/`` when the repository's algorithm differs from
    the image's (names of the wrong length).  ``objects/`` with the right hash
    is fine: gc later removes what no image refers to."""
    from cfsboot.repository.locate import enclosing_repository
    path = os.path.realpath(store)
    found = enclosing_repository(path)
    if found is None:
        return
    repository, algorithm = found
    if path == repository:
        raise CfsError(f"--digest-store {store} is a composefs repository, not an object "
                       "store; use its objects/ directory or cfsboot create-image")
    if path != os.path.join(repository, "objects"):
        raise CfsError(f"--digest-store {store} is inside the composefs repository "
                       f"{repository}; use its objects/ directory or cfsboot create-image")
    if algorithm is not None and algorithm != hash_alg:
        verb = "use" if hash_given else "add"
        raise CfsError(f"--digest-store {store} is the object store of a "
                       f"{algorithm.upper().replace('SHA', 'SHA-')} repository: "
                       f"{verb} --hash {algorithm}")


def load_source(args: argparse.Namespace, mode: Mode) -> Directory:
    if args.from_file:
        if args.digest_store:
            raise CfsError("--digest-store needs a directory SOURCE, not a dumpfile")
        data = read_input(args.source, "dumpfile")
        return parse_dumpfile(data, flavor="c" if mode.c_compat else "rs")
    if not os.path.isdir(args.source):
        raise CfsError(f"{args.source}: not a directory (use --from-file for a dumpfile)")
    store = args.digest_store
    # A store inside SOURCE is created and filled after the scan, as C does, so
    # that the image shows it as it was before (or not at all); elsewhere the
    # scan copies each file as it hashes it (one read).
    after_scan = bool(store) and is_within(args.source, store)
    if after_scan and os.path.lexists(store) and not os.path.isdir(store):
        raise CfsError(f"digest store {store} is not a directory")
    sink = FlatDigestStore(store) if store and not after_scan else None
    options = ScanOptions(alg=mode.hash_alg, inline_max=64,
                          track_hardlinks=not mode.c_compat, threads=args.threads,
                          sink=sink, progress=sys.stderr.isatty())
    scan = scan_directory(args.source, options)
    if after_scan:
        copy_objects(FlatDigestStore(store), scan.sources, mode.hash_alg)
    return scan.root


def apply_build_flags(root: Directory, *, use_epoch: bool, skip_devices: bool,
                      skip_xattrs: bool, user_xattrs: bool) -> None:
    """C mkcomposefs's LCFS_BUILD_* flags, applied to a scanned or parsed tree."""
    if not (use_epoch or skip_devices or skip_xattrs or user_xattrs):
        return
    for _path, node in list(walk(root)):
        st = node.stat
        if use_epoch:
            st.mtime_sec = st.mtime_nsec = 0
        if skip_xattrs:
            st.xattrs.clear()
        elif user_xattrs:
            st.xattrs = {k: v for k, v in st.xattrs.items() if k.startswith(b"user.")}
        if skip_devices and isinstance(node, Directory):
            for name, child in list(node.entries.items()):
                if not isinstance(child, Directory) and isinstance(
                        child.content, CharDevice | BlockDevice):
                    del node.entries[name]
