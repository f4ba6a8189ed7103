"""``cfsboot container …``: commands run inside a container build.

Sub-commands are registered here; further ones (lint, inspect, …) live in
their own modules listed in ``SUBCOMMAND_MODULES``, each defining
``register(subparsers)`` like a top-level command module.

Heavy modules are imported only when a command runs, so a missing or broken
layer never breaks the whole CLI and ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from cfsboot.cli.main import register_modules
from cfsboot.errors import CfsError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "cfsboot.cli.container_lint",
    "cfsboot.cli.container_inspect",
)


def register(sub: Subparsers) -> None:
    p = sub.add_parser("container", help="operations on a container image's root filesystem",
                       description="Operations on a container image's root filesystem.")
    container_sub = p.add_subparsers(dest="container_command", metavar="SUBCOMMAND",
                                     required=True)
    register_compute_composefs_digest(container_sub)
    register_modules(container_sub, SUBCOMMAND_MODULES)


# ---- compute-composefs-digest ----------------------------------------------

def register_compute_composefs_digest(sub: Subparsers) -> None:
    p = sub.add_parser(
        "compute-composefs-digest",
        help="print the bootable composefs digest of a directory",
        description="Print the bootable composefs digest of a root filesystem, as "
        "`bootc container compute-composefs-digest` does: the fs-verity SHA-512 digest "
        "of the V1 EROFS image of the tree after the OCI and boot transforms.")
    p.add_argument("path", metavar="PATH", nargs="?", default="/target",
                   help="root of the filesystem (default: /target)")
    p.add_argument("--write-dumpfile-to", metavar="FILE",
                   help="also write the transformed tree as a composefs-rs dumpfile")
    p.add_argument("--hash", choices=("sha256", "sha512"), default="sha512",
                   help="fs-verity hash for objects and the image (default: sha512)")
    p.add_argument("--format", type=int, choices=(0, 1, 2), default=1,
                   help="EROFS format version (default: 1, as bootc)")
    p.add_argument("--no-boot-transform", action="store_true",
                   help="skip the boot transform (boot entry checks, emptying /boot and "
                   "/sysroot, SELinux labels); the OCI transform still applies")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object (digest, format, hash, counts, time in "
                   "seconds per phase, cached, hashing: c or python)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="hashing threads (default: usable CPUs)")
    p.add_argument("--cache", metavar="DIR",
                   help="build cache: digests of unchanged files, and the result for an "
                   "unchanged tree, are reused from DIR (created if needed; it must be "
                   "writable only by you)")
    p.set_defaults(func=run_compute_composefs_digest)


def run_compute_composefs_digest(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise CfsError(f"invalid thread count {args.threads}")
    started = time.perf_counter()
    boot_transform = not args.no_boot_transform
    looked_up = None
    if args.cache:
        # An unchanged tree is answered from the cache with light imports only.
        from cfsboot.boot.digest_cache import lookup_whole_result
        looked_up = lookup_whole_result(args.path, args.cache, args.hash, args.format,
                                        boot_transform,
                                        need_tree=bool(args.write_dumpfile_to))
        if looked_up.digest is not None and looked_up.counts is not None:
            seconds = time.perf_counter() - started
            _report(args, looked_up.digest.hex(), looked_up.counts,
                    {"scan": seconds, "total": seconds}, cached=True)
            return 0
    from cfsboot.boot.digest import DigestOptions, compute_composefs_digest

    options = DigestOptions(alg=args.hash, format=args.format, boot_transform=boot_transform,
                            threads=args.threads, cache_dir=args.cache,
                            progress=sys.stderr.isatty(), need_tree=bool(args.write_dumpfile_to))
    result = compute_composefs_digest(args.path, options, looked_up)
    if args.write_dumpfile_to:
        assert result.root is not None  # need_tree
        from cfsboot.atomic import atomic_write_bytes
        from cfsboot.tree.dumpfile import write_dumpfile
        try:
            atomic_write_bytes(args.write_dumpfile_to, write_dumpfile(result.root))
        except OSError as e:
            raise CfsError(f"cannot write {args.write_dumpfile_to}: {e.strerror}") from e
    _report(args, result.hexdigest, vars(result.counts), result.timings,
            cached=result.from_cache)
    return 0


def _report(args: argparse.Namespace, digest: str, counts: dict[str, int],
            timings: dict[str, float], *, cached: bool) -> None:
    if not args.json:
        print(digest)
        return
    from cfsboot import native
    print(json.dumps({
        "digest": digest,
        "format": args.format,
        "hash": args.hash,
        "counts": counts,
        "time": {k: round(v, 6) for k, v in timings.items()},
        "cached": cached,  # the whole result came from --cache
        "hashing": native.describe(),  # "c": the accelerator; "python": without it
    }, indent=1))
