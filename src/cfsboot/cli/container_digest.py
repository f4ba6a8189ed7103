"""``cfsboot container compute-composefs-digest``: running it, and reading
its plain command lines without argparse.

A rebuild answered from ``--cache`` takes tens of milliseconds, of which the
interpreter's start is half; argparse with its imports (re, enum, gettext…)
would add ten more.  So ``parse_plain`` reads the command lines a build
script writes — each option spelled out once, values that need no checking —
and gives up (None) on anything else: abbreviations, ``--``, repeated options,
help, values argparse would reject or convert.  Those go through the argparse
parser (cli/container.py), which produces the same ``DigestRequest``; a test
checks that the two agree wherever ``parse_plain`` answers.
"""

from __future__ import annotations

import sys
import time

from cfsboot.errors import CfsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace

HASHES = ("sha256", "sha512")
FORMATS = (0, 1, 2)
DEFAULT_PATH = "/target"  # as bootc


class DigestRequest:
    """What the command was asked to do (the argparse destinations)."""

    __slots__ = ("boot_transform", "cache", "format", "hash", "json", "path", "threads",
                 "write_dumpfile_to")

    def __init__(self, path: str = DEFAULT_PATH, *, write_dumpfile_to: str | None = None,
                 hash: str = "sha512", format: int = 1, boot_transform: bool = True,
                 json: bool = False, threads: int | None = None,
                 cache: str | None = None) -> None:
        self.path = path
        self.write_dumpfile_to = write_dumpfile_to
        self.hash = hash
        self.format = format
        self.boot_transform = boot_transform
        self.json = json
        self.threads = threads
        self.cache = cache

    @classmethod
    def from_namespace(cls, args: Namespace) -> DigestRequest:
        return cls(args.path, write_dumpfile_to=args.write_dumpfile_to, hash=args.hash,
                   format=args.format, boot_transform=not args.no_boot_transform,
                   json=args.json, threads=args.threads, cache=args.cache)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DigestRequest)
                and all(getattr(self, n) == getattr(other, n) for n in self.__slots__))

    def __repr__(self) -> str:
        return "DigestRequest(" + ", ".join(f"{n}={getattr(self, n)!r}"
                                            for n in self.__slots__) + ")"


# option -> whether it takes a value, for parse_plain
_PLAIN_OPTIONS = {"--write-dumpfile-to": True, "--cache": True, "--hash": True, "--format": True,
                  "--threads": True, "--no-boot-transform": False, "--json": False}


def parse_plain(words: list[str]) -> DigestRequest | None:
    """The request in ``words`` (what follows the command's name), when every
    word is unambiguous; None to let argparse read it (and report errors)."""
    given: dict[str, str] = {}
    paths: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-"):
            paths.append(word)
            continue
        name, eq, value = word.partition("=")
        if name not in _PLAIN_OPTIONS or name in given:
            return None
        if not _PLAIN_OPTIONS[name]:  # a flag
            if eq:
                return None
        elif not eq:
            if i == len(words) or words[i].startswith("-"):
                return None
            value = words[i]
            i += 1
        elif value == "--":
            return None  # argparse (3.11) drops it, leaving the option []
        given[name] = value
    hash_ = given.get("--hash", "sha512")
    format_ = given.get("--format", "1")
    threads = given.get("--threads")
    if (len(paths) > 1 or hash_ not in HASHES or format_ not in ("0", "1", "2")
            or (threads is not None
                and not (threads.isascii() and threads.isdigit() and len(threads) < 10
                         and int(threads) >= 1))):
        return None
    return DigestRequest(
        paths[0] if paths else DEFAULT_PATH,
        write_dumpfile_to=given.get("--write-dumpfile-to"), hash=hash_, format=int(format_),
        boot_transform="--no-boot-transform" not in given, json="--json" in given,
        threads=None if threads is None else int(threads), cache=given.get("--cache"))


def run_compute_composefs_digest(request: DigestRequest) -> int:
    if request.threads is not None and request.threads < 1:
        raise CfsError(f"invalid thread count {request.threads}")
    if request.write_dumpfile_to:
        from cfsboot.boot.digest_cache import check_container_root
        from cfsboot.paths import is_within
        check_container_root(request.path, boot=request.boot_transform)  # bootc's refusals first
        if is_within(request.path, request.write_dumpfile_to):
            raise CfsError(f"dumpfile {request.write_dumpfile_to} is inside {request.path}: "
                           "writing it would change the tree after its digest was taken; "
                           "write it outside the tree")
    started = time.perf_counter()
    looked_up = None
    if request.cache:
        # An unchanged tree is answered from the cache with light imports only.
        from cfsboot.boot.digest_cache import lookup_whole_result
        looked_up = lookup_whole_result(request.path, request.cache, request.hash,
                                        request.format, request.boot_transform,
                                        need_tree=bool(request.write_dumpfile_to))
        if looked_up.digest is not None and looked_up.counts is not None:
            seconds = time.perf_counter() - started
            _report(request, looked_up.digest.hex(), looked_up.counts,
                    {"scan": seconds, "total": seconds}, cached=True)
            return 0
    from cfsboot.boot.digest import DigestOptions, compute_composefs_digest

    options = DigestOptions(alg=request.hash, format=request.format,
                            boot_transform=request.boot_transform, threads=request.threads,
                            cache_dir=request.cache, progress=sys.stderr.isatty(),
                            need_tree=bool(request.write_dumpfile_to))
    result = compute_composefs_digest(request.path, options, looked_up)
    if request.write_dumpfile_to:
        assert result.root is not None  # need_tree
        from cfsboot.atomic import atomic_write_bytes
        from cfsboot.tree.dumpfile import write_dumpfile
        try:
            atomic_write_bytes(request.write_dumpfile_to, write_dumpfile(result.root))
        except OSError as e:
            raise CfsError(f"cannot write {request.write_dumpfile_to}: {e.strerror}") from e
    _report(request, result.hexdigest, vars(result.counts), result.timings,
            cached=result.from_cache)
    return 0


def _report(request: DigestRequest, digest: str, counts: dict[str, int],
            timings: dict[str, float], *, cached: bool) -> None:
    if not request.json:
        print(digest)
        return
    from cfsboot import native
    print(json_text({
        "digest": digest,
        "format": request.format,
        "hash": request.hash,
        "counts": counts,
        "time": {k: round(v, 6) for k, v in timings.items()},
        "cached": cached,  # the whole result came from --cache
        "hashing": native.describe(),  # "c": the accelerator; "python": without it
    }))


# What json.dumps(..., indent=1) writes, for the few types of a report: the
# json module imports re (and re imports enum), ~5 ms of a cached run.
_JSON_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                       "\b": "\\b", "\f": "\\f"}


def _json_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _JSON_SHORT_ESCAPES:
            out.append(_JSON_SHORT_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:  # as a UTF-16 surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}")
    return '"' + "".join(out) + '"'


def json_text(value: object, depth: int = 0) -> str:
    """``value`` (dicts with str keys, str, int, finite float, bool, None) as
    ``json.dumps(value, indent=1)`` writes it."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("a report has finite numbers only")
        return float.__repr__(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = " " * (depth + 1)
        items = [f"{inner}{_json_string(k)}: {json_text(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    raise TypeError(f"cannot report a {type(value).__name__}")
