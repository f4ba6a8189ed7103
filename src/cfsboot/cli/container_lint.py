"""``cfsboot container lint``: bootc's container lints on a root filesystem."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from cfsboot.errors import CfsError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class LintFailed(CfsError):
    """Fatal lints (or warnings under --fatal-warnings) failed."""


def check_rootfs(rootfs: str) -> None:
    """``--rootfs`` names a directory (checks on anything else would pass vacuously)."""
    if not os.path.isdir(rootfs):
        missing = " (it does not exist)" if not os.path.lexists(rootfs) else ""
        raise CfsError(f"--rootfs {rootfs} is not a directory{missing}")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("lint", help="check a root filesystem with bootc's container lints",
                       description="Run bootc's container lints on a root filesystem.")
    p.add_argument("--rootfs", default="/", metavar="DIR", help="root filesystem (default: /)")
    p.add_argument("--fatal-warnings", action="store_true", help="warnings fail the run too")
    p.add_argument("--list", action="store_true", help="list the lints and exit")
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="skip a lint, repeatable")
    p.add_argument("--no-truncate", action="store_true",
                   help="show every problem (default: at most 5 per lint)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_lint)


def run_lint(args: argparse.Namespace) -> int:
    from cfsboot.boot import lint

    if args.list:
        if args.json:
            print(json.dumps([{"name": x.name, "type": x.type, "description": x.description,
                               **({"root-type": x.root_type} if x.root_type else {})}
                              for x in lint.LINTS], indent=2))
        else:
            for x in lint.LINTS:
                print(f"- name: {x.name}\n  type: {x.type}\n  description: {x.description}")
                if x.root_type:
                    print(f"  root-type: {x.root_type.capitalize()}")
        return 0
    check_rootfs(args.rootfs)
    results = lint.run_lints(args.rootfs, tuple(args.skip))
    passed, skipped, warnings, failed = lint.summary(results, args.fatal_warnings)
    if args.json:
        print(json.dumps({
            "root-type": lint.root_type(args.rootfs),
            "lints": [{"name": r.name, "type": r.type, "skipped": r.skipped, "ok": r.ok,
                       "message": None if r.ok else r.message(truncate=False),
                       "sections": [{"header": h, "items": i} for h, i in r.sections]}
                      for r in results],
            "passed": passed, "skipped": skipped, "warnings": warnings, "failed": failed,
        }, indent=2))
    else:
        for r in results:
            if r.skipped or r.ok:
                continue
            label = "Failed lint" if r.type == lint.FATAL else "Lint warning"
            print(f"{label}: {r.name}: {r.message(truncate=not args.no_truncate)}")
        print(f"Checks passed: {passed}")
        if skipped:
            print(f"Checks skipped: {skipped}")
        if warnings:
            print(f"Warnings: {warnings}")
    if failed:
        raise LintFailed(f"Checks failed: {failed}")
    return 0
