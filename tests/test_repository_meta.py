"""meta.json bytes and rules (repository.md §3, composefs-rs RepoMetadata @0fbc853)."""

from __future__ import annotations

import pytest

from cfsboot.repository.meta import (
    SHA256,
    SHA512,
    Algorithm,
    FormatConfig,
    MetadataError,
    RepoMetadata,
    parse_metadata,
)

CFSCTL_DEFAULT = b"""{
  "version": 1,
  "algorithm": "fsverity-sha512-12",
  "features": {
    "compatible": [],
    "read-only-compatible": [
      "v1_erofs"
    ],
    "incompatible": []
  },
  "erofs_formats": {
    "default": 1
  }
}
"""


def test_default_init_bytes_match_cfsctl() -> None:
    assert RepoMetadata.new(SHA512).to_json_bytes() == CFSCTL_DEFAULT


def test_v2_and_dual_format_bytes() -> None:
    v2 = RepoMetadata.new(SHA256, FormatConfig(2)).to_json_bytes()
    assert b'"read-only-compatible": []' in v2 and b'"default": 2\n' in v2
    dual = RepoMetadata.new(SHA256, FormatConfig(1, (2,))).to_json_bytes()
    assert b'"extra": [\n      2\n    ]' in dual and b'"v1_erofs"' in dual


def test_parse_round_trip_and_unknown_keys() -> None:
    meta = parse_metadata(CFSCTL_DEFAULT)
    assert meta.algorithm == SHA512 and meta.format_config() == FormatConfig(1)
    assert meta.to_json_bytes() == CFSCTL_DEFAULT
    assert parse_metadata(b'{"version":1,"algorithm":"fsverity-sha256-12","x":3}').algorithm \
        == SHA256


def test_legacy_format_config_rules() -> None:
    # no erofs_formats: v1_erofs flag -> V1, else V2
    m = parse_metadata(b'{"version":1,"algorithm":"fsverity-sha256-12",'
                       b'"features":{"read-only-compatible":["v1_erofs"]}}')
    assert m.format_config() == FormatConfig(1)
    m = parse_metadata(b'{"version":1,"algorithm":"fsverity-sha256-12"}')
    assert m.format_config() == FormatConfig(2)
    m = parse_metadata(b'{"version":1,"algorithm":"fsverity-sha256-12",'
                       b'"erofs_formats":{"default":1,"extra":[2,0]}}')
    assert m.format_config().generation_order() == [1, 0, 2]


@pytest.mark.parametrize("text", [
    b"not json", b"[]", b'{"algorithm":"fsverity-sha256-12"}',
    b'{"version":2,"algorithm":"fsverity-sha256-12"}',
    b'{"version":1,"algorithm":"fsverity-sha256-16"}',
    b'{"version":1,"algorithm":"fsverity-md5-12"}',
    b'{"version":1,"algorithm":"fsverity-sha256-12","erofs_formats":{"default":3}}',
])
def test_bad_metadata(text: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_metadata(text)


def test_feature_checks() -> None:
    m = RepoMetadata.new(SHA256)
    assert m.check_features()
    m.features.compatible.append("whatever")
    assert m.check_features()
    m.features.read_only_compatible.append("new-index")
    assert not m.check_features()
    m.features.incompatible.append("fancy-new-thing")
    with pytest.raises(MetadataError, match="fancy-new-thing"):
        m.check_features()


def test_algorithm_forms() -> None:
    assert Algorithm.parse("sha256") == SHA256
    assert Algorithm.parse("fsverity-sha512-12").kernel_id == 2
    assert SHA256.to_id(b"\xab") == "sha256:ab"
