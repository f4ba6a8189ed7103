"""composefs dumpfiles (composefs-dump(5)): parse into a tree, write a tree.

Two parser flavours:

* ``"rs"`` (default): composefs-rs semantics plus the spec §4.3 rejections
  (``dumpfile_parse.py``).  External files get their digest from DIGEST, or
  (ExternalNoVerity) from the object path at the end of PAYLOAD; ``Leaf.nlink``
  is None.
* ``"c"``: C mkcomposefs semantics (``dumpfile_parse_c.py``); the tree carries
  what C's EROFS writer uses, including ``Leaf.nlink`` and arbitrary payloads.
  ``strict=True`` adds the CFS_PARSE_STRICT rules (ignored for ``"rs"``).

``write_dumpfile`` produces composefs-rs ``write_dumpfile`` output exactly.
Every rejection is a ``DumpfileError`` whose message is ``line N: reason``.
"""

from __future__ import annotations

import gc
from typing import Literal

from cfsboot.tree.dumpfile_base import DumpfileError
from cfsboot.tree.dumpfile_parse import parse_rs
from cfsboot.tree.dumpfile_parse_c import parse_c
from cfsboot.tree.dumpfile_write import write_dumpfile
from cfsboot.tree.escape import (
    EscapeError,
    escape_field,
    escape_optional,
    unescape,
    unescape_optional,
)
from cfsboot.tree.model import Directory

__all__ = [
    "DumpfileError",
    "EscapeError",
    "escape_field",
    "escape_optional",
    "parse_dumpfile",
    "unescape",
    "unescape_optional",
    "write_dumpfile",
]


def parse_dumpfile(data: bytes, *, flavor: Literal["rs", "c"] = "rs",
                   strict: bool = False) -> Directory:
    """Parse a whole dumpfile into a tree (see the module docstring)."""
    if flavor not in ("rs", "c"):
        raise ValueError(f"unknown dumpfile flavor {flavor!r}")
    # A tree holds no reference cycles, but building one allocates a few
    # objects per line, which makes the cyclic GC rescan the growing heap
    # again and again (about a quarter of the time for big dumps).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return parse_rs(data) if flavor == "rs" else parse_c(data, strict)
    finally:
        if gc_was_on:
            gc.enable()
