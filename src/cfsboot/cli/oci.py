"""``cfsboot oci``: pull, images, inspect, compute-id, mount, tag, untag
(cfsctl ``oci`` compatible, oci-import.md §11).

``pull SOURCE [NAME]`` imports ``oci:DIR[:TAG]`` natively and every other
transport (``docker://``, ``oci-archive:``, ``docker-archive:``, …) through
skopeo; the tag is NAME or SOURCE itself.  An image reference is a tag or
``@sha256:…``: the manifest digest for ``inspect``, the *config* digest for
``compute-id`` (as cfsctl; a manifest digest is accepted there too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

from cfsboot.boot.oci_bootable import boot_ref_key, bootable_image_id, generate_boot_image
from cfsboot.cli.repo import add_repo_options, open_repo_from_args
from cfsboot.errors import CfsError
from cfsboot.oci.image import (
    OciImage,
    config_stream,
    create_filesystem,
    image_id,
    list_tags,
    manifest_stream,
    open_image,
    resolve_ref,
    tag_image,
    untag_image,
)
from cfsboot.oci.normalize import XATTR_MODES
from cfsboot.oci.pull import pull
from cfsboot.oci.reference import parse_digest
from cfsboot.oci.tarsplit import SplitStats
from cfsboot.repository import Repository
from cfsboot.repository.mount import MountOptions, mount_image


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("oci", help="import and inspect OCI images",
                              description="Import OCI images into a composefs repository "
                                          "(no container engine needed).")
    add_repo_options(p)
    sub = p.add_subparsers(dest="oci_command", metavar="COMMAND", required=True)

    s = sub.add_parser("pull", help="import an image (oci:DIR[:TAG], docker://…, …)")
    add_repo_options(s, nested=True)
    s.add_argument("source", help="oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, "
                                  "docker://REF, …")
    s.add_argument("name", nargs="?", help="tag to create (default: SOURCE)")
    s.add_argument("--bootable", action="store_true", help="also generate the boot image")
    s.add_argument("--jobs", type=int, help="layers imported in parallel (default: CPUs)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--no-tls-verify", action="store_true",
                   help="registry over plain HTTP / unverified TLS (skopeo --tls-verify=false)")
    s.add_argument("--authfile", help="registry credentials file for skopeo")
    s.set_defaults(func=_pull)

    s = sub.add_parser("images", help="list tagged images")
    add_repo_options(s, nested=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_images)

    s = sub.add_parser("inspect", help="show an image's manifest and config")
    add_repo_options(s, nested=True)
    s.add_argument("ref", help="tag or @MANIFEST_DIGEST")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--manifest", action="store_true", help="raw manifest JSON")
    g.add_argument("--config", action="store_true", help="raw config JSON")
    s.set_defaults(func=_inspect)

    s = sub.add_parser("compute-id", help="print the composefs image ID of an image")
    add_repo_options(s, nested=True)
    s.add_argument("ref", help="tag or @CONFIG_DIGEST")
    s.add_argument("--bootable", action="store_true", help="apply the boot transform")
    s.add_argument("--xattrs", choices=XATTR_MODES, default="allowlist-only")
    s.add_argument("--erofs-version", type=int, choices=(0, 1, 2),
                   help="EROFS format (default: the repository's)")
    s.set_defaults(func=_compute_id)

    s = sub.add_parser("mount", help="mount an image's linked composefs EROFS")
    add_repo_options(s, nested=True)
    s.add_argument("image", help="tag or sha256:MANIFEST_DIGEST")
    s.add_argument("mountpoint")
    s.add_argument("--bootable", action="store_true", help="mount the boot image")
    s.set_defaults(func=_mount)

    s = sub.add_parser("tag", help="tag a stored manifest")
    add_repo_options(s, nested=True)
    s.add_argument("digest")
    s.add_argument("name")
    s.set_defaults(func=_tag)

    s = sub.add_parser("untag", help="remove a tag")
    add_repo_options(s, nested=True)
    s.add_argument("name")
    s.set_defaults(func=_untag)


def _human(n: int) -> str:
    """indicatif HumanBytes: binary units, two decimals."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError


