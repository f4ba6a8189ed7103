"""Secure Boot key material: signing keys and certificates, EFI signature lists
(``.esl``) and time-based authenticated variable updates (``.auth``) for PK/KEK/db.

The ``.auth`` files are what ``efi-updatevar -f``, systemd-boot's ``loader/keys/``
auto-enrolment and firmware setup menus take; the PEM certificates plus the owner GUID
are what ``virt-fw-vars --set-pk/--add-kek/--add-db GUID CERT`` takes for OVMF.
Layouts: UEFI 2.10 §32.4 (EFI_SIGNATURE_LIST) and §8.2.2 (EFI_VARIABLE_AUTHENTICATION_2).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cfsboot.errors import CfsError

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_TYPE_PKCS7_GUID = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
WIN_CERT_TYPE_EFI_GUID = 0x0EF1

VARIABLE_NON_VOLATILE = 0x01
VARIABLE_BOOTSERVICE_ACCESS = 0x02
VARIABLE_RUNTIME_ACCESS = 0x04
VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20
VARIABLE_APPEND_WRITE = 0x40
AUTH_VARIABLE_ATTRIBUTES = (VARIABLE_NON_VOLATILE | VARIABLE_BOOTSERVICE_ACCESS
                            | VARIABLE_RUNTIME_ACCESS
                            | VARIABLE_TIME_BASED_AUTHENTICATED_WRITE_ACCESS)

# Which GUID namespace each variable lives in, and which key signs its update.
VARIABLE_GUIDS = {"PK": EFI_GLOBAL_VARIABLE, "KEK": EFI_GLOBAL_VARIABLE,
                  "db": EFI_IMAGE_SECURITY_DATABASE, "dbx": EFI_IMAGE_SECURITY_DATABASE}
SIGNED_BY = {"PK": "PK", "KEK": "PK", "db": "KEK"}
KEY_SIZES = (2048, 3072, 4096)


class KeyMaterialError(CfsError):
    """Key material cannot be made or read."""


MAX_COMMON_NAME = 64   # X.520 ub-common-name
ROLE_TITLES = (("PK", "Platform Key"), ("KEK", "Key Exchange Key"),
               ("db", "Signature Database Key"))
LAST_VALID_TIME = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)  # GeneralizedTime
# The files ``generate_key_set`` returns, known before the (slow) generation.
KEY_SET_FILES: tuple[str, ...] = ("GUID.txt", *(
    f"{role}.{kind}" for role, _ in ROLE_TITLES for kind in ("key", "crt", "cer", "esl",
                                                             "auth")))


def check_common_name(common_name: str) -> None:
    """A CommonName X.509 can hold: 1 to 64 characters of valid text."""
    try:
        common_name.encode("utf-8", "strict")
    except UnicodeEncodeError as e:
        raise KeyMaterialError(f"common name {common_name!r} is not valid UTF-8 text") from e
    if not common_name.strip():
        raise KeyMaterialError("the common name must not be empty")
    if len(common_name) > MAX_COMMON_NAME:
        raise KeyMaterialError(f"common name {common_name!r} is {len(common_name)} characters; "
                               f"X.509 allows at most {MAX_COMMON_NAME}")


def check_validity(days: int, now: dt.datetime) -> None:
    """``days`` from ``now`` must end by 9999-12-31, the last time X.509 can express."""
    if days <= 0:
        raise KeyMaterialError("certificate validity must be at least one day")
    last = (LAST_VALID_TIME - now.astimezone(dt.UTC)).days
    if days > last:
        raise KeyMaterialError(f"certificate validity of {days} days ends after the year "
                               f"9999 (at most {last} days from now)")


def check_key_set_options(common_name: str, days: int, now: dt.datetime | None = None) -> None:
    """Validate ``generate_key_set`` arguments before any (slow) key is generated."""
    longest = max(len(title) for _, title in ROLE_TITLES) + 1
    if len(common_name) > MAX_COMMON_NAME - longest:
        raise KeyMaterialError(
            f"--common-name is {len(common_name)} characters; at most "
            f"{MAX_COMMON_NAME - longest} fit before the longest suffix ' Signature Database "
            f"Key' in the {MAX_COMMON_NAME}-character X.509 CommonName")
    check_common_name(common_name or "x")
    check_validity(days, now or dt.datetime.now(dt.UTC))


def efi_guid_bytes(guid: uuid.UUID) -> bytes:
    """EFI_GUID in memory order: the first three fields little-endian."""
    return guid.bytes_le


def generate_key(key_size: int = 2048) -> rsa.RSAPrivateKey:
    if key_size not in KEY_SIZES:
        raise KeyMaterialError(f"RSA key size must be one of {', '.join(map(str, KEY_SIZES))}")
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str, days: int = 3650,
                            *, code_signing: bool = True,
                            now: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed X.509 v3 certificate as firmware and signing tools expect: SHA-256
    with RSA, a positive random serial, CN subject = issuer, key identifiers,
    digitalSignature key usage and (for the image-signing db key) the codeSigning EKU."""
    now = now or dt.datetime.now(dt.UTC)
    check_common_name(common_name)
    check_validity(days, now)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True))
    if code_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(key, hashes.SHA256())


# --- EFI signature lists -------------------------------------------------------------------

@dataclass(frozen=True)
class SignatureEntry:
    type_guid: uuid.UUID
    owner: uuid.UUID
    data: bytes   # DER certificate for EFI_CERT_X509_GUID, a hash for EFI_CERT_SHA256_GUID


