"""Write files so that readers see either the old file or the complete new one.

Every output cfsboot produces (images, dumpfiles, objects, ESP contents) goes
through here: data is written to a temporary name in the target's directory,
fsynced, then renamed over the target.  A crash or an error leaves at most a
stray ``.tmp`` file that is removed on the error path, never a half-written
output under the real name.

Two cases are not files to replace, and are written through instead, as
``mkcomposefs IMAGE`` or ``> PATH`` would: an existing target that is not a
regular file (``/dev/null``, ``/dev/stdout``, a fifo) and, for a symlink, the
file it points to (the link itself stays).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it replaces ``path`` atomically.

    ``mode`` defaults to the existing file's permissions, else 0o666 less the
    umask (what ``open(path, "w")`` would create).
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(target, "wb") as stream:  # a device or fifo: write through
            yield stream
        return
    if mode is None:
        mode = stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~current_umask()
    fd, tmp = _mkstemp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes,
                       mode: int | None = None) -> None:
    with atomic_open(path, mode) as f:
        f.write(data)


def current_umask() -> int:
    """The process umask, read without changing it (threads may be creating files)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _mkstemp(target: Path) -> tuple[int, str]:
    directory = target.parent if str(target.parent) else Path(".")
    for attempt in range(100):
        tmp = directory / f".{target.name}.{os.getpid()}.{attempt}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        except OSError as e:
            # Name the output the user gave, not our temporary name.
            raise OSError(e.errno, e.strerror, str(target)) from None
        return fd, str(tmp)
    raise FileExistsError(f"cannot create a temporary file next to {target}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
