"""Repository consistency check (composefs-rs ``fsck`` @0fbc853, repository.md §14).

Phases: meta.json; the top-level areas (objects/, streams/, images/ and their
refs/) are directories where present; every object's digest (kernel measurement, or userspace
hashing in insecure mode; parallel per ``objects/XX``); every stream entry
(symlink resolves, splitstream parses, its chunks decode, every object and
named ref exists, the recorded size matches); every image entry (symlink
resolves, EROFS parses, every referenced object exists); every ref.  Errors
render as ``fsck: <kind>: <path>[: <details>]``, one line each.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from cfsboot.erofs.reader import MAX_IMAGE_SIZE
from cfsboot.errors import CfsError
from cfsboot.inputs import NotRegularError, open_regular
from cfsboot.repository import verity
from cfsboot.repository.imagerefs import objects_in_image
from cfsboot.repository.meta import parse_metadata
from cfsboot.repository.metafile import META
from cfsboot.repository.objects import object_relpath, open_repository_file, parse_object_name
from cfsboot.repository.repo import Repository
from cfsboot.repository.splitstream import ExternalChunk


@dataclass
class FsckResult:
    has_metadata: bool = False
    objects_checked: int = 0
    objects_corrupted: int = 0
    streams_checked: int = 0
    streams_corrupted: int = 0
    images_checked: int = 0
    images_corrupted: int = 0
    broken_links: int = 0
    missing_objects: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, kind: str, path: str, detail: str | None = None) -> None:
        self.errors.append(f"fsck: {kind}: {path}" + (f": {detail}" if detail else ""))

    def merge(self, other: FsckResult) -> None:
        self.objects_checked += other.objects_checked
        self.objects_corrupted += other.objects_corrupted
        self.errors.extend(other.errors)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def report(self) -> str:
        """The text report of ``cfsctl fsck``."""
        meta_state = "ok" if self.has_metadata else "absent"
        if any(e.startswith("fsck: metadata-") for e in self.errors):
            meta_state = "error"
        lines = [
            f"meta.json: {meta_state}",
            f"objects: {self.objects_checked - self.objects_corrupted}/"
            f"{self.objects_checked} ok",
            f"streams: {self.streams_checked - self.streams_corrupted}/"
            f"{self.streams_checked} ok",
            f"images: {self.images_checked - self.images_corrupted}/{self.images_checked} ok",
        ]
        if self.broken_links:
            lines.append(f"broken symlinks: {self.broken_links}")
        if self.missing_objects:
            lines.append(f"missing objects: {self.missing_objects}")
        if self.ok:
            lines.append("status: ok")
        else:
            lines.append(f"status: {len(self.errors)} error(s)")
            lines.extend(f"  - {e}" for e in self.errors)
        return "\n".join(lines)


def fsck(repo: Repository, *, metadata_only: bool = False,
         threads: int | None = None) -> FsckResult:
    result = FsckResult()
    with repo.error_paths():
        _check_metadata(repo, result)
        _check_layout(repo, result)
        if not metadata_only:
            _check_objects(repo, result, threads or min(8, os.cpu_count() or 1))
        _check_category(repo, "streams", result)
        _check_category(repo, "images", result)
    return result


# Where present, each must be a directory (a symlink to one is followed, like
# every other access does).  Absent is fine: they are created lazily.
_DIRECTORIES = ("objects", "streams", "streams/refs", "images", "images/refs")


def _check_layout(repo: Repository, result: FsckResult) -> None:
    """Report top-level areas that are not directories: listing one would
    otherwise find nothing, and an unusable repository would pass."""
    for rel in _DIRECTORIES:
        try:
            st = os.stat(rel, dir_fd=repo.fd)
        except FileNotFoundError:
            if _lexists(repo, rel):
                result.broken_links += 1
                result.error("broken-symlink", rel)
            continue
        except NotADirectoryError:
            continue  # its parent is not a directory, which is reported
        except OSError as e:
            result.error("stat-failed", rel, e.strerror)
            continue
        if not stat.S_ISDIR(st.st_mode):
            result.error("unexpected-file-type", rel, "not a directory")


def _lexists(repo: Repository, rel: str) -> bool:
    try:
        os.stat(rel, dir_fd=repo.fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def _check_metadata(repo: Repository, result: FsckResult) -> None:
    try:
        fd = os.open(META, os.O_RDONLY | os.O_CLOEXEC, dir_fd=repo.fd)
    except FileNotFoundError:
        result.error("metadata-parse-failed", "meta.json", "meta.json not found")
        return
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    result.has_metadata = True
    try:
        meta = parse_metadata(data)
    except CfsError as e:
        result.error("metadata-parse-failed", "meta.json", str(e))
        return
    if meta.algorithm != repo.algorithm:
        result.errors.append(f"fsck: metadata-algorithm-mismatch: meta.json: expected "
                             f"{meta.algorithm.meta_name}, repository opened as "
                             f"{repo.algorithm.hash_name}")


# ---- objects ---------------------------------------------------------------------

def _check_objects(repo: Repository, result: FsckResult, threads: int) -> None:
    subdirs = []
    for name in sorted(_listdir(repo, "objects")):
        rel = f"objects/{name}"
        if stat.S_ISDIR(os.stat(rel, dir_fd=repo.fd, follow_symlinks=False).st_mode):
            subdirs.append(name)
        else:  # objects live in objects/XX/: anything else there is not one
            result.error("unexpected-file-type", rel, "not a directory")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for partial in pool.map(lambda sub: _check_object_dir(repo, sub), subdirs):
            result.merge(partial)


def _check_object_dir(repo: Repository, sub: str) -> FsckResult:
    result = FsckResult()
    for name in sorted(_listdir(repo, f"objects/{sub}")):
        path = f"objects/{sub}/{name}"
        result.objects_checked += 1
        expected = parse_object_name(sub, name, repo.algorithm)
        if expected is None:
            result.objects_corrupted += 1
            result.error("object-invalid-name", path,
                         f"not {2 * repo.algorithm.digest_size - 2} hex digits "
                         f"below a 2-hex-digit directory")
            continue
        try:
            # Not through a symlink, and never hanging on a FIFO planted here.
            fd = open_regular(path, repo.fd,
                              lambda p, flags, at: os.open(p, flags | os.O_NOFOLLOW, dir_fd=at))
        except NotRegularError:
            result.objects_corrupted += 1
            result.error("object-verity-failed", path, "not a regular file")
            continue
        except OSError as e:
            result.objects_corrupted += 1
            result.error("object-open-failed", path, e.strerror)
            continue
        try:
            measured = _measure(repo, fd, path, result)
        finally:
            os.close(fd)
        if measured is not None and measured != expected:
            result.objects_corrupted += 1
            result.error("object-digest-mismatch", path, f"measured {measured.hex()}")
    return result


def _measure(repo: Repository, fd: int, path: str, result: FsckResult) -> bytes | None:
    try:
        measured = verity.measure(fd, repo.algorithm)
    except (OSError, CfsError) as e:
        result.objects_corrupted += 1
        result.error("object-verity-failed", path, str(e))
        return None
    if measured is not None:
        return measured
    if not repo.insecure:
        result.objects_corrupted += 1
        result.error("object-verity-missing", path)
        return None
    try:
        return verity.digest_fd(fd, repo.algorithm)[0]
    except OSError as e:
        result.objects_corrupted += 1
        result.error("object-verity-failed", path, e.strerror)
        return None


# ---- streams and images -------------------------------------------------------------

def _check_category(repo: Repository, category: str, result: FsckResult) -> None:
    is_streams = category == "streams"
    check: Callable[[Repository, str, FsckResult], bool] = (
        _check_stream if is_streams else _check_image)
    for name in sorted(_listdir(repo, category)):
        if name == "refs":
            continue
        path = f"{category}/{name}"
        bad = _check_entry(repo, path, result) or not check(repo, name, result)
        if is_streams:
            result.streams_checked += 1
            result.streams_corrupted += bad
        else:
            result.images_checked += 1
            result.images_corrupted += bad
    _check_refs(repo, f"{category}/refs", result)


def _check_entry(repo: Repository, path: str, result: FsckResult) -> bool:
    """True when the first-level entry is unusable (error recorded)."""
    st = os.stat(path, dir_fd=repo.fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        result.error("entry-not-symlink", path)
        return True
    try:
        os.stat(path, dir_fd=repo.fd)
    except FileNotFoundError:
        result.broken_links += 1
        result.error("broken-symlink", path)
        return True
    except OSError as e:
        result.error("stat-failed", path, e.strerror)
        return True
    return False


def _object_exists(repo: Repository, digest: bytes, path: str, result: FsckResult,
                   kind: str, detail: str) -> bool:
    """Record ``kind`` (a missing object) unless ``digest`` is in objects/."""
    try:
        os.stat(f"objects/{object_relpath(digest)}", dir_fd=repo.fd)
    except FileNotFoundError:
        result.missing_objects += 1
        result.error(kind, path, detail)
        return False
    except OSError as e:
        result.error("object-check-failed", path, f"{digest.hex()}: {e.strerror}")
        return False
    return True


def _check_stream(repo: Repository, name: str, result: FsckResult) -> bool:
    path = f"streams/{name}"
    try:
        reader = repo.open_stream(name)
    except CfsError as e:
        result.error("stream-open-failed", path, str(e))
        return False
    except OSError as e:
        result.error("stream-open-failed", path, e.strerror)
        return False
    ok = True
    with reader:
        for oid in reader.object_refs:
            ok &= _object_exists(repo, oid, path, result, "missing-object-ref", oid.hex())
        for ref_name, oid in sorted(reader.named_refs.items()):
            ok &= _object_exists(repo, oid, path, result, "missing-named-ref",
                                 f"ref {ref_name}: {oid.hex()}")
        total = 0
        try:
            for chunk in reader.chunks():
                if isinstance(chunk, ExternalChunk):
                    try:
                        total += os.stat(f"objects/{object_relpath(chunk.digest)}",
                                         dir_fd=repo.fd).st_size
                    except OSError:
                        total = -1 << 62  # missing object, reported above
                else:
                    total += len(chunk)
        except CfsError as e:
            result.error("stream-read-failed", path, str(e))
            return False
        except OSError as e:
            result.error("stream-read-failed", path, e.strerror)
            return False
        if total >= 0 and total != reader.total_size:
            result.error("stream-read-failed", path,
                         f"stream size {reader.total_size} recorded, chunks add up to {total}")
            return False
    return ok


def _check_image(repo: Repository, name: str, result: FsckResult) -> bool:
    path = f"images/{name}"
    try:
        fd = open_repository_file(repo.fd, path, path)  # never outside it, never a FIFO
    except CfsError as e:
        result.error("image-open-failed", path, str(e).removeprefix(f"{path} "))
        return False
    except OSError as e:
        result.error("image-open-failed", path, e.strerror)
        return False
    try:
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_IMAGE_SIZE:
                result.error("image-invalid", path, f"larger than {MAX_IMAGE_SIZE} bytes")
                return False
            data = f.read()
    except OSError as e:
        result.error("image-read-failed", path, e.strerror)
        return False
    try:
        objects = objects_in_image(data, repo.algorithm)
    except CfsError as e:
        result.error("image-invalid", path, str(e))
        return False
    ok = True
    for oid in sorted(objects):
        ok &= _object_exists(repo, oid, path, result, "image-missing-object", oid.hex())
    return ok


def _check_refs(repo: Repository, top: str, result: FsckResult) -> None:
    for name in sorted(_listdir(repo, top)):
        path = f"{top}/{name}"
        st = os.stat(path, dir_fd=repo.fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _check_refs(repo, path, result)
        elif stat.S_ISLNK(st.st_mode):
            try:
                os.stat(path, dir_fd=repo.fd)
            except FileNotFoundError:
                result.broken_links += 1
                result.error("broken-symlink", path)
            except OSError as e:
                result.error("stat-failed", path, e.strerror)
        else:
            result.error("unexpected-file-type", path, "not a directory or symlink")


def _listdir(repo: Repository, rel: str) -> list[str]:
    """Entries of a directory; none when absent or not a directory (which
    :func:`_check_layout` reports for the areas that must be directories)."""
    try:
        return os.listdir(f"/proc/self/fd/{repo.fd}/{rel}")
    except (FileNotFoundError, NotADirectoryError):
        return []
