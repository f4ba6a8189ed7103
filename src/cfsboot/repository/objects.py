"""The content-addressed object store: ``objects/XX/<rest of hex>``.

An object becomes visible under its final name only once complete: data goes
to an anonymous ``O_TMPFILE`` (named ``objects/.tmp-object-*`` where the
filesystem lacks O_TMPFILE), verity is enabled on a read-only reopen, and the
file is then linked (or renamed without replace) into place.  A killed
process therefore never leaves a partial object.  Nothing is fsynced per
object: the repository issues one ``syncfs`` before it publishes a stream
symlink (repository.md §7, §9.2).

All methods are safe to call from several threads at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cfsboot import inputs
from cfsboot.errors import CfsError
from cfsboot.repository import errpaths, sysapi, verity
from cfsboot.repository.meta import Algorithm

StoreMethod = Literal["copied", "already-present"]
_ALNUM = string.ascii_letters + string.digits


class ObjectError(CfsError):
    """An object is missing or its content does not match its name."""


def open_repository_file(dir_fd: int, rel: str, shown: str) -> int:
    """A repository file opened for reading: never through a symlink that leads
    out of ``dir_fd`` (openat2 RESOLVE_BENEATH), and never anything but a
    regular file (a FIFO would hang its reader, a device never end).  ``shown``
    names it in errors; a missing file raises FileNotFoundError as open does."""
    try:
        return inputs.open_regular(rel, dir_fd, _open_beneath)
    except inputs.NotRegularError:
        raise ObjectError(f"{shown} is not a regular file") from None
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise ObjectError(f"{shown} leads outside the repository") from None
        raise


def _open_beneath(path: str, flags: int, dir_fd: int | None) -> int:
    assert dir_fd is not None
    return sysapi.open_beneath(dir_fd, path, flags)


def object_relpath(digest: bytes) -> str:
    """``XX/rest`` below ``objects/``."""
    h = digest.hex()
    return f"{h[:2]}/{h[2:]}"


def parse_object_name(dir_name: str, basename: str, alg: Algorithm) -> bytes | None:
    """The ObjectID for ``objects/<dir_name>/<basename>``; None if malformed."""
    if len(dir_name) != 2 or len(basename) != 2 * (alg.digest_size - 1):
        return None
    try:
        return bytes.fromhex(dir_name + basename)
    except ValueError:
        return None


def parse_link_target(target: str, alg: Algorithm) -> bytes | None:
    """The ObjectID at the end of a symlink target ``…/XX/rest``."""
    n = 2 * alg.digest_size + 1
    tail = target[-n:]
    if len(tail) != n or tail[2] != "/":
        return None
    try:
        return bytes.fromhex(tail[:2] + tail[3:])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class StoreResult:
    digest: bytes
    size: int
    method: StoreMethod


class ObjectStore:
    """``objects/`` of one repository."""

    def __init__(self, repo_fd: int, alg: Algorithm, insecure: bool,
                 repo_path: str = ".") -> None:
        self.repo_fd = repo_fd
        self.repo_path = repo_path  # how errors name the repository
        self.alg = alg
        self.insecure = insecure
        self._objects_fd: int | None = None
        self._open_lock = threading.Lock()

    # -- directories ------------------------------------------------------------

    @property
    def objects_fd(self) -> int:
        fd = self._objects_fd
        if fd is None:
            with self._open_lock:
                if self._objects_fd is None:
                    with errpaths.named_in(self.repo_path, {self.repo_fd: self.repo_path}):
                        with contextlib.suppress(FileExistsError):
                            os.mkdir("objects", 0o755, dir_fd=self.repo_fd)
                        self._objects_fd = os.open(
                            "objects", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                            dir_fd=self.repo_fd)
                fd = self._objects_fd
        return fd

    def error_paths(self) -> contextlib.AbstractContextManager[None]:
        """Inside, an OSError's names relative to ``objects/`` (or through the
        repository's /proc/self/fd paths) become ``<repo path>/objects/…``."""
        objects = errpaths.join(self.repo_path, "objects")
        fds = {self.repo_fd: self.repo_path}
        if self._objects_fd is not None:
            fds[self._objects_fd] = objects
        return errpaths.named_in(objects, fds)

    def close(self) -> None:
        if self._objects_fd is not None:
            os.close(self._objects_fd)
            self._objects_fd = None

    def _ensure_subdir(self, digest: bytes) -> str:
        sub = digest[:1].hex()
        with contextlib.suppress(FileExistsError):
            os.mkdir(sub, 0o755, dir_fd=self.objects_fd)
        return sub

    # -- reading ------------------------------------------------------------------

    def exists(self, digest: bytes) -> bool:
        fd = self.objects_fd
        try:
            with self.error_paths():
                os.stat(object_relpath(digest), dir_fd=fd)
        except FileNotFoundError:
            return False
        return True

    def open(self, digest: bytes, *, check: bool = True) -> int:
        """Open an object read-only; with ``check`` its kernel verity must match
        (tolerated missing in insecure mode, as composefs-rs ``open_object``)."""
        objects_fd = self.objects_fd
        try:
            with self.error_paths():
                fd = open_repository_file(objects_fd, object_relpath(digest), self._display(digest))
        except FileNotFoundError:
            raise ObjectError(f"object not found: {self.alg.to_id(digest)} "
                              f"(no {self._display(digest)})") from None
        if check:
            try:
                with self.error_paths():
                    self._check_verity(fd, digest)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def read(self, digest: bytes, *, check: bool = True) -> bytes:
        fd = self.open(digest, check=check)
        with self.error_paths(), errpaths.as_file(object_relpath(digest)), \
                os.fdopen(fd, "rb") as f:
            return f.read()

    def _display(self, digest: bytes) -> str:
        """How errors name an object file."""
        return errpaths.join(self.repo_path, f"objects/{object_relpath(digest)}")

    def _check_verity(self, fd: int, digest: bytes) -> None:
        measured = verity.measure(fd, self.alg)
        if measured is None:
            if self.insecure:
                return
            raise ObjectError(f"object {self._display(digest)} has no fs-verity "
                              "(repository requires it)")
        if measured != digest:
            raise ObjectError(f"fs-verity content mismatch for object {self._display(digest)}: "
                              f"measured {measured.hex()}")

    # -- writing in-memory data -----------------------------------------------------

    def ensure(self, data: bytes) -> bytes:
        """Store ``data`` (digest computed in userspace first); returns its ID."""
        return self.store_bytes(data).digest

    def store_bytes(self, data: bytes, digest: bytes | None = None) -> StoreResult:
        """Store ``data``; ``digest`` may be passed when the caller already
        computed it (it is then double-checked by the kernel when possible)."""
        if digest is None:
            digest = verity.digest_bytes(data, self.alg)
        with self.error_paths():
            return self._store_bytes(data, digest)

    def _store_bytes(self, data: bytes, digest: bytes) -> StoreResult:
        path = object_relpath(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.objects_fd)
        except FileNotFoundError:
            pass
        else:
            try:
                self._verify_existing(fd, digest)
            finally:
                os.close(fd)
            return StoreResult(digest, len(data), "already-present")
        sub = self._ensure_subdir(digest)
        tmp = self._open_tmpfile(sub)
        try:
            assert tmp.fd is not None
            _write_all(tmp.fd, data)
            ro = [tmp.reopen_ro()]
            try:
                self._enable_and_check(ro, digest)
                method = self._link(ro[0], tmp, path)
            finally:
                os.close(ro[0])
        finally:
            tmp.discard()
        return StoreResult(digest, len(data), method)

    def _verify_existing(self, fd: int, digest: bytes) -> None:
        measured = verity.measure(fd, self.alg)
        if measured is None and self.insecure:
            ro, outcome = verity.enable_maybe_copy(fd, self.alg, self.objects_fd)
            try:
                if outcome == "unsupported":
                    return  # trust the name (insecure mode)
                measured = verity.measure(ro, self.alg)
            finally:
                if ro != fd:
                    os.close(ro)
        if measured is None:
            raise ObjectError(f"existing object {self._display(digest)} has no fs-verity")
        if measured != digest:
            raise ObjectError(f"existing object {self._display(digest)} is corrupt: "
                              f"measured {measured.hex()}")

    def _enable_verity(self, ro: list[int]) -> verity.EnableResult:
        """Enable verity on ``ro[0]``; if it had to be copied, ``ro[0]`` becomes
        the copy (the original is closed).  The caller closes ``ro[0]``."""
        new_fd, outcome = verity.enable_maybe_copy(ro[0], self.alg, self.objects_fd)
        if new_fd != ro[0]:
            os.close(ro[0])
            ro[0] = new_fd
        if outcome == "unsupported" and not self.insecure:
            raise ObjectError("the filesystem does not support fs-verity; use an "
                              "insecure repository (repo init --insecure)")
        return outcome

    def _enable_and_check(self, ro: list[int], digest: bytes) -> None:
        if self._enable_verity(ro) == "unsupported":
            return
        measured = verity.measure(ro[0], self.alg)
        if measured is None and self.insecure:
            return
        if measured != digest:
            raise ObjectError("fs-verity digest of the new object differs from the computed one")

    # -- streaming ------------------------------------------------------------------

    def tmpfile(self) -> ObjectTmpfile:
        """A writable temporary object; call :meth:`ObjectTmpfile.finalize`."""
        return ObjectTmpfile(self, self._open_tmpfile("."))

    def _open_tmpfile(self, subdir: str) -> _Tmp:
        with self.error_paths():
            return self._open_tmpfile_in(subdir)

    def _open_tmpfile_in(self, subdir: str) -> _Tmp:
        try:
            fd = os.open(subdir, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o644,
                         dir_fd=self.objects_fd)
            return _Tmp(fd, None, self.objects_fd)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EISDIR):
                raise
        for _ in range(16):  # filesystems without O_TMPFILE
            name = ".tmp-object-" + "".join(secrets.choice(_ALNUM) for _ in range(12))
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                             dir_fd=self.objects_fd)
            except FileExistsError:
                continue
            return _Tmp(fd, name, self.objects_fd)
        raise FileExistsError("could not create a temporary object file")

    def _link(self, ro: int, tmp: _Tmp, path: str) -> StoreMethod:
        """Publish the finished file as ``path``; losing a race is fine."""
        try:
            if tmp.name is not None:
                _rename_noreplace(self.objects_fd, tmp.name, path)
                tmp.name = None
            else:
                with errpaths.as_file(path):
                    os.link(f"/proc/self/fd/{ro}", path, dst_dir_fd=self.objects_fd,
                            follow_symlinks=True)
        except FileExistsError:
            return "already-present"
        return "copied"


