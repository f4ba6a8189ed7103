"""``cfsboot`` entry point: builds the argument parser from the per-area
command modules and turns ``CfsError``/``OSError`` into one-line errors."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from cfsboot.errors import CfsError

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


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stdout is None or sys.stderr is None:
        # Started with stdout/stderr closed (`>&-`): there is nowhere to put
        # results or errors; refuse rather than fail half-way.
        return 1
    if sys.stdin is None:
        sys.stdin = open(os.devnull)  # noqa: SIM115  (`<&-`: reads see end of file)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
        sys.stdout.flush()
    except CfsError as e:
        return _fail(str(e))
    except BrokenPipeError:
        # The reader went away (`| head`): exit as a SIGPIPE'd tool would,
        # without Python's complaint when it flushes stdout again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return rc


def _fail(message: str, status: int = 1) -> int:
    """One line on stderr, whatever the message contains."""
    line = " ".join(message.split()) or "failed"
    print(f"cfsboot: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
