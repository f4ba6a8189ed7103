"""Shared test helpers: where the public vectors are, and skips with reasons."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI clones the repo next to a copy of shared/; CFSBOOT_SHARED overrides.
SHARED = Path(os.environ.get("CFSBOOT_SHARED", REPO.parent / "shared"))
VECTORS = SHARED / "vectors"
RS_VECTORS = VECTORS / "composefs-rs"
TREE_VECTORS = VECTORS / "trees"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def need_vectors() -> None:
    if not (VECTORS / "vectors.json").exists():
        pytest.skip(f"public vectors not found at {VECTORS} (set CFSBOOT_SHARED)")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture(params=["python", "c"])
def verity_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the pure-Python hashing code and with the C accelerator."""
    from cfsboot import native
    if request.param == "python":
        monkeypatch.setattr(native, "module", None)
    elif native.module is None:
        if os.environ.get("CI"):
            pytest.fail("cfsboot._native was not built (make setup builds it; needs libssl-dev)")
        pytest.skip("cfsboot._native not built (needs gcc and libssl-dev at install time)")
    return str(request.param)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make deps installs it as root)")
    return path


@pytest.fixture
def vectors() -> Path:
    need_vectors()
    return VECTORS
