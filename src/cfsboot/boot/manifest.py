"""The external-signing manifest: what ``seal --external-signing`` emitted, so that
``seal inject`` can check the signed files and complete the seal.

A manifest from ``seal oci --external-signing`` also names its ``source``: the
stored OCI image and its manifest digest (``seal inject --output`` then writes
the ESP files rather than completing a directory seal).  Without it the
manifest is from a directory seal, as every manifest written before the field
existed: the format version stays 1.

Each unsigned file is recorded with its SHA-256 and its Authenticode (SHA-256)
image hash.  A signer may only add a signature, which leaves the Authenticode hash
unchanged; equal hashes therefore prove nothing else in the file changed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cfsboot.errors import CfsError

MANIFEST_FORMAT = "cfsboot-seal-manifest"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(CfsError):
    """The manifest is missing, malformed or from an unknown version."""


@dataclass(frozen=True)
class ManifestFile:
    role: str                     # "uki" or "systemd-boot"
    name: str                     # file name in the output directory
    sha256: str                   # of the unsigned file
    authenticode_sha256: str      # Authenticode image hash (what a signature covers)
    targets: tuple[str, ...]      # where the signed file goes, relative to the rootfs


@dataclass(frozen=True)
class ManifestSource:
    oci_image: str                # the name given to ``seal oci --oci-image``
    manifest_digest: str          # the image's OCI manifest digest ("sha256:...")


@dataclass(frozen=True)
class SealManifest:
    kver: str
    efi_arch: str
    cmdline: str
    digest: str                   # composefs digest sealed into the cmdline
    insecure: bool                # composefs=?<digest>
    vmlinuz_sha256: str
    initramfs_sha256: str
    files: tuple[ManifestFile, ...] = field(default=())
    source: ManifestSource | None = None   # None: a directory seal

    def require_kind(self, oci: bool) -> None:
        """Refuse a manifest of the other kind: an OCI seal's files go to an output
        directory, a directory seal's into its ROOTFS."""
        if oci and self.source is None:
            raise ManifestError("the manifest is from a directory seal ('seal ROOTFS "
                                "--external-signing'): give ROOTFS, not --output")
        if not oci and self.source is not None:
            raise ManifestError(f"the manifest is from 'seal oci' (image "
                                f"{self.source.oci_image}): give --output DIR, not ROOTFS")

    def to_json(self) -> str:
        doc: dict[str, Any] = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                               **asdict(self)}
        if self.source is None:
            del doc["source"]     # absent, as in manifests older than the field
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SealManifest:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"manifest is not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a seal manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
        if doc.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"unsupported seal manifest version {doc.get('version')!r}")
        try:
            files = tuple(ManifestFile(
                role=_str(f, "role"), name=_str(f, "name"), sha256=_str(f, "sha256"),
                authenticode_sha256=_str(f, "authenticode_sha256"),
                targets=tuple(_str_list(f, "targets"))) for f in doc["files"])
            return cls(kver=_str(doc, "kver"), efi_arch=_str(doc, "efi_arch"),
                       cmdline=_str(doc, "cmdline"), digest=_str(doc, "digest"),
                       insecure=bool(doc["insecure"]),
                       vmlinuz_sha256=_str(doc, "vmlinuz_sha256"),
                       initramfs_sha256=_str(doc, "initramfs_sha256"), files=files,
                       source=_source(doc.get("source")))
        except (KeyError, TypeError) as e:
            raise ManifestError(f"malformed seal manifest: {e!r}") from e


def _source(value: Any) -> ManifestSource | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("source is not an object")
    return ManifestSource(oci_image=_str(value, "oci_image"),
                          manifest_digest=_str(value, "manifest_digest"))


def _str(d: Any, key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _str_list(d: Any, key: str) -> list[str]:
    value = d[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key} is not a list of strings")
    return value
