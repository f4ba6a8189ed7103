"""fs-verity digests (block size 4096, no salt), the lowest layer of cfsboot.

* digest.py: the pure algorithm (``FsVerityHasher``, ``fsverity_digest``);
* files.py: digests of open files and paths, many at once on forked workers;
* kernel.py: FS_IOC_ENABLE_VERITY / FS_IOC_MEASURE_VERITY with a clean
  ``VerityUnsupported`` where the kernel or filesystem has no fs-verity.
"""

from cfsboot.fsverity.digest import (
    ALG_BY_KERNEL_ID,
    BLOCK_SIZE,
    DIGEST_SIZE,
    KERNEL_ALG_ID,
    Algorithm,
    FsVerityHasher,
    UnknownAlgorithm,
    fsverity_digest,
)
from cfsboot.fsverity.files import default_threads, digest_fd, digest_file, digest_files
from cfsboot.fsverity.kernel import VerityUnsupported, enable_verity, measure_verity

__all__ = [
    "ALG_BY_KERNEL_ID",
    "BLOCK_SIZE",
    "DIGEST_SIZE",
    "KERNEL_ALG_ID",
    "Algorithm",
    "FsVerityHasher",
    "UnknownAlgorithm",
    "VerityUnsupported",
    "default_threads",
    "digest_fd",
    "digest_file",
    "digest_files",
    "enable_verity",
    "fsverity_digest",
    "measure_verity",
]
