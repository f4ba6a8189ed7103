"""Error messages that name repository files the way the user named the
repository.

The repository works through directory fds: paths in an ``OSError`` are then
either relative to such an fd (``images/refs/x``) or ``/proc/self/fd/N/…``.
Neither tells the user where to look, so errors leaving the repository layer
are rewritten to ``<repo path>/<relative path>``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping

_FD_PATH = re.compile(r"/proc/self/fd/(\d+)(/[^\s:'\"]*)?")
_DONE = "_cfsboot_repo_paths"  # set on an OSError once its paths were rewritten


def join(base: str, rel: str) -> str:
    """``base/rel`` for display (``rel`` ``.`` or empty means ``base`` itself)."""
    rel = rel.removeprefix("./")
    if rel in ("", "."):
        return base
    return f"{base.rstrip('/')}/{rel}"


def replace_fd_paths(text: str, fds: Mapping[int, str]) -> str:
    """Replace every ``/proc/self/fd/N[/rest]`` whose N is in ``fds`` by its name."""
    def sub(m: re.Match[str]) -> str:
        name = fds.get(int(m.group(1)))
        if name is None:
            return m.group(0)
        return join(name, (m.group(2) or "").lstrip("/"))
    return _FD_PATH.sub(sub, text)


def rewrite(e: OSError, base: str, fds: Mapping[int, str]) -> None:
    """Make ``e``'s file names readable: fd paths (and bare fd numbers) by
    ``fds`` (an unknown bare fd number is dropped), relative names (relative
    to the directory fd the caller used) below ``base``."""
    if getattr(e, _DONE, False):
        return
    for attr in ("filename", "filename2"):
        value = getattr(e, attr)
        if isinstance(value, int):  # a file object's "name" when made by os.fdopen
            setattr(e, attr, fds.get(value))
            continue
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if not isinstance(value, str):
            continue
        if value.startswith("/proc/self/fd/"):
            setattr(e, attr, replace_fd_paths(value, fds))
        elif not value.startswith("/"):
            setattr(e, attr, join(base, value))
    if isinstance(e.strerror, str) and "/proc/self/fd/" in e.strerror:
        e.strerror = replace_fd_paths(e.strerror, fds)
    setattr(e, _DONE, True)


@contextlib.contextmanager
def named_in(base: str, fds: Mapping[int, str]) -> Iterator[None]:
    """Rewrite the paths of an ``OSError`` raised inside (see :func:`rewrite`).
    Only wrap code whose relative paths are all relative to ``base``."""
    try:
        yield
    except OSError as e:
        rewrite(e, base, fds)
        raise


@contextlib.contextmanager
def as_file(name: str | None) -> Iterator[None]:
    """An OSError inside names ``name`` (relative to the caller's directory fd,
    or None) instead of the ``/proc/self/fd/N`` path of an open file it was
    raised for, which would mean nothing to the user."""
    try:
        yield
    except OSError as e:
        e.filename = name
        e.filename2 = None
        raise
