"""``cfsboot seal oci --external-signing`` and ``seal inject --output``: sealing a
stored OCI image with an external signer.

The signed ESP files are checked by sbverify, the UKI's composefs= against what
``seal oci --unsigned`` gives for the same image, and the unsigned files and
manifest against what directory external signing writes for the same tree."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import need_tool
from test_seal import KVER, keydir, signer_of, snapshot  # noqa: F401 (fixture)
from test_seal_oci import ESP_FILES, one_line_error, pull_tree, stored, uki_karg  # noqa: F401

from cfsboot.boot import authenticode, seal
from cfsboot.boot.manifest import ManifestError, ManifestSource, SealManifest
from cfsboot.cli.main import main
from cfsboot.oci.image import resolve_ref
from cfsboot.repository import SHA256, Repository

Stored = tuple[Repository, Path]
UNSIGNED = (f"{KVER}.efi", "systemd-bootx64.efi")
OLD_FIELDS = {"format", "version", "kver", "efi_arch", "cmdline", "digest", "insecure",
              "vmlinuz_sha256", "initramfs_sha256", "files"}


def external(repo: Repository, out: Path, *extra: str) -> None:
    assert main(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                 "--external-signing", str(out), *extra]) == 0


def sbsign_all(out: Path, keydir: Path, dest: Path) -> list[str]:  # noqa: F811
    sbsign = need_tool("sbsign")
    dest.mkdir()
    for name in UNSIGNED:
        subprocess.run([sbsign, "--key", str(keydir / "db.key"), "--cert",
                        str(keydir / "db.crt"), "--output", str(dest / name), str(out / name)],
                       check=True, capture_output=True)
    return [str(dest / n) for n in UNSIGNED]


def sign_natively(out: Path, keydir: Path, dest: Path) -> list[str]:  # noqa: F811
    """Each unsigned file signed with our own Authenticode code, into ``dest``."""
    signer = signer_of(keydir)
    for name in UNSIGNED:
        (dest / name).write_bytes(authenticode.sign((out / name).read_bytes(), signer))
    return [str(dest / n) for n in UNSIGNED]


def inject(signed: list[str], out: Path, esp: Path, *extra: str) -> int:
    return main(["seal", "inject", *signed, "--manifest", str(out / "manifest.json"),
                 "--output", str(esp), *extra])


def sbverify_all(esp: Path, keydir: Path) -> None:  # noqa: F811
    need_tool("sbverify")
    for rel in ESP_FILES:
        done = subprocess.run(["sbverify", "--cert", str(keydir / "db.crt"), str(esp / rel)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (rel, done.stdout, done.stderr)


def no_leftovers(parent: Path, name: str) -> bool:
    return not any(n.startswith(f".{name}.") for n in os.listdir(parent))


def test_round_trip_with_sbsign(stored: Stored, keydir: Path, tmp_path: Path,  # noqa: F811
                                capsys: pytest.CaptureFixture[str]) -> None:
    repo, root = stored
    out, esp = tmp_path / "out", tmp_path / "esp"
    capsys.readouterr()
    external(repo, out, "--karg", "quiet")
    text = capsys.readouterr().out
    assert f"cfsboot seal inject SIGNED... --manifest {out}/manifest.json --output DIR" in text
    assert sorted(os.listdir(out)) == sorted([*UNSIGNED, "manifest.json"])
    manifest = SealManifest.from_json((out / "manifest.json").read_text())
    assert manifest.source == ManifestSource("img", resolve_ref(repo, "img")[0])

    # Independent: the directory external seal of the same tree writes the same
    # manifest (bar the source) and byte-identical unsigned files.
    dir_out = tmp_path / "dir-out"
    dir_manifest = seal.seal_external(str(root), str(dir_out), seal.SealOptions(kargs=["quiet"]))
    assert replace(manifest, source=None) == dir_manifest
    for name in UNSIGNED:
        assert (out / name).read_bytes() == (dir_out / name).read_bytes()

    signed = sbsign_all(out, keydir, tmp_path / "signed")
    assert inject(signed, out, esp, "--cert", str(keydir / "db.crt")) == 0
    assert f"wrote {esp}/EFI/Linux/{KVER}.efi" in capsys.readouterr().out
    assert sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file()) == \
        sorted(ESP_FILES)
    assert (esp / ESP_FILES[0]).read_bytes() == Path(signed[0]).read_bytes()
    assert (esp / ESP_FILES[1]).read_bytes() == (esp / ESP_FILES[2]).read_bytes() == \
        Path(signed[1]).read_bytes()
    assert no_leftovers(tmp_path, "esp")
    sbverify_all(esp, keydir)

    # The digest is the one 'seal oci --unsigned' seals for the same image.
    plain = tmp_path / "plain"
    assert main(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                 "--output", str(plain), "--unsigned", "--karg", "quiet"]) == 0
    assert uki_karg(esp) == uki_karg(plain)
    assert uki_karg(esp).digest == manifest.digest


def test_round_trip_with_uki_sign_repo_check_and_store(
        stored: Stored, keydir: Path, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = stored
    out, esp = tmp_path / "out", tmp_path / "esp"
    external(repo, out, "--store-image", "sealed/img")
    digest = SealManifest.from_json((out / "manifest.json").read_text()).digest
    assert os.readlink(Path(repo.path) / "images/refs/sealed/img").endswith(digest)
    signed = []
    for name in UNSIGNED:
        dst = tmp_path / f"{name}.signed"
        assert main(["uki", "sign", str(out / name), "--key", str(keydir / "db.key"),
                     "--cert", str(keydir / "db.crt"), "-o", str(dst)]) == 0
        signed.append(str(dst))
    capsys.readouterr()
    # No --cert: integrity only, and said so; --repo re-derives the digest.
    assert inject(signed, out, esp, "--repo", repo.path, "--insecure", "--json") == 0
    captured = capsys.readouterr()
    assert "warning: no --cert given" in captured.err
    doc = json.loads(captured.out)
    assert doc["digest"] == digest and doc["signed"] and doc["image"] == "img"
    sbverify_all(esp, keydir)
    assert uki_karg(esp).digest == digest


def test_repo_check_refuses_another_image(stored: Stored, keydir: Path,  # noqa: F811
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    repo, root = stored
    out, esp = tmp_path / "out", tmp_path / "esp"
    external(repo, out)
    (root / "usr/bin/extra").write_bytes(b"extra\n")
    pull_tree(root, tmp_path / "layout-other", repo, "other")
    doc = json.loads((out / "manifest.json").read_text())
    doc["source"]["manifest_digest"] = resolve_ref(repo, "other")[0]
    (out / "manifest.json").write_text(json.dumps(doc))
    paths = sign_natively(out, keydir, tmp_path)
    err = one_line_error(["seal", "inject", *paths, "--manifest", str(out / "manifest.json"),
                          "--output", str(esp), "--repo", repo.path, "--insecure"], capsys)
    assert "seals" in err and f"not the manifest's {doc['digest']}" in err
    assert not esp.exists() and no_leftovers(tmp_path, "esp")
    # Without --repo the same files inject (the manifest's digest is in the UKI).
    assert inject(paths, out, esp) == 0


def test_file_changed_beyond_its_signature_is_refused(
        stored: Stored, keydir: Path, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = stored
    out, esp = tmp_path / "out", tmp_path / "esp"
    external(repo, out)
    signed = sbsign_all(out, keydir, tmp_path / "signed")
    image = bytearray(Path(signed[0]).read_bytes())
    at = image.find(b"composefs=") + len("composefs=")
    image[at] = ord("0") if image[at] != ord("0") else ord("1")
    Path(signed[0]).write_bytes(bytes(image))
    err = one_line_error(["seal", "inject", *signed, "--manifest", str(out / "manifest.json"),
                          "--output", str(esp)], capsys)
    assert "matches no file of the manifest" in err
    assert not esp.exists() and no_leftovers(tmp_path, "esp")


def test_errors_are_one_line_and_write_nothing(stored: Stored, keydir: Path,  # noqa: F811
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    repo, root = stored
    out, esp = tmp_path / "out", tmp_path / "esp"
    external(repo, out)
    paths = sign_natively(out, keydir, tmp_path)
    manifest = str(out / "manifest.json")
    base = ["seal", "inject", "--manifest", manifest]

    assert "no signed file given for systemd-bootx64.efi" in one_line_error(
        [*base, paths[0], "--output", str(esp)], capsys)
    assert "no such file" in one_line_error(
        [*base, paths[0], str(tmp_path / "missing.efi"), "--output", str(esp)], capsys).lower()
    # A manifest whose digest was edited: the signed UKI does not carry it.
    doc = json.loads((out / "manifest.json").read_text())
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(dict(doc, digest="0" * 128)))
    assert "does not carry the manifest's composefs digest" in one_line_error(
        ["seal", "inject", "--manifest", str(edited), *paths, "--output", str(esp)], capsys)
    # An OCI manifest given a ROOTFS: nothing in ROOTFS changes.
    before = snapshot(root)
    assert "from 'seal oci' (image img): give --output DIR, not ROOTFS" in one_line_error(
        [*base, *paths, str(root)], capsys)
    assert snapshot(root) == before
    assert "is a directory: with --output give only the signed files" in one_line_error(
        [*base, *paths, str(root), "--output", str(esp)], capsys)
    # A directory manifest given --output.
    dir_out = tmp_path / "dir-out"
    seal.seal_external(str(root), str(dir_out))
    assert "from a directory seal" in one_line_error(
        ["seal", "inject", "--manifest", str(dir_out / "manifest.json"), *paths,
         "--output", str(esp)], capsys)
    assert "--repo is for a manifest from 'seal oci'" in one_line_error(
        ["seal", "inject", "--manifest", str(dir_out / "manifest.json"), *paths, str(root),
         "--repo", repo.path], capsys)
    assert snapshot(root) == before
    assert not esp.exists() and no_leftovers(tmp_path, "esp")
    # An existing non-empty output directory is left as it is.
    esp.mkdir()
    (esp / "keep").write_text("keep")
    assert "not empty" in one_line_error([*base, *paths, "--output", str(esp)], capsys)
    assert os.listdir(esp) == ["keep"] and no_leftovers(tmp_path, "esp")
    # seal oci: --external-signing conflicts with signing and --output.
    seal_base = ["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                 "--external-signing", str(tmp_path / "x")]
    for extra in (["--unsigned"], ["--output", str(tmp_path / "y")],
                  ["--key", str(keydir / "db.key"), "--cert", str(keydir / "db.crt")]):
        assert "drop --key/--unsigned/--output" in one_line_error([*seal_base, *extra], capsys)
    assert "needs --output DIR (or --external-signing OUTDIR)" in one_line_error(
        ["seal", "oci", "--repo", repo.path, "--oci-image", "img", "--unsigned"], capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_old_manifest_without_source_injects_into_rootfs(
        stored: Stored, keydir: Path, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    _, root = stored
    out = tmp_path / "out"
    seal.seal_external(str(root), str(out))
    doc = json.loads((out / "manifest.json").read_text())
    assert set(doc) == OLD_FIELDS      # a directory manifest is written as before
    signed = sbsign_all(out, keydir, tmp_path / "signed")
    assert main(["seal", "inject", *signed, "--manifest", str(out / "manifest.json"),
                 str(root), "--cert", str(keydir / "db.crt")]) == 0
    assert main(["seal", "verify", str(root), "--cert", str(keydir / "db.crt")]) == 0


def test_manifest_source_round_trip_and_malformed() -> None:
    m = SealManifest("k", "x64", "composefs=ab", "ab", False, "1", "2",
                     source=ManifestSource("img", "sha256:" + "0" * 64))
    assert SealManifest.from_json(m.to_json()) == m
    doc = json.loads(m.to_json())
    for bad in ("img", {"oci_image": "img"}, {"oci_image": 1, "manifest_digest": "x"}):
        with pytest.raises(ManifestError, match="malformed seal manifest"):
            SealManifest.from_json(json.dumps(dict(doc, source=bad)))
    doc["source"] = None          # null reads as absent: a directory seal
    assert SealManifest.from_json(json.dumps(doc)).source is None


def test_sha256_repository_cannot_store_and_writes_nothing(
        stored: Stored, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """--store-image needs a SHA-512 repository: refused before OUTDIR is written."""
    _, root = stored
    repo, _ = Repository.init(tmp_path / "repo256", SHA256, insecure=True)
    pull_tree(root, tmp_path / "layout256", repo, "img")
    err = one_line_error(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image",
                          "img", "--external-signing", str(tmp_path / "o"), "--store-image",
                          "s"], capsys)
    assert "SHA-512 repository" in err and not (tmp_path / "o").exists()
