"""The optional C accelerator (``cfsboot/_native.c``), when it was built.

``module`` is the extension, or None: then every caller runs its pure-Python
twin, which gives identical results (the tests compare the two).  Setting
``CFSBOOT_NATIVE=0`` in the environment chooses the Python code even where the
extension exists, to compare or to rule it out.
"""

from __future__ import annotations

import os

# The types below only matter to mypy; importing typing at run time costs a
# few milliseconds of every cached rebuild (see cli/container_digest.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol

    class StatLike(Protocol):
        """The lstat fields a tree scan uses: an ``os.stat_result``, or the C
        lister's lighter ``Stat`` with the same names."""

        @property
        def st_mode(self) -> int: ...
        @property
        def st_ino(self) -> int: ...
        @property
        def st_dev(self) -> int: ...
        @property
        def st_nlink(self) -> int: ...
        @property
        def st_uid(self) -> int: ...
        @property
        def st_gid(self) -> int: ...
        @property
        def st_size(self) -> int: ...
        @property
        def st_rdev(self) -> int: ...
        @property
        def st_mtime_ns(self) -> int: ...
        @property
        def st_ctime_ns(self) -> int: ...

    # One directory entry from list_directory: name, full path, lstat, xattrs,
    # and the symlink target or the bytes of a small regular file.  For an entry
    # the C code could not read, the last three are None (the caller redoes it).
    ListedEntry = tuple[bytes, bytes, StatLike | None, dict[bytes, bytes] | None, bytes | None]

    class NativeModule(Protocol):
        """What ``_native.c`` provides (see its comments, and ``_native.pyi``)."""

        def digest_fd(self, fd: int, alg: int, /) -> tuple[bytes, int]: ...

        def digest_buffer(self, data: bytes | bytearray | memoryview, alg: int, /) -> bytes: ...

        def digest_paths(
                self, paths: list[bytes], alg: int, nofollow: bool, dir_fd: int = ..., /,
        ) -> list[tuple[bytes, int, int, int, int, int, int, int, bool] | int]: ...

        def fingerprint_tree(self, root: bytes, salt: bytes, /) -> tuple[bytes, int, int]: ...

        def list_directory(self, path: bytes, inline_max: int, /) -> Sequence[ListedEntry]: ...


def _load() -> NativeModule | None:
    if os.environ.get("CFSBOOT_NATIVE", "1") == "0":
        return None
    try:
        from cfsboot import _native
    except ImportError:  # not built: no compiler or no OpenSSL headers at install
        return None
    return _native


module: NativeModule | None = _load()


def describe() -> str:
    """For --json reports and benchmarks: which implementation runs."""
    return "c" if module is not None else "python"
