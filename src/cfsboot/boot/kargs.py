"""Kernel arguments from ``/usr/lib/bootc/kargs.d/*.toml`` and the sealed command line.

bootc-composefs-backend.md §3.8 and uki-and-signing.md §4: files ending in
``.toml`` are read in sorted name order; each has a required ``kargs`` list and an
optional ``match-architectures`` list (Rust ``std::env::consts::ARCH`` names);
unknown keys are errors.  Arguments are accumulated with "add unless an identical
``key=value`` is already present", keys comparing with ``-`` and ``_`` equal.
"""

from __future__ import annotations

import os
import platform
import stat
import tomllib
from collections.abc import Iterable, Sequence

from cfsboot.boot.uki import split_cmdline
from cfsboot.errors import CfsError

KARGS_DIR = "usr/lib/bootc/kargs.d"
RESERVED_KEYS = ("composefs", "composefs.digest")

# uname -m / Debian / EFI names -> Rust's std::env::consts::ARCH, which kargs.d uses.
RUST_ARCH = {
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64",
    "aarch64": "aarch64", "arm64": "aarch64", "aa64": "aarch64",
    "ppc64le": "powerpc64", "ppc64": "powerpc64", "powerpc64": "powerpc64",
    "s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loongarch64",
    "i386": "x86", "i686": "x86", "ia32": "x86", "x86": "x86",
    "armv7l": "arm", "arm": "arm",
}


class KargsError(CfsError):
    """A kargs.d file cannot be read or does not follow the schema."""


def rust_arch(name: str | None = None) -> str:
    """The Rust architecture name for ``name`` (default: this machine)."""
    machine = name or platform.machine()
    return RUST_ARCH.get(machine, machine)


def parse_kargs_toml(text: str, arch: str, name: str = "kargs.d file") -> list[str]:
    """The arguments one kargs.d file contributes on ``arch`` (possibly none)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KargsError(f"{name}: invalid TOML: {e}") from e
    unknown = sorted(set(doc) - {"kargs", "match-architectures"})
    if unknown:
        raise KargsError(f"{name}: unknown key {unknown[0]!r} "
                         "(allowed: kargs, match-architectures)")
    if "kargs" not in doc:
        raise KargsError(f"{name}: missing required key 'kargs'")
    kargs = _string_list(doc["kargs"], name, "kargs")
    arches = doc.get("match-architectures")
    if arches is not None and arch not in _string_list(arches, name, "match-architectures"):
        return []
    return kargs


def _string_list(value: object, name: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KargsError(f"{name}: {key!r} must be a list of strings")
    return list(value)


def kargs_files(rootfs: str) -> list[str]:
    """The kargs.d file names that are read, sorted; none when the directory is absent."""
    directory = os.path.join(rootfs, KARGS_DIR)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise KargsError(f"/{KARGS_DIR} is not a directory") from None
    return sorted(n for n in names if n.endswith(".toml") and n != ".toml")


def read_kargs_file(rootfs: str, name: str, arch: str) -> list[str]:
    path = os.path.join(rootfs, KARGS_DIR, name)
    shown = f"/{KARGS_DIR}/{name}"
    try:
        kind = os.lstat(path).st_mode
        if stat.S_ISLNK(kind):
            target = os.readlink(path)   # resolved inside the root, as the image sees it
            where = os.path.join(rootfs, target.lstrip("/")) if target.startswith("/") \
                else os.path.join(os.path.dirname(path), target)
            dangling = "" if os.path.exists(where) else " to a missing file"
            raise KargsError(f"{shown} is a symlink{dangling}; kargs.d files must be "
                             "regular files")
        if not stat.S_ISREG(kind):
            what = "a directory" if stat.S_ISDIR(kind) else "not a regular file"
            raise KargsError(f"{shown} is {what}; kargs.d files must be regular files")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise KargsError(f"cannot read {shown}: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # replaced since the lstat
            raise KargsError(f"{shown} is not a regular file")
        with open(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as e:
        raise KargsError(f"cannot read {shown}: {e.strerror}") from e
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KargsError(f"{shown} is not UTF-8: {e}") from e
    return parse_kargs_toml(text, arch, shown)


def kargs_in_root(rootfs: str, arch: str | None = None) -> list[str]:
    """All kargs.d arguments of ``rootfs`` for ``arch``, merged in file order."""
    arch = arch or rust_arch()
    merged = Cmdline()
    for name in kargs_files(rootfs):
        merged.extend(split_cmdline(" ".join(read_kargs_file(rootfs, name, arch))))
    return merged.args


def _key(arg: str) -> str:
    return arg.partition("=")[0].replace("-", "_")


def _identity(arg: str) -> tuple[str, str, str]:
    """What ``identical`` compares: the key with ``-`` as ``_``, whether there is an
    ``=``, and the value."""
    key, sep, value = arg.partition("=")
    return key.replace("-", "_"), sep, value


def identical(a: str, b: str) -> bool:
    """Same key (``-`` and ``_`` equal) and same value (or both without ``=``)."""
    return _identity(a) == _identity(b)


class Cmdline:
    """An ordered argument list with add-if-not-identical semantics.

    The identities of the kept arguments are indexed in a set, so adding is O(1):
    kargs.d files come from the (possibly untrusted) image being sealed, and a
    linear scan per argument made a few hundred KB of kargs take minutes.
    """

    def __init__(self, args: Iterable[str] = ()) -> None:
        self.args: list[str] = []
        self._seen: set[tuple[str, str, str]] = set()
        self.extend(args)

    def add(self, arg: str) -> None:
        if not arg:
            return
        identity = _identity(arg)
        if identity not in self._seen:
            self._seen.add(identity)
            self.args.append(arg)

    def extend(self, args: Iterable[str]) -> None:
        for arg in args:
            self.add(arg)

    def __str__(self) -> str:
        return " ".join(self.args)


def composefs_arg(digest: str, allow_missing_verity: bool) -> str:
    return f"composefs={'?' if allow_missing_verity else ''}{digest}"


def sealed_cmdline(kargsd: Sequence[str], digest: str, allow_missing_verity: bool,
                   extra: Sequence[str] = ()) -> str:
    """kargs.d arguments, then ``composefs=[?]<digest>``, then ``extra`` (bootc's
    ``container ukify`` order), whitespace-normalised as ukify does."""
    for arg in [*kargsd, *split_args(extra)]:
        if _key(arg) in RESERVED_KEYS:
            # The first selector wins at boot: another one would override the seal.
            raise KargsError(f"kernel argument {arg!r} is not allowed: sealing adds "
                             "the composefs= argument itself")
    line = Cmdline(kargsd)
    line.add(composefs_arg(digest, allow_missing_verity))
    line.extend(split_args(extra))
    return str(line)


def split_args(values: Iterable[str]) -> list[str]:
    """``--karg`` values, each possibly holding several space-separated arguments."""
    return [a for v in values for a in split_cmdline(v)]
