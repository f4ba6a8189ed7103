"""``cfsboot container …``: commands run inside a container build.

Sub-commands are registered here; further ones (lint, inspect, …) live in
their own modules listed in ``SUBCOMMAND_MODULES``, each defining
``register(subparsers)`` like a top-level command module.

Heavy modules are imported only when a command runs, so a missing or broken
layer never breaks the whole CLI and ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cfsboot.cli.container_digest import DEFAULT_PATH, FORMATS, HASHES
from cfsboot.cli.parser import register_modules

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
# (run by cli/container_digest.py, which also reads plain command lines itself)

def register_compute_composefs_digest(sub: Subparsers) -> None:
    p = sub.add_parser(
        "compute-composefs-digest",
        help="print the bootable composefs digest of a directory",
        description="Print the bootable composefs digest of a root filesystem, as "
        "`bootc container compute-composefs-digest` does: the fs-verity SHA-512 digest "
        "of the V1 EROFS image of the tree after the OCI and boot transforms.")
    p.add_argument("path", metavar="PATH", nargs="?", default=DEFAULT_PATH,
                   help="root of the filesystem (default: /target)")
    p.add_argument("--write-dumpfile-to", metavar="FILE",
                   help="also write the transformed tree as a composefs-rs dumpfile")
    p.add_argument("--hash", choices=HASHES, default="sha512",
                   help="fs-verity hash for objects and the image (default: sha512)")
    p.add_argument("--format", type=int, choices=FORMATS, default=1,
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
                   "writable only by you, and outside PATH)")
    p.set_defaults(func=_run_compute_composefs_digest)


def _run_compute_composefs_digest(args: argparse.Namespace) -> int:
    from cfsboot.cli.container_digest import DigestRequest, run_compute_composefs_digest
    return run_compute_composefs_digest(DigestRequest.from_namespace(args))
