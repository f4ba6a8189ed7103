"""Mounting a repository image the way composefs does (mount-and-setup-root.md §2–3).

The EROFS image is mounted read-only (file-backed, from the image's fd), and
becomes the single normal lower layer of a read-only overlayfs whose data-only
lower layer is ``objects/``: ``lowerdir=EROFS::OBJECTS``, ``metacopy=on``,
``redirect_dir=on`` and, in secure mode, ``verity=require`` (overlayfs then
checks each backing file's fs-verity digest against the image's metacopy
xattr).  In insecure mode the image file's digest is verified in userspace
before it is mounted, from the very fd that is then mounted.

Uses the new mount API, like composefs-rs's default ``pre-6.15`` build: the
EROFS is attached to a private temporary directory while the overlay is
created, then detached; on any error every intermediate mount is undone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from dataclasses import dataclass

from cfsboot.errors import CfsError
from cfsboot.paths import is_within
from cfsboot.repository import errpaths, loop, sysapi, verity
from cfsboot.repository.repo import Repository


class MountError(CfsError):
    """The kernel refused a mount (its messages are included)."""


@dataclass(frozen=True, slots=True)
class MountOptions:
    upperdir: str | None = None
    workdir: str | None = None
    read_write: bool = False
    use_loop: bool = False  # force a loop device (what pre-6.12 kernels need)


def mount_image(repo: Repository, name: str, mountpoint: str,
                options: MountOptions | None = None) -> None:
    """Mount image ``name`` (hex digest, bare ref name or ``refs/…``) at ``mountpoint``."""
    if not os.path.isdir(mountpoint):
        raise CfsError(f"mount point {mountpoint} is not a directory")
    if is_within(repo.path, mountpoint):
        raise CfsError(f"mount point {mountpoint} is inside the repository {repo.path}: the "
                       "mount would hide it; mount the image elsewhere")
    mnt = mount_detached(repo, name, options)
    try:
        sysapi.move_mount_to(mnt, os.path.realpath(mountpoint))
    finally:
        os.close(mnt)


def mount_detached(repo: Repository, name: str, options: MountOptions | None = None) -> int:
    """The composefs mount of image ``name`` as a detached mount fd (attach it
    with ``sysapi.move_mount_to``; closing the fd unattached discards it)."""
    options = options or MountOptions()
    if (options.upperdir is None) != (options.workdir is None):
        raise CfsError("--upperdir and --workdir must be given together")
    if options.read_write and options.upperdir is None:
        raise CfsError("--read-write needs --upperdir and --workdir")
    if options.upperdir is not None and options.workdir is not None:
        _check_upper_work(repo, options.upperdir, options.workdir)
    image_fd, _, digest = repo.open_image(name)
    try:
        want_verity = _verify_image(repo, name, image_fd, digest)
        return _overlay(repo, name, image_fd, want_verity, options)
    finally:
        os.close(image_fd)


def _check_upper_work(repo: Repository, upperdir: str, workdir: str) -> None:
    """Refuse what overlayfs would write into the repository (objects and fsck
    would break), and nested upper/work directories, which the kernel only
    refuses as "Invalid argument"."""
    for option, path in (("--upperdir", upperdir), ("--workdir", workdir)):
        if is_within(repo.path, path):
            raise CfsError(f"{option} {path} is inside the repository {repo.path}: overlayfs "
                           "would write into it; use a directory outside")
    if is_within(upperdir, workdir) and is_within(workdir, upperdir):
        raise CfsError(f"--upperdir and --workdir are the same directory {upperdir}; "
                       "overlayfs needs two separate directories")
    if is_within(upperdir, workdir):
        raise CfsError(f"--workdir {workdir} is inside --upperdir {upperdir}; overlayfs "
                       "needs them apart (e.g. side by side)")
    if is_within(workdir, upperdir):
        raise CfsError(f"--upperdir {upperdir} is inside --workdir {workdir}; overlayfs "
                       "needs them apart (e.g. side by side)")


def _image_path(repo: Repository, name: str) -> str:
    """How errors name the image file (``name`` as the user gave it)."""
    return repo.display_path(repo.image_relpath(name))


def _verify_image(repo: Repository, name: str, fd: int, digest: bytes | None) -> bool:
    """Check the image is the one its name says; returns whether to ask
    overlayfs for ``verity=require``."""
    if digest is None:
        raise CfsError(f"cannot tell which image {name} refers to")
    try:
        measured = verity.measure(fd, repo.algorithm)
        if measured is None:
            if not repo.insecure:
                raise CfsError(f"image {_image_path(repo, name)} has no fs-verity "
                               "(repository requires it)")
            measured, _ = verity.digest_fd(fd, repo.algorithm)
    except OSError as e:
        raise CfsError(f"cannot read image {_image_path(repo, name)}: "
                       f"{e.strerror or e}") from None
    if measured != digest:
        raise CfsError(f"image {_image_path(repo, name)} is corrupt: its digest is "
                       f"{measured.hex()}, expected {digest.hex()}")
    return not repo.insecure


def _overlay(repo: Repository, name: str, image_fd: int, want_verity: bool,
             options: MountOptions) -> int:
    """A detached overlay mount fd."""
    erofs_mnt = _mount_erofs(image_fd, _image_path(repo, name), use_loop=options.use_loop)
    tmpdir = tempfile.mkdtemp(prefix="cfsboot-erofs-")
    attached = False
    try:
        sysapi.move_mount_to(erofs_mnt, tmpdir)
        attached = True
        fds: list[int] = []  # closed at the end; the overlay keeps its own references
        try:
            fds.append(os.open(tmpdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            names = {fds[0]: f"{_image_path(repo, name)} (mounted at {tmpdir})"}
            with repo.error_paths():
                fds.append(os.open("objects", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                   dir_fd=repo.fd))
            names[fds[1]] = repo.display_path("objects")
            if options.upperdir is not None and options.workdir is not None:
                fds.append(_open_dir(options.upperdir, "--upperdir"))
                names[fds[2]] = options.upperdir
                fds.append(_open_dir(options.workdir, "--workdir"))
                names[fds[3]] = options.workdir
            fs = sysapi.fsopen("overlay")
            try:
                _overlay_config(fs, name, fds[0], fds[1], want_verity, fds[2:])
                return sysapi.fsmount(fs, 0 if options.read_write
                                      else sysapi.MOUNT_ATTR_RDONLY)
            except OSError as e:
                raise _mount_error("overlay", fs, e, names) from None
            finally:
                os.close(fs)
        finally:
            for fd in fds:
                os.close(fd)
    finally:
        os.close(erofs_mnt)
        if attached:
            with contextlib.suppress(OSError):
                sysapi.umount(tmpdir, sysapi.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(tmpdir)


def _overlay_config(fs: int, name: str, layer: int, objects: int, want_verity: bool,
                    upper_work: list[int]) -> None:
    sysapi.fsconfig_string(fs, "source", f"composefs:{name}")
    sysapi.fsconfig_string(fs, "metacopy", "on")
    sysapi.fsconfig_string(fs, "redirect_dir", "on")
    if want_verity:
        sysapi.fsconfig_string(fs, "verity", "require")
    if len(upper_work) == 2:
        sysapi.fsconfig_string(fs, "upperdir", f"/proc/self/fd/{upper_work[0]}")
        sysapi.fsconfig_string(fs, "workdir", f"/proc/self/fd/{upper_work[1]}")
    sysapi.fsconfig_string(fs, "lowerdir", f"/proc/self/fd/{layer}::/proc/self/fd/{objects}")
    sysapi.fsconfig_create(fs)


def _open_dir(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CfsError(f"{what} {path}: {e.strerror}") from None


def _mount_erofs(image_fd: int, image_path: str, *, use_loop: bool = False) -> int:
    """A detached read-only EROFS mount of the image file (file-backed; through
    a loop device on kernels before 6.12, which need a block device).
    ``image_path`` names the image in errors."""
    if not use_loop:
        try:
            return _erofs_from(image_fd, image_path)
        except _NeedsBlockDevice:
            pass
    loop_fd = loop.attach_read_only(image_fd)
    try:
        return _erofs_from(loop_fd, f"{image_path} (loop device)")
    except _NeedsBlockDevice:
        raise MountError("mounting erofs failed: the loop device was refused") from None
    finally:
        os.close(loop_fd)  # autoclear: the loop device goes away with the mount


class _NeedsBlockDevice(Exception):
    pass


def _erofs_from(source_fd: int, source_name: str) -> int:
    fs = sysapi.fsopen("erofs")
    try:
        sysapi.fsconfig_flag(fs, "ro")
        sysapi.fsconfig_string(fs, "source", f"/proc/self/fd/{source_fd}")
        sysapi.fsconfig_create(fs)
        return sysapi.fsmount(fs, sysapi.MOUNT_ATTR_RDONLY)
    except OSError as e:
        if e.errno == errno.ENOTBLK:
            raise _NeedsBlockDevice() from None
        raise _mount_error("erofs", fs, e, {source_fd: source_name}) from None
    finally:
        os.close(fs)


def _mount_error(fstype: str, fs: int, e: OSError, names: dict[int, str]) -> MountError:
    """The kernel's reasons, with the /proc/self/fd/N paths we passed it (which
    it may quote back) replaced by what they are."""
    msgs = sysapi.fs_context_messages(fs)
    detail = "; ".join(msgs) if msgs else (e.strerror or str(e))
    return MountError(f"mounting {fstype} failed: {errpaths.replace_fd_paths(detail, names)}")
