"""Linux calls the standard library lacks (via ctypes): syncfs, renameat2,
openat2 (RESOLVE_BENEATH) and the new mount API (fsopen/fsconfig/fsmount/
move_mount), umount2."""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache

# asm-generic syscall numbers (x86_64 and aarch64 agree for these).
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_OPENAT2 = 437
RESOLVE_BENEATH = 0x08

FSOPEN_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MNT_DETACH = 2
AT_FDCWD = -100


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def open_beneath(dir_fd: int, path: str, flags: int) -> int:
    """``openat(dir_fd, path, flags)`` where nothing, symlinks included, may
    resolve outside ``dir_fd`` (openat2 RESOLVE_BENEATH: EXDEV if it would).
    Kernels before 5.6 lack openat2; there it is a plain openat."""
    how = _OpenHow(flags, 0, RESOLVE_BENEATH)
    ret = _libc().syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd),
                          ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                          ctypes.c_size_t(ctypes.sizeof(how)))
    if ret >= 0:
        return int(ret)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM):  # no openat2 (EPERM: a seccomp filter)
        return os.open(path, flags, dir_fd=dir_fd)
    raise OSError(err, os.strerror(err), path)


def syncfs(fd: int) -> None:
    """Flush the filesystem holding ``fd`` (the repository's durability barrier)."""
    try:
        fn = _libc().syncfs
    except AttributeError:
        os.sync()
        return
    _check(fn(ctypes.c_int(fd)), "syncfs")


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    libc = _libc()
    ret = libc.renameat2(ctypes.c_int(src_dir), os.fsencode(src), ctypes.c_int(dst_dir),
                         os.fsencode(dst), ctypes.c_uint(flags))
    if ret < 0:
        err = ctypes.get_errno()
        if err == 17:  # EEXIST
            raise FileExistsError(err, os.strerror(err), dst)
        raise OSError(err, os.strerror(err), dst)


def _syscall(*args: int | bytes | None) -> int:
    cargs = [ctypes.c_long(a) if isinstance(a, int) else ctypes.c_char_p(a) for a in args]
    return int(_libc().syscall(*cargs))


def fsopen(fstype: str) -> int:
    return _check(_syscall(SYS_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC), f"fsopen({fstype})")


def fsconfig_flag(fs_fd: int, key: str) -> None:
    _check(_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_FLAG, key.encode(), None, 0),
           f"fsconfig {key}")


def fsconfig_string(fs_fd: int, key: str, value: str) -> None:
    _check(_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_SET_STRING, key.encode(),
                    value.encode(), 0), f"fsconfig {key}={value}")


def fsconfig_create(fs_fd: int) -> None:
    _check(_syscall(SYS_FSCONFIG, fs_fd, FSCONFIG_CMD_CREATE, None, None, 0),
           "fsconfig create")


def fsmount(fs_fd: int, attr_flags: int) -> int:
    return _check(_syscall(SYS_FSMOUNT, fs_fd, FSMOUNT_CLOEXEC, attr_flags), "fsmount")


def move_mount_to(mnt_fd: int, target: str) -> None:
    _check(_syscall(SYS_MOVE_MOUNT, mnt_fd, b"", AT_FDCWD, os.fsencode(target),
                    MOVE_MOUNT_F_EMPTY_PATH), "move_mount", target)


def umount(target: str, flags: int = 0) -> None:
    _check(_libc().umount2(os.fsencode(target), ctypes.c_int(flags)), "umount", target)


def fs_context_messages(fs_fd: int) -> list[str]:
    """Kernel messages queued on an fs-context fd (why a mount was refused)."""
    out: list[str] = []
    os.set_blocking(fs_fd, False)
    while True:
        try:
            msg = os.read(fs_fd, 1024)
        except OSError:
            break
        if not msg:
            break
        out.append(msg.decode(errors="replace").strip())
    return out
