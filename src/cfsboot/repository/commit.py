"""Committing filesystem trees as images (composefs-rs ``commit_images``)."""

from __future__ import annotations

from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.repository import verity
from cfsboot.repository.meta import Algorithm, FormatConfig
from cfsboot.repository.repo import Repository
from cfsboot.tree.model import Directory, External, digest_from_object_path, walk


def commit_tree(repo: Repository, root: Directory, name: str | None = None) -> bytes:
    """Write ``root`` as an EROFS image in every format of the repository's
    configuration (default first).  Only the default version gets ``name``;
    extra versions are stored anonymously.  Returns the default image's ID.

    The caller must already have stored the tree's external objects."""
    repo.ensure_writable()
    stored = [(v, repo.ensure_object(mkfs_erofs(root, v)))
              for v in repo.format_config().generation_order()]
    repo.sync()  # objects and images durable before any symlink names them
    for i, (_, digest) in enumerate(stored):
        repo.publish_image(digest, name if i == 0 else None)
    return stored[0][1]


def compute_image_id(root: Directory, alg: Algorithm, formats: FormatConfig) -> bytes:
    """The ID ``commit_tree`` would return, without storing anything."""
    return verity.digest_bytes(mkfs_erofs(root, formats.default), alg)


def missing_objects(repo: Repository, root: Directory) -> list[bytes]:
    """External objects of ``root`` that are not in the repository."""
    seen: set[bytes] = set()
    out: list[bytes] = []
    for _, node in walk(root):
        if isinstance(node, Directory) or not isinstance(node.content, External):
            continue
        digest = node.content.digest or digest_from_object_path(
            node.content.path, repo.algorithm.digest_size)
        if digest is None or digest in seen:
            continue
        seen.add(digest)
        if not repo.has_object(digest):
            out.append(digest)
    return out
