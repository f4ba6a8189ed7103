"""Bad input to ``uki build|sign|verify`` and ``keys generate``: one-line CfsErrors,
no half-written or wrongly placed outputs, symlinks and file modes respected."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest
from test_uki_support import cli, make_pe, need_systemd_boot, sbverify_ok

from cfsboot.boot import authenticode as ac
from cfsboot.boot import pe, uki
from cfsboot.errors import CfsError

DIGEST = "cd" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert cli("keys", "generate", str(out)) == 0
    return out


def _sign_args(keys: Path) -> list[str]:
    return ["--cert", str(keys / "db.crt"), "--key", str(keys / "db.key")]


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def _with_rva_count(image: bytes, count: int) -> bytes:
    h = pe.parse_pe(image)
    out = bytearray(image)
    struct.pack_into("<I", out, h.opt_offset + 108, count)  # PE32+ NumberOfRvaAndSizes
    return bytes(out)


def test_sign_refuses_image_without_certificate_directory(tmp_path: Path, keys: Path) -> None:
    image = _with_rva_count(make_pe(), 4)
    assert not pe.parse_pe(image).has_cert_directory
    assert pe.parse_pe(_with_rva_count(make_pe(), 5)).has_cert_directory
    path = tmp_path / "few-dirs.efi"
    path.write_bytes(image)
    for command in ("sign", "resign"):
        with pytest.raises(CfsError, match=r"NumberOfRvaAndSizes < 5"):
            cli("uki", command, str(path), *_sign_args(keys))
    assert path.read_bytes() == image and not _leftovers(tmp_path)


@pytest.mark.parametrize("option, value", [
    ("--uname", "6.1\udcff"),                      # what argv makes of b"6.1\xff"
    ("--cmdline", "composefs=\udcff"),
    ("--os-release", "ID=\udcff"),
    ("--section", ".extra:\udcff"),
])
def test_build_rejects_non_utf8_arguments(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "uki.efi"
    stub = tmp_path / "stub.efi"
    stub.write_bytes(make_pe())
    with pytest.raises(CfsError, match=r"is not valid UTF-8") as e:
        cli("uki", "build", "--stub", str(stub), "--linux", str(stub),
            "--os-release", "ID=x", option, value, "-o", str(out))
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_encode_text() -> None:
    assert uki.encode_text("a=ä", "--karg") == "a=ä".encode()
    with pytest.raises(uki.UkiError, match="--karg is not valid UTF-8"):
        uki.encode_text(os.fsdecode(b"x=\xff"), "--karg")


def test_sign_output_errors_name_the_output(tmp_path: Path, keys: Path) -> None:
    image = tmp_path / "in.efi"
    image.write_bytes(make_pe())
    with pytest.raises(CfsError) as e:
        cli("uki", "sign", str(image), "--output", str(tmp_path), *_sign_args(keys))
    assert str(tmp_path) in str(e.value) and ".tmp" not in str(e.value)
    missing = tmp_path / "missing" / "x.efi"
    with pytest.raises(CfsError, match="does not exist") as e:
        cli("uki", "sign", str(image), "--output", str(missing), *_sign_args(keys))
    assert str(missing) in str(e.value) and ".tmp" not in str(e.value)
    with pytest.raises(CfsError, match="does not exist"):
        cli("uki", "build", "--stub", str(image), "--os-release", "ID=x", "-o", str(missing))
    assert not _leftovers(tmp_path)


def test_sign_in_place_follows_symlink_and_keeps_mode(tmp_path: Path, keys: Path) -> None:
    real = tmp_path / "real.efi"
    real.write_bytes(make_pe())
    real.chmod(0o600)
    link = tmp_path / "link.efi"
    link.symlink_to("real.efi")
    assert cli("uki", "sign", str(link), *_sign_args(keys)) == 0
    assert link.is_symlink() and os.readlink(link) == "real.efi"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert len(ac.list_signatures(real.read_bytes())) == 1
    assert sbverify_ok(keys / "db.crt", real)
    assert cli("uki", "resign", str(link), *_sign_args(keys)) == 0
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.efi"
    assert cli("uki", "sign", str(tmp_path / "real.efi"), "--append", "-o", str(fresh),
               *_sign_args(keys)) == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o755  # a new output: like sbsign's
    assert not _leftovers(tmp_path)


def test_verify_non_uki_suggests_pe_only(tmp_path: Path, keys: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    try:
        plain = need_systemd_boot()
    except pytest.skip.Exception:
        plain = make_pe()
    path = tmp_path / "plain.efi"
    path.write_bytes(plain)
    assert cli("uki", "sign", str(path), *_sign_args(keys)) == 0
    capsys.readouterr()
    assert cli("uki", "verify", str(path), "--cert", str(keys / "db.crt")) == 1
    err = capsys.readouterr().err
    assert "not a UKI (no .linux section)" in err and "--pe-only" in err
    assert "addon" not in err
    assert cli("uki", "verify", "--pe-only", str(path), "--cert", str(keys / "db.crt")) == 0


def test_build_refuses_a_uki_as_stub(tmp_path: Path) -> None:
    built = uki.build_uki(make_pe(), uki.UkiInputs(
        linux=b"kernel", initrds=[b"old initrd"], cmdline=f"composefs={DIGEST}".encode(),
        uname=b"6.1.0"))
    with pytest.raises(uki.UkiError, match=r"already has a \.cmdline section"):
        uki.build_uki(built, uki.UkiInputs(linux=b"new kernel"))
    stub = tmp_path / "uki.efi"
    stub.write_bytes(built)
    out = tmp_path / "new.efi"
    with pytest.raises(CfsError, match=r"stub already has a \.\w+ section"):
        cli("uki", "build", "--stub", str(stub), "--linux", str(stub), "--os-release", "ID=x",
            "-o", str(out))
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--common-name", "x" * 42], r"at most 41 fit"),
    (["--common-name", "\udcff"], r"not valid UTF-8"),
    (["--common-name", " "], r"must not be empty"),
    (["--days", "100000000"], r"ends after the year 9999"),
    (["--days", "0"], r"at least one day"),
    (["--days", "3650", "--timestamp", "9999-06-01T00:00:00"], r"ends after the year 9999"),
])
def test_keys_generate_validates_up_front(tmp_path: Path, argv: list[str],
                                          message: str) -> None:
    out = tmp_path / "k"
    with pytest.raises(CfsError, match=message) as e:
        cli("keys", "generate", str(out), *argv)
    assert "\n" not in str(e.value)
    assert not out.exists()  # failed before creating anything


def test_keys_generate_longest_common_name(tmp_path: Path) -> None:
    out = tmp_path / "k"
    assert cli("keys", "generate", str(out), "--common-name", "n" * 41) == 0
    assert b"n" * 41 + b" Signature Database Key" in (out / "db.cer").read_bytes()
