"""``cfsboot seal oci --oci-image``: sealing an OCI image stored in a repository.

The image is the public sample tree (plus systemd-boot) tarred by GNU tar into an
OCI layout and pulled; its sealed digest must equal what directory sealing
computes for the same tree, and the bootable image ID of the same image with the
kernel files removed.  Signatures are checked by sbverify."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool
from test_oci_support import gnu_tar, make_layout, new_repo
from test_seal import KVER, keydir, make_sample, signer_of  # noqa: F401 (fixture)

from cfsboot.boot import seal, seal_oci, uki
from cfsboot.boot.oci_bootable import bootable_image_id
from cfsboot.cli.main import main
from cfsboot.oci.image import open_image, resolve_ref
from cfsboot.oci.pull import pull
from cfsboot.repository import Repository

ESP_FILES = (f"EFI/Linux/{KVER}.efi", "EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi")


def pull_tree(root: Path, work: Path, repo: Repository, tag: str) -> None:
    make_layout(work, [gnu_tar(root)])
    pull(repo, f"oci:{work}", tag)


def drop_kernel(root: Path) -> None:
    kdir = root / f"usr/lib/modules/{KVER}"
    st = os.lstat(kdir)
    for name in ("vmlinuz", "initramfs.img"):
        (kdir / name).unlink()
    os.utime(kdir, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Repository, Path]:
    """A repository holding the sample image as ``img``, and the sample directory."""
    root = make_sample(tmp_path / "root")
    repo = new_repo(tmp_path / "repo")
    pull_tree(root, tmp_path / "layout", repo, "img")
    return repo, root


def uki_karg(out: Path) -> uki.ComposefsKarg:
    report = uki.inspect_uki((out / ESP_FILES[0]).read_bytes())
    assert report.uname == KVER
    assert report.composefs is not None
    return report.composefs


def test_digest_matches_directory_seal_and_bootable_id(
        stored: tuple[Repository, Path], keydir: Path, tmp_path: Path) -> None:  # noqa: F811
    repo, _ = stored
    out = tmp_path / "esp"
    result = seal_oci.seal_oci_image(repo, "img", str(out),
                                     seal.SealOptions(signer=signer_of(keydir)))
    assert sorted(result.written) == sorted(ESP_FILES)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        sorted(ESP_FILES)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".esp")] == []
    karg = uki_karg(out)
    assert karg.digest == result.digest and not karg.insecure

    # Independent 1: sealing a copy of the directory puts the same digest in its UKI.
    copy = make_sample(tmp_path / "copy")
    dir_result = seal.seal(str(copy), seal.SealOptions())
    dir_report = uki.inspect_uki((copy / f"boot/EFI/Linux/{KVER}.efi").read_bytes())
    assert dir_report.composefs is not None
    assert dir_report.composefs.digest == dir_result.digest == karg.digest

    # Independent 2: the bootable image ID (sha512, EROFS v1) of the same image
    # without its kernel files, pulled through the OCI path.
    bare = make_sample(tmp_path / "bare")
    drop_kernel(bare)
    pull_tree(bare, tmp_path / "layout-bare", repo, "bare")
    img = open_image(repo, *resolve_ref(repo, "bare"))
    assert bootable_image_id(repo, img.config_desc.digest, img.config_verity,
                             version=1).hex() == karg.digest

    # The two systemd-boot copies are the image's systemd-boot, re-signed.
    sd = (out / ESP_FILES[1]).read_bytes()
    assert sd == (out / ESP_FILES[2]).read_bytes()
    need_tool("sbverify")
    for rel in ESP_FILES:
        done = subprocess.run(["sbverify", "--cert", str(keydir / "db.crt"), str(out / rel)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (rel, done.stdout, done.stderr)


def test_cli_signed_with_kargs(stored: tuple[Repository, Path], keydir: Path,  # noqa: F811
                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = stored
    out = tmp_path / "esp"
    assert main(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                 "--output", str(out), "--key", str(keydir / "db.key"),
                 "--cert", str(keydir / "db.crt"), "--karg", "quiet"]) == 0
    text = capsys.readouterr().out
    karg = uki_karg(out)
    assert f"composefs digest: {karg.digest}" in text
    report = uki.inspect_uki((out / ESP_FILES[0]).read_bytes())
    assert report.cmdline == f"composefs={karg.digest} quiet"
    need_tool("sbverify")
    done = subprocess.run(["sbverify", "--cert", str(keydir / "db.crt"),
                           str(out / ESP_FILES[0])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Unsigned files carry no signature for sbverify to accept.
    out2 = tmp_path / "unsigned"
    assert main(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                 "--output", str(out2), "--unsigned", "--allow-missing-verity"]) == 0
    assert uki_karg(out2).insecure
    done = subprocess.run(["sbverify", "--cert", str(keydir / "db.crt"),
                           str(out2 / ESP_FILES[0])], capture_output=True, text=True)
    assert done.returncode != 0


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cfsboot: "), err
    return err


def test_errors_are_one_line_and_write_nothing(stored: tuple[Repository, Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    repo, root = stored
    base = ["seal", "oci", "--repo", repo.path, "--insecure", "--unsigned"]
    out = tmp_path / "esp"
    assert "not found" in one_line_error(
        [*base, "--oci-image", "nosuch", "--output", str(out)], capsys)
    out.mkdir()
    (out / "x").write_text("x")
    assert "not empty" in one_line_error([*base, "--oci-image", "img", "--output", str(out)],
                                         capsys)
    assert "needs --cert" in one_line_error(
        ["seal", "oci", "--repo", repo.path, "--oci-image", "img", "--output",
         str(tmp_path / "o")],
        capsys)
    # An image without systemd-boot: the directory check's message.
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").unlink()
    pull_tree(root, tmp_path / "layout-nosd", repo, "nosd")
    err = one_line_error([*base, "--oci-image", "nosd", "--output", str(tmp_path / "o")],
                         capsys)
    assert "systemd-boot is missing" in err
    # An image with two kernels.
    (root / "usr/lib/modules/6.2.0-other").mkdir()
    (root / "usr/lib/modules/6.2.0-other/vmlinuz").write_bytes(b"k")
    pull_tree(root, tmp_path / "layout-two", repo, "two")
    assert "more than one kernel" in one_line_error(
        [*base, "--oci-image", "two", "--output", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".o.")] == []


def test_prerequisites_match_directory_checks(stored: tuple[Repository, Path],
                                              tmp_path: Path) -> None:
    """The tree-model checks raise the same messages as the directory checks."""
    repo, root = stored
    (root / f"usr/lib/modules/{KVER}/initramfs.img").unlink()
    with pytest.raises(seal.PrerequisiteError) as on_dir:
        seal.check_prerequisites(str(root))
    pull_tree(root, tmp_path / "layout-noinit", repo, "noinit")
    with pytest.raises(seal.PrerequisiteError) as on_image:
        seal_oci.seal_oci_image(repo, "noinit", str(tmp_path / "o"), seal.SealOptions())
    assert str(on_image.value) == str(on_dir.value)


def test_store_image_commits_what_composefs_pins(stored: tuple[Repository, Path],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--store-image commits the sealed tree's image: its ID is the UKI's digest,
    and (as root) the kernel mounts it without the kernel files."""
    repo, _ = stored
    out = tmp_path / "esp"
    assert main(["seal", "oci", "--repo", repo.path, "--insecure", "--oci-image", "img",
                 "--output", str(out), "--unsigned", "--store-image", "sealed/img"]) == 0
    assert "stored the sealed image as images/refs/sealed/img" in capsys.readouterr().out
    karg = uki_karg(out)
    refs = {e.name: e for e in repo.list_image_refs()}
    assert "sealed/img" in refs
    assert os.readlink(Path(repo.path) / "images/refs/sealed/img").endswith(karg.digest)
    assert main(["repo", "--repo", repo.path, "--insecure", "fsck"]) == 0
    if os.geteuid() != 0:
        return
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert main(["mount", "--repo", repo.path, "--insecure", "refs/sealed/img", str(mnt)]) == 0
    try:
        assert (mnt / "usr/lib/modules" / KVER).is_dir()
        assert not (mnt / "usr/lib/modules" / KVER / "vmlinuz").exists()
        assert (mnt / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n" * 10
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
