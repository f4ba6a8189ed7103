"""Pulls through skopeo: a real registry (Debian's docker-registry listening on
127.0.0.1 only), oci-archive and docker-archive files.  Reference: the same
image imported from its OCI layout (and compute-composefs-digest)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_tool
from test_oci_support import gnu_tar, make_layout, new_repo, write_tree

from cfsboot.boot.digest import DigestOptions, compute_composefs_digest
from cfsboot.boot.oci_bootable import bootable_image_id
from cfsboot.errors import CfsError
from cfsboot.oci.image import open_image, resolve_ref
from cfsboot.oci.pull import pull
from cfsboot.repository import Repository


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(layout, source tree, manifest digest): two layers, gzip."""
    need_tool("skopeo")
    base = tmp_path_factory.mktemp("img")
    tree = base / "tree"
    write_tree(tree, {"usr/bin/a": os.urandom(50_000), "usr/lib/b": b"bee", "boot": None,
                      "sysroot": None, "etc/c": os.urandom(700)})
    t1 = gnu_tar(tree, "./usr", "./boot", "./sysroot")
    t2 = gnu_tar(tree, "./etc")
    man, _ = make_layout(base / "layout", [t1, t2], "gzip")
    return base / "layout", tree, man


def boot_id(repo: Repository, tag: str) -> bytes:
    img = open_image(repo, *resolve_ref(repo, tag))
    return bootable_image_id(repo, img.config_desc.digest, img.config_verity)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = need_tool("docker-registry")
    base = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = base / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {base}/data\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("docker-registry did not start")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_registry_pull(registry: str, image: tuple[Path, Path, str], tmp_path: Path) -> None:
    layout, tree, man = image
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{registry}/test/img:1"], check=True, capture_output=True)
    repo = new_repo(tmp_path / "repo")
    ref = f"docker://{registry}/test/img:1"
    res = pull(repo, ref, None, tls_verify=False)
    assert res.manifest_digest == man  # an OCI manifest travels unchanged
    res = pull(repo, ref, "r", tls_verify=False)
    assert res.stats.objects_new == 0
    assert boot_id(repo, "r") == compute_composefs_digest(str(tree), DigestOptions()).digest
    with pytest.raises(CfsError, match=r"manifest unknown|not found|MANIFEST_UNKNOWN"):
        pull(repo, f"docker://{registry}/test/missing:1", "x", tls_verify=False)


def test_oci_archive(image: tuple[Path, Path, str], tmp_path: Path) -> None:
    layout, tree, man = image
    archive = tmp_path / "a.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"oci-archive:{archive}:latest"],
                   check=True, capture_output=True)
    repo = new_repo(tmp_path / "repo")
    res = pull(repo, f"oci-archive:{archive}", "a")
    assert res.manifest_digest == man
    assert boot_id(repo, "a") == compute_composefs_digest(str(tree), DigestOptions()).digest


def test_docker_archive(image: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Docker format: skopeo converts the manifest (stored under the original
    digest, as upstream) and the archive holds uncompressed layers labelled gzip."""
    layout, tree, _ = image
    archive = tmp_path / "d.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"docker-archive:{archive}:x/y:1"],
                   check=True, capture_output=True)
    repo = new_repo(tmp_path / "repo")
    pull(repo, f"docker-archive:{archive}", "d")
    assert boot_id(repo, "d") == compute_composefs_digest(str(tree), DigestOptions()).digest


def test_missing_archive_is_one_line_error(tmp_path: Path) -> None:
    need_tool("skopeo")
    repo = new_repo(tmp_path / "repo")
    with pytest.raises(CfsError) as e:
        pull(repo, f"oci-archive:{tmp_path}/nope.tar", "x")
    assert "\n" not in str(e.value)
