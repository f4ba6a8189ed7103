"""``bootc container lint``: checks on a container root filesystem.

bootc-composefs-backend.md §3.9.  Each lint returns a list of problems (empty =
passed).  Lints run sorted by name; the root type is ``running`` when the root is
``/``, else ``alternative``, and some lints only apply to one of them.
"""

from __future__ import annotations

import configparser
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from cfsboot.boot.kargs import KargsError, kargs_files, read_kargs_file
from cfsboot.boot.seal import vmlinuz_dirs
from cfsboot.errors import CfsError

FATAL = "fatal"
WARNING = "warning"
RUNNING = "running"
ALTERNATIVE = "alternative"
TRUNCATE = 5
API_DIRS = ("dev", "proc", "sys", "run", "tmp", "var")
PREPARE_ROOT = "usr/lib/ostree/prepare-root.conf"
BASEIMAGE_DOC = "usr/share/doc/bootc/baseimage/base"
STUB_RESOLV = "/run/systemd/resolve/stub-resolv.conf"
SYSUSERS_DIRS = ("usr/lib/sysusers.d", "etc/sysusers.d")


# A failed lint's message: sections of (header, items); a plain message has no items.
Section = tuple[str, list[str]]


@dataclass(frozen=True)
class Lint:
    name: str
    type: str            # FATAL or WARNING
    description: str
    check: Callable[[str], list[Section]]
    root_type: str | None = None   # only for this root type


@dataclass
class LintResult:
    name: str
    type: str
    skipped: bool = False
    sections: list[Section] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.sections

    def message(self, truncate: bool = True) -> str:
        """bootc's text: a plain message, or ``header:`` then indented items (at
        most 5 unless not truncating, then ``...and N more``)."""
        parts = []
        for header, items in self.sections:
            if not items:
                parts.append(header)
                continue
            shown = items[:TRUNCATE] if truncate else items
            lines = [f"{header}:", *(f"  {i}" for i in shown)]
            if len(items) > len(shown):
                lines.append(f"  ...and {len(items) - len(shown)} more")
            parts.append("\n".join(lines))
        return "\n".join(parts)


