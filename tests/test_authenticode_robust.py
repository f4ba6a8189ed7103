"""Damaged signatures: every parse or verify failure is a CfsError or a failed check,
never a traceback, and DER is read as strictly as UEFI firmware (OpenSSL) reads it --
cross-checked with sbverify and osslsigncode."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest
from cryptography import x509
from test_uki_support import (
    cli,
    make_cert,
    make_pe,
    osslsigncode_ok,
    sbverify_count,
    sbverify_ok,
    write_key_cert,
)

from cfsboot.boot import authenticode as ac
from cfsboot.boot import pe, uki
from cfsboot.errors import CfsError

SHA256_ALGORITHM = bytes.fromhex("300d06096086480165030402010500")  # AlgorithmIdentifier
DIGEST = "ab" * 64


@pytest.fixture(scope="module")
def signer() -> ac.KeySigner:
    key, cert = make_cert("cfsboot robust test")
    return ac.KeySigner(key, cert)


@pytest.fixture(scope="module")
def signed_uki(signer: ac.KeySigner) -> bytes:
    image = uki.build_uki(make_pe([(".text", b"\xc3" * 300)]), uki.UkiInputs(
        linux=bytes(range(256)) * 16, initrds=[b"initrd" * 50],
        cmdline=f"composefs={DIGEST}".encode(), os_release=b"ID=test\n", uname=b"6.1.0"))
    return ac.sign(image, signer)


def _pkcs7(image: bytes) -> tuple[int, bytes]:
    """File offset and bytes of the first PKCS#7 in the certificate table."""
    h = pe.parse_pe(image)
    length = int.from_bytes(image[h.cert_table_offset:h.cert_table_offset + 4], "little")
    return h.cert_table_offset + 8, image[h.cert_table_offset + 8:h.cert_table_offset + length]


def _exercise(image: bytes, trusted: list[x509.Certificate]) -> None:
    """Everything that reads signatures; CfsError is an acceptable outcome."""
    for read in (lambda: ac.verify(image, trusted), lambda: ac.verify(image),
                 lambda: ac.list_signatures(image), lambda: uki.inspect_uki(image),
                 lambda: uki.check_uki(image)):
        with contextlib.suppress(CfsError):
            read()


def test_length_byte_change_fails_like_sbverify(tmp_path: Path, signer: ac.KeySigner,
                                                signed_uki: bytes) -> None:
    """A SEQUENCE length changed inside the SignedData (``30 0d`` -> ``30 61``): lenient
    lazy DER parsing accepted it, OpenSSL-based verifiers (and firmware) do not."""
    _, cert = write_key_cert(tmp_path, "db", signer.key, signer.certificate)
    good = tmp_path / "good.efi"
    good.write_bytes(signed_uki)
    assert sbverify_ok(cert, good) and osslsigncode_ok(cert, good)
    assert ac.verify_image(signed_uki, [signer.certificate]).ok
    start, der = _pkcs7(signed_uki)
    places = [i for i in range(len(der)) if der.startswith(SHA256_ALGORITHM, i)]
    assert len(places) == 3  # SignedData.digestAlgorithms, the indirect data, SignerInfo
    for i in places:
        bad = bytearray(signed_uki)
        bad[start + i + 1] = 0x61
        [check] = ac.verify(bytes(bad), [signer.certificate])
        assert not check.ok and check.reason.startswith("malformed: "), (i, check.reason)
        with pytest.raises(ac.AuthenticodeError, match="signature #0 is malformed"):
            ac.list_signatures(bytes(bad))
        path = tmp_path / f"bad{i}.efi"
        path.write_bytes(bad)
        assert not sbverify_ok(cert, path), i  # the reference agrees