def signature_list(certificates: Sequence[x509.Certificate], owner: uuid.UUID) -> bytes:
    """EFI_SIGNATURE_LISTs holding the certificates, one list each (X.509 entries of
    different sizes cannot share a list), as efitools' cert-to-efi-sig-list writes them."""
    out = bytearray()
    for cert in certificates:
        der = cert.public_bytes(serialization.Encoding.DER)
        sig_size = 16 + len(der)
        out += efi_guid_bytes(EFI_CERT_X509_GUID)
        out += struct.pack("<III", 28 + sig_size, 0, sig_size)
        out += efi_guid_bytes(owner) + der
    return bytes(out)


def parse_signature_lists(data: bytes) -> list[SignatureEntry]:
    """Every entry of a concatenation of EFI_SIGNATURE_LISTs."""
    entries, off = [], 0
    while off < len(data):
        if off + 28 > len(data):
            raise KeyMaterialError("truncated EFI_SIGNATURE_LIST header")
        type_guid = uuid.UUID(bytes_le=data[off:off + 16])
        list_size, header_size, sig_size = struct.unpack_from("<III", data, off + 16)
        body = off + 28 + header_size
        end = off + list_size
        if sig_size < 16 or end > len(data) or body > end or (end - body) % sig_size:
            raise KeyMaterialError(f"malformed EFI_SIGNATURE_LIST at offset {off}")
        for p in range(body, end, sig_size):
            entries.append(SignatureEntry(type_guid, uuid.UUID(bytes_le=data[p:p + 16]),
                                          data[p + 16:p + sig_size]))
        off = end
    return entries


# --- authenticated variables ----------------------------------------------------------------

def efi_time(when: dt.datetime) -> bytes:
    """EFI_TIME for a time-based authenticated write: UTC, Nanosecond/TimeZone/Daylight 0."""
    t = when.astimezone(dt.UTC) if when.tzinfo else when
    return struct.pack("<HBBBBBBIhBB", t.year, t.month, t.day, t.hour, t.minute, t.second,
                       0, 0, 0, 0, 0)


def _pkcs7_detached(data: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    """DER PKCS#7 SignedData (no ContentInfo wrapper, no authenticated attributes,
    content detached) over ``data`` -- what UEFI wants in EFI_VARIABLE_AUTHENTICATION_2."""
    signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    acert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
            "issuer": acert["tbs_certificate"]["issuer"],
            "serial_number": acert["tbs_certificate"]["serial_number"]}),
        "digest_algorithm": {"algorithm": "sha256"},
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": cms.ContentInfo({"content_type": "data"}),
        "certificates": [acert],
        "signer_infos": [signer_info],
    })
    return bytes(signed.dump())


def auth_payload(name: str, vendor: uuid.UUID, attributes: int, timestamp: bytes,
                 data: bytes) -> bytes:
    """What the signature covers: name (UCS-2, no NUL) || GUID || attributes || time || data."""
    return (name.encode("utf-16-le") + efi_guid_bytes(vendor)
            + struct.pack("<I", attributes) + timestamp + data)


def signed_variable(name: str, data: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate,
                    when: dt.datetime, *, vendor: uuid.UUID | None = None,
                    attributes: int = AUTH_VARIABLE_ATTRIBUTES) -> bytes:
    """An ``.auth`` file: EFI_VARIABLE_AUTHENTICATION_2 followed by the new value."""
    vendor = vendor or VARIABLE_GUIDS.get(name)
    if vendor is None:
        raise KeyMaterialError(f"unknown Secure Boot variable {name!r} (give its vendor GUID)")
    timestamp = efi_time(when)
    p7 = _pkcs7_detached(auth_payload(name, vendor, attributes, timestamp, data), key, cert)
    header = struct.pack("<IHH", 24 + len(p7), 0x0200, WIN_CERT_TYPE_EFI_GUID)
    return timestamp + header + efi_guid_bytes(EFI_CERT_TYPE_PKCS7_GUID) + p7 + data


# --- a whole key set ------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    role: str
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate


def generate_key_set(common_name: str = "cfsboot", *, key_size: int = 2048,
                     days: int = 3650, owner: uuid.UUID | None = None,
                     now: dt.datetime | None = None) -> tuple[uuid.UUID, dict[str, bytes]]:
    """PK, KEK and db keys with certificates, signature lists and signed updates.

    Returns the owner GUID and ``{file name: bytes}``: ``<role>.key`` (PEM, private),
    ``<role>.crt`` (PEM), ``<role>.cer`` (DER), ``<role>.esl`` and ``<role>.auth`` for
    each role, plus ``GUID.txt``.  ``db.key``/``db.crt`` sign boot images.
    """
    owner = owner or uuid.uuid4()
    now = now or dt.datetime.now(dt.UTC)
    check_key_set_options(common_name, days, now)
    pairs: dict[str, KeyPair] = {}
    files: dict[str, bytes] = {"GUID.txt": f"{owner}\n".encode()}
    for role, title in ROLE_TITLES:
        key = generate_key(key_size)
        cert = self_signed_certificate(key, f"{common_name} {title}", days,
                                       code_signing=role == "db", now=now)
        pairs[role] = KeyPair(role, key, cert)
        esl = signature_list([cert], owner)
        signer = pairs[SIGNED_BY[role]]
        files[f"{role}.key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        files[f"{role}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{role}.cer"] = cert.public_bytes(serialization.Encoding.DER)
        files[f"{role}.esl"] = esl
        files[f"{role}.auth"] = signed_variable(role, esl, signer.key, signer.certificate, now)
    return owner, files


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
