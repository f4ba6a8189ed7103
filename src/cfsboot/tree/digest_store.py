"""Where the bytes of external files go while they are hashed.

A scan hashes each large regular file exactly once; when an ``ObjectSink`` is
given, every chunk read for hashing is also written to a pending object, which
is committed under its digest once the digest is known.  That way the file is
read once, whether or not a copy is kept.

``FlatDigestStore`` is the store of C ``mkcomposefs --digest-store=DIR``:
objects live at ``DIR/xx/rest`` (``object_path``), with no ``objects/`` level.
An object only ever appears under its final name complete: it is written to an
anonymous (``O_TMPFILE``) or hidden temporary file in ``DIR`` and linked into
place; if the name already exists, the existing object is kept (same digest,
same content).  As C mkcomposefs does, fs-verity is enabled on new objects
where the filesystem supports it.  Objects are not fsynced one by one — ``flush()`` syncs the
whole filesystem once, which is what makes a store of 10⁵ objects affordable.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
from typing import Protocol

from cfsboot.errors import CfsError
from cfsboot.fsverity import VerityUnsupported, enable_verity
from cfsboot.tree.model import object_path

Buffer = bytes | bytearray | memoryview

_ALG_BY_SIZE = {32: "sha256", 64: "sha512"}


class PendingObject(Protocol):
    """One object being written; exactly one of commit()/abort() ends it."""

    def write(self, data: Buffer, /) -> object: ...

    def commit(self, digest: bytes) -> None: ...

    def abort(self) -> None: ...


class ObjectSink(Protocol):
    """Receives a copy of every external file's bytes, named by its digest."""

    def contains(self, digest: bytes) -> bool: ...

    def begin(self, size: int) -> PendingObject: ...

    def flush(self) -> None:
        """Make every committed object durable (called once, after a scan)."""
        ...


class DigestStoreError(CfsError):
    """The object store could not be written."""


_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
# Errors meaning "this filesystem has no O_TMPFILE": fall back to named files.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


class FlatDigestStore:
    """``DIR/xx/rest`` objects, like C ``mkcomposefs --digest-store``."""

    def __init__(self, directory: str, *, use_tmpfile: bool = True,
                 enable_verity: bool = True) -> None:
        if os.path.lexists(directory) and not os.path.isdir(directory):
            raise DigestStoreError(f"digest store {directory} is not a directory")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise DigestStoreError(
                f"cannot create digest store {directory}: {e.strerror}") from e
        self.directory = directory
        self._use_tmpfile = use_tmpfile and _O_TMPFILE != 0
        self.try_verity = enable_verity  # cleared once the filesystem says no

    def path_of(self, digest: bytes) -> str:
        return os.path.join(self.directory, os.fsdecode(object_path(digest)))

    def contains(self, digest: bytes) -> bool:
        return os.path.exists(self.path_of(digest))

    def begin(self, size: int) -> PendingObject:
        if self._use_tmpfile:
            try:
                fd = os.open(self.directory, _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno not in _NO_TMPFILE:
                    raise DigestStoreError(
                        f"cannot write to digest store {self.directory}: {e.strerror}") from e
                self._use_tmpfile = False
            else:
                return _PendingFile(self, fd, None)
        for _ in range(16):
            name = os.path.join(self.directory, f".tmp-object-{secrets.token_hex(6)}")
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            except OSError as e:
                raise DigestStoreError(
                    f"cannot write to digest store {self.directory}: {e.strerror}") from e
            os.fchmod(fd, 0o644)  # independent of the umask, like the O_TMPFILE path
            return _PendingFile(self, fd, name)
        raise DigestStoreError(f"cannot create a temporary file in {self.directory}")

    def flush(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)


class _PendingFile:
    def __init__(self, store: FlatDigestStore, fd: int, tmpname: str | None) -> None:
        self._store = store
        self._fd = fd
        self._tmpname = tmpname

    def write(self, data: Buffer, /) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        return len(data)

    def commit(self, digest: bytes) -> None:
        final = self._store.path_of(digest)
        if os.path.exists(final):
            self.abort()  # the same content is already stored under this digest
            return
        if self._store.try_verity:
            self._enable_verity(_ALG_BY_SIZE.get(len(digest), "sha256"))
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            if self._tmpname is None:
                # linkat(AT_SYMLINK_FOLLOW) of the magic link; Python only uses
                # linkat (not link, which would not follow) when given a dir fd.
                # The path is absolute, so the dir fd itself is ignored.
                os.link(f"/proc/self/fd/{self._fd}", final, src_dir_fd=self._fd)
            else:
                os.link(self._tmpname, final)
        except FileExistsError:
            pass  # the same content is already stored under this digest
        except OSError as e:
            raise DigestStoreError(f"cannot store object {final}: {e.strerror}") from e
        finally:
            self.abort()

    def _enable_verity(self, alg: str) -> None:
        """Best effort, as C mkcomposefs: reopen read-only (verity needs no
        writers), enable; a filesystem without fs-verity is not asked again."""
        source = self._tmpname or f"/proc/self/fd/{self._fd}"
        try:
            ro = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        os.close(self._fd)
        self._fd = ro  # keeps an O_TMPFILE inode alive (and linkable)
        try:
            enable_verity(ro, alg)
        except VerityUnsupported:
            self._store.try_verity = False
        except (CfsError, OSError):
            pass  # e.g. verity already enabled differently: the object is still valid

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmpname is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmpname)
            self._tmpname = None


def copy_objects(store: FlatDigestStore, sources: dict[bytes, str], alg: str) -> None:
    """Copy each scanned file (digest -> path) that ``store`` lacks into it,
    checking that the copy still has its digest; then flush the store.  For a
    store inside the scanned tree, filled after the scan as C mkcomposefs
    does, so that the image shows the store as it was before."""
    from cfsboot.fsverity.digest import FsVerityHasher
    for digest, path in sources.items():
        if store.contains(digest):
            continue
        try:
            source = open(path, "rb")  # noqa: SIM115  (closed below)
        except OSError as e:
            raise DigestStoreError(f"cannot read {path}: {e.strerror}") from e
        pending = store.begin(0)
        try:
            hasher = FsVerityHasher(alg)
            with source:
                while chunk := source.read(1 << 20):
                    hasher.update(chunk)
                    pending.write(chunk)
            if hasher.digest() != digest:
                raise DigestStoreError(f"{path} changed while it was being stored")
            pending.commit(digest)
        except BaseException:
            pending.abort()
            raise
    store.flush()


def _syncfs(fd: int) -> None:
    """syncfs(2) on the filesystem holding ``fd`` (os.sync() if unavailable)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    if syncfs(ctypes.c_int(fd)) != 0:
        err = ctypes.get_errno()
        raise DigestStoreError(f"syncfs failed: {os.strerror(err)}")
