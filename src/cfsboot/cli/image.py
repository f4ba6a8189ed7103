"""``cfsboot create-image`` and ``cfsboot mount``.

``create-image DIR|DUMPFILE [NAME]`` stores a directory's files as objects
(each file read once: hashed and copied together) and commits the tree as
EROFS images in the repository's formats; it prints the image ID as
``sha512:<hex>``.  Unlike ``cfsctl create-image`` no container transform is
applied: the image is a faithful copy of the directory.  A dumpfile's external
objects must already be in the repository.

``mount IMAGE MOUNTPOINT`` mounts an image read-only as composefs does.
"""

from __future__ import annotations

import argparse
import os
import sys

from cfsboot.cli.repo import add_repo_options, open_repo_from_args, repo_path
from cfsboot.errors import CfsError
from cfsboot.paths import is_within
from cfsboot.repository.commit import commit_tree, missing_objects
from cfsboot.repository.mount import MountOptions, mount_image
from cfsboot.tree.dumpfile import parse_dumpfile
from cfsboot.tree.scan import ScanOptions, scan_directory


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("create-image", help="commit a directory or dumpfile as an image",
                              description="Store a directory (or a dumpfile's tree) in the "
                                          "repository as a composefs image and print its ID.")
    add_repo_options(p)
    p.add_argument("source", help="directory to commit, or a composefs dumpfile")
    p.add_argument("name", nargs="?", help="image ref name (images/refs/NAME)")
    p.add_argument("--erofs-version", type=int, choices=(0, 1, 2),
                   help="only this EROFS format (default: the repository's formats)")
    p.add_argument("--threads", type=int, help="hashing threads (default: CPUs)")
    p.set_defaults(func=_create_image)

    p = subparsers.add_parser("mount", help="mount a repository image read-only",
                              description="Mount an image (hex digest or ref name) with "
                                          "EROFS + overlayfs, objects as data-only layer.")
    add_repo_options(p)
    p.add_argument("image", help="image ID (hex), ref name as 'repo images' lists it, "
                                 "or refs/NAME")
    p.add_argument("mountpoint")
    p.add_argument("--upperdir", help="writable upper directory (with --workdir)")
    p.add_argument("--workdir", help="overlayfs work directory (with --upperdir)")
    p.add_argument("--read-write", action="store_true",
                   help="mount read-write (needs --upperdir and --workdir)")
    p.set_defaults(func=_mount)


def _create_image(args: argparse.Namespace) -> int:
    # Before the repository is opened (an old-format one would get a meta.json).
    path = repo_path(args)
    if os.path.isdir(args.source) and is_within(args.source, path):
        raise CfsError(f"repository {path} is inside {args.source}: its objects would become "
                       "part of the image; use a repository outside the tree")
    with open_repo_from_args(args) as repo:
        repo.ensure_writable()
        if os.path.isdir(args.source):
            result = scan_directory(args.source, ScanOptions(
                alg=repo.algorithm.hash_name, sink=repo.sink(), threads=args.threads,
                progress=sys.stderr.isatty()))
            root = result.root
        else:
            try:
                with open(args.source, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise CfsError(f"{args.source}: no such file or directory") from None
            root = parse_dumpfile(data, flavor="rs")
            missing = missing_objects(repo, root)
            if missing:
                raise CfsError(f"{len(missing)} object(s) the dumpfile refers to are not in "
                               f"the repository (first: {missing[0].hex()})")
        digest = commit_tree(repo, root, args.name)
        print(repo.algorithm.to_id(digest))
    return 0


def _mount(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        mount_image(repo, args.image, args.mountpoint,
                    MountOptions(args.upperdir, args.workdir, args.read_write))
    return 0
