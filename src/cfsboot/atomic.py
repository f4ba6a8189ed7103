"""Write files so that readers see either the old file or the complete new one.

Every output cfsboot produces (images, dumpfiles, objects, ESP contents) goes
through here: data is written to a temporary name in the target's directory,
fsynced, then renamed over the target.  A crash or an error leaves at most a
stray ``.tmp`` file that is removed on the error path, never a half-written
output under the real name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it replaces ``path`` atomically."""
    target = Path(path)
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with atomic_open(path, mode) as f:
        f.write(data)


def _mkstemp(target: Path) -> tuple[int, str]:
    directory = target.parent if str(target.parent) else Path(".")
    for attempt in range(100):
        tmp = directory / f".{target.name}.{os.getpid()}.{attempt}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
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
