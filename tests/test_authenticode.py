"""Authenticode signing and verification, cross-checked with sbsign/sbverify and
osslsigncode (independent C implementations) and pefile."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pefile
import pytest
from conftest import need_tool
from cryptography.hazmat.primitives import serialization
from test_uki_support import (
    make_cert,
    make_pe,
    need_stub,
    need_systemd_boot,
    osslsigncode_ok,
    sbverify_count,
    sbverify_ok,
    write_key_cert,
)

from cfsboot.boot import authenticode as ac
from cfsboot.boot import pe
from cfsboot.errors import CfsError

IDC_PREFIX = bytes.fromhex(  # §6.3: SHA-256 SpcIndirectDataContent up to the digest
    "30683033060a2b06010401823702010f3025030100a020a21e801c003c003c003c004f0062"
    "0073006f006c006500740065003e003e003e3031300d06096086480165030402010500"
    "0420")


@pytest.fixture(scope="module")
def signer() -> ac.KeySigner:
    key, cert = make_cert("cfsboot test db")
    return ac.KeySigner(key, cert)


@pytest.fixture(scope="module")
def signer2() -> ac.KeySigner:
    key, cert = make_cert("cfsboot second signer", key_size=3072)
    return ac.KeySigner(key, cert)


def _files(tmp_path: Path, s: ac.KeySigner, stem: str = "db") -> tuple[Path, Path]:
    return write_key_cert(tmp_path, stem, s.key, s.certificate)


def _images() -> list[tuple[str, bytes]]:
    out = [("synthetic-odd-length", make_pe([(".text", b"\xc3" * 333)], trailing=b"xyz")),
           ("synthetic-symtab", make_pe([(".text", b"\x90" * 64), (".data", b"d" * 999)],
                                        symbols=4))]
    for name, path in (("stub", "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"),
                       ("systemd-boot", "/usr/lib/systemd/boot/efi/systemd-bootx64.efi")):
        if Path(path).exists():
            out.append((name, Path(path).read_bytes()))
    return out


def test_idc_encoding_matches_spec() -> None:
    idc = ac.spc_indirect_data(bytes(range(32)))
    assert len(idc) == 106
    assert idc == IDC_PREFIX + bytes(range(32))


def test_digest_matches_sbsign(tmp_path: Path, signer: ac.KeySigner) -> None:
    """sbsign computes the image hash itself; the one it embeds must equal ours."""
    sbsign = need_tool("sbsign")
    key, cert = _files(tmp_path, signer)
    for name, image in _images():
        src, dst = tmp_path / f"{name}.efi", tmp_path / f"{name}.signed"
        src.write_bytes(image)
        subprocess.run([sbsign, "--key", str(key), "--cert", str(cert), str(src),
                        "--output", str(dst)], check=True, capture_output=True)
        signed = dst.read_bytes()
        [info] = ac.list_signatures(signed)
        assert info.image_digest == ac.authenticode_digest(signed), name
        assert ac.authenticode_digest(signed) == ac.authenticode_digest(
            image + bytes(-len(image) % 8)), name
        # and our verifier accepts sbsign's signature
        assert ac.verify_image(signed, [signer.certificate]).ok
        # sbsign writes the same checksum we compute
        h = pe.parse_pe(signed)
        assert h.checksum == pe.pe_checksum(signed, h.checksum_offset)


def test_signed_images_pass_sbverify_and_osslsigncode(tmp_path: Path,
                                                      signer: ac.KeySigner) -> None:
    _, cert = _files(tmp_path, signer)
    for name, image in _images():
        signed = ac.sign(image, signer)
        out = tmp_path / f"{name}.efi"
        out.write_bytes(signed)
        assert sbverify_ok(cert, out), name
        assert osslsigncode_ok(cert, out), name
        ref = pefile.PE(data=signed, fast_load=True)
        assert ref.OPTIONAL_HEADER.CheckSum == ref.generate_checksum(), name
        assert ac.verify_image(signed, [signer.certificate]).ok
        # the image part is the (8-aligned) input, untouched except the two header fields
        h = pe.parse_pe(signed)
        assert h.cert_table_offset == pe.round_up(len(image), 8)
        assert ac.remove_signatures(signed) == pe.with_checksum(
            image + bytes(-len(image) % 8))


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def test_byte_flip_in_hashed_area_fails_everywhere(tmp_path: Path,
                                                   signer: ac.KeySigner) -> None:
    image = make_pe([(".text", b"\xc3" * 700), (".cmdline", b"composefs=" + b"a" * 128)],
                    trailing=b"tail!")
    signed = ac.sign(image, signer)
    h = pe.parse_pe(signed)
    _, cert = _files(tmp_path, signer)
    offsets = {
        "dos header": 0x2,
        "machine": h.coff_offset,
        "size of image": h.opt_offset + 56,
        "section header": h.sections[1].header_offset + 8,
        "code": h.sections[0].raw_pointer + 5,
        "cmdline": h.sections[1].raw_pointer + 12,
        "raw padding": h.sections[1].raw_pointer + h.sections[1].raw_size - 1,
        "trailing data": h.cert_table_offset - 4,
        "alignment padding": h.cert_table_offset - 1,
    }
    for what, off in offsets.items():
        bad = _flip(signed, off)
        path = tmp_path / "bad.efi"
        path.write_bytes(bad)
        checks = ac.verify(bad, [signer.certificate])
        assert not any(c.ok for c in checks), what
        assert not sbverify_ok(cert, path), what
    # The checksum and the certificate directory are not hashed (§6.2).
    ok = _flip(signed, h.checksum_offset)
    (tmp_path / "ok.efi").write_bytes(ok)
    assert ac.verify_image(ok, [signer.certificate]).ok
    assert sbverify_ok(cert, tmp_path / "ok.efi")


def test_signature_byte_flip_fails(signer: ac.KeySigner) -> None:
    signed = ac.sign(make_pe(), signer)
    # the last bytes of the PKCS#7 are the RSA signature (before padding)
    h = pe.parse_pe(signed)
    length = int.from_bytes(signed[h.cert_table_offset:h.cert_table_offset + 4], "little")
    bad = _flip(signed, h.cert_table_offset + length - 3)
    with pytest.raises(ac.AuthenticodeError, match="signature does not verify"):
        ac.verify_image(bad, [signer.certificate])


def test_double_signature(tmp_path: Path, signer: ac.KeySigner,
                          signer2: ac.KeySigner) -> None:
    image = need_stub() if Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").exists() \
        else make_pe()
    once = ac.sign(image, signer)
    with pytest.raises(ac.AuthenticodeError, match="already signed"):
        ac.sign(once, signer2)
    twice = ac.add_signature(once, signer2)
    path = tmp_path / "twice.efi"
    path.write_bytes(twice)
    _, cert1 = _files(tmp_path, signer, "one")
    _, cert2 = _files(tmp_path, signer2, "two")
    assert sbverify_count(path) == 2
    assert sbverify_ok(cert1, path) and sbverify_ok(cert2, path)
    # osslsigncode wants exactly one WIN_CERTIFICATE (its multi-signature model nests
    # signatures, which UEFI ignores) and rejects the table -- as it does for sbsign's.
    assert not osslsigncode_ok(cert1, path)
    checks = ac.verify(twice)
    assert [c.ok for c in checks] == [True, True]
    assert [c.info.signer == s.certificate for c, s in zip(checks, (signer, signer2),
                                                          strict=True)] == [True, True]
    assert [c.ok for c in ac.verify(twice, [signer2.certificate])] == [False, True]
    ref = pefile.PE(data=twice, fast_load=True)
    assert ref.OPTIONAL_HEADER.CheckSum == ref.generate_checksum()
    # removing the first leaves the second, which still verifies with sbverify
    second_only = ac.remove_signature(twice, 0)
    path.write_bytes(second_only)
    assert sbverify_count(path) == 1
    assert sbverify_ok(cert2, path) and not sbverify_ok(cert1, path)
    assert ac.remove_signature(twice, 1) == once
    with pytest.raises(ac.AuthenticodeError, match="no signature #2"):
        ac.remove_signature(twice, 2)


def test_signing_is_deterministic(signer: ac.KeySigner) -> None:
    image = make_pe()
    assert ac.sign(image, signer) == ac.sign(image, signer)


def test_wrong_certificate_not_trusted(signer: ac.KeySigner, signer2: ac.KeySigner) -> None:
    signed = ac.sign(make_pe(), signer)
    with pytest.raises(ac.AuthenticodeError, match="not trusted"):
        ac.verify_image(signed, [signer2.certificate])
    with pytest.raises(ac.AuthenticodeError, match="not signed"):
        ac.verify_image(make_pe())


def test_key_and_certificate_mismatch(signer: ac.KeySigner, signer2: ac.KeySigner) -> None:
    with pytest.raises(ac.AuthenticodeError, match="key and certificate differ"):
        ac.sign(make_pe(), ac.KeySigner(signer.key, signer2.certificate))


def test_certificate_chain(tmp_path: Path) -> None:
    """A leaf signed by an intermediate CA: trusted through the embedded chain."""
    root = make_cert("test root CA", ca=True)
    inter = make_cert("test intermediate CA", issuer=root, ca=True)
    leaf = make_cert("test leaf", issuer=inter)
    signed = ac.sign(make_pe(), ac.KeySigner(*leaf), extra_certs=[inter[1]])
    assert ac.verify_image(signed, [root[1]]).ok
    assert ac.verify_image(signed, [inter[1]]).ok
    with pytest.raises(ac.AuthenticodeError, match="not trusted"):
        ac.verify_image(signed, [make_cert("other root", ca=True)[1]])
    path = tmp_path / "chain.efi"
    path.write_bytes(signed)
    root_pem = tmp_path / "root.crt"
    root_pem.write_bytes(root[1].public_bytes(serialization.Encoding.PEM))
    assert sbverify_ok(root_pem, path)
    assert osslsigncode_ok(root_pem, path)


def test_sign_command_equals_key_signing(tmp_path: Path, signer: ac.KeySigner) -> None:
    openssl = need_tool("openssl")
    key, cert = _files(tmp_path, signer)
    image = make_pe()
    by_command = ac.sign(image, ac.CommandSigner(f"{openssl} dgst -sha256 -sign {key}",
                                                 signer.certificate))
    assert by_command == ac.sign(image, signer)  # PKCS#1 v1.5 is deterministic
    path = tmp_path / "cmd.efi"
    path.write_bytes(by_command)
    assert sbverify_ok(cert, path)


def test_sign_command_failures(signer: ac.KeySigner, signer2: ac.KeySigner,
                               tmp_path: Path) -> None:
    with pytest.raises(ac.AuthenticodeError, match="exited with 3"):
        ac.sign(make_pe(), ac.CommandSigner("sh -c 'echo boom >&2; exit 3'",
                                            signer.certificate))
    with pytest.raises(ac.AuthenticodeError, match="printed no signature"):
        ac.sign(make_pe(), ac.CommandSigner("true", signer.certificate))
    with pytest.raises(ac.AuthenticodeError, match="failed"):
        ac.sign(make_pe(), ac.CommandSigner("/nonexistent/signer", signer.certificate))
    openssl = need_tool("openssl")
    other_key, _ = _files(tmp_path, signer2, "other")
    with pytest.raises(ac.AuthenticodeError, match="does not verify"):
        ac.sign(make_pe(), ac.CommandSigner(f"{openssl} dgst -sha256 -sign {other_key}",
                                            signer.certificate))


def test_sbsign_double_signature_verifies(tmp_path: Path, signer: ac.KeySigner,
                                          signer2: ac.KeySigner) -> None:
    """Our verifier walks a table that sbsign extended ("adding additional signature")."""
    sbsign = need_tool("sbsign")
    image = need_systemd_boot()
    k2, c2 = _files(tmp_path, signer2, "two")
    src = tmp_path / "one.efi"
    src.write_bytes(ac.sign(image, signer))
    dst = tmp_path / "two.efi"
    subprocess.run([sbsign, "--key", str(k2), "--cert", str(c2), str(src), "--output",
                    str(dst)], check=True, capture_output=True)
    checks = ac.verify(dst.read_bytes())
    assert [c.ok for c in checks] == [True, True]
    _, c1 = _files(tmp_path, signer, "one")
    assert not osslsigncode_ok(c1, dst)  # same limitation as for our double signatures
    assert sbverify_ok(c1, dst) and sbverify_ok(c2, dst)


def test_malformed_tables(signer: ac.KeySigner) -> None:
    signed = ac.sign(make_pe(), signer)
    with pytest.raises(ac.AuthenticodeError, match="malformed certificate table"):
        ac.list_signatures(signed + b"\0" * 8)  # table no longer at the end
    h = pe.parse_pe(signed)
    bad = bytearray(signed)
    bad[h.cert_table_offset:h.cert_table_offset + 4] = (4).to_bytes(4, "little")
    with pytest.raises(ac.AuthenticodeError, match="bad WIN_CERTIFICATE length"):
        ac.list_signatures(bytes(bad))
    junk = bytearray(signed)
    junk[h.cert_table_offset + 8:h.cert_table_offset + 12] = b"\xff\xff\xff\xff"
    [check] = ac.verify(bytes(junk))  # a listing reports it as one failed signature
    assert not check.ok and check.reason.startswith("malformed: ")
    with pytest.raises(ac.AuthenticodeError, match="signature #0 is malformed"):
        ac.list_signatures(bytes(junk))


def test_load_errors() -> None:
    with pytest.raises(ac.AuthenticodeError, match=r"not a usable X\.509"):
        ac.load_certificate(b"garbage")
    der = bytearray(make_cert("cfsboot damaged name")[1].public_bytes(
        serialization.Encoding.DER))
    der[der.rfind(b"damaged") + 2] = 0xFF  # invalid UTF-8, parsed lazily by cryptography
    with pytest.raises(ac.AuthenticodeError, match=r"not a usable X\.509"):
        ac.load_certificate(bytes(der))
    with pytest.raises(ac.AuthenticodeError, match="cannot load private key"):
        ac.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_random_byte_flips_in_signed_uki(tmp_path: Path, signer: ac.KeySigner) -> None:
    """30 seeded random offsets across everything the hash covers of a signed UKI."""
    import random

    from cfsboot.boot import uki

    stub = need_stub()
    image = uki.build_uki(stub, uki.UkiInputs(
        linux=bytes(range(256)) * 64, initrds=[b"initrd" * 100], cmdline=b"composefs=" +
        b"ab" * 64, os_release=b"ID=test\n", uname=b"6.1.0"))
    signed = ac.sign(image, signer)
    h = pe.parse_pe(signed)
    _, cert = _files(tmp_path, signer)
    excluded = {*range(h.checksum_offset, h.checksum_offset + 4),
                *range(h.cert_directory_offset, h.cert_directory_offset + 8)}
    rng = random.Random(1234)
    offsets = [o for o in rng.sample(range(h.cert_table_offset), 40) if o not in excluded][:30]
    path = tmp_path / "flipped.efi"
    for off in offsets:
        bad = _flip(signed, off)
        with contextlib.suppress(CfsError):  # a damaged header may not parse: also a failure
            assert not any(c.ok for c in ac.verify(bad, [signer.certificate])), hex(off)
        path.write_bytes(bad)
        assert not sbverify_ok(cert, path), hex(off)
