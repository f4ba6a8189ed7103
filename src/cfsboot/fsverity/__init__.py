"""fs-verity digests (block size 4096, no salt), the lowest layer of cfsboot.

* digest.py: the pure algorithm (``FsVerityHasher``, ``fsverity_digest``);
* files.py: digests of open files and paths, many at once on worker threads
  (the C accelerator) or forked worker processes;
* kernel.py: FS_IOC_ENABLE_VERITY / FS_IOC_MEASURE_VERITY with a clean
  ``VerityUnsupported`` where the kernel or filesystem has no fs-verity.

files.py and kernel.py are imported when one of their names is first used:
``compute-composefs-digest --cache`` on an unchanged tree needs neither, and
its whole run is a few dozen milliseconds.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from cfsboot.fsverity.files import default_threads, digest_fd, digest_file, digest_files
    from cfsboot.fsverity.kernel import VerityUnsupported, enable_verity, measure_verity

_LAZY = {
    "default_threads": "files", "digest_fd": "files", "digest_file": "files",
    "digest_files": "files", "VerityUnsupported": "kernel", "enable_verity": "kernel",
    "measure_verity": "kernel",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
