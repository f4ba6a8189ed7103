"""The fs-verity file digest (block size 4096, no salt) as a pure, streaming hash.

This is the Linux kernel's fs-verity measurement, which composefs uses to name
objects and images: a Merkle tree over the 4096-byte blocks of the data, whose
root hash goes into a 256-byte descriptor that is hashed once more.  The result
equals ``fsverity digest --hash-alg=ALG --block-size=4096 FILE``.

The hot path is :func:`hash_blocks`: per 4096-byte block it does one memoryview
slice, one hashlib constructor call and one ``digest()``, all inside a list
comprehension.  That measured fastest of the variants tried (``copy()`` of a
primed hasher object, ``hashlib.new``, ``map``); the hashing itself runs in
OpenSSL with the GIL released (hashlib drops it for buffers of 2 KiB and more).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal, Protocol

from cfsboot.errors import CfsError

Algorithm = Literal["sha256", "sha512"]

BLOCK_SIZE = 4096
LOG_BLOCK_SIZE = 12

DIGEST_SIZE: dict[str, int] = {"sha256": 32, "sha512": 64}

# The kernel's FS_VERITY_HASH_ALG_* numbers, as stored in the descriptor.
KERNEL_ALG_ID: dict[str, int] = {"sha256": 1, "sha512": 2}
ALG_BY_KERNEL_ID: dict[int, str] = {v: k for k, v in KERNEL_ALG_ID.items()}


class UnknownAlgorithm(CfsError):
    """An fs-verity hash algorithm other than sha256/sha512 was requested."""


class _Hash(Protocol):
    def digest(self) -> bytes: ...


HashConstructor = Callable[[bytes | bytearray | memoryview], _Hash]

_CONSTRUCTORS: dict[str, HashConstructor] = {
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


def hash_constructor(alg: str) -> HashConstructor:
    """The hashlib constructor for ``alg``; :class:`UnknownAlgorithm` otherwise."""
    try:
        return _CONSTRUCTORS[alg]
    except KeyError:
        raise UnknownAlgorithm(
            f"unknown fs-verity hash algorithm {alg!r} (expected sha256 or sha512)"
        ) from None


_ZERO_BLOCK = bytes(BLOCK_SIZE)


def hash_blocks(new: HashConstructor, data: memoryview) -> bytes:
    """Concatenated hashes of the 4096-byte blocks of ``data``.

    ``len(data)`` must be a multiple of 4096.  No copies: each block is a slice
    of the caller's buffer.
    """
    return b"".join([new(data[i : i + BLOCK_SIZE]).digest()
                     for i in range(0, len(data), BLOCK_SIZE)])


def _hash_padded_block(new: HashConstructor, block: bytes | bytearray | memoryview) -> bytes:
    """Hash of one block of at most 4096 bytes, zero-padded to 4096 bytes."""
    if len(block) == BLOCK_SIZE:
        return new(block).digest()
    return new(bytes(block) + _ZERO_BLOCK[len(block):]).digest()


def descriptor(alg: str, data_size: int, root_hash: bytes) -> bytes:
    """The 256-byte ``struct fsverity_descriptor`` (version 1, no salt)."""
    return (bytes((1, KERNEL_ALG_ID[alg], LOG_BLOCK_SIZE, 0))  # version, alg, log bs, salt size
            + bytes(4)                                         # reserved
            + data_size.to_bytes(8, "little")
            + root_hash.ljust(64, b"\0")                       # root hash, padded to 64
            + bytes(32)                                        # salt
            + bytes(144))                                      # reserved


class FsVerityHasher:
    """Streaming fs-verity digest: feed data in any chunking, memory stays constant.

    The Merkle tree is built bottom-up as data arrives.  ``_levels[k]`` holds the
    not-yet-hashed hashes of tree level k (level 0 = hashes of data blocks); as
    soon as a level holds more than one block's worth, the first full block is
    hashed into the level above.  A level holding exactly one full block is not
    hashed until :meth:`digest`, because it might be the root (spec §2).
    So each level keeps at most 4096 bytes, and the whole state is a few KiB.
    """

    __slots__ = ("_alg", "_levels", "_new", "_partial", "_size")

    def __init__(self, alg: str = "sha512") -> None:
        self._new = hash_constructor(alg)
        self._alg = alg
        self._partial = bytearray()        # trailing data shorter than one block
        self._levels: list[bytearray] = []
        self._size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._size += len(view)
        if self._partial:
            take = min(BLOCK_SIZE - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) < BLOCK_SIZE:
                return
            # A full block, but more data may follow or not: hashing it now is
            # fine either way, a data block's hash does not depend on position.
            self._push(0, self._new(self._partial).digest())
            self._partial.clear()
        whole = len(view) - len(view) % BLOCK_SIZE
        if whole:
            self._push(0, hash_blocks(self._new, view[:whole]))
        if whole < len(view):
            self._partial += view[whole:]

    def _push(self, level: int, hashes: bytes) -> None:
        """Append ``hashes`` to ``level`` and hash all full blocks but the last."""
        levels = self._levels
        if level == len(levels):
            levels.append(bytearray())
        pending = levels[level]
        pending += hashes
        if len(pending) > BLOCK_SIZE:
            # Keep 1..4096 bytes: a full block stays until we know it isn't the root.
            keep = (len(pending) - 1) % BLOCK_SIZE + 1
            ready = memoryview(pending)[: len(pending) - keep]
            parents = hash_blocks(self._new, ready)
            ready.release()
            del pending[: len(pending) - keep]
            self._push(level + 1, parents)

    def _root_hash(self) -> bytes:
        if self._size == 0:
            return bytes(DIGEST_SIZE[self._alg])
        levels = [bytearray(level) for level in self._levels]
        new = self._new
        if self._partial:
            tail = _hash_padded_block(new, self._partial)
            if not levels:
                levels.append(bytearray())
            levels[0] += tail
        hash_size = DIGEST_SIZE[self._alg]
        level = 0
        while True:
            pending = levels[level]
            if level == len(levels) - 1 and len(pending) == hash_size:
                # A single hash at the top: the level below was one block (or
                # the data was a single block) and this hash is the root.
                return bytes(pending)
            # At most one full block plus the hash just added from below.
            if level == len(levels) - 1:
                levels.append(bytearray())
            for start in range(0, len(pending), BLOCK_SIZE):
                levels[level + 1] += _hash_padded_block(new, pending[start : start + BLOCK_SIZE])
            level += 1

    def digest(self) -> bytes:
        """The fs-verity digest of everything fed so far (the hasher stays usable)."""
        root = self._root_hash()
        return self._new(descriptor(self._alg, self._size, root)).digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def fsverity_digest(data: bytes | bytearray | memoryview, alg: str = "sha512") -> bytes:
    """The fs-verity digest of ``data`` held in memory."""
    hasher = FsVerityHasher(alg)
    hasher.update(data)
    return hasher.digest()
