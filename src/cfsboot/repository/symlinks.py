"""Relative, atomically replaced symlinks under the repository root
(repository.md §8), plus validation of the names callers pass in."""

from __future__ import annotations

import contextlib
import os
import secrets
import string

from cfsboot.errors import CfsError
from cfsboot.repository import errpaths

_ALNUM = string.ascii_letters + string.digits


class InvalidName(CfsError):
    """A stream, image or ref name that cannot be stored."""


def check_entry_name(name: str, what: str) -> str:
    """A first-level entry of images/ or streams/: one path component."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidName(f"invalid {what} name {name!r}")
    if name == "refs":
        raise InvalidName(f"{what} name 'refs' is reserved")
    return name


def check_ref_name(name: str) -> str:
    """A ref path below refs/: components separated by '/', none empty, '.' or '..'."""
    parts = name.split("/")
    if not name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise InvalidName(f"invalid ref name {name!r}")
    return name


def relative_link(name: str, target: str, repo_fd: int) -> str:
    """Target of a symlink at repo-relative ``name`` pointing at repo-relative
    ``target``; creates the link's missing parent directories (0755)."""
    a = name.split("/")[:-1]
    b = target.split("/")
    while a and b and a[0] == b[0]:
        a.pop(0)
        b.pop(0)
    parents = name.split("/")[:-1]
    for depth in range(1, len(parents) + 1):
        with contextlib.suppress(FileExistsError):
            os.mkdir("/".join(parents[:depth]), 0o755, dir_fd=repo_fd)
    return "/".join([".."] * len(a) + b)


def replace_symlink(target: str, name: str, repo_fd: int) -> None:
    """Make ``name`` a symlink to ``target``, replacing atomically (rename of a
    temporary link made in the repository root)."""
    try:
        # On failure, name the link (the target is not a repository path).
        with errpaths.as_file(name):
            os.symlink(target, name, dir_fd=repo_fd)
        return
    except FileExistsError:
        pass
    with contextlib.suppress(OSError):
        if os.readlink(name, dir_fd=repo_fd) == target:
            return
    for _ in range(16):
        tmp = ".symlink-" + "".join(secrets.choice(_ALNUM) for _ in range(12))
        try:
            with errpaths.as_file(tmp):
                os.symlink(target, tmp, dir_fd=repo_fd)
        except FileExistsError:
            continue
        try:
            os.rename(tmp, name, src_dir_fd=repo_fd, dst_dir_fd=repo_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=repo_fd)
            raise
        return
    raise FileExistsError(f"could not replace symlink {name}")


def link(name: str, target: str, repo_fd: int) -> None:
    """``name`` → ``target`` (both repo-relative), relative and atomic."""
    replace_symlink(relative_link(name, target, repo_fd), name, repo_fd)


def walk_links(repo_fd: int, top: str, repo_path: str = ".") -> list[tuple[str, str]]:
    """Every non-directory entry below ``top`` (recursive), as (path relative
    to ``top``, raw link target); entries that are not symlinks raise (their
    message names ``repo_path/…``)."""
    out: list[tuple[str, str]] = []
    try:
        names = os.listdir(_dir_fd_path(repo_fd, top))
    except FileNotFoundError:
        return out
    for entry in sorted(names):
        rel = f"{top}/{entry}"
        st = os.stat(rel, dir_fd=repo_fd, follow_symlinks=False)
        if _is_dir(st.st_mode):
            out.extend((f"{entry}/{sub}", tgt)
                       for sub, tgt in walk_links(repo_fd, rel, repo_path))
        elif _is_link(st.st_mode):
            out.append((entry, os.readlink(rel, dir_fd=repo_fd)))
        else:
            raise CfsError("unexpected file type in repository: "
                           f"{errpaths.join(repo_path, rel)}")
    return out


def _dir_fd_path(repo_fd: int, rel: str) -> str:
    return f"/proc/self/fd/{repo_fd}/{rel}"


def _is_dir(mode: int) -> bool:
    return (mode & 0o170000) == 0o040000


def _is_link(mode: int) -> bool:
    return (mode & 0o170000) == 0o120000
