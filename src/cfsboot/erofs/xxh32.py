"""xxHash32 (pure Python) for the EROFS xattr name bloom filter.

Only short inputs are hashed (xattr name suffixes), and the same few names
repeat on every inode, so results are memoised.
"""

from __future__ import annotations

import struct
from functools import lru_cache

_MASK = 0xFFFFFFFF
_P1 = 2654435761
_P2 = 2246822519
_P3 = 3266489917
_P4 = 668265263
_P5 = 374761393


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _MASK
    return (_rotl(acc, 13) * _P1) & _MASK


@lru_cache(maxsize=4096)
def xxh32(data: bytes, seed: int = 0) -> int:
    """Standard 32-bit xxHash of ``data`` with ``seed``."""
    n = len(data)
    pos = 0
    if n >= 16:
        v1 = (seed + _P1 + _P2) & _MASK
        v2 = (seed + _P2) & _MASK
        v3 = seed & _MASK
        v4 = (seed - _P1) & _MASK
        limit = n - 16
        while pos <= limit:
            a, b, c, d = struct.unpack_from("<IIII", data, pos)
            v1 = _round(v1, a)
            v2 = _round(v2, b)
            v3 = _round(v3, c)
            v4 = _round(v4, d)
            pos += 16
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while pos + 4 <= n:
        (lane,) = struct.unpack_from("<I", data, pos)
        h = (_rotl((h + lane * _P3) & _MASK, 17) * _P4) & _MASK
        pos += 4
    while pos < n:
        h = (_rotl((h + data[pos] * _P5) & _MASK, 11) * _P1) & _MASK
        pos += 1
    h ^= h >> 15
    h = (h * _P2) & _MASK
    h ^= h >> 13
    h = (h * _P3) & _MASK
    h ^= h >> 16
    return h
