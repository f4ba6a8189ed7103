"""Objects an EROFS image refers to (repository.md §11.3): the digest of every
valid ``trusted.overlay.metacopy`` and the ObjectID in every
``trusted.overlay.redirect`` of the image's external files."""

from __future__ import annotations

from cfsboot.erofs import reader
from cfsboot.errors import CfsError
from cfsboot.repository.meta import Algorithm
from cfsboot.tree.model import Directory, External, digest_from_object_path


class ImageInvalid(CfsError):
    """An image in the repository cannot be parsed as a composefs EROFS."""


def objects_in_image(image: bytes, alg: Algorithm) -> set[bytes]:
    try:
        root = reader.read_erofs(image)
    except CfsError as e:
        raise ImageInvalid(f"invalid EROFS image: {e}") from None
    out: set[bytes] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            elif isinstance(child.content, External):
                content = child.content
                if content.digest is not None and len(content.digest) == alg.digest_size:
                    out.add(content.digest)
                from_path = digest_from_object_path(content.path, alg.digest_size)
                if from_path is not None:
                    out.add(from_path)
    return out
