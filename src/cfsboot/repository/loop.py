"""Read-only loop devices for kernels that cannot mount EROFS from a file
(mount-and-setup-root.md §3.1: LOOP_CTL_GET_FREE + LOOP_CONFIGURE)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from cfsboot.errors import CfsError

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16

# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# loop_info64: 5 x u64, lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags,
# file name[64], crypt name[64], key[32], lo_init[2] (232 bytes).
_CONFIG = struct.Struct("=II40xIIII64s64s32s16x64x")


def attach_read_only(file_fd: int, *, direct_io: bool = True) -> int:
    """Attach ``file_fd`` to a free loop device; returns the loop device fd.
    The device detaches itself when its last user (fd or mount) goes away."""
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise CfsError(f"cannot use loop devices: {e.strerror}") from None
    try:
        for _ in range(16):  # another process may grab the device we were given
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            loop_fd = os.open(f"/dev/loop{number}", os.O_RDWR | os.O_CLOEXEC)
            flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
            if direct_io:
                flags |= LO_FLAGS_DIRECT_IO
            config = _CONFIG.pack(file_fd, 4096, 0, 0, 0, flags, b"", b"", b"")
            try:
                fcntl.ioctl(loop_fd, LOOP_CONFIGURE, config)
            except OSError as e:
                os.close(loop_fd)
                if e.errno == errno.EBUSY:
                    continue
                if e.errno == errno.EINVAL and direct_io:
                    return attach_read_only(file_fd, direct_io=False)
                raise CfsError(f"cannot set up a loop device: {e.strerror}") from None
            return loop_fd
    finally:
        os.close(ctl)
    raise CfsError("cannot set up a loop device: all candidates were busy")