def _p(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_dir(path: str) -> bool:
    st = _lstat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _msg(text: str) -> list[Section]:
    return [(text, [])]


def _items(header: str, items: list[str]) -> list[Section]:
    return [(header, items)] if items else []


def check_api_base_directories(root: str) -> list[Section]:
    for d in API_DIRS:
        st = _lstat(_p(root, d))
        if st is None:
            return _msg(f"Missing API filesystem base directory: /{d}")
        if not stat.S_ISDIR(st.st_mode):
            return _msg(f"Expected directory for API filesystem base directory: /{d}")
    return []


def _composefs_enabled(path: str) -> bool | None:
    """None when there is no prepare-root.conf; else whether composefs is on."""
    if not os.path.isfile(path):
        return None
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return False
    value = cfg.get("composefs", "enabled", fallback="").strip().lower()
    return value in ("yes", "true", "1", "signed", "verity", "maybe")


def check_baseimage_composefs(root: str) -> list[Section]:
    for base in ("", BASEIMAGE_DOC):
        if base and not os.path.isdir(_p(root, base)):
            continue
        state = _composefs_enabled(_p(root, os.path.join(base, PREPARE_ROOT)))
        if state is None:
            return _msg(f"{PREPARE_ROOT} is not present to enable composefs")
        if not state:
            return _msg(f"{PREPARE_ROOT} does not have composefs enabled")
    return []


def check_baseimage_root(root: str) -> list[Section]:
    for base in ("", BASEIMAGE_DOC):
        if base and not os.path.isdir(_p(root, base)):
            continue
        st = _lstat(_p(root, os.path.join(base, "sysroot")))
        if st is None:
            return _msg("Missing /sysroot")
        if not stat.S_ISDIR(st.st_mode):
            return _msg("Expected a directory for /sysroot")
        link = _p(root, os.path.join(base, "ostree"))
        st = _lstat(link)
        if st is None:
            return _msg("Missing ostree -> sysroot/ostree link")
        if not stat.S_ISLNK(st.st_mode):
            return _msg("/ostree should be a symlink")
        if os.readlink(link) != "sysroot/ostree":
            return _msg(f"Expected /ostree -> sysroot/ostree, not {os.readlink(link)!r}")
    return []


def check_bootc_kargs(root: str) -> list[Section]:
    try:
        for name in kargs_files(root):
            read_kargs_file(root, name, "x86_64")   # parse only; the arch does not matter
    except KargsError as e:
        return _msg(str(e))
    return []


def check_buildah_injected(root: str) -> list[Section]:
    for rel in ("etc/hostname", "etc/resolv.conf"):
        st = _lstat(_p(root, rel))
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return _msg(f"/{rel} is an empty file; this may have been synthesized by a "
                        "container runtime.")
    return []


def check_etc_usretc(root: str) -> list[Section]:
    if _lstat(_p(root, "etc")) is not None and _lstat(_p(root, "usr/etc")) is not None:
        return _msg("Found /usr/etc - this is a bootc implementation detail and not "
                    "supported to use in containers")
    return []


def check_kernel(root: str) -> list[Section]:
    kvers = vmlinuz_dirs(root)
    if len(kvers) > 1:
        return _msg(f"Multiple kernels found in /usr/lib/modules: {', '.join(kvers)}")
    return []


def check_nonempty_boot(root: str) -> list[Section]:
    path = _p(root, "boot")
    if not _is_dir(path):
        return _msg("Missing /boot directory")
    return _items("Found non-empty /boot", sorted(n for n in os.listdir(path) if n != "EFI"))


def _walk_contents(root: str, top: str) -> list[str]:
    """Absolute paths of everything under ``top``, not crossing mount points."""
    base = _p(root, top)
    st = _lstat(base)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            cst = _lstat(full)
            if cst is not None and cst.st_dev != st.st_dev:
                if name in dirnames:
                    dirnames.remove(name)   # a mount point: not part of the image
                continue
            found.append("/" + os.path.relpath(full, root))
    return sorted(found)


def _prune_known_run_paths(paths: list[str]) -> list[str]:
    """Drop podman's stub-resolv.conf and parent directories holding nothing else."""
    keep = set(paths)
    keep.discard(STUB_RESOLV)
    d = os.path.dirname(STUB_RESOLV)
    while d.startswith("/run/"):
        if any(p != d and p.startswith(d + "/") for p in keep):
            break
        keep.discard(d)
        d = os.path.dirname(d)
    return sorted(keep)


def check_nonempty_run_tmp(root: str) -> list[Section]:
    found = _prune_known_run_paths(_walk_contents(root, "run") + _walk_contents(root, "tmp"))
    return _items("Found content in runtime-only directories (/run, /tmp)", found)


def _sysusers_names(root: str) -> tuple[set[str], set[str]]:
    users: set[str] = set()
    groups: set[str] = set()
    for d in SYSUSERS_DIRS:
        for name in sorted(os.listdir(_p(root, d))) if os.path.isdir(_p(root, d)) else []:
            if not name.endswith(".conf"):
                continue
            try:
                with open(_p(root, os.path.join(d, name)), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                parts = line.split()
                if len(parts) < 2 or parts[0].startswith("#"):
                    continue
                kind, who = parts[0].rstrip("!"), parts[1]
                if kind == "u":
                    users.add(who)
                    groups.add(who)   # "u" creates the user's group too
                elif kind == "g":
                    groups.add(who)
    return users, groups


def _names_in(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.split(":", 1)[0] for line in f
                    if ":" in line and not line.startswith("#")]
    except OSError:
        return []


def check_sysusers(root: str) -> list[Section]:
    users, groups = _sysusers_names(root)
    return (_items("Found /etc/passwd entry without corresponding systemd sysusers.d",
                   [u for u in _names_in(_p(root, "etc/passwd")) if u not in users])
            + _items("Found /etc/group entry without corresponding systemd sysusers.d",
                     [g for g in _names_in(_p(root, "etc/group")) if g not in groups]))


def _rust_debug(name: bytes) -> str:
    """A file name as Rust's ``{:?}`` shows an OsStr: valid UTF-8 kept, each invalid
    byte as ``\\xFF``, quotes and backslashes escaped (``"bad\\xFFdéf"``)."""
    out = []
    for ch in name.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02X}")
        elif ch in "\"\\":
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(ch, f"\\u{{{code:x}}}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def check_utf8(root: str) -> list[Section]:
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        dirnames.sort()
        rel_dir = b"/" + os.path.relpath(dirpath, broot).lstrip(b".")
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                shown = rel_dir.decode("utf-8", "backslashreplace")
                return _msg(f"{shown.rstrip('/') or '/'}: Found non-utf8 filename "
                            f"{_rust_debug(name)}")
            if os.path.islink(full):
                try:
                    os.readlink(full).decode("utf-8")
                except UnicodeDecodeError:
                    shown = os.path.join(rel_dir, name).decode("utf-8", "backslashreplace")
                    return _msg(f"{shown}: Found non-utf8 symlink target")
    return []


def check_var_log(root: str) -> list[Section]:
    found = []
    for path in _walk_contents(root, "var/log"):
        st = _lstat(_p(root, path.lstrip("/")))
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > 0:
            found.append(path)
    return _items("Found non-empty logfiles", found)


def check_var_run(root: str) -> list[Section]:
    st = _lstat(_p(root, "var/run"))
    if st is not None and not stat.S_ISLNK(st.st_mode):
        return _msg("Not a symlink: var/run")
    return []


def check_var_tmpfiles(root: str) -> list[Section]:
    """The files half of bootc's check: /var content other than directories and
    symlinks cannot come from tmpfiles.d.  (tmpfiles.d coverage is not checked.)"""
    found = []
    for path in _walk_contents(root, "var"):
        st = _lstat(_p(root, path.lstrip("/")))
        if st is not None and not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            found.append(path)
    return _items("Found non-directory/non-symlink files in /var", found)


LINTS: tuple[Lint, ...] = tuple(sorted((
    Lint("api-base-directories", FATAL, "Verify that expected base API directories exist",
         check_api_base_directories),
    Lint("baseimage-composefs", WARNING, "Check that composefs is enabled for ostree",
         check_baseimage_composefs),
    Lint("baseimage-root", FATAL, "Check that expected files are present in the root "
         "filesystem (/sysroot, /ostree -> sysroot/ostree)", check_baseimage_root),
    Lint("bootc-kargs", FATAL, "Verify syntax of /usr/lib/bootc/kargs.d", check_bootc_kargs),
    Lint("buildah-injected", WARNING, "Check for an invalid /etc/hostname or "
         "/etc/resolv.conf that may have been injected by a container build system",
         check_buildah_injected, ALTERNATIVE),
    Lint("etc-usretc", FATAL, "Verify that only one of /etc or /usr/etc exist",
         check_etc_usretc),
    Lint("kernel", FATAL, "Check for multiple kernels, i.e. multiple directories of the "
         "form /usr/lib/modules/$kver", check_kernel),
    Lint("nonempty-boot", WARNING, "The /boot directory should be present, but empty "
         "(except /boot/EFI)", check_nonempty_boot),
    Lint("nonempty-run-tmp", WARNING, "Check for content in /run and /tmp",
         check_nonempty_run_tmp),
    Lint("sysusers", WARNING, "Check for users in /etc/passwd and groups in /etc/group "
         "that do not have corresponding systemd sysusers.d entries", check_sysusers),
    Lint("utf8", FATAL, "Check for non-UTF8 filenames and symlink targets", check_utf8),
    Lint("var-log", WARNING, "Check for non-empty regular files in /var/log", check_var_log),
    Lint("var-run", FATAL, "Check for /var/run being a physical directory", check_var_run),
    Lint("var-tmpfiles", WARNING, "Check for content in /var that is not created by "
         "tmpfiles.d", check_var_tmpfiles, RUNNING),
), key=lambda lint: lint.name))
LINT_NAMES = tuple(lint.name for lint in LINTS)


class UnknownLintError(CfsError):
    """A --skip name that is not a lint."""


def root_type(rootfs: str) -> str:
    return RUNNING if os.path.realpath(rootfs) == "/" else ALTERNATIVE


def run_lints(rootfs: str, skip: tuple[str, ...] = ()) -> list[LintResult]:
    unknown = [s for s in skip if s not in LINT_NAMES]
    if unknown:
        raise UnknownLintError(f"unknown lint {unknown[0]!r} (see --list)")
    kind = root_type(rootfs)
    results = []
    for lint in LINTS:
        if lint.name in skip or (lint.root_type is not None and lint.root_type != kind):
            results.append(LintResult(lint.name, lint.type, skipped=True))
            continue
        results.append(LintResult(lint.name, lint.type, sections=lint.check(rootfs)))
    return results


def summary(results: list[LintResult], fatal_warnings: bool) -> tuple[int, int, int, int]:
    """(passed, skipped, warnings, failed) where failed counts what makes the run fail."""
    passed = sum(1 for r in results if not r.skipped and r.ok)
    skipped = sum(1 for r in results if r.skipped)
    warnings = sum(1 for r in results if not r.ok and r.type == WARNING)
    fatal = sum(1 for r in results if not r.ok and r.type == FATAL)
    return passed, skipped, warnings, fatal + (warnings if fatal_warnings else 0)
