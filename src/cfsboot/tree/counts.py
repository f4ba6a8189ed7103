"""What a directory scan found (``scan_directory``), in a module of its own so
that reporting a cached result needs no import of the scanner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScanCounts:
    directories: int = 0
    regular_files: int = 0
    inline_files: int = 0
    external_files: int = 0
    symlinks: int = 0
    devices: int = 0
    fifos: int = 0
    sockets: int = 0
    hardlinks: int = 0  # names beyond the first of a hard-linked leaf
    bytes_external: int = 0  # total size of external files
    bytes_hashed: int = 0  # bytes actually read and hashed (cache misses)
    cache_hits: int = 0
