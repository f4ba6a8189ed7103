"""A composefs repository handle (composefs-rs ``Repository`` @0fbc853).

Layout (repository.md §2)::

    meta.json  objects/XX/<rest>  images/<hex> -> ../objects/XX/<rest>
    images/refs/<name> -> ../<hex>   streams/<id> -> ../objects/XX/<rest>
    streams/refs/<name> -> ../../<id>

Every handle holds ``flock(LOCK_SH)`` on the repository directory for its
lifetime; GC converts it to ``LOCK_EX``, so GC never runs while another handle
(a writer) is open.  Publishing order gives crash safety: objects first, one
``syncfs``, then the ``streams/``/``images/`` symlink, then the ref.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Concatenate, ParamSpec, TypeVar

from cfsboot.erofs.reader import MAX_IMAGE_SIZE
from cfsboot.errors import CfsError
from cfsboot.repository import errpaths, symlinks, sysapi, verity
from cfsboot.repository.meta import (
    Algorithm,
    FormatConfig,
    RepoMetadata,
    parse_metadata,
)
from cfsboot.repository.metafile import (
    OldFormat,
    RepositoryError,
    meta_key,
    read_existing_meta,
    read_meta,
    upgrade_old_format,
    write_meta,
)
from cfsboot.repository.objects import (
    ObjectStore,
    ObjectTmpfile,
    RepositorySink,
    StoreResult,
    object_relpath,
    open_repository_file,
    parse_link_target,
)
from cfsboot.repository.splitstream import SplitStreamReader, SplitStreamWriter

__all__ = ["ImageNotFound", "RefEntry", "Repository", "RepositoryError", "StreamNotFound"]


class ImageNotFound(RepositoryError):
    def __init__(self, name: str, tried: list[str] | None = None) -> None:
        where = f" (no {' or '.join(tried)})" if tried else ""
        super().__init__(f"image not found: {name}{where}")
        self.name = name


class StreamNotFound(RepositoryError):
    def __init__(self, name: str, tried: str | None = None) -> None:
        super().__init__(f"stream not found: {name}" + (f" (no {tried})" if tried else ""))
        self.name = name


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _repo_paths(method: Callable[Concatenate[Repository, _P], _R],
                ) -> Callable[Concatenate[Repository, _P], _R]:
    """OSErrors from ``method`` name ``<repo path>/<relative path>`` (the method
    must take no callbacks: their relative paths are not the repository's)."""
    @functools.wraps(method)
    def wrapper(self: Repository, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.error_paths():
            return method(self, *args, **kwargs)
    return wrapper


@dataclass(frozen=True, slots=True)
class RefEntry:
    name: str  # relative to images/refs or streams/refs
    target: str  # raw symlink target


class Repository:
    """An open repository.  Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str, fd: int, meta: RepoMetadata, has_verity: bool) -> None:
        self.path = path
        self.fd = fd
        self.meta = meta
        self.algorithm: Algorithm = meta.algorithm
        self.has_verity = has_verity
        self.insecure = not has_verity
        self.read_only_features = not meta.check_features()
        self._format_override: FormatConfig | None = None
        self._objects = ObjectStore(fd, self.algorithm, self.insecure, path)
        self._writable_checked = False

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, algorithm: Algorithm | None = None,
             insecure: bool = False, require_verity: bool = False,
             upgrade: bool = False) -> Repository:
        """Open an existing repository (repository.md §3.6).  ``upgrade`` writes
        meta.json into an old-format repository that has only ``objects/``."""
        p = os.fspath(path)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RepositoryError(f"no repository at {p} (run 'cfsboot repo init')") from None
        except NotADirectoryError:
            raise RepositoryError(f"{p} is not a directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            with errpaths.named_in(p, {fd: p}):
                try:
                    data, has_verity = read_meta(fd, algorithm)
                except OldFormat:
                    if not upgrade:
                        raise RepositoryError(
                            f"{p} is an old-format repository without meta.json "
                            "(open it with upgrade to add one)") from None
                    upgrade_old_format(fd, p)
                    data, has_verity = read_meta(fd, algorithm)
            meta = parse_metadata(data)
            if algorithm is not None and meta.algorithm != algorithm:
                raise RepositoryError(
                    f"repository is configured for {meta.algorithm.meta_name} but "
                    f"{algorithm.hash_name} was requested")
            repo = cls(p, fd, meta, has_verity)
        except BaseException:
            os.close(fd)
            raise
        if insecure:
            repo.set_insecure()
        if require_verity:
            try:
                repo.require_verity()
            except BaseException:
                repo.close()
                raise
        return repo

    @classmethod
    def init(cls, path: str | os.PathLike[str], algorithm: Algorithm, *,
             insecure: bool = False, formats: FormatConfig | None = None,
             ) -> tuple[Repository, bool]:
        """Create a repository (idempotent).  Returns (repo, created)."""
        p = os.fspath(path)
        with contextlib.suppress(FileExistsError):
            os.mkdir(p, 0o700)
        meta = RepoMetadata.new(algorithm, formats)
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with errpaths.named_in(p, {fd: p}):
                created = write_meta(fd, meta, insecure)
        except FileExistsError:
            created = False
            with errpaths.named_in(p, {fd: p}):
                existing = read_existing_meta(fd)
            try:
                same = existing is not None and \
                    meta_key(parse_metadata(existing)) == meta_key(meta)
            except CfsError:
                same = False
            if not same:
                raise RepositoryError(f"repository at {p} is already initialized with a "
                                      "different configuration") from None
        finally:
            os.close(fd)
        repo = cls.open(p, algorithm=algorithm)
        if insecure:
            repo.set_insecure()
        return repo, created

    def close(self) -> None:
        self._objects.close()
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1

    def error_paths(self) -> contextlib.AbstractContextManager[None]:
        """Inside, an OSError's file names become ``<repo path>/<relative path>``."""
        return errpaths.named_in(self.path, {self.fd: self.path})

    def display_path(self, rel: str) -> str:
        """How a repository-relative path is shown to the user."""
        return errpaths.join(self.path, rel)

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- modes ------------------------------------------------------------------

    def set_insecure(self) -> None:
        self.insecure = True
        self._objects.insecure = True

    def require_verity(self) -> None:
        if self.insecure:
            raise RepositoryError(
                "repository was not initialized with fs-verity (hint: re-create it with "
                "'cfsboot repo init' on a verity-capable filesystem)")

    def set_erofs_version(self, version: int) -> None:
        """Per-process override of the EROFS formats (meta.json is not changed)."""
        self._format_override = FormatConfig(version)

    def format_config(self) -> FormatConfig:
        return self._format_override or self.meta.format_config()

    @_repo_paths
    def ensure_writable(self) -> None:
        """Refuse writes to a read-only repository (checked once per handle)."""
        if self._writable_checked:
            return
        if self.read_only_features:
            raise RepositoryError("Repository is not writable: it uses unknown "
                                  "read-only-compatible features")
        st = os.fstatvfs(self.fd)
        if st.f_flag & os.ST_RDONLY:
            raise RepositoryError("Repository is not writable: read-only file system")
        if not os.access(f"/proc/self/fd/{self.fd}", os.W_OK):
            raise RepositoryError("Repository is not writable")
        self._writable_checked = True

    @_repo_paths
    def sync(self) -> None:
        """One durability barrier for everything written so far (syncfs)."""
        sysapi.syncfs(self.fd)

    # -- locking ----------------------------------------------------------------

    def lock_exclusive(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def try_lock_exclusive(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def lock_shared(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    # -- objects ----------------------------------------------------------------

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    def ensure_object(self, data: bytes) -> bytes:
        """Store in-memory data; returns its ObjectID (thread-safe)."""
        self.ensure_writable()
        return self._objects.ensure(data)

    def store_object(self, data: bytes) -> StoreResult:
        self.ensure_writable()
        return self._objects.store_bytes(data)

    def object_tmpfile(self) -> ObjectTmpfile:
        """Streaming object writer; ``finalize()`` names and links it."""
        self.ensure_writable()
        return self._objects.tmpfile()

    def open_object(self, digest: bytes) -> BinaryIO:
        """Open an object for reading, verity-checked (tolerant when insecure)."""
        fd = self._objects.open(digest)
        with self.error_paths(), errpaths.as_file(f"objects/{object_relpath(digest)}"):
            return os.fdopen(fd, "rb")

    def has_object(self, digest: bytes) -> bool:
        return self._objects.exists(digest)

    def sink(self) -> RepositorySink:
        """An ``ObjectSink`` for ``cfsboot.tree.scan`` (stores while hashing)."""
        self.ensure_writable()
        return RepositorySink(self._objects, self.sync)

    # -- streams ----------------------------------------------------------------

    def create_stream(self, content_type: int = 0) -> SplitStreamWriter:
        self.ensure_writable()
        return SplitStreamWriter(self.algorithm, content_type, self.ensure_object)

    def ensure_stream(self, stream_id: str, content_type: int,
                      fill: Callable[[SplitStreamWriter], None],
                      ref: str | None = None) -> bytes:
        """Reuse ``streams/<id>`` if present, else build it with ``fill``; then
        (re)write ``ref``."""
        digest = self.has_stream(stream_id)
        if digest is None:
            writer = self.create_stream(content_type)
            fill(writer)
            digest = self.write_stream(writer, stream_id)
        if ref is not None:
            self.name_stream(stream_id, ref)
        return digest

    @_repo_paths
    def has_stream(self, stream_id: str) -> bytes | None:
        """ObjectID of ``streams/<stream_id>`` or None."""
        symlinks.check_entry_name(stream_id, "stream")
        try:
            target = os.readlink(f"streams/{stream_id}", dir_fd=self.fd)
        except FileNotFoundError:
            return None
        digest = parse_link_target(target, self.algorithm)
        if not target.startswith("../") or digest is None:
            raise RepositoryError(f"{self.display_path(f'streams/{stream_id}')}: "
                                  f"invalid link target {target!r}")
        return digest

    def write_stream(self, writer: SplitStreamWriter, stream_id: str,
                     ref: str | None = None) -> bytes:
        """Store the splitstream, syncfs, then publish ``streams/<id>`` (and ref)."""
        digest = self.ensure_object(writer.finish())
        self.register_stream(digest, stream_id, ref)
        return digest

    @_repo_paths
    def register_stream(self, digest: bytes, stream_id: str, ref: str | None = None) -> None:
        """Publish an already stored splitstream object under ``streams/<id>``."""
        symlinks.check_entry_name(stream_id, "stream")
        self.ensure_writable()
        self.sync()
        symlinks.link(f"streams/{stream_id}", f"objects/{object_relpath(digest)}", self.fd)
        if ref is not None:
            self.name_stream(stream_id, ref)

    @_repo_paths
    def name_stream(self, stream_id: str, ref: str) -> None:
        """``streams/refs/<ref>`` → ``streams/<id>`` (the stream need not exist yet)."""
        symlinks.check_entry_name(stream_id, "stream")
        symlinks.check_ref_name(ref)
        self.ensure_writable()
        symlinks.link(f"streams/refs/{ref}", f"streams/{stream_id}", self.fd)

    @_repo_paths
    def remove_stream_ref(self, ref: str) -> None:
        symlinks.check_ref_name(ref)
        self.ensure_writable()
        try:
            os.unlink(f"streams/refs/{ref}", dir_fd=self.fd)
        except FileNotFoundError:
            raise RepositoryError(f"stream ref not found: {ref}") from None

    @_repo_paths
    def open_stream(self, name: str, digest: bytes | None = None,
                    expected_content_type: int | None = None) -> SplitStreamReader:
        """Open a splitstream: by ObjectID (verity-checked) when ``digest`` is
        given, else through ``streams/<name>`` (``name`` may be ``refs/…``)."""
        if digest is not None:
            f = self.open_object(digest)
        else:
            symlinks.check_ref_name(name)
            try:
                fd = open_repository_file(self.fd, f"streams/{name}",
                                  self.display_path(f"streams/{name}"))
            except FileNotFoundError:
                raise StreamNotFound(name, self.display_path(f"streams/{name}")) from None
            with errpaths.as_file(f"streams/{name}"):
                f = os.fdopen(fd, "rb")
        try:
            return SplitStreamReader(f, self.algorithm, expected_content_type)
        except BaseException:
            f.close()
            raise

    def cat(self, name: str, write: Callable[[bytes], object]) -> None:
        """Reconstruct the original stream of ``streams/<name>``."""
        with self.open_stream(name) as reader:
            reader.cat(write, self.open_object)

    @_repo_paths
    def list_stream_refs(self, prefix: str = "") -> list[RefEntry]:
        return self._list_refs("streams/refs", prefix)

    @_repo_paths
    def list_streams(self) -> list[tuple[str, bytes | None]]:
        """First-level ``streams/`` entries and their ObjectIDs."""
        return self._list_entries("streams")

    # -- images -----------------------------------------------------------------

    @_repo_paths
    def write_image(self, name: str | None, data: bytes) -> bytes:
        """Store an EROFS image; publish ``images/<hex>`` and ``images/refs/<name>``."""
        if name is not None:
            symlinks.check_ref_name(name)
        self.ensure_writable()
        digest = self.ensure_object(data)
        self.sync()  # upstream publishes images without it; a sync is cheap insurance
        self.publish_image(digest, name)
        return digest

    @_repo_paths
    def publish_image(self, digest: bytes, name: str | None) -> None:
        """Symlinks for an image object that is already stored and synced."""
        if name is not None:
            symlinks.check_ref_name(name)
        hexid = digest.hex()
        symlinks.link(f"images/{hexid}", f"objects/{object_relpath(digest)}", self.fd)
        if name is not None:
            symlinks.link(f"images/refs/{name}", f"images/{hexid}", self.fd)

    @_repo_paths
    def remove_image_ref(self, name: str) -> None:
        symlinks.check_ref_name(name)
        self.ensure_writable()
        try:
            os.unlink(f"images/refs/{name}", dir_fd=self.fd)
        except FileNotFoundError:
            raise RepositoryError(f"image ref not found: {name}") from None

    @_repo_paths
    def open_image(self, name: str) -> tuple[int, bool, bytes | None]:
        """Resolve an image name (repository.md §11.2): a hex digest, a ref name
        as ``images`` lists it (``a/b``) or ``refs/…``.  Returns (fd, want_verity,
        digest if known).

        Upstream opens ``images/<name>`` and, for a bare name, ``images/refs/<name>``;
        a name with '/' must then be spelled ``refs/a/b``.  Here ``refs/<name>``
        is tried for it as well: first-level entries of images/ never contain
        '/', so ``images/a/b`` is never an image and the fallback is unambiguous."""
        candidates = self._image_candidates(name)
        for found in candidates:
            try:
                fd = open_repository_file(self.fd, f"images/{found}",
                                  self.display_path(f"images/{found}"))
                break
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                # ``images/a/b`` below a non-directory ``a`` is simply absent; an
                # entry that exists but does not resolve is an error worth naming.
                if self._lexists(f"images/{found}"):
                    raise
                continue
        else:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.stat("images", dir_fd=self.fd).st_mode):
                    raise RepositoryError(f"{self.display_path('images')} is not a directory")
            raise ImageNotFound(name, [self.display_path(f"images/{c}") for c in candidates])
        if "/" in found:
            return fd, True, self._image_digest_of_ref(found)
        try:
            digest = bytes.fromhex(name)
            if len(digest) != self.algorithm.digest_size:
                raise ValueError
            measured = verity.measure(fd, self.algorithm)
        except ValueError:
            os.close(fd)
            raise RepositoryError(f"invalid image name {name!r}") from None
        except BaseException:
            os.close(fd)
            raise
        if measured is None:
            if self.insecure:
                return fd, False, digest
            os.close(fd)
            raise RepositoryError(f"image {self.display_path(f'images/{name}')} has no fs-verity")
        if measured != digest:
            os.close(fd)
            raise RepositoryError("fs-verity content mismatch for image "
                                  f"{self.display_path(f'images/{name}')}")
        return fd, True, digest

    @staticmethod
    def _image_candidates(name: str) -> list[str]:
        """Where :meth:`open_image` looks for ``name``, below ``images/``."""
        symlinks.check_ref_name(name)
        return [name] if name.startswith("refs/") else [name, f"refs/{name}"]

    def image_relpath(self, name: str) -> str:
        """The repository-relative path :meth:`open_image` resolves ``name`` to
        (for messages; the first candidate when none exists)."""
        candidates = self._image_candidates(name)
        found = next((c for c in candidates if self._lexists(f"images/{c}")), candidates[0])
        return f"images/{found}"

    def _lexists(self, rel: str) -> bool:
        try:
            os.stat(rel, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def _image_digest_of_ref(self, ref_path: str) -> bytes | None:
        """The image ObjectID a ref reaches (ref → images/<hex> → object)."""
        try:
            target = os.readlink(f"images/{ref_path}", dir_fd=self.fd)
        except OSError:
            return None
        entry = target.rsplit("/", 1)[-1]
        try:
            inner = os.readlink(f"images/{entry}", dir_fd=self.fd)
        except OSError:
            return None
        return parse_link_target(inner, self.algorithm)

    @_repo_paths
    def read_image(self, name: str) -> tuple[bytes, bool, bytes | None]:
        fd, want_verity, digest = self.open_image(name)
        with errpaths.as_file(self.image_relpath(name)), os.fdopen(fd, "rb") as f:
            if os.fstat(fd).st_size > MAX_IMAGE_SIZE:
                raise RepositoryError(f"image {self.display_path(self.image_relpath(name))} "
                                      f"is larger than {MAX_IMAGE_SIZE} bytes")
            return f.read(), want_verity, digest

    @_repo_paths
    def image_objects(self, name: str) -> set[bytes]:
        """ObjectIDs of the external files an image references."""
        from cfsboot.repository.imagerefs import objects_in_image
        data, _, _ = self.read_image(name)
        return objects_in_image(data, self.algorithm)

    @_repo_paths
    def list_image_refs(self, prefix: str = "") -> list[RefEntry]:
        return self._list_refs("images/refs", prefix)

    @_repo_paths
    def list_images(self) -> list[tuple[str, bytes | None]]:
        return self._list_entries("images")

    # -- listing helpers ------------------------------------------------------------

    def _list_refs(self, top: str, prefix: str) -> list[RefEntry]:
        if prefix:
            symlinks.check_ref_name(prefix)
            top = f"{top}/{prefix}"
        return [RefEntry(f"{prefix}/{n}" if prefix else n, t)
                for n, t in symlinks.walk_links(self.fd, top, self.path)]

    def _list_entries(self, top: str) -> list[tuple[str, bytes | None]]:
        try:
            names = sorted(os.listdir(f"/proc/self/fd/{self.fd}/{top}"))
        except FileNotFoundError:
            return []
        out: list[tuple[str, bytes | None]] = []
        for n in names:
            if n == "refs":
                continue
            try:
                target = os.readlink(f"{top}/{n}", dir_fd=self.fd)
            except OSError:
                out.append((n, None))
                continue
            out.append((n, parse_link_target(target, self.algorithm)))
        return out
