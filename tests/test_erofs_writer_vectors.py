"""EROFS writer against the public vector sets, every case.

* ``composefs-rs/vectors.json``: composefs-rs @0fbc853 images (V0/V1/V2,
  SHA-256 and SHA-512 object ids) from dumpfiles parsed with composefs-rs
  semantics; image sha256 and the fs-verity digest must match.
* ``vectors.json``: C mkcomposefs images from the C test assets, parsed with C
  semantics and written with ``c_compat=True`` at the version C would choose.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from conftest import RS_VECTORS, VECTORS, load_json, need_vectors

from cfsboot.erofs.writer import c_effective_version, mkfs_erofs
from cfsboot.fsverity import fsverity_digest
from cfsboot.tree.dumpfile import parse_dumpfile


def _cases(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    cases: list[dict[str, Any]] = load_json(path)["cases"]
    return cases


RS_CASES = _cases(RS_VECTORS / "vectors.json")
C_CASES = [c for c in _cases(VECTORS / "vectors.json") if not c.get("must_fail")]


def _rs_id(c: dict[str, Any]) -> str:
    return f"{c['input']}-{c['object_id_algorithm']}-v{c['erofs_format']}"


def _c_id(c: dict[str, Any]) -> str:
    return f"{c['input']}-min{c['min_version']}-max{c['max_version']}"


def _compare(image: bytes, case: dict[str, Any], reference: Path) -> None:
    if hashlib.sha256(image).hexdigest() == case["image_sha256"]:
        return
    detail = ""
    if case.get("image") and (reference / case["image"]).exists():
        expected = (reference / case["image"]).read_bytes()
        first = next((i for i, (a, b) in enumerate(zip(image, expected, strict=False))
                      if a != b), min(len(image), len(expected)))
        detail = f" (first difference at {first:#x}; sizes {len(image)} vs {len(expected)})"
    pytest.fail(f"image differs from {case.get('image')}{detail}")


@pytest.mark.parametrize("case", RS_CASES, ids=_rs_id)
def test_composefs_rs_vectors(case: dict[str, Any]) -> None:
    need_vectors()
    tree = parse_dumpfile((RS_VECTORS / case["input"]).read_bytes(), flavor="rs")
    image = mkfs_erofs(tree, case["erofs_format"])
    assert len(image) == case["image_size"]
    _compare(image, case, RS_VECTORS)
    alg = case["object_id_algorithm"]
    assert fsverity_digest(image, alg).hex() == case[f"fsverity_{alg}"]


@pytest.mark.parametrize("case", C_CASES, ids=_c_id)
def test_c_mkcomposefs_vectors(case: dict[str, Any]) -> None:
    need_vectors()
    tree = parse_dumpfile((VECTORS / case["input"]).read_bytes(), flavor="c")
    version = c_effective_version(tree, case["min_version"], case["max_version"])
    assert version == case["composefs_version"]
    image = mkfs_erofs(tree, version, c_compat=True)
    assert len(image) == case["image_size"]
    _compare(image, case, VECTORS)
    assert fsverity_digest(image, "sha256").hex() == case["fsverity_sha256"]
    assert fsverity_digest(image, "sha512").hex() == case["fsverity_sha512"]


def test_vector_sets_present() -> None:
    need_vectors()
    assert len(RS_CASES) == 18 and len(C_CASES) == 23
