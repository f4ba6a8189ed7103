"""Reading and creating ``meta.json`` on disk (repository.md §3.5–§3.7):
atomic creation through O_TMPFILE + link, with fs-verity enabled on it in
secure mode (that is what marks a repository secure), and the upgrade of
old-format repositories that have only ``objects/``."""

from __future__ import annotations

import contextlib
import errno
import os

from cfsboot.errors import CfsError
from cfsboot.repository import errpaths, verity
from cfsboot.repository.meta import Algorithm, MetadataError, RepoMetadata, parse_metadata
from cfsboot.repository.objects import parse_object_name

META = "meta.json"


class RepositoryError(CfsError):
    """The repository cannot be opened or does not allow the operation."""


class OldFormat(Exception):
    pass


def read_meta(fd: int, algorithm: Algorithm | None) -> tuple[bytes, bool]:
    try:
        mfd = os.open(META, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        try:
            os.stat("objects", dir_fd=fd)
        except FileNotFoundError:
            raise MetadataError("repository has no meta.json (not initialized?)") from None
        raise OldFormat() from None
    with errpaths.as_file(META), os.fdopen(mfd, "rb") as f:
        data = f.read()
        alg = algorithm or _alg_hint(data)
        has_verity = alg is not None and verity.measure(f.fileno(), alg) is not None
    return data, has_verity


def _alg_hint(data: bytes) -> Algorithm | None:
    try:
        return parse_metadata(data).algorithm
    except CfsError:
        return None


def read_existing_meta(fd: int) -> bytes | None:
    try:
        with errpaths.as_file(META), \
                os.fdopen(os.open(META, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def meta_key(meta: RepoMetadata) -> tuple[object, ...]:
    f = meta.features
    return (meta.version, meta.algorithm, f.compatible, f.read_only_compatible,
            f.incompatible, meta.erofs_formats)


def write_meta(fd: int, meta: RepoMetadata, insecure: bool) -> bool:
    """Create meta.json atomically (O_TMPFILE + link); FileExistsError if present.
    Verity is enabled on it unless ``insecure`` — that is what marks the
    repository secure."""
    data = meta.to_json_bytes()
    name: str | None = None
    try:
        wfd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=fd)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EISDIR):
            raise
        name = META
        wfd = os.open(META, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                      dir_fd=fd)
    try:
        os.write(wfd, data)
        os.fsync(wfd)
        with errpaths.as_file(META):
            ro = os.open(f"/proc/self/fd/{wfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(wfd)
    try:
        if not insecure:
            outcome = verity.enable(ro, meta.algorithm)
            if outcome == "unsupported":
                if name is not None:
                    os.unlink(name, dir_fd=fd)
                raise RepositoryError("the filesystem does not support fs-verity; "
                                      "use --insecure")
        if name is None:
            with errpaths.as_file(META):
                os.link(f"/proc/self/fd/{ro}", META, dst_dir_fd=fd, follow_symlinks=True)
    finally:
        os.close(ro)
    os.fsync(fd)
    return True


def upgrade_old_format(fd: int, path: str) -> None:
    """Infer the algorithm from the first object and write meta.json (§3.7)."""
    found: tuple[Algorithm, str] | None = None
    base = f"/proc/self/fd/{fd}/objects"
    for sub in sorted(os.listdir(base)):
        if len(sub) != 2 or not os.path.isdir(f"{base}/{sub}"):
            continue
        for entry in os.listdir(f"{base}/{sub}"):
            for alg in (Algorithm("sha256"), Algorithm("sha512")):
                if parse_object_name(sub, entry, alg) is not None:
                    found = (alg, f"objects/{sub}/{entry}")
                    break
            if found:
                break
        if found:
            break
    if found is None:
        raise RepositoryError(f"{path}: no objects found in repository — cannot infer "
                              "metadata")
    alg, obj = found
    ofd = os.open(obj, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
    try:
        has_verity = verity.measure(ofd, alg) is not None
    finally:
        os.close(ofd)
    with contextlib.suppress(FileExistsError):
        write_meta(fd, RepoMetadata.new(alg), insecure=not has_verity)