class _Tmp:
    """An open temporary file, anonymous or named (``name``)."""

    def __init__(self, fd: int, name: str | None, dir_fd: int) -> None:
        self.fd: int | None = fd
        self.name = name
        self.dir_fd = dir_fd

    def reopen_ro(self) -> int:
        """Read-only fd on the same inode; the writable fd is closed (verity needs that)."""
        assert self.fd is not None
        with errpaths.as_file(self.name or "."):
            ro = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(self.fd)
        self.fd = None
        return ro

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self.dir_fd)
            self.name = None


class ObjectTmpfile:
    """Streaming object writer (repository.md §7.2).  In insecure mode the data is
    hashed while it is written, so it is read only once; in secure mode the
    kernel computes the digest when verity is enabled."""

    def __init__(self, store: ObjectStore, tmp: _Tmp) -> None:
        self._store = store
        self._tmp = tmp
        self.size = 0
        self._hasher = verity.new_hasher(store.alg) if store.insecure else None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._tmp.fd is not None, "write after finalize"
        _write_all(self._tmp.fd, data)
        if self._hasher is not None:
            self._hasher.update(data)
        self.size += len(data)

    def finalize(self, expected_size: int | None = None) -> StoreResult:
        """Name the object by its digest and link it into place."""
        store = self._store
        if expected_size is not None and expected_size != self.size:
            self.abort()
            raise ObjectError(f"object size mismatch: wrote {self.size} bytes, "
                              f"expected {expected_size}")
        with store.error_paths():
            return self._finalize()

    def _finalize(self) -> StoreResult:
        store = self._store
        try:
            ro = [self._tmp.reopen_ro()]
            try:
                if self._hasher is not None:
                    digest = self._hasher.digest()
                else:
                    store._enable_verity(ro)
                    measured = verity.measure(ro[0], store.alg)
                    if measured is None:
                        raise ObjectError("fs-verity was enabled but cannot be measured")
                    digest = measured
                path = object_relpath(digest)
                try:
                    st = os.stat(path, dir_fd=store.objects_fd)
                except FileNotFoundError:
                    pass
                else:
                    if st.st_size == self.size:
                        return StoreResult(digest, self.size, "already-present")
                store._ensure_subdir(digest)
                method = store._link(ro[0], self._tmp, path)
                return StoreResult(digest, self.size, method)
            finally:
                os.close(ro[0])
        finally:
            self._tmp.discard()

    def abort(self) -> None:
        self._tmp.discard()

    def __enter__(self) -> ObjectTmpfile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


