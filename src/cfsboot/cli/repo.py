"""``cfsboot repo``: init, gc, fsck, images, refs, streams, cat, image-objects.

The repository is chosen like ``cfsctl`` does: ``--repo PATH``, else
``--system`` (``/sysroot/composefs``, the default for root) or ``--user``
(``$HOME/.var/lib/composefs``, the default otherwise).  The helpers
``add_repo_options`` / ``open_repo_from_args`` are shared with other commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

from cfsboot.errors import CfsError
from cfsboot.repository.fsck import fsck
from cfsboot.repository.gc import gc
from cfsboot.repository.meta import Algorithm, FormatConfig
from cfsboot.repository.repo import Repository, RepositoryError

SYSTEM_REPO = "/sysroot/composefs"


def add_repo_options(parser: argparse.ArgumentParser, *, nested: bool = False,
                     repo_help: str | None = None) -> None:
    """``--repo/--user/--system``, ``--insecure``, ``--require-verity``.  With
    ``nested`` the options do not override values given before the subcommand;
    ``repo_help`` replaces the text of --repo (for a command whose repository
    is optional: there is no default one then)."""
    default: Any = argparse.SUPPRESS if nested else None
    flag_default: Any = argparse.SUPPRESS if nested else False
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--repo", metavar="PATH", default=default,
                       help=repo_help or "repository path (default: /sysroot/composefs as "
                       "root, else $HOME/.var/lib/composefs)")
    group.add_argument("--user", action="store_true", default=flag_default,
                       help="use $HOME/.var/lib/composefs")
    group.add_argument("--system", action="store_true", default=flag_default,
                       help="use /sysroot/composefs")
    parser.add_argument("--insecure", action="store_true", default=flag_default,
                        help="do not require fs-verity even if the repository has it")
    parser.add_argument("--require-verity", action="store_true", default=flag_default,
                        help="fail unless the repository was initialized with fs-verity")
    parser.add_argument("--no-upgrade", action="store_true", default=flag_default,
                        help="do not add meta.json to an old-format repository")


def repo_path(args: argparse.Namespace) -> str:
    if getattr(args, "repo", None):
        return str(args.repo)
    if getattr(args, "system", False):
        return SYSTEM_REPO
    if getattr(args, "user", False) or os.geteuid() != 0:
        home = os.environ.get("HOME")
        if not home:
            raise CfsError("$HOME is not set (use --repo PATH)")
        return os.path.join(home, ".var/lib/composefs")
    return SYSTEM_REPO


def open_repo_from_args(args: argparse.Namespace) -> Repository:
    repo = Repository.open(repo_path(args), upgrade=not getattr(args, "no_upgrade", False),
                           insecure=getattr(args, "insecure", False),
                           require_verity=getattr(args, "require_verity", False))
    version = getattr(args, "erofs_version", None)
    if version is not None:
        repo.set_erofs_version(version)
    return repo


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("repo", help="manage a composefs repository",
                              description="Manage a composefs repository "
                                          "(composefs-rs/cfsctl compatible).")
    add_repo_options(p)
    sub = p.add_subparsers(dest="repo_command", metavar="COMMAND", required=True)

    s = sub.add_parser("init", help="create a repository")
    add_repo_options(s, nested=True)
    s.add_argument("path", nargs="?", help="repository path (default: see --repo)")
    s.add_argument("--algorithm", default="fsverity-sha512-12",
                   help="fsverity-sha512-12 (default) or fsverity-sha256-12")
    s.add_argument("--erofs-version", type=int, choices=(0, 1, 2), default=1,
                   help="default EROFS format of committed images (default 1)")
    s.add_argument("--ensure", action="store_true",
                   help="open an existing repository unchanged, upgrading an old one")
    s.add_argument("--reset-metadata", action="store_true",
                   help="delete images/, streams/ and meta.json first (objects are kept)")
    s.set_defaults(func=_init)

    s = sub.add_parser("gc", help="remove objects no ref reaches")
    add_repo_options(s, nested=True)
    s.add_argument("-r", "--root", action="append", default=[], metavar="NAME",
                   help="also keep images/NAME or streams/NAME (repeatable)")
    s.add_argument("-n", "--dry-run", action="store_true", help="report, delete nothing")
    s.set_defaults(func=_gc)

    s = sub.add_parser("fsck", help="verify objects, streams, images and refs")
    add_repo_options(s, nested=True)
    s.add_argument("--json", action="store_true", help="machine-readable output (exit 0)")
    s.add_argument("--metadata-only", action="store_true", help="skip object digests")
    s.set_defaults(func=_fsck)

    s = sub.add_parser("images", help="list image refs")
    add_repo_options(s, nested=True)
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-trunc", action="store_true", help="show full digests")
    s.set_defaults(func=_images)

    s = sub.add_parser("refs", help="list stream refs (streams/refs/**)")
    add_repo_options(s, nested=True)
    s.add_argument("prefix", nargs="?", default="")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_refs)

    s = sub.add_parser("streams", help="list streams and their object IDs")
    add_repo_options(s, nested=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_streams)

    s = sub.add_parser("cat", help="write a stream's reconstructed content to stdout")
    add_repo_options(s, nested=True)
    s.add_argument("name", help="stream name below streams/ (e.g. refs/foo)")
    s.set_defaults(func=_cat)

    s = sub.add_parser("import-image", help="store an EROFS image read from stdin (unchecked)")
    add_repo_options(s, nested=True)
    s.add_argument("name", help="image ref name")
    s.set_defaults(func=_import_image)

    s = sub.add_parser("image-objects", help="list the objects an image references")
    add_repo_options(s, nested=True)
    s.add_argument("name")
    s.set_defaults(func=_image_objects)


def _init(args: argparse.Namespace) -> int:
    path = args.path or repo_path(args)
    alg = Algorithm.parse(args.algorithm)
    formats = FormatConfig(args.erofs_version)
    _check_repository_or_empty(path)  # before --reset-metadata deletes anything
    if args.reset_metadata:
        for d in ("streams", "images"):
            shutil.rmtree(os.path.join(path, d), ignore_errors=True)
        if os.path.lexists(os.path.join(path, "meta.json")):
            os.unlink(os.path.join(path, "meta.json"))
    if args.ensure and os.path.isdir(os.path.join(path, "objects")):
        had_meta = os.path.exists(os.path.join(path, "meta.json"))
        with Repository.open(path, algorithm=alg, upgrade=True):
            pass
        print(f"Repository already initialized at {path} (existing configuration preserved)"
              if had_meta else f"Upgraded legacy repository at {path}")
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    repo, created = Repository.init(path, alg, insecure=args.insecure, formats=formats)
    with repo:
        if not created:
            suffix = " (existing configuration preserved)" if args.ensure else ""
            print(f"Repository already initialized at {path}{suffix}")
            return 0
    print(f"Initialized composefs repository at {path}")
    print(f"  algorithm: {alg.meta_name}")
    print("  verity:    " + ("not required (insecure)" if args.insecure else "required"))
    return 0


# What a repository's top level may hold (repository.md §2): the three areas,
# meta.json, transient ``.symlink-*`` files; old-format repositories (before
# meta.json) had the same areas.  lost+found: a repository on its own filesystem.
_REPOSITORY_ENTRIES = frozenset({"objects", "images", "streams", "meta.json", "lost+found"})


def _check_repository_or_empty(path: str) -> None:
    """Refuse to turn a directory with other contents (a root filesystem, a home
    directory) into a repository: init would quietly add meta.json and objects/
    to it.  (cfsctl init accepts any directory.)"""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return  # created by init, or refused there
    if "meta.json" in names:
        return
    if any(n not in _REPOSITORY_ENTRIES and not n.startswith(".symlink-") for n in names):
        raise CfsError(f"{path} is not empty and not a composefs repository "
                       "(no meta.json); give an empty or new directory")


def _gc(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        result = gc(repo, args.root, dry_run=args.dry_run, on_wait=lambda: print(
            "cfsboot: waiting for other users of the repository to finish...",
            file=sys.stderr))
    if args.dry_run:
        print("Dry run (no files deleted):")
    print(f"Objects: {result.objects_removed} removed ({result.objects_bytes} bytes)")
    if result.images_pruned or result.streams_pruned:
        print(f"Pruned symlinks: {result.images_pruned} images, "
              f"{result.streams_pruned} streams")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        result = fsck(repo, metadata_only=args.metadata_only)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(result.report())
    if not result.ok:
        print("cfsboot: repository integrity check failed", file=sys.stderr)
        return 1
    return 0


def _images(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        refs = repo.list_image_refs()
    rows = [(r.name, r.target.rsplit("/", 1)[-1]) for r in refs]
    if args.json:
        print(json.dumps({"images": [{"name": n, "digest": d} for n, d in rows]}, indent=2))
    elif not rows:
        print("No images found")
    else:
        _table(["NAME", "DIGEST"],
               [(n, d if args.no_trunc else d[:12]) for n, d in rows])
    return 0


def _refs(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        refs = repo.list_stream_refs(args.prefix)
    if args.json:
        print(json.dumps({"refs": [{"name": r.name, "target": r.target} for r in refs]},
                         indent=2))
    else:
        for r in refs:
            print(f"{r.name}\t{r.target.rsplit('/', 1)[-1]}")
    return 0


def _streams(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        entries = repo.list_streams()
        alg = repo.algorithm
    if args.json:
        print(json.dumps({"streams": [{"name": n, "objectId": d.hex() if d else None}
                                      for n, d in entries]}, indent=2))
    else:
        for n, d in entries:
            print(f"{n}\t{alg.to_id(d) if d else '(invalid link)'}")
    return 0


def _cat(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_repo_from_args(args) as repo:
        repo.cat(args.name, out.write)
    out.flush()
    return 0


def _import_image(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read()
    with open_repo_from_args(args) as repo:
        print(repo.algorithm.to_id(repo.write_image(args.name, data)))
    return 0


def _image_objects(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        for digest in sorted(repo.image_objects(args.name)):
            print(repo.algorithm.to_id(digest))
    return 0


def _table(header: list[str], rows: list[tuple[str, str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [tuple(header), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


__all__ = ["RepositoryError", "add_repo_options", "open_repo_from_args", "register",
           "repo_path"]
