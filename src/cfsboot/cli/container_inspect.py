"""``cfsboot container inspect``: kernel, boot type and kernel arguments of a root
filesystem, as ``bootc container inspect`` (plus the UKI's own arguments)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    p = sub.add_parser("inspect", help="show kernel, boot type and kernel arguments",
                       description="Show the kernel (UKI or vmlinuz), boot type and kernel "
                       "arguments (kargs.d, and the UKI's .cmdline) of a root filesystem.")
    p.add_argument("--rootfs", default="/", metavar="DIR", help="root filesystem (default: /)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--format", choices=("humanreadable", "json", "yaml"), default=None)
    p.add_argument("--arch", metavar="ARCH",
                   help="architecture for kargs.d match-architectures (default: this machine)")
    p.set_defaults(func=run_inspect)


def inspect_rootfs(rootfs: str, arch: str | None = None) -> dict[str, Any]:
    from cfsboot.boot import uki
    from cfsboot.boot.kargs import kargs_in_root
    from cfsboot.boot.seal import find_kernel, read_regular

    kernel = find_kernel(rootfs)
    doc: dict[str, Any] = {
        "kargs": kargs_in_root(rootfs, arch),
        "kernel": None if kernel is None else {"version": kernel.version,
                                               "unified": kernel.unified},
        "boot-type": None if kernel is None else ("uki" if kernel.unified else "bls"),
    }
    if kernel is not None and kernel.unified:
        # bootc tolerates a UKI without .cmdline; so do we (no kargs then).
        report = uki.inspect_uki(read_regular(f"{rootfs}/{kernel.path}"))
        doc["uki"] = {
            "path": f"/{kernel.path}", "uname": report.uname, "kargs": list(report.kargs),
            "composefs": None if report.composefs is None else {
                "digest": report.composefs.digest, "insecure": report.composefs.insecure},
            "signatures": len(report.signatures),
        }
    return doc


def _yaml(doc: dict[str, Any]) -> str:
    """A small YAML writer for this document's shape (strings, bools, lists, dicts)."""
    def scalar(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        return json.dumps(v)

    lines: list[str] = []

    def emit(obj: dict[str, Any], indent: str) -> None:
        for k, v in obj.items():
            if isinstance(v, dict):
                lines.append(f"{indent}{k}:")
                emit(v, indent + "  ")
            elif isinstance(v, list):
                lines.append(f"{indent}{k}:" + (" []" if not v else ""))
                lines.extend(f"{indent}- {scalar(x)}" for x in v)
            else:
                lines.append(f"{indent}{k}: {scalar(v)}")
    emit(doc, "")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from cfsboot.cli.container_lint import check_rootfs

    check_rootfs(args.rootfs)
    doc = inspect_rootfs(args.rootfs, args.arch)
    fmt = "json" if args.json else (args.format or "humanreadable")
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "yaml":
        print(_yaml(doc))
    else:
        kernel = doc["kernel"]
        rows = [("Kernel", kernel["version"] if kernel else "<none>"),
                ("Type", ("UKI" if kernel["unified"] else "vmlinuz") if kernel else "<none>"),
                ("Kargs", " ".join(doc["kargs"]) or "<none>")]
        if "uki" in doc:
            rows.append(("UKI kargs", " ".join(doc["uki"]["kargs"]) or "<none>"))
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label:>{width}}: {value}")
    return 0