class _LayerBars:
    """One rich progress bar per layer on a TTY (compressed bytes read)."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), console=Console(stderr=True),
                             transient=True)
        self._bar.start()

    def __call__(self, diff_id: str, n: int, total: int) -> None:
        if self._bar is None:
            return
        with self._lock:
            task = self._tasks.get(diff_id)
            if task is None:
                task = self._tasks[diff_id] = self._bar.add_task(
                    diff_id.partition(":")[2][:12], total=total)
        self._bar.advance(task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _objects_line(s: SplitStats) -> str:
    return (f"{s.objects_new} new + {s.objects_present} already present objects; "
            f"{_human(s.bytes_stored)} stored, {_human(s.bytes_inline)} inlined")


def _pull(args: argparse.Namespace) -> int:
    # As cfsctl (`name.unwrap_or(image)`): only an absent NAME means SOURCE; an
    # explicit "" is a name, and refused as one.
    tag = args.source if args.name is None else args.name
    bars = _LayerBars(sys.stderr.isatty() and not args.no_progress)
    with open_repo_from_args(args) as repo:
        try:
            result = pull(repo, args.source, tag, jobs=args.jobs, progress=bars,
                          tls_verify=not args.no_tls_verify, authfile=args.authfile)
        finally:
            bars.close()
        print(f"manifest {result.manifest_digest}")
        print(f"config   {result.config_digest}")
        print(f"verity   {result.manifest_verity.hex()}")
        print(f"tagged   {tag}")
        print(f"objects  {_objects_line(result.stats)}")
        if args.bootable:
            if result.image_id is None:
                raise CfsError("--bootable needs a container image, not an artifact")
            print(f"Boot image: {generate_boot_image(repo, result.manifest_digest).hex()}")
    return 0


def _open(repo: Repository, ref: str) -> OciImage:
    return open_image(repo, *resolve_ref(repo, ref))


def _images(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with open_repo_from_args(args) as repo:
        for tag, digest in list_tags(repo):
            try:
                img = open_image(repo, digest)
            except CfsError as e:
                print(f"cfsboot: warning: skipping {tag}: {e}", file=sys.stderr)
                continue
            cfg = img.config or {}
            rows.append({"name": tag, "manifest_digest": digest,
                         "is_container": img.is_container,
                         "architecture": str(cfg.get("architecture", "")),
                         "os": str(cfg.get("os", "")), "created": cfg.get("created"),
                         "layer_count": len(img.layer_refs), "referrer_count": 0})
    if args.json:
        print(json.dumps({"images": rows}, indent=2))
        return 0
    if not rows:
        print("No images found")
        return 0
    table = [("NAME", "DIGEST", "ARCH", "LAYERS", "REFS")] + [
        (_printable(r["name"]), r["manifest_digest"].partition(":")[2][:12],
         r["architecture"] or "artifact",
         str(r["layer_count"]), str(r["referrer_count"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print(" │ ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _printable(tag: str) -> str:
    """A tag on one table line: control characters (possible in tags made by
    other tools) escaped, as repr() does."""
    if not any(ord(c) < 0x20 or ord(c) == 0x7F for c in tag):
        return tag
    return "".join(repr(c)[1:-1] if ord(c) < 0x20 or ord(c) == 0x7F else c for c in tag)


def _inspect(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        img = _open(repo, args.ref)
        if args.manifest:
            sys.stdout.write(img.manifest_raw.decode("utf-8", "replace") + "\n")
            return 0
        if args.config:
            sys.stdout.write(img.config_raw.decode("utf-8", "replace") + "\n")
            return 0
        version = 1 if repo.format_config().default in (0, 1) else 2
        erofs = img.image_ref(version)
        boot = img.image_refs.get(boot_ref_key(version))
        print(json.dumps({
            "manifest": img.manifest_raw.decode("utf-8", "replace"),
            "config": img.config_raw.decode("utf-8", "replace"),
            "referrers": [],
            "composefs_erofs": erofs.hex() if erofs else None,
            "composefs_boot_erofs": boot.hex() if boot else None,
        }, indent=2))
    return 0


def _config_of(repo: Repository, ref: str) -> tuple[str, bytes | None]:
    """(config digest, config verity or None) for compute-id's REF."""
    if ref.startswith("@"):
        digest = parse_digest(ref[1:])
        if repo.has_stream(config_stream(digest)) is not None:
            return digest, None  # trusted only after re-hashing (§7.4)
        if repo.has_stream(manifest_stream(digest)) is None:
            raise CfsError(f"no stored config or manifest {digest}")
        img = open_image(repo, digest)
    else:
        img = _open(repo, ref)
    return img.config_desc.digest, img.config_verity


def _compute_id(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        digest, verity = _config_of(repo, args.ref)
        if args.bootable:
            out = bootable_image_id(repo, digest, verity, args.xattrs, args.erofs_version)
        else:
            out = image_id(repo, create_filesystem(repo, digest, verity, args.xattrs),
                           args.erofs_version)
        print(out.hex())
    return 0


def _mount(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        img = _open(repo, args.image)
        version = 1 if repo.format_config().default in (0, 1) else 2
        if args.bootable:
            target = img.image_refs.get(boot_ref_key(version))
            if target is None:
                raise CfsError("No boot EROFS image linked — try pulling with --bootable")
        else:
            target = img.image_ref(version)
            if target is None:
                raise CfsError("No composefs EROFS image linked — try re-pulling the image")
        if not os.path.isdir(args.mountpoint):
            raise CfsError(f"mount point {args.mountpoint} is not a directory")
        mount_image(repo, target.hex(), args.mountpoint, MountOptions())
    return 0


def _tag(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        digest = parse_digest(args.digest)
        tag_image(repo, digest, args.name)
        print(f"Tagged {digest} as {args.name}")
    return 0


def _untag(args: argparse.Namespace) -> int:
    with open_repo_from_args(args) as repo:
        untag_image(repo, args.name)
        print(f"Removed tag {args.name}")
    return 0