_RENAME_NOREPLACE = 1


def _rename_noreplace(dir_fd: int, src: str, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE); FileExistsError when ``dst`` is taken.
    Where the flag is unsupported, link + unlink gives the same guarantee."""
    try:
        sysapi.renameat2(dir_fd, src, dir_fd, dst, _RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or isinstance(e, FileExistsError):
            raise
        os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.unlink(src, dir_fd=dir_fd)


# ---- sink for tree scans (cfsboot.tree.digest_store.ObjectSink) ---------------

class RepositorySink:
    """Lets a directory scan store each external file while hashing it, so a
    committed directory is read once.  ``on_flush`` makes objects durable."""

    def __init__(self, store: ObjectStore, on_flush: Callable[[], None]) -> None:
        self._store = store
        self._on_flush = on_flush
        self.stored = 0
        self.already_present = 0

    def contains(self, digest: bytes) -> bool:
        return self._store.exists(digest)

    def begin(self, size: int) -> PendingRepoObject:
        return PendingRepoObject(self, self._store._open_tmpfile("."))

    def flush(self) -> None:
        self._on_flush()


class PendingRepoObject:
    def __init__(self, sink: RepositorySink, tmp: _Tmp) -> None:
        self._sink = sink
        self._tmp = tmp

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        assert self._tmp.fd is not None, "write after commit/abort"
        # (a full disk, say: the error names the temporary file, or objects/)
        with self._sink._store.error_paths(), errpaths.as_file(self._tmp.name or "."):
            _write_all(self._tmp.fd, data)
        return len(data)

    __call__ = write  # digest_fd(..., sink=pending) calls it per chunk

    def commit(self, digest: bytes) -> None:
        """Link the written bytes as object ``digest`` (computed by the scanner;
        re-checked by the kernel when verity can be enabled)."""
        store = self._sink._store
        try:
            with store.error_paths():
                ro = [self._tmp.reopen_ro()]
                try:
                    store._enable_and_check(ro, digest)
                    store._ensure_subdir(digest)
                    method = store._link(ro[0], self._tmp, object_relpath(digest))
                finally:
                    os.close(ro[0])
        finally:
            self._tmp.discard()
        if method == "copied":
            self._sink.stored += 1
        else:
            self._sink.already_present += 1

    def abort(self) -> None:
        self._tmp.discard()
