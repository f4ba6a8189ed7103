"""fs-verity digests (block size 4096, no salt): pure streaming hasher, file
helpers, and the kernel ioctls.  The lowest layer of cfsboot."""

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
