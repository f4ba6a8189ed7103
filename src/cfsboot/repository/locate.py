"""Is a path inside a composefs repository?  Writing anything but the
repository's own layout there (an ESP directory, a foreign object store)
makes fsck and gc fail, so commands that write look before they do."""

from __future__ import annotations

import os

from cfsboot.errors import CfsError
from cfsboot.repository.meta import parse_metadata


def enclosing_repository(path: str) -> tuple[str, str | None] | None:
    """The repository ``path`` is, or lies (or would be created) in: its root
    and hash name ("sha256"/"sha512"; None for an old-format repository, which
    has ``objects/``, ``streams/`` and ``images/`` but no meta.json).  A
    meta.json that is not a repository's does not count."""
    current = os.path.realpath(path)
    while True:
        meta = os.path.join(current, "meta.json")
        if os.path.isfile(meta):
            try:
                with open(meta, "rb") as f:
                    return current, parse_metadata(f.read()).algorithm.hash_name
            except (OSError, CfsError):
                pass  # some other project's meta.json
        elif all(os.path.isdir(os.path.join(current, d))
                 for d in ("objects", "streams", "images")):
            return current, None
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
