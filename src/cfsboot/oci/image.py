"""Stored OCI images: JSON splitstreams, tags, opening an image, building its
merged filesystem and its image ID (oci-import.md §1, §2, §7.4, §8, §10)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.errors import CfsError
from cfsboot.oci.blobs import MEDIA_CONFIG, Descriptor
from cfsboot.oci.layers import apply_entry, new_root, read_entries
from cfsboot.oci.normalize import normalize_for_oci
from cfsboot.oci.reference import check_new_tag, decode_tag, encode_tag, parse_digest
from cfsboot.repository import (
    CONTENT_OCI_CONFIG,
    CONTENT_OCI_LAYER,
    CONTENT_OCI_MANIFEST,
    Repository,
)
from cfsboot.repository.verity import digest_bytes
from cfsboot.tree.model import Directory

IMAGE_V2 = "composefs.image"
IMAGE_V1 = "composefs.image.v1"
BOOT_PREFIX = "composefs.image.boot"


class OciImageError(CfsError):
    """A stored OCI image is missing, inconsistent or corrupt."""


def manifest_stream(digest: str) -> str:
    return f"oci-manifest-{digest}"


def config_stream(digest: str) -> str:
    return f"oci-config-{digest}"


def layer_stream(diff_id: str) -> str:
    return f"oci-layer-{diff_id}"


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise OciImageError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise OciImageError(f"{what} is not a JSON object")
    return obj


def read_json_stream(repo: Repository, name: str, digest: bytes | None,
                     content_type: int) -> tuple[bytes, dict[str, bytes]]:
    """(raw JSON bytes, named refs) of a manifest/config splitstream."""
    with repo.open_stream(name, digest, content_type) as reader:
        if len(reader.object_refs) != 1:
            raise OciImageError("Expected exactly 1 external object in splitstream, "
                                f"got {len(reader.object_refs)}")
        named = dict(reader.named_refs)
        with repo.open_object(reader.object_refs[0]) as f:
            return f.read(), named


def diff_ids_of(config_media_type: str, config: bytes, layers: list[Descriptor]) -> list[str]:
    """§3.3: rootfs.diff_ids for images, the layer digests for artifacts."""
    if config_media_type != MEDIA_CONFIG:
        return [d.digest for d in layers]
    rootfs = parse_json_object(config, "image config").get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise OciImageError("image config has no rootfs.diff_ids list")
    return [parse_digest(d) for d in ids]


def manifest_parts(raw: bytes) -> tuple[dict[str, Any], Descriptor, list[Descriptor]]:
    manifest = parse_json_object(raw, "manifest")
    config = Descriptor.from_json(manifest.get("config"), "manifest config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise OciImageError("manifest has no layers list")
    return manifest, config, [Descriptor.from_json(d, "manifest layer") for d in layers]


# ---- tags -----------------------------------------------------------------------

def tag_image(repo: Repository, manifest_digest: str, name: str) -> None:
    check_new_tag(name)
    repo.name_stream(manifest_stream(parse_digest(manifest_digest)), "oci/" + encode_tag(name))


def untag_image(repo: Repository, name: str) -> None:
    repo.remove_stream_ref("oci/" + encode_tag(name))


def resolve_tag(repo: Repository, name: str) -> str:
    """Tag → manifest digest ("OCI reference not found" when missing)."""
    try:
        target = os.readlink(f"streams/refs/oci/{encode_tag(name)}", dir_fd=repo.fd)
    except (FileNotFoundError, NotADirectoryError):
        raise OciImageError(f"OCI reference not found: {name}") from None
    last = target.rsplit("/", 1)[-1]
    if not last.startswith("oci-manifest-"):
        raise OciImageError(f"tag {name} does not point at a manifest")
    return parse_digest(last[len("oci-manifest-"):])


def list_tags(repo: Repository) -> list[tuple[str, str]]:
    """(tag, manifest digest) for every valid tag, sorted by tag."""
    out: list[tuple[str, str]] = []
    for entry in repo.list_stream_refs("oci") if _has_oci_refs(repo) else []:
        last = entry.target.rsplit("/", 1)[-1]
        if not last.startswith("oci-manifest-"):
            continue
        try:
            digest = parse_digest(last[len("oci-manifest-"):])
        except CfsError:
            continue
        out.append((decode_tag(entry.name[len("oci/"):]), digest))
    return sorted(out)


def _has_oci_refs(repo: Repository) -> bool:
    try:
        os.stat("streams/refs/oci", dir_fd=repo.fd)
    except FileNotFoundError:
        return False
    return True


# ---- opened images ------------------------------------------------------------------

@dataclass
class OciImage:
    manifest_digest: str
    manifest_verity: bytes
    manifest_raw: bytes
    manifest: dict[str, Any]
    config_desc: Descriptor
    config_verity: bytes
    config_raw: bytes
    config: dict[str, Any] | None  # None for artifacts
    layer_refs: dict[str, bytes]  # diff_id (or layer digest) -> layer stream ObjectID
    image_refs: dict[str, bytes] = field(default_factory=dict)  # composefs.image* keys

    @property
    def is_container(self) -> bool:
        return self.config is not None

    def image_ref(self, version: int) -> bytes | None:
        return self.image_refs.get(IMAGE_V2 if version == 2 else IMAGE_V1)

    def boot_refs(self) -> dict[str, bytes]:
        return {k: v for k, v in self.image_refs.items() if k.startswith(BOOT_PREFIX)}


def open_image(repo: Repository, manifest_digest: str,
               manifest_verity: bytes | None = None) -> OciImage:
    """§10: by verity (object-checked) or by name (then re-hashed)."""
    name = manifest_stream(parse_digest(manifest_digest))
    if manifest_verity is None:
        manifest_verity = repo.has_stream(name)
        if manifest_verity is None:
            raise OciImageError(f"OCI image not found: {manifest_digest}")
        raw, named = read_json_stream(repo, name, None, CONTENT_OCI_MANIFEST)
        if _sha(raw, manifest_digest) != manifest_digest:
            raise OciImageError(f"Manifest integrity failed for {manifest_digest}")
    else:
        raw, named = read_json_stream(repo, name, manifest_verity, CONTENT_OCI_MANIFEST)
    manifest, config_desc, layers = manifest_parts(raw)
    config_verity = named.get(f"config:{config_desc.digest}")
    if config_verity is None:
        raise OciImageError(f"Manifest missing config reference for {manifest_digest}")
    config_raw, config_named = read_json_stream(repo, config_stream(config_desc.digest),
                                                config_verity, CONTENT_OCI_CONFIG)
    if config_desc.media_type == MEDIA_CONFIG:
        config: dict[str, Any] | None = parse_json_object(config_raw, "image config")
        refs = dict(config_named)
    else:
        config = None
        digests = {d.digest for d in layers}
        refs = {k: v for k, v in named.items() if k in digests}
    image_refs = {k: refs.pop(k) for k in list(refs)
                  if k in (IMAGE_V2, IMAGE_V1) or k.startswith(BOOT_PREFIX)}
    return OciImage(manifest_digest, manifest_verity, raw, manifest, config_desc,
                    config_verity, config_raw, config, refs, image_refs)


def _sha(data: bytes, like: str) -> str:
    algo = like.partition(":")[0]
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def resolve_ref(repo: Repository, ref: str) -> tuple[str, bytes | None]:
    """A tag, or ``@sha256:…`` / bare ``sha256:…`` manifest digest →
    (manifest digest, manifest verity).  A tag yields the verity of the stream it
    names (as upstream ``resolve_ref``), so the image opens without re-hashing
    the manifest; a digest gives None (the manifest is re-hashed)."""
    if ref.startswith("@"):
        return parse_digest(ref[1:]), None
    if ref.startswith(("sha256:", "sha512:")) and repo.has_stream(manifest_stream(ref)):
        return ref, None
    digest = resolve_tag(repo, ref)
    verity = repo.has_stream(manifest_stream(digest))
    if verity is None:
        raise OciImageError(f"OCI image not found: {ref} ({digest})")
    return digest, verity


# ---- filesystem ----------------------------------------------------------------------

def create_filesystem(repo: Repository, config_digest: str, config_verity: bytes | None,
                      xattr_mode: str = "allowlist-only") -> Directory:
    """§7: merge the layers of a stored config into a normalised tree."""
    if config_verity is None:
        raw, named = read_json_stream(repo, config_stream(config_digest), None,
                                      CONTENT_OCI_CONFIG)
        if _sha(raw, config_digest) != config_digest:
            raise OciImageError(f"Config integrity check failed for {config_digest}")
    else:
        raw, named = read_json_stream(repo, config_stream(config_digest), config_verity,
                                      CONTENT_OCI_CONFIG)
    root = new_root()
    for diff_id in diff_ids_of(MEDIA_CONFIG, raw, []):
        verity = named.get(diff_id)
        if verity is None:
            raise OciImageError(f"config {config_digest} has no reference to layer {diff_id}")
        if config_verity is None:
            h = hashlib.new(diff_id.partition(":")[0])
            with repo.open_stream(layer_stream(diff_id), verity, CONTENT_OCI_LAYER) as r:
                r.cat(h.update, repo.open_object)
            if f"{h.name}:{h.hexdigest()}" != diff_id:
                raise OciImageError(f"Layer has incorrect checksum: {diff_id}")
        with repo.open_stream(layer_stream(diff_id), verity, CONTENT_OCI_LAYER) as r:
            for entry in read_entries(r):
                apply_entry(root, entry)
    normalize_for_oci(root, xattr_mode)
    return root


def image_id(repo: Repository, root: Directory, version: int | None = None) -> bytes:
    """fs-verity digest of the EROFS of ``root`` (repository default version)."""
    v = repo.format_config().default if version is None else version
    return digest_bytes(mkfs_erofs(root, v), repo.algorithm)
