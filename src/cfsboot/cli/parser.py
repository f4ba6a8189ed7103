"""The argument parser of ``cfsboot``: built from the per-area command
modules, only the one being run imported (see COMMANDS).

``main`` imports this module for every command but one invocation shape:
``container compute-composefs-digest`` with plain options is parsed without
argparse (cli/container_digest.py), because a cached rebuild takes tens of
milliseconds and argparse's imports alone take ten.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

# Command name -> the module that defines it.  Each module has
# ``register(subparsers)``; a command sets ``func(args) -> int``.  Only the
# module of the command being run is imported, so start-up stays fast (this
# runs in every image build) and one area's heavy imports don't tax the others.
COMMANDS: dict[str, str] = {
    "mkcomposefs": "cfsboot.cli.mkcomposefs",
    "composefs-info": "cfsboot.cli.composefs_info",
    "container": "cfsboot.cli.container",
    "repo": "cfsboot.cli.repo",
    "create-image": "cfsboot.cli.image",
    "mount": "cfsboot.cli.image",
    "oci": "cfsboot.cli.oci",
    "keys": "cfsboot.cli.keys",
    "uki": "cfsboot.cli.uki",
    "seal": "cfsboot.cli.seal",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))


def register_modules(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     names: Sequence[str]) -> None:
    """Import each module and let it add its (sub)commands."""
    for name in names:
        importlib.import_module(name).register(sub)


def _terminal_width() -> int:
    """As shutil.get_terminal_size, which argparse's default formatter imports
    for this (and shutil pulls in bz2, lzma, zlib: ~4 ms of every start-up)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_width() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """The default formatter is _Formatter (subcommand parsers are this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="cfsboot", description="composefs backend for bootable containers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    module = COMMANDS.get(words[0]) if words else None
    register_modules(sub, [module] if module else COMMAND_MODULES)
    return parser
