"""``cfsboot`` entry point: parses the command line (cli/parser.py) and turns
``CfsError``/``OSError`` into one-line errors.

Start-up is part of every cached image rebuild, so this module imports
nothing at the top but os and sys: argparse is imported only when the
command line is not one that cli/container_digest.py reads directly.
"""

from __future__ import annotations

import os
import sys

from cfsboot.errors import CfsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _direct_command(words: list[str]) -> Callable[[], int] | None:
    """The command to run for an invocation read without argparse, or None."""
    if words[:2] == ["container", "compute-composefs-digest"]:
        from cfsboot.cli.container_digest import parse_plain, run_compute_composefs_digest
        request = parse_plain(words[2:])
        if request is not None:
            return lambda: run_compute_composefs_digest(request)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stdout is None or sys.stderr is None:
        # Started with stdout/stderr closed (`>&-`): there is nowhere to put
        # results or errors; refuse rather than fail half-way.
        return 1
    if sys.stdin is None:
        sys.stdin = open(os.devnull)  # noqa: SIM115  (`<&-`: reads see end of file)
    words = list(sys.argv[1:] if argv is None else argv)
    command = _direct_command(words)
    if command is None:
        from cfsboot.cli.parser import build_parser
        args = build_parser(words).parse_args(words)
        command = lambda: args.func(args)  # noqa: E731
    try:
        rc = command()
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