@pytest.mark.parametrize("der, message", [
    (bytes.fromhex("3080") + bytes(2), "indefinite length"),
    (bytes.fromhex("30810100"), "non-minimal"),
    (bytes.fromhex("3003020101") + b"\x01", "trailing data"),
    (bytes.fromhex("3003020101") + bytes(8), "trailing data"),
    (bytes.fromhex("30040201"), "overruns"),
])
def test_strict_der_rejects(der: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ac._strict_der(der)


def test_strict_der_accepts_padding() -> None:
    assert ac._strict_der(bytes.fromhex("3003020101") + bytes(3)) == bytes.fromhex("3003020101")


def test_damaged_signer_name(tmp_path: Path, signer: ac.KeySigner, signed_uki: bytes,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid UTF-8 byte in the SignerInfo's issuer name (which no signature covers):
    inspect names the signature as malformed, verify lists it as failed."""
    start, der = _pkcs7(signed_uki)
    name = b"cfsboot robust test"
    at = der.rfind(name)  # the last copy is the SignerInfo's issuerAndSerialNumber
    assert at > der.find(name) >= 0
    bad = bytearray(signed_uki)
    bad[start + at + 3] = 0xFF
    path = tmp_path / "bad.efi"
    path.write_bytes(bad)
    with pytest.raises(CfsError, match="signature #0 is malformed"):
        cli("uki", "inspect", str(path))
    _, cert = write_key_cert(tmp_path, "db", signer.key, signer.certificate)
    capsys.readouterr()
    assert cli("uki", "verify", str(path), "--cert", str(cert)) == 1
    captured = capsys.readouterr()
    assert "signature #0 (?): FAILED: malformed" in captured.out
    assert "no signature verifies" in captured.err
    assert not sbverify_ok(cert, path)


def test_damaged_second_signature_does_not_hide_the_first(signer: ac.KeySigner,
                                                          signed_uki: bytes) -> None:
    twice = ac.add_signature(signed_uki, signer)
    h = pe.parse_pe(twice)
    first = int.from_bytes(twice[h.cert_table_offset:h.cert_table_offset + 4], "little")
    second = h.cert_table_offset + pe.round_up(first, 8)
    bad = bytearray(twice)
    bad[second + 8 + 5] ^= 0xFF
    checks = ac.verify(bytes(bad), [signer.certificate])
    assert [c.ok for c in checks] == [True, False]
    assert ac.verify_image(bytes(bad), [signer.certificate]).info.index == 0


def test_fuzz_certificate_table(signer: ac.KeySigner, signed_uki: bytes) -> None:
    """Every byte of the certificate table with its top bit flipped (long-form lengths,
    invalid UTF-8 in names, other tags), then seeded random changes of 1 to 4 bytes:
    only ever a CfsError or a clean result."""
    h = pe.parse_pe(signed_uki)
    table = range(h.cert_table_offset, len(signed_uki))
    trusted = [signer.certificate]
    for off in table:
        bad = bytearray(signed_uki)
        bad[off] ^= 0x80
        _exercise(bytes(bad), trusted)
    rng = random.Random(20261128)
    for _ in range(300):
        bad = bytearray(signed_uki)
        for _ in range(rng.randint(1, 4)):
            bad[rng.choice(table)] = rng.randrange(256)
        _exercise(bytes(bad), trusted)


def test_fuzz_never_verifies_a_changed_signed_part(signer: ac.KeySigner,
                                                   signed_uki: bytes) -> None:
    """A changed byte anywhere in the PKCS#7 must not verify against the trusted
    certificate -- not even in the parts no signature covers (versions, digestAlgorithms,
    signatureAlgorithm), which OpenSSL-based verifiers check."""
    start, der = _pkcs7(signed_uki)
    rng = random.Random(7)
    verified = []
    for off in range(start, start + len(der)):
        bad = bytearray(signed_uki)
        bad[off] = (bad[off] + rng.randrange(1, 256)) % 256
        try:
            ok = any(c.ok for c in ac.verify(bytes(bad), [signer.certificate]))
        except CfsError:
            ok = False
        if ok:
            verified.append(off - start)
    assert not verified, verified


def _microsoft_signed_shim() -> bytes:
    """A real Microsoft-signed binary: SpcSpOpusInfo signed attributes, timestamp
    countersignatures, two signatures (Debian's shim-signed package)."""
    for path in (os.environ.get("CFSBOOT_SHIM"), "/usr/lib/shim/shimx64.efi.signed"):
        if path and Path(path).exists():
            return Path(path).read_bytes()
    pytest.skip("no Microsoft-signed shim (install shim-signed or set CFSBOOT_SHIM to "
                "shimx64.efi.signed)")


def test_microsoft_signed_shim_verifies_and_survives_fuzzing(tmp_path: Path) -> None:
    shim = _microsoft_signed_shim()
    checks = ac.verify(shim)
    assert checks and all(c.ok for c in checks), [c.reason for c in checks]
    assert all("Microsoft" in c.info.signer_subject for c in checks)
    path = tmp_path / "shim.efi"
    path.write_bytes(shim)
    assert sbverify_count(path) == len(checks)
    h = pe.parse_pe(shim)
    table = range(h.cert_table_offset, len(shim))
    rng = random.Random(11)
    for _ in range(200):
        bad = bytearray(shim)
        for _ in range(rng.randint(1, 3)):
            bad[rng.choice(table)] ^= 1 << rng.randrange(8)
        _exercise(bytes(bad), [])
