"""The one step of sealing that writes to the tree, undoable until verified.

Sealing computes the digest of the final tree in memory (``seal.final_tree_digest``)
and builds and signs everything before this runs, so an interruption before it
leaves the tree untouched.  Here, in order:

1. every new file is written under a temporary name next to its target and fsynced;
2. the kernel files get a second name (a hard link) in a stage directory under
   ``/boot`` — the boot transform empties ``/boot``, so the stage never counts in
   the digest — and every target that already exists gets a hard-linked backup;
3. the new files are renamed into place (an atomic replace), the kernel files are
   unlinked from ``/usr/lib/modules/<kver>/`` and the directory times are put back
   (``/boot``'s mtime nanoseconds and the kernel directory's mtime are in the digest);
4. the caller verifies the final tree; ``commit`` then drops the backups and stage,
   ``rollback`` undoes 1-3 from the links.

SIGTERM and SIGHUP raise ``SealInterrupted`` while sealing (``signals_interrupt``),
so they take the rollback path just like Ctrl-C; signals are held off during the
rollback itself.  Only ``kill -9`` in step 3 can leave a stage directory behind;
``seal verify`` and ``seal`` name it and say how to recover.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType

from cfsboot.errors import CfsError

STAGE_PREFIX = ".cfsboot-seal-"   # under /boot, which the boot transform empties
KERNEL_FILES = ("vmlinuz", "initramfs.img")
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class InstallError(CfsError):
    """Writing the sealed files into the tree failed (the tree is rolled back)."""


class SealInterrupted(CfsError):
    """SIGTERM or SIGHUP arrived while sealing; the tree is rolled back."""


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise ``SealInterrupted`` (as SIGINT raises
    KeyboardInterrupt), so ``try``/``except BaseException`` rollbacks run for them too.
    Signal handlers can only be set from the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # A forked hashing worker inherited this handler (a terminal hangup
            # signals the whole process group): die as by default, quietly; the
            # sealing process gets the signal too, or sees the worker die.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SealInterrupted(f"interrupted by {signal.Signals(signum).name}; "
                              "the tree was left as it was")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def rootfs_locked(rootfs: str) -> Iterator[None]:
    """Hold a lock while ROOTFS is sealed, so that a second ``seal`` or ``seal
    inject`` of the same tree is refused at once instead of failing half-way
    on the other's temporary files.

    The lock is an abstract Unix socket named after the tree's device and
    inode: binding the name is exclusive, and the kernel releases it when the
    process ends, however it ends, leaving no file behind (a lock file would
    pile up; a flock on ROOTFS itself would refuse callers that serialise with
    ``flock ROOTFS …``).  Where it cannot be taken, sealing goes on unlocked."""
    try:
        st = os.stat(rootfs)
    except OSError:
        yield  # the prerequisite checks say what is wrong with ROOTFS
        return
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            lock.bind(f"\0cfsboot-seal-{st.st_dev:x}-{st.st_ino:x}")
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InstallError(f"{rootfs} is being sealed by another cfsboot "
                                   "process") from None
        yield
    finally:
        lock.close()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold off SIGINT/SIGTERM/SIGHUP (delivered afterwards): a rollback must finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _lstat_opt(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SealInstall:
    """Installs files and removes the kernel files of ``kernel_dir`` (both relative to
    ``rootfs``); every change is undone by ``rollback`` until ``commit``."""

    def __init__(self, rootfs: str, kernel_dir: str) -> None:
        self.rootfs = rootfs
        self.boot = os.path.join(rootfs, "boot")
        self.kdir = os.path.join(rootfs, kernel_dir)
        self.times = {p: os.lstat(p) for p in (self.boot, self.kdir)}
        self.created: list[str] = []                        # directories we made
        self.temps: list[tuple[str, str]] = []              # (temporary, target)
        self.backups: list[tuple[str, str]] = []            # (target, hard-linked backup)
        self.installed: list[str] = []                      # targets renamed into place
        self.stage: str | None = None
        self.kernel_links: list[tuple[str, str]] = []       # (kernel file, link in stage)
        self.kernel_removed: list[str] = []

    def _remember_times(self, path: str) -> None:
        if path not in self.times:
            self.times[path] = os.lstat(path)

    def restore_times(self) -> None:
        for path, st in self.times.items():
            if path in self.created and not os.path.isdir(path):
                continue   # created by us and removed again by a rollback
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def _mkdirs(self, rel_dir: str) -> None:
        """Create the missing directories of ``rel_dir``, never through a symlink (a
        hostile tree could point /boot/EFI outside of itself)."""
        d = self.rootfs
        for part in rel_dir.split("/"):
            parent, d = d, os.path.join(d, part)
            st = _lstat_opt(d)
            if st is None:
                self._remember_times(parent)   # it gets a new entry
                os.mkdir(d, 0o755)
                self.created.append(d)
            elif not stat.S_ISDIR(st.st_mode):
                raise InstallError(f"{d} is not a directory (or is a symlink)")

    def prepare(self, files: dict[str, bytes]) -> None:
        """Step 1: each file under a temporary name next to its target, fsynced."""
        for rel, data in files.items():
            target = os.path.join(self.rootfs, rel)
            self._mkdirs(os.path.dirname(rel))
            self._remember_times(os.path.dirname(target))
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.",
                                       suffix=".tmp", dir=os.path.dirname(target))
            self.temps.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o644)
                f.flush()
                os.fsync(f.fileno())

    def link_backups(self) -> None:
        """Step 2: second names for the kernel files and for targets to be replaced."""
        self.stage = tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.boot)
        for name in KERNEL_FILES:
            src = os.path.join(self.kdir, name)
            link = os.path.join(self.stage, name)
            try:
                os.link(src, link, follow_symlinks=False)
            except OSError as e:
                hint = " (/boot and /usr must be on one filesystem)" \
                    if e.errno == errno.EXDEV else ""
                raise InstallError(f"cannot link {src} into {self.stage}: "
                                   f"{e.strerror}{hint}") from e
            self.kernel_links.append((src, link))
        fsync_dir(self.stage)
        for _, target in self.temps:
            if os.path.lexists(target):
                backup = os.path.join(os.path.dirname(target),
                                      f".{os.path.basename(target)}.{secrets.token_hex(4)}.old")
                os.link(target, backup, follow_symlinks=False)
                self.backups.append((target, backup))

    def switch(self) -> None:
        """Step 3: rename the new files into place, remove the kernel files, fsync,
        put the directory times back."""
        while self.temps:
            tmp, target = self.temps[0]
            os.rename(tmp, target)
            self.temps.pop(0)
            self.installed.append(target)
        for src, _ in self.kernel_links:
            os.unlink(src)
            self.kernel_removed.append(src)
        for d in {os.path.dirname(t) for t in self.installed} | {self.kdir, self.boot}:
            fsync_dir(d)
        self.restore_times()

    def rollback(self) -> None:
        with signals_held():
            for src in reversed(self.kernel_removed):
                link = dict(self.kernel_links)[src]
                if not os.path.lexists(src):
                    os.link(link, src, follow_symlinks=False)
            backed_up = dict(self.backups)
            for target in reversed(self.installed):
                if target in backed_up:
                    os.rename(backed_up.pop(target), target)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(target)
            for backup in backed_up.values():          # never replaced: just drop the link
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)
            for tmp, _ in self.temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            for d in reversed(self.created):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            if self.stage is not None:
                shutil.rmtree(self.stage, ignore_errors=True)
            self.restore_times()

    def commit(self) -> None:
        with signals_held():
            for _, backup in self.backups:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)
            if self.stage is not None:
                shutil.rmtree(self.stage)
            for d in {os.path.dirname(t) for t in self.installed} | {self.boot}:
                fsync_dir(d)
            self.restore_times()


@contextlib.contextmanager
def sealing_install(rootfs: str, kernel_dir: str) -> Iterator[SealInstall]:
    """A ``SealInstall`` committed when the body returns, rolled back when it raises
    (any exception, KeyboardInterrupt and ``SealInterrupted`` included)."""
    install = SealInstall(rootfs, kernel_dir)
    try:
        yield install
    except BaseException:
        install.rollback()
        raise
    install.commit()
