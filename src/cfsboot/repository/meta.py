"""``meta.json``: the repository's algorithm, EROFS formats and feature flags.

Pure functions over bytes and dataclasses.  The byte layout is serde_json's
pretty printer (2-space indent, ``": "``) plus a trailing newline, which is
exactly ``json.dumps(obj, indent=2) + "\\n"`` for this data (composefs-rs
``RepoMetadata`` @0fbc853, repository.md §3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cfsboot.errors import CfsError

META_VERSION = 1
FEATURE_V1_EROFS = "v1_erofs"
KNOWN_INCOMPATIBLE: frozenset[str] = frozenset()
KNOWN_RO_COMPATIBLE: frozenset[str] = frozenset({FEATURE_V1_EROFS})
EROFS_VERSIONS = (0, 1, 2)


class MetadataError(CfsError):
    """meta.json is missing, unparsable or incompatible."""


@dataclass(frozen=True, slots=True)
class Algorithm:
    """An fs-verity hash configuration (always 4096-byte blocks, no salt)."""

    hash_name: str  # "sha256" | "sha512"

    @property
    def kernel_id(self) -> int:
        return 1 if self.hash_name == "sha256" else 2

    @property
    def digest_size(self) -> int:
        return 32 if self.hash_name == "sha256" else 64

    @property
    def meta_name(self) -> str:
        """``fsverity-sha256-12`` form used in meta.json."""
        return f"fsverity-{self.hash_name}-12"

    def to_id(self, digest: bytes) -> str:
        """composefs-rs ``to_id()`` form: ``sha512:<hex>``."""
        return f"{self.hash_name}:{digest.hex()}"

    @staticmethod
    def parse(text: str) -> Algorithm:
        """Accept ``fsverity-sha512-12`` or a bare ``sha512``."""
        name = text
        if text.startswith("fsverity-"):
            parts = text.split("-")
            if len(parts) != 3 or parts[2] != "12":
                raise MetadataError(f"unsupported fs-verity algorithm {text!r} "
                                    "(only block size 2^12 is supported)")
            name = parts[1]
        if name not in ("sha256", "sha512"):
            raise MetadataError(f"unsupported fs-verity algorithm {text!r}")
        return Algorithm(name)

    @staticmethod
    def from_digest_size(size: int) -> Algorithm:
        if size == 32:
            return SHA256
        if size == 64:
            return SHA512
        raise CfsError(f"invalid digest length {size} (want 32 or 64 bytes)")


SHA256 = Algorithm("sha256")
SHA512 = Algorithm("sha512")


@dataclass(frozen=True, slots=True)
class FormatConfig:
    """Which EROFS versions images are generated in: ``default`` first, then
    ``extra`` ascending (composefs-rs ``FormatConfig``)."""

    default: int
    extra: tuple[int, ...] = ()

    def generation_order(self) -> list[int]:
        return [self.default, *(v for v in sorted(set(self.extra)) if v != self.default)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"default": self.default}
        if self.extra:
            out["extra"] = sorted(self.extra)
        return out


LEGACY_FORMATS = FormatConfig(2)


@dataclass(slots=True)
class Features:
    compatible: list[str] = field(default_factory=list)
    read_only_compatible: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RepoMetadata:
    version: int
    algorithm: Algorithm
    features: Features
    erofs_formats: FormatConfig | None  # None: field absent (legacy repository)

    @staticmethod
    def new(algorithm: Algorithm, formats: FormatConfig | None = None) -> RepoMetadata:
        """Metadata for a fresh repository (default EROFS format: V1 only)."""
        formats = formats or FormatConfig(1)
        ro = [FEATURE_V1_EROFS] if formats.default == 1 else []
        return RepoMetadata(META_VERSION, algorithm, Features(read_only_compatible=ro), formats)

    def format_config(self) -> FormatConfig:
        """Effective EROFS formats (repository.md §3.4)."""
        fc = self.erofs_formats or LEGACY_FORMATS
        if fc != LEGACY_FORMATS:
            return fc
        if FEATURE_V1_EROFS in self.features.read_only_compatible:
            return FormatConfig(1)
        return LEGACY_FORMATS

    def check_features(self) -> bool:
        """Raise on unknown incompatible flags; return True when the repository
        may be written (no unknown read-only-compatible flags)."""
        unknown = [f for f in self.features.incompatible if f not in KNOWN_INCOMPATIBLE]
        if unknown:
            raise MetadataError("repository uses unsupported incompatible features: "
                                + ", ".join(unknown))
        return all(f in KNOWN_RO_COMPATIBLE for f in self.features.read_only_compatible)

    def to_json_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "version": self.version,
            "algorithm": self.algorithm.meta_name,
            "features": {
                "compatible": self.features.compatible,
                "read-only-compatible": self.features.read_only_compatible,
                "incompatible": self.features.incompatible,
            },
            "erofs_formats": (self.erofs_formats or LEGACY_FORMATS).to_json(),
        }
        return (json.dumps(obj, indent=2) + "\n").encode()


def parse_metadata(data: bytes) -> RepoMetadata:
    """Parse meta.json bytes; unknown top-level keys are ignored."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"meta.json is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MetadataError("meta.json is not a JSON object")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MetadataError("meta.json: missing or invalid 'version'")
    if version > META_VERSION:
        raise MetadataError(f"repository format version {version} is newer than supported "
                            f"({META_VERSION})")
    alg = obj.get("algorithm")
    if not isinstance(alg, str) or not alg.startswith("fsverity-"):
        raise MetadataError("meta.json: missing or invalid 'algorithm'")
    algorithm = Algorithm.parse(alg)
    features = Features()
    raw_features = obj.get("features", {})
    if not isinstance(raw_features, dict):
        raise MetadataError("meta.json: 'features' is not an object")
    for key, attr in (("compatible", "compatible"),
                      ("read-only-compatible", "read_only_compatible"),
                      ("incompatible", "incompatible")):
        value = raw_features.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MetadataError(f"meta.json: features.{key} is not a list of strings")
        setattr(features, attr, list(value))
    formats = None
    if "erofs_formats" in obj:
        formats = _parse_formats(obj["erofs_formats"])
    return RepoMetadata(version, algorithm, features, formats)


def _parse_formats(value: object) -> FormatConfig:
    if not isinstance(value, dict) or "default" not in value:
        raise MetadataError("meta.json: invalid 'erofs_formats'")
    default = value["default"]
    extra = value.get("extra", [])
    if not isinstance(extra, list):
        raise MetadataError("meta.json: erofs_formats.extra is not a list")
    for v in (default, *extra):
        if not isinstance(v, int) or isinstance(v, bool) or v not in EROFS_VERSIONS:
            raise MetadataError(f"meta.json: invalid EROFS format version {v!r}")
    return FormatConfig(default, tuple(sorted(set(extra))))
