"""The bootable image of a pulled OCI image (oci-import.md §8): the merged,
OCI-normalised tree, then ``transform_for_boot``, then EROFS.  Lives in boot/
because the boot transform sits above the oci layer."""

from __future__ import annotations

from collections.abc import Callable

from cfsboot.boot.transform import transform_for_boot
from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.oci.blobs import MEDIA_CONFIG
from cfsboot.oci.image import (
    OciImageError,
    create_filesystem,
    diff_ids_of,
    image_id,
    open_image,
)
from cfsboot.oci.pull import write_config, write_manifest
from cfsboot.repository import Repository
from cfsboot.tree.model import Directory, External, Inline, Leaf


def repo_file_reader(repo: Repository) -> Callable[[Leaf], bytes]:
    def read_file(leaf: Leaf) -> bytes:
        content = leaf.content
        if isinstance(content, Inline):
            return content.data
        if isinstance(content, External) and content.digest is not None:
            with repo.open_object(content.digest) as f:
                return f.read()
        return b""
    return read_file


def bootable_tree(repo: Repository, config_digest: str, config_verity: bytes | None,
                  xattr_mode: str = "allowlist-only") -> Directory:
    root = create_filesystem(repo, config_digest, config_verity, xattr_mode)
    transform_for_boot(root, repo_file_reader(repo))
    return root


def bootable_image_id(repo: Repository, config_digest: str, config_verity: bytes | None,
                      xattr_mode: str = "allowlist-only", version: int | None = None) -> bytes:
    return image_id(repo, bootable_tree(repo, config_digest, config_verity, xattr_mode), version)


def boot_ref_key(version: int, xattr_mode: str = "allowlist-only") -> str:
    """Config named-ref key of a cached boot image (oci-import.md §8.2)."""
    base = "composefs.image.boot" if version == 2 else "composefs.image.boot.v1"
    return base if xattr_mode == "allowlist-only" else f"{base}.xattrs={xattr_mode}"


def generate_boot_image(repo: Repository, manifest_digest: str,
                        xattr_mode: str = "allowlist-only") -> bytes:
    """§9 ``generate_boot_image``: reuse the cached boot ref for the default
    version, else build, store and link the boot EROFS (config and manifest
    rewritten).  Returns the default-version boot image ID."""
    formats = repo.format_config()
    default_version = 1 if formats.default in (0, 1) else 2
    img = open_image(repo, manifest_digest)  # no verity: the manifest is re-hashed
    cached = img.image_refs.get(boot_ref_key(default_version, xattr_mode))
    if cached is not None:
        return cached
    root = bootable_tree(repo, img.config_desc.digest, img.config_verity, xattr_mode)
    ids = {v: repo.ensure_object(mkfs_erofs(root, v)) for v in formats.generation_order()}
    repo.sync()
    for digest in ids.values():
        repo.publish_image(digest, None)
    extra = {k: v for k, v in img.image_refs.items()}
    for v in (2, 1):
        if v in ids:
            extra[boot_ref_key(v, xattr_mode)] = ids[v]
    if default_version not in ids:
        raise OciImageError("the boot image was not generated in the repository's default "
                            "format")
    diff_ids = diff_ids_of(MEDIA_CONFIG, img.config_raw, [])
    layer_refs = [(d, img.layer_refs[d]) for d in diff_ids]
    config_verity = write_config(repo, img.config_desc.digest, img.config_raw, layer_refs, extra)
    write_manifest(repo, manifest_digest, img.manifest_raw, img.config_desc.digest,
                   config_verity, layer_refs)
    return ids[default_version]
