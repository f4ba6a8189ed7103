"""Garbage collection (composefs-rs ``gc_impl`` @0fbc853, repository.md §13).

Roots: every symlink under ``images/refs/`` and ``streams/refs/``, plus caller
roots matched by first-level entry name.  Live: root images and the objects
their EROFS names; root streams, their object refs and, through named refs,
the streams (and images) they reference, transitively.  Objects are swept
first, broken symlinks second, so a crash mid-GC only leaves dangling
first-level links that the next GC prunes.  Runs under ``LOCK_EX``, so no
other repository handle (a writer) is open meanwhile; stale temporary files
(``objects/.tmp-object-*``, ``.symlink-*``) left by killed writers are
therefore safe to remove too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cfsboot.errors import CfsError
from cfsboot.repository import errpaths, symlinks
from cfsboot.repository.objects import parse_link_target, parse_object_name
from cfsboot.repository.repo import Repository


class GcError(CfsError):
    """The repository is inconsistent in a way that makes GC unsafe."""


@dataclass
class GcResult:
    objects_removed: int = 0
    objects_bytes: int = 0
    images_pruned: int = 0
    streams_pruned: int = 0
    tmpfiles_removed: int = 0
    objects_kept: int = 0


def gc(repo: Repository, roots: Iterable[str] = (), *, dry_run: bool = False,
       on_wait: Callable[[], object] | None = None) -> GcResult:
    """Remove every object not reachable from a ref or ``roots``.  ``on_wait`` is
    called if another handle (a writer) must be waited for."""
    if not dry_run:
        repo.ensure_writable()
        if not repo.try_lock_exclusive():
            if on_wait is not None:
                on_wait()
            repo.lock_exclusive()
    try:
        with repo.error_paths():
            _check_layout(repo)
            live = live_objects(repo, roots)
            return _sweep(repo, live, dry_run)
    finally:
        if not dry_run:
            repo.lock_shared()


def _check_layout(repo: Repository) -> None:
    """Every directory gc lists or deletes in must be a directory of the
    repository itself: through a symlinked ``objects/XX``, ``streams/refs``
    or the like, a sweep would delete files outside the repository."""
    dirs = ["objects", "images", "streams", "images/refs", "streams/refs"]
    with contextlib.suppress(FileNotFoundError):
        dirs += [f"objects/{n}" for n in os.listdir(f"/proc/self/fd/{repo.fd}/objects")
                 if len(n) == 2]
    for rel in dirs:
        try:
            st = os.stat(rel, dir_fd=repo.fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise GcError(f"GC: {repo.display_path(rel)} is {kind}, not a directory of the "
                          "repository; refusing to collect (see cfsboot repo fsck)")


def live_objects(repo: Repository, roots: Iterable[str] = ()) -> set[bytes]:
    extra = set(roots)
    live: set[bytes] = set()
    all_images = _category(repo, "images")
    image_by_oid = {oid: name for oid, name in all_images}
    expanded: set[bytes] = set()

    def keep_image(oid: bytes, name: str) -> None:
        live.add(oid)
        if oid in expanded:
            return
        expanded.add(oid)
        try:
            live.update(repo.image_objects(name))
        except CfsError as e:
            raise GcError(f"GC: cannot read image {name}: {e}") from None

    for oid, name in _ref_roots(repo, "images") + [e for e in all_images if e[1] in extra]:
        keep_image(oid, name)
    all_streams = _category(repo, "streams")
    unknown = extra - {name for _, name in all_images} - {name for _, name in all_streams}
    if unknown:
        # A mistyped root would silently let gc delete what the user meant to keep.
        raise GcError(f"GC: no image or stream named {', '.join(sorted(unknown))}")
    stream_by_oid = {oid: name for oid, name in all_streams}
    pending = [name for _, name in _ref_roots(repo, "streams")]
    pending += [name for _, name in all_streams if name in extra]
    walked: set[str] = set()
    while pending:
        name = pending.pop()
        if name in walked:
            continue
        walked.add(name)
        live.add(_entry_oid(repo, "streams", name))
        try:
            with repo.open_stream(name) as reader:
                live.update(reader.object_refs)
                named = list(reader.named_refs.values())
        except CfsError as e:
            raise GcError(f"GC: cannot read stream {name}: {e}") from None
        for ref_oid in named:
            live.add(ref_oid)
            if ref_oid in stream_by_oid:
                pending.append(stream_by_oid[ref_oid])
            elif ref_oid in image_by_oid:
                # Upstream keeps only the image object here (its files stay
                # alive through the layer streams in the OCI flow).  Keeping
                # them too means a kept image is always complete (fsck-clean).
                keep_image(ref_oid, image_by_oid[ref_oid])
    return live


def _category(repo: Repository, category: str) -> list[tuple[bytes, str]]:
    """(ObjectID, entry name) of every first-level entry; non-symlinks abort."""
    out: list[tuple[bytes, str]] = []
    try:
        names = os.listdir(f"/proc/self/fd/{repo.fd}/{category}")
    except FileNotFoundError:
        return out
    for name in sorted(names):
        if name == "refs":
            continue
        out.append((_entry_oid(repo, category, name), name))
    return out


def _entry_oid(repo: Repository, category: str, name: str) -> bytes:
    try:
        target = os.readlink(f"{category}/{name}", dir_fd=repo.fd)
    except FileNotFoundError:
        raise GcError(f"GC: dangling ref: {repo.display_path(f'{category}/{name}')} "
                      "does not exist") from None
    except OSError:
        raise GcError(f"GC: {repo.display_path(f'{category}/{name}')}: category directory "
                      "contains non-symlink") from None
    oid = parse_link_target(target, repo.algorithm)
    if oid is None:
        raise GcError(f"GC: {repo.display_path(f'{category}/{name}')}: invalid link target "
                      f"{target!r}")
    return oid


def _ref_roots(repo: Repository, category: str) -> list[tuple[bytes, str]]:
    try:
        refs = symlinks.walk_links(repo.fd, f"{category}/refs", repo.path)
    except CfsError as e:
        raise GcError(f"GC: {e}") from None
    out = []
    for name, target in refs:
        entry = target.rsplit("/", 1)[-1]
        if not os.path.lexists(f"/proc/self/fd/{repo.fd}/{category}/{entry}"):
            # Name the ref to remove, not the entry it misses.
            how = ("remove it (an OCI tag: cfsboot oci untag TAG)"
                   if category == "streams" and name.startswith("oci/") else "remove it")
            raise GcError(f"GC: ref {repo.display_path(f'{category}/refs/{name}')} points at "
                          f"missing {category}/{entry}; {how}")
        out.append((_entry_oid(repo, category, entry), entry))
    return out


def _sweep(repo: Repository, live: set[bytes], dry_run: bool) -> GcResult:
    result = GcResult()
    objects = f"/proc/self/fd/{repo.fd}/objects"
    removed: set[bytes] = set()
    for sub in (f"{b:02x}" for b in range(256)):
        try:
            dfd = os.open(f"objects/{sub}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                          | os.O_CLOEXEC, dir_fd=repo.fd)
        except FileNotFoundError:
            continue
        try:
            for entry in os.listdir(dfd):
                oid = parse_object_name(sub, entry, repo.algorithm)
                if oid is None:
                    raise GcError("GC: malformed object name "
                                  f"{repo.display_path(f'objects/{sub}/{entry}')}")
                if oid in live:
                    result.objects_kept += 1
                    continue
                # Named relative to the repository, for the error message.
                with contextlib.suppress(FileNotFoundError), \
                        errpaths.as_file(f"objects/{sub}/{entry}"):
                    result.objects_bytes += os.stat(entry, dir_fd=dfd).st_size
                result.objects_removed += 1
                removed.add(oid)
                if not dry_run:
                    with errpaths.as_file(f"objects/{sub}/{entry}"):
                        os.unlink(entry, dir_fd=dfd)
        finally:
            os.close(dfd)
    if not dry_run:
        result.tmpfiles_removed = _remove_stale_tmpfiles(repo, objects)
    result.images_pruned = _prune(repo, "images", removed, dry_run)
    result.streams_pruned = _prune(repo, "streams", removed, dry_run)
    return result


def _remove_stale_tmpfiles(repo: Repository, objects: str) -> int:
    """Named temporaries of writers that died (we hold LOCK_EX: none is alive)."""
    count = 0
    for where, prefix, dir_path in (("objects/", ".tmp-object-", objects),
                                    ("", ".symlink-", f"/proc/self/fd/{repo.fd}")):
        try:
            names = os.listdir(dir_path)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{where}{name}", dir_fd=repo.fd)
                    count += 1
    return count


def _prune(repo: Repository, category: str, removed: set[bytes], dry_run: bool) -> int:
    """Remove first-level links whose object is gone, then broken refs."""
    count = 0
    gone: set[str] = set()
    try:
        names = os.listdir(f"/proc/self/fd/{repo.fd}/{category}")
    except FileNotFoundError:
        return 0
    for name in names:
        rel = f"{category}/{name}"
        if name == "refs" or not _is_link(repo, rel):
            continue
        target = os.readlink(rel, dir_fd=repo.fd)
        oid = parse_link_target(target, repo.algorithm)
        if (oid is not None and oid in removed) or not _resolves(repo, rel):
            count += 1
            gone.add(name)
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(rel, dir_fd=repo.fd)
    for ref, target in symlinks.walk_links(repo.fd, f"{category}/refs", repo.path):
        rel = f"{category}/refs/{ref}"
        if target.rsplit("/", 1)[-1] in gone or not _resolves(repo, rel):
            count += 1
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(rel, dir_fd=repo.fd)
    return count


def _is_link(repo: Repository, rel: str) -> bool:
    return stat.S_ISLNK(os.stat(rel, dir_fd=repo.fd, follow_symlinks=False).st_mode)


def _resolves(repo: Repository, rel: str) -> bool:
    try:
        os.stat(rel, dir_fd=repo.fd)
    except FileNotFoundError:
        return False
    return True
