"""``container inspect``: kernel (find_kernel as bootc), boot type, kargs.d and UKI kargs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cfsboot.boot import uki
from cfsboot.boot.seal import PrerequisiteError, find_kernel
from cfsboot.cli.main import main

D = "cd" * 64


def _inspect(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    capsys.readouterr()
    assert main(["container", "inspect", "--rootfs", str(root), *extra]) == 0
    return capsys.readouterr().out


def _kargsd(root: Path) -> None:
    d = root / "usr/lib/bootc/kargs.d"
    d.mkdir(parents=True)
    (d / "10-a.toml").write_text('kargs = ["rw", "console=ttyS0"]\n')
    (d / "20-arm.toml").write_text('kargs = ["arm"]\nmatch-architectures = ["aarch64"]\n')


def test_bls_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "usr/lib/modules/6.1.0").mkdir(parents=True)
    (tmp_path / "usr/lib/modules/6.1.0/vmlinuz").write_bytes(b"K")
    (tmp_path / "usr/lib/modules/6.2.0-nokernel").mkdir()
    _kargsd(tmp_path)
    doc = json.loads(_inspect(tmp_path, capsys, "--json", "--arch", "x86_64"))
    assert doc == {"kargs": ["rw", "console=ttyS0"],
                   "kernel": {"version": "6.1.0", "unified": False}, "boot-type": "bls"}
    doc = json.loads(_inspect(tmp_path, capsys, "--json", "--arch", "aarch64"))
    assert doc["kargs"] == ["rw", "console=ttyS0", "arm"]
    assert _inspect(tmp_path, capsys, "--arch", "x86_64").splitlines() == [
        "Kernel: 6.1.0", "  Type: vmlinuz", " Kargs: rw console=ttyS0"]


def test_uki_wins_and_shows_its_kargs(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    stub = Path(uki.default_stub_path())
    if not stub.exists():
        pytest.skip("systemd-boot-efi stub not installed")
    (tmp_path / "usr/lib/modules/6.1.0").mkdir(parents=True)
    (tmp_path / "usr/lib/modules/6.1.0/vmlinuz").write_bytes(b"K")
    (tmp_path / "boot/EFI/Linux").mkdir(parents=True)
    image = uki.build_uki(stub.read_bytes(), uki.UkiInputs(
        linux=b"K" * 100, initrds=[b"I" * 10], cmdline=f"rw composefs={D}".encode(),
        os_release=b"ID=x\n", uname=b"6.1.0"))
    (tmp_path / "boot/EFI/Linux/b.efi").write_bytes(image)
    (tmp_path / "boot/EFI/Linux/a.efi").write_bytes(image)     # sorted: a wins
    (tmp_path / "boot/EFI/Linux/z.conf").write_bytes(b"")
    doc = json.loads(_inspect(tmp_path, capsys, "--format", "json"))
    assert doc["kernel"] == {"version": "a", "unified": True}
    assert doc["boot-type"] == "uki" and doc["kargs"] == []
    assert doc["uki"]["kargs"] == ["rw", f"composefs={D}"]
    assert doc["uki"]["composefs"] == {"digest": D, "insecure": False}
    assert doc["uki"]["path"] == "/boot/EFI/Linux/a.efi"
    text = _inspect(tmp_path, capsys)
    assert "     Type: UKI" in text and f"UKI kargs: rw composefs={D}" in text
    yaml = _inspect(tmp_path, capsys, "--format", "yaml")
    assert "boot-type: \"uki\"" in yaml and "  unified: true" in yaml


def test_no_kernel_and_two_kernels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(_inspect(tmp_path, capsys, "--json"))
    assert doc == {"kargs": [], "kernel": None, "boot-type": None}
    assert "Kernel: <none>" in _inspect(tmp_path, capsys)
    for k in ("1", "2"):
        (tmp_path / f"usr/lib/modules/{k}").mkdir(parents=True)
        (tmp_path / f"usr/lib/modules/{k}/vmlinuz").write_bytes(b"K")
    with pytest.raises(PrerequisiteError, match="more than one kernel"):
        find_kernel(str(tmp_path))
    assert main(["container", "inspect", "--rootfs", str(tmp_path)]) == 1
    # A name that is not UTF-8 is shown with its byte escaped, as lint shows it.
    modules = tmp_path / "usr/lib/modules"
    (modules / "2").rename(os.fsdecode(bytes(modules) + b"/k\xff"))
    capsys.readouterr()
    assert main(["container", "inspect", "--rootfs", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "cfsboot: more than one kernel in /usr/lib/modules: 1, k\\xff\n")


def test_rootfs_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["container", "inspect", "--rootfs", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err == f"cfsboot: --rootfs {tmp_path / 'nope'} is not a directory (it does not exist)\n"
