"""The kernel's fs-verity ioctls (an I/O edge): enable verity on a file, measure it.

Kernels or filesystems without fs-verity answer ENOTTY (the ioctl is unknown,
e.g. tmpfs, overlayfs) or EOPNOTSUPP (known but off, e.g. ext4 without the
``verity`` feature); both become :class:`VerityUnsupported` so callers can fall
back to computing digests in userspace.
"""

from __future__ import annotations

import errno
import fcntl
import struct

from cfsboot.errors import CfsError
from cfsboot.fsverity.digest import (
    ALG_BY_KERNEL_ID,
    BLOCK_SIZE,
    DIGEST_SIZE,
    KERNEL_ALG_ID,
    hash_constructor,
)

# <linux/fsverity.h>: _IOW('f', 133, struct fsverity_enable_arg) (128 bytes) and
# _IOWR('f', 134, struct fsverity_digest) (4-byte header before the digest).
FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686

# struct fsverity_enable_arg: version, hash_algorithm, block_size, salt_size,
# salt_ptr, sig_size, __reserved1, sig_ptr, __reserved2[11].
_ENABLE_ARG = struct.Struct("=IIIIQIIQ88x")
# struct fsverity_digest: digest_algorithm, digest_size, then the digest bytes.
_DIGEST_HEADER = struct.Struct("=HH")
_MAX_DIGEST = max(DIGEST_SIZE.values())

_UNSUPPORTED = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOPKG})


class VerityUnsupported(CfsError):
    """The kernel or the filesystem cannot do fs-verity on this file."""


def _unsupported(what: str, err: OSError) -> VerityUnsupported:
    return VerityUnsupported(f"fs-verity {what} not supported here: {err.strerror}")


def measure_verity(fd: int) -> tuple[str, bytes] | None:
    """(algorithm, digest) of a verity-enabled file; None if verity is not
    enabled on it; :class:`VerityUnsupported` if the filesystem has no fs-verity."""
    buf = bytearray(_DIGEST_HEADER.size + _MAX_DIGEST)
    _DIGEST_HEADER.pack_into(buf, 0, 0, _MAX_DIGEST)
    try:
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf, True)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        if e.errno in _UNSUPPORTED:
            raise _unsupported("measurement", e) from None
        raise
    alg_id, size = _DIGEST_HEADER.unpack_from(buf)
    alg = ALG_BY_KERNEL_ID.get(alg_id)
    if alg is None or size != DIGEST_SIZE[alg]:
        raise CfsError(f"kernel reported an unknown fs-verity algorithm {alg_id}")
    return alg, bytes(buf[_DIGEST_HEADER.size : _DIGEST_HEADER.size + size])


def enable_verity(fd: int, alg: str = "sha512") -> None:
    """Enable fs-verity (block size 4096, no salt, no signature) on the file open
    read-only as ``fd``.  Already enabled with the same algorithm is success."""
    hash_constructor(alg)
    arg = _ENABLE_ARG.pack(1, KERNEL_ALG_ID[alg], BLOCK_SIZE, 0, 0, 0, 0, 0)
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            raise _unsupported("enabling", e) from None
        if e.errno != errno.EEXIST:
            raise
        measured = measure_verity(fd)
        if measured is None or measured[0] != alg:
            have = measured[0] if measured else "unknown"
            raise CfsError(f"fs-verity already enabled with {have}, not {alg}") from None
