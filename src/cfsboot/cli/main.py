"""``cfsboot`` entry point: builds the argument parser from the per-area
command modules and turns ``CfsError``/``OSError`` into one-line errors."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cfsboot.errors import CfsError

# Each module defines ``register(subparsers)``; a command sets ``func(args) -> int``.
COMMAND_MODULES: tuple[str, ...] = (
    "cfsboot.cli.mkcomposefs",
    "cfsboot.cli.composefs_info",
    "cfsboot.cli.container",
    "cfsboot.cli.repo",
    "cfsboot.cli.image",
    "cfsboot.cli.keys",
    "cfsboot.cli.uki",
    "cfsboot.cli.seal",
    "cfsboot.cli.oci",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfsboot", description="composefs backend for bootable containers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except CfsError as e:
        print(f"cfsboot: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"cfsboot: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cfsboot: interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
