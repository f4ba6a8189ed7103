"""Secure Boot key material, byte-compared with efitools (cert-to-efi-sig-list,
sign-efi-sig-list) and checked with OpenSSL."""

from __future__ import annotations

import datetime as dt
import os
import stat
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import need_tool
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_uki_support import cli

from cfsboot.boot import keys
from cfsboot.errors import CfsError

OWNER = uuid.UUID("3c8a1e8f-8d0a-4a1b-9c64-0123456789ab")
WHEN = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keyset() -> dict[str, bytes]:
    owner, files = keys.generate_key_set("unit", owner=OWNER, now=WHEN)
    assert owner == OWNER
    return files


def _write(tmp_path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_files_and_certificates(keyset: dict[str, bytes]) -> None:
    assert sorted(keyset) == sorted(
        ["GUID.txt"] + [f"{r}.{e}" for r in ("PK", "KEK", "db")
                        for e in ("key", "crt", "cer", "esl", "auth")])
    assert keyset["GUID.txt"] == f"{OWNER}\n".encode()
    for role in ("PK", "KEK", "db"):
        cert = x509.load_pem_x509_certificate(keyset[f"{role}.crt"])
        assert cert == x509.load_der_x509_certificate(keyset[f"{role}.cer"])
        assert cert.issuer == cert.subject
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert isinstance(cn, str) and cn.startswith("unit ")
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
        cert.verify_directly_issued_by(cert)  # self-signed, signature valid
        assert cert.serial_number > 0
        assert cert.not_valid_before_utc <= WHEN < cert.not_valid_after_utc
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature
        eku = [e.value for e in cert.extensions if isinstance(e.value, x509.ExtendedKeyUsage)]
        assert (role == "db") == bool(eku)
        if eku:
            assert ExtendedKeyUsageOID.CODE_SIGNING in eku[0]


def test_key_sizes() -> None:
    key = keys.generate_key(3072)
    cert = keys.self_signed_certificate(key, "big", 10)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert cert.public_key().key_size == 3072  # type: ignore[union-attr]
    with pytest.raises(keys.KeyMaterialError, match="RSA key size"):
        keys.generate_key(1024)
    with pytest.raises(keys.KeyMaterialError, match="at least one day"):
        keys.self_signed_certificate(key, "x", 0)


def test_signature_list_layout(keyset: dict[str, bytes]) -> None:
    esl = keyset["db.esl"]
    der = keyset["db.cer"]
    assert esl[:16] == keys.EFI_CERT_X509_GUID.bytes_le
    assert struct.unpack_from("<III", esl, 16) == (28 + 16 + len(der), 0, 16 + len(der))
    [entry] = keys.parse_signature_lists(esl)
    assert entry == keys.SignatureEntry(keys.EFI_CERT_X509_GUID, OWNER, der)
    two = keys.signature_list([x509.load_der_x509_certificate(keyset[f"{r}.cer"])
                               for r in ("PK", "db")], OWNER)
    assert [e.data for e in keys.parse_signature_lists(two)] == [keyset["PK.cer"], der]
    with pytest.raises(keys.KeyMaterialError, match="malformed"):
        keys.parse_signature_lists(esl[:-1])
    with pytest.raises(keys.KeyMaterialError, match="truncated"):
        keys.parse_signature_lists(esl[:20])


def test_esl_matches_efitools(tmp_path: Path, keyset: dict[str, bytes]) -> None:
    tool = need_tool("cert-to-efi-sig-list")
    d = _write(tmp_path, keyset)
    for role in ("PK", "KEK", "db"):
        subprocess.run([tool, "-g", str(OWNER), str(d / f"{role}.crt"), str(d / "ref.esl")],
                       check=True, capture_output=True)
        assert (d / "ref.esl").read_bytes() == keyset[f"{role}.esl"], role


def test_auth_matches_efitools(tmp_path: Path, keyset: dict[str, bytes]) -> None:
    """sign-efi-sig-list with the same key, time and data yields identical bytes
    (RSA PKCS#1 v1.5 signatures are deterministic)."""
    tool = need_tool("sign-efi-sig-list")
    d = _write(tmp_path, keyset)
    for role, signer in (("PK", "PK"), ("KEK", "PK"), ("db", "KEK")):
        subprocess.run([tool, "-t", WHEN.strftime("%Y-%m-%d %H:%M:%S"),
                        "-k", str(d / f"{signer}.key"), "-c", str(d / f"{signer}.crt"),
                        role, str(d / f"{role}.esl"), str(d / "ref.auth")],
                       check=True, capture_output=True)
        assert (d / "ref.auth").read_bytes() == keyset[f"{role}.auth"], role


def test_auth_structure_and_signature(tmp_path: Path, keyset: dict[str, bytes]) -> None:
    """Parse db.auth by hand and check its PKCS#7 with OpenSSL against KEK.crt."""
    auth = keyset["db.auth"]
    timestamp = auth[:16]
    assert timestamp == keys.efi_time(WHEN)
    assert struct.unpack_from("<H", timestamp)[0] == 2026
    length, revision, ctype = struct.unpack_from("<IHH", auth, 16)
    assert (revision, ctype) == (0x0200, keys.WIN_CERT_TYPE_EFI_GUID)
    assert auth[24:40] == keys.EFI_CERT_TYPE_PKCS7_GUID.bytes_le
    p7 = auth[40:16 + length]
    assert auth[16 + length:] == keyset["db.esl"]
    payload = keys.auth_payload("db", keys.EFI_IMAGE_SECURITY_DATABASE,
                                keys.AUTH_VARIABLE_ATTRIBUTES, timestamp, keyset["db.esl"])
    assert payload.startswith("db".encode("utf-16-le"))
    openssl = need_tool("openssl")
    d = _write(tmp_path, keyset)
    # OpenSSL wants a ContentInfo around the bare SignedData UEFI uses.
    sd_oid = bytes.fromhex("06092a864886f70d010702")
    inner = bytes([0xA0, 0x82]) + len(p7).to_bytes(2, "big") + p7
    body = sd_oid + inner
    (d / "p7.der").write_bytes(bytes([0x30, 0x82]) + len(body).to_bytes(2, "big") + body)
    (d / "payload").write_bytes(payload)
    done = subprocess.run([openssl, "smime", "-verify", "-binary", "-inform", "DER",
                           "-in", str(d / "p7.der"), "-content", str(d / "payload"),
                           "-CAfile", str(d / "KEK.crt"), "-purpose", "any",
                           "-out", os.devnull], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    (d / "payload").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    done = subprocess.run([openssl, "smime", "-verify", "-binary", "-inform", "DER",
                           "-in", str(d / "p7.der"), "-content", str(d / "payload"),
                           "-CAfile", str(d / "KEK.crt"), "-purpose", "any",
                           "-out", os.devnull], capture_output=True, text=True, check=False)
    assert done.returncode != 0


def test_unknown_variable_needs_vendor(keyset: dict[str, bytes]) -> None:
    key = keys.generate_key()
    cert = keys.self_signed_certificate(key, "x")
    with pytest.raises(keys.KeyMaterialError, match="unknown Secure Boot variable"):
        keys.signed_variable("MokList", b"", key, cert, WHEN)
    auth = keys.signed_variable("MokList", b"", key, cert, WHEN, vendor=OWNER,
                                attributes=keys.AUTH_VARIABLE_ATTRIBUTES
                                | keys.VARIABLE_APPEND_WRITE)
    assert auth[:16] == keys.efi_time(WHEN)


def test_cli_generate(tmp_path: Path) -> None:
    out = tmp_path / "sb"
    assert cli("keys", "generate", str(out), "--owner-guid", str(OWNER), "--key-size", "3072",
               "--timestamp", "2026-03-04T05:06:07", "--common-name", "Example") == 0
    assert (out / "GUID.txt").read_text() == f"{OWNER}\n"
    for role in ("PK", "KEK", "db"):
        assert stat.S_IMODE((out / f"{role}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((out / f"{role}.crt").stat().st_mode) == 0o644
        cert = x509.load_pem_x509_certificate((out / f"{role}.crt").read_bytes())
        assert cert.public_key().key_size == 3072  # type: ignore[union-attr]
        assert (out / f"{role}.auth").read_bytes()[:16] == keys.efi_time(WHEN)
    with pytest.raises(CfsError, match="exists"):
        cli("keys", "generate", str(out))
    before = (out / "db.crt").read_bytes()
    assert cli("keys", "generate", str(out), "--force") == 0
    assert (out / "db.crt").read_bytes() != before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(CfsError, match="bad --owner-guid"):
        cli("keys", "generate", str(tmp_path / "x"), "--owner-guid", "nope")
    with pytest.raises(CfsError, match="bad --timestamp"):
        cli("keys", "generate", str(tmp_path / "x"), "--timestamp", "yesterday")


def test_ovmf_enrollment_matches_esl(tmp_path: Path, keyset: dict[str, bytes]) -> None:
    """virt-fw-vars enrolls our PEM certificates into an OVMF varstore; the PK/KEK/db
    variables it writes are byte-identical to our .esl files, with our attributes."""
    import json
    import shutil
    import sys

    tool = shutil.which("virt-fw-vars") or str(Path(sys.executable).parent / "virt-fw-vars")
    if not os.path.exists(tool):
        pytest.skip("virt-fw-vars missing (pip install virt-firmware)")
    template = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    if not template.exists():
        pytest.skip(f"{template} missing (apt-get install ovmf)")
    d = _write(tmp_path, keyset)
    subprocess.run([tool, "-i", str(template), "-o", str(d / "vars.fd"), "--secure-boot",
                    "--set-pk", str(OWNER), str(d / "PK.crt"),
                    "--add-kek", str(OWNER), str(d / "KEK.crt"),
                    "--add-db", str(OWNER), str(d / "db.crt"),
                    "--output-json", str(d / "vars.json")], check=True, capture_output=True)
    variables = {v["name"]: v for v in json.loads((d / "vars.json").read_text())["variables"]}
    for role in ("PK", "KEK", "db"):
        var = variables[role]
        assert bytes.fromhex(var["data"]) == keyset[f"{role}.esl"], role
        assert uuid.UUID(var["guid"]) == keys.VARIABLE_GUIDS[role]
        assert var["attr"] == keys.AUTH_VARIABLE_ATTRIBUTES
