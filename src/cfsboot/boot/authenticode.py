"""Authenticode (UEFI Secure Boot) signatures on PE images, in Python.

Image hash, ``SpcIndirectDataContent``, PKCS#7 ``SignedData``, ``WIN_CERTIFICATE``
and the certificate table, several signatures, and verification against
certificates (spec ``uki-and-signing.md`` §6).  DER comes from ``asn1crypto``;
RSA and X.509 from ``cryptography``.  The private-key operation is behind the
``Signer`` protocol so that a key file, an external command or an HSM can do it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from asn1crypto import algos, cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from cfsboot.boot.pe import PeHeaders, parse_pe, pe_checksum, round_up
from cfsboot.errors import CfsError

SPC_INDIRECT_DATA_OBJID = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATAOBJ = "1.3.6.1.4.1.311.2.1.15"
WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
OBSOLETE_LINK = "<<<Obsolete>>>"

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class AuthenticodeError(CfsError):
    """A signature is missing, malformed or does not verify."""


# --- ASN.1 types Microsoft defines for Authenticode (asn1crypto has none) ---------------

class SpcString(core.Choice):  # type: ignore[misc]
    _alternatives: ClassVar[list[Any]] = [
        ("unicode", core.BMPString, {"implicit": 0}),
        ("ascii", core.IA5String, {"implicit": 1}),
    ]


class SpcSerializedObject(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [
        ("class_id", core.OctetString), ("serialized_data", core.OctetString)]


class SpcLink(core.Choice):  # type: ignore[misc]
    _alternatives: ClassVar[list[Any]] = [
        ("url", core.IA5String, {"implicit": 0}),
        ("moniker", SpcSerializedObject, {"implicit": 1}),
        ("file", SpcString, {"explicit": 2}),
    ]


class SpcPeImageData(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [
        ("flags", core.BitString, {"optional": True}),
        ("file", SpcLink, {"explicit": 0, "optional": True}),
    ]


class SpcAttributeTypeAndOptionalValue(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [
        ("type", core.ObjectIdentifier), ("value", core.Any, {"optional": True})]


class DigestInfo(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [
        ("digest_algorithm", algos.DigestAlgorithm), ("digest", core.OctetString)]


class SpcIndirectDataContent(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [
        ("data", SpcAttributeTypeAndOptionalValue), ("message_digest", DigestInfo)]


# --- the image hash -----------------------------------------------------------------------

def _require_cert_directory(h: PeHeaders) -> None:
    if not h.has_cert_directory:
        raise AuthenticodeError(
            "the PE image has no certificate table entry (NumberOfRvaAndSizes < 5), "
            "so it cannot carry an Authenticode signature")


def authenticode_digest(image: bytes | bytearray, algorithm: str = "sha256") -> bytes:
    """The Authenticode image hash (§6.2): everything but CheckSum, the certificate
    directory entry and the certificate table; sections in file order by raw size."""
    if algorithm not in HASHES:
        raise AuthenticodeError(f"unsupported Authenticode digest algorithm {algorithm}")
    h = parse_pe(image)
    _require_cert_directory(h)
    ck, cd, hdr_end = h.checksum_offset, h.cert_directory_offset, h.size_of_headers
    if hdr_end > len(image) or cd + 8 > hdr_end:
        raise AuthenticodeError("PE SizeOfHeaders is inconsistent with the file")
    md = hashlib.new(algorithm)
    with memoryview(image) as view:  # slices of a view hash without copying the image
        md.update(view[:ck])
        md.update(view[ck + 4:cd])
        md.update(view[cd + 8:hdr_end])
        summed = hdr_end
        for s in sorted((s for s in h.sections if s.raw_size), key=lambda s: s.raw_pointer):
            if s.raw_pointer + s.raw_size > len(image):
                raise AuthenticodeError(f"section {s.name!r} extends past the end of the file")
            md.update(view[s.raw_pointer:s.raw_pointer + s.raw_size])
            summed += s.raw_size
        table = h.cert_table_size
        if len(image) > summed + table:
            md.update(view[summed:len(image) - table])
    return md.digest()


def spc_indirect_data(digest: bytes, algorithm: str = "sha256") -> bytes:
    """DER ``SpcIndirectDataContent`` naming a PE image with the given image hash (§6.3)."""
    pe_data = SpcPeImageData({
        "flags": core.BitString(()),
        "file": SpcLink(name="file", value=SpcString(name="unicode", value=OBSOLETE_LINK)),
    })
    idc = SpcIndirectDataContent({
        "data": {"type": SPC_PE_IMAGE_DATAOBJ, "value": core.Any(pe_data)},
        "message_digest": {"digest_algorithm": {"algorithm": algorithm}, "digest": digest},
    })
    return bytes(idc.dump())


def _content_octets(der: bytes) -> bytes:
    """The value bytes of one DER element with a one-byte tag (what Authenticode's
    messageDigest covers: the SpcIndirectDataContent without its tag and length)."""
    if len(der) < 2:
        raise AuthenticodeError("truncated DER element")
    first = der[1]
    header = 2 if first < 0x80 else 2 + (first & 0x7F)
    return der[header:]


def _der(tag: int, content: bytes) -> bytes:
    """One DER element with a one-byte tag and a definite length."""
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_set(content: bytes) -> bytes:
    """A universal ``SET`` (tag 0x31): how authenticated attributes are signed."""
    return _der(0x31, content)


MAX_DER_DEPTH = 32


def _der_element(data: bytes, off: int, end: int, depth: int) -> int:
    """Check one DER element at ``off`` (definite, minimal length inside ``end``; the
    children of a constructed element exactly fill it) and return where it ends.
    asn1crypto parses lazily and leniently; UEFI firmware (OpenSSL) does not, so a
    signature with an inconsistent length must fail here as it fails there."""
    if depth > MAX_DER_DEPTH:
        raise ValueError("DER nested too deeply")
    if off + 2 > end:
        raise ValueError(f"truncated DER element at byte {off}")
    tag = data[off]
    off += 1
    if tag & 0x1F == 0x1F:  # high tag number: base-128 continuation bytes
        while off < end and data[off] & 0x80:
            off += 1
        off += 1
    if off >= end:
        raise ValueError(f"truncated DER element at byte {off}")
    first = data[off]
    off += 1
    length = first
    if first & 0x80:
        count = first & 0x7F
        if count == 0:
            raise ValueError("indefinite length (BER, not DER)")
        if count > 4 or off + count > end:
            raise ValueError(f"bad DER length at byte {off - 1}")
        length = int.from_bytes(data[off:off + count], "big")
        if data[off] == 0 or length < 0x80:
            raise ValueError(f"non-minimal DER length at byte {off - 1}")
        off += count
    if off + length > end:
        raise ValueError(f"DER element at byte {off} overruns its container")
    if tag & 0x20:  # constructed
        child = off
        while child < off + length:
            child = _der_element(data, child, off + length, depth + 1)
    return off + length


def _strict_der(der: bytes) -> bytes:
    """The one DER element in a WIN_CERTIFICATE payload; only the zero padding to
    8 bytes may follow it."""
    end = _der_element(der, 0, len(der), 0)
    if len(der) - end >= 8 or any(der[end:]):
        raise ValueError(f"{len(der) - end} bytes of trailing data after the PKCS#7")
    return der[:end]


def _indirect_content_info(idc: bytes) -> cms.ContentInfo:
    """``ContentInfo { SPC_INDIRECT_DATA_OBJID, [0] EXPLICIT idc }``, encoded by hand
    because asn1crypto does not add the explicit tag around an opaque value."""
    oid = bytes(core.ObjectIdentifier(SPC_INDIRECT_DATA_OBJID).dump())
    return cms.ContentInfo.load(_der(0x30, oid + _der(0xA0, idc)))


# --- signing --------------------------------------------------------------------------------

class Signer(Protocol):
    """Produces RSASSA-PKCS1-v1_5/SHA-256 signatures for one certificate."""

    @property
    def certificate(self) -> x509.Certificate: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class KeySigner:
    """Signs with a private key held in memory (loaded from a PEM/DER file)."""
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class CommandSigner:
    """Signs by running an external program (HSM, remote signing service, ...).

    Protocol: the command (split like a shell would, not run through one) gets the bytes
    to sign on stdin -- the DER ``SET OF`` authenticated attributes -- and must print the
    raw RSASSA-PKCS1-v1_5 signature over SHA-256 of those bytes on stdout and exit 0.
    ``openssl dgst -sha256 -sign KEY`` is such a program.  The result is checked against
    the certificate before it is embedded.  ``env`` adds environment variables.
    """
    command: str
    certificate: x509.Certificate
    timeout: float = 300.0
    env: tuple[tuple[str, str], ...] = ()

    def sign(self, data: bytes) -> bytes:
        environ = {**os.environ, **dict(self.env)} if self.env else None
        try:
            done = subprocess.run(shlex.split(self.command), input=data, capture_output=True,
                                  timeout=self.timeout, check=False, env=environ)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            raise AuthenticodeError(f"sign command {self.command!r} failed: {e}") from e
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AuthenticodeError(f"sign command {self.command!r} exited with "
                                    f"{done.returncode}" + (f": {why[-1]}" if why else ""))
        if not done.stdout:
            raise AuthenticodeError(f"sign command {self.command!r} printed no signature")
        return done.stdout


def engine_signer(engine: str, key_id: str, certificate: x509.Certificate, *,
                  module: str | None = None, openssl: str = "openssl") -> CommandSigner:
    """A signer using an OpenSSL engine key, as ``sbsign --engine E --key ID`` does;
    for ``pkcs11`` (libp11) ``key_id`` is a PKCS#11 URI and ``module`` the token's
    PKCS#11 library (``PKCS11_MODULE_PATH``; default: p11-kit's proxy)."""
    command = shlex.join([openssl, "dgst", "-sha256", "-engine", engine, "-keyform",
                          "engine", "-sign", key_id])
    env = (("PKCS11_MODULE_PATH", module),) if module else ()
    return CommandSigner(command, certificate, env=env)


def load_certificate(data: bytes) -> x509.Certificate:
    """An X.509 certificate from PEM or DER bytes."""
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        # cryptography parses names and keys lazily: fail here, not mid-verification.
        _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.public_key())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise AuthenticodeError(f"not a usable X.509 certificate: {_first_line(e)}") from e
    return cert


def load_private_key(data: bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM or DER bytes (UEFI firmware only verifies RSA)."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except (ValueError, TypeError) as e:
        raise AuthenticodeError(f"cannot load private key: {e}") from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AuthenticodeError("Secure Boot signing needs an RSA key")
    return key


def _signed_attributes(idc: bytes) -> bytes:
    """DER SET OF {contentType, messageDigest}, sorted as DER requires (§6.4)."""
    attrs = [
        cms.CMSAttribute({"type": "content_type", "values": [SPC_INDIRECT_DATA_OBJID]}),
        cms.CMSAttribute({"type": "message_digest",
                          "values": [hashlib.sha256(_content_octets(idc)).digest()]}),
    ]
    return _der_set(b"".join(sorted(bytes(a.dump()) for a in attrs)))


def _to_asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _check_signature(cert: x509.Certificate, signature: bytes, data: bytes,
                     digest: str = "sha256") -> bool:
    key = cert.public_key()
    algorithm = HASHES[digest]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def build_signed_data(image_digest: bytes, signer: Signer,
                      extra_certs: Sequence[x509.Certificate] = ()) -> bytes:
    """DER ``ContentInfo``/``SignedData`` over an image hash (SHA-256), signed by ``signer``."""
    if not isinstance(signer.certificate.public_key(), rsa.RSAPublicKey):
        raise AuthenticodeError("the signing certificate must hold an RSA key")
    idc = spc_indirect_data(image_digest)
    attrs = _signed_attributes(idc)
    signature = signer.sign(attrs)
    if not _check_signature(signer.certificate, signature, attrs):
        raise AuthenticodeError(
            "the signature does not verify with the certificate (key and certificate differ?)")
    cert = _to_asn1_cert(signer.certificate)
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
            "issuer": cert["tbs_certificate"]["issuer"],
            "serial_number": cert["tbs_certificate"]["serial_number"]}),
        "digest_algorithm": {"algorithm": "sha256"},
        "signed_attrs": cms.CMSAttributes.load(attrs),
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
        "signature": signature,
    })
    signed_data = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": _indirect_content_info(idc),
        "certificates": [cert, *(_to_asn1_cert(c) for c in extra_certs)],
        "signer_infos": [signer_info],
    })
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


# --- the certificate table ----------------------------------------------------------------

def _entries(image: bytes, h: PeHeaders) -> list[tuple[int, int, int, bytes]]:
    """(revision, type, offset, certificate bytes) for each WIN_CERTIFICATE."""
    va, size = h.cert_table_offset, h.cert_table_size
    if not size:
        return []
    if va % 8 or va + size != len(image) or va < h.size_of_headers:
        raise AuthenticodeError("malformed certificate table (must be 8-aligned at the "
                                "end of the file)")
    out = []
    off = va
    while off < va + size:
        if off + 8 > va + size:
            raise AuthenticodeError("truncated WIN_CERTIFICATE header")
        length, revision, ctype = struct.unpack_from("<IHH", image, off)
        if length < 8 or off + length > va + size:
            raise AuthenticodeError(f"bad WIN_CERTIFICATE length {length} at {off:#x}")
        out.append((revision, ctype, off, image[off + 8:off + length]))
        off += round_up(length, 8)
    return out


def _set_table(buf: bytearray, h: PeHeaders, offset: int, size: int) -> bytes:
    """Point DataDirectory[4] at the table and fix the CheckSum, in place."""
    struct.pack_into("<II", buf, h.cert_directory_offset, offset, size)
    struct.pack_into("<I", buf, h.checksum_offset, pe_checksum(buf, h.checksum_offset))
    return bytes(buf)


def _win_certificate(der: bytes) -> bytes:
    entry = struct.pack("<IHH", 8 + len(der), WIN_CERT_REVISION_2_0,
                        WIN_CERT_TYPE_PKCS_SIGNED_DATA) + der
    return entry + bytes(round_up(len(entry), 8) - len(entry))


def sign(image: bytes, signer: Signer, extra_certs: Sequence[x509.Certificate] = (),
         *, append: bool = False) -> bytes:
    """Sign a PE image.  With ``append`` an already signed image gets one more signature
    (the image hash does not change); otherwise a signed image is refused."""
    h = parse_pe(image)
    _require_cert_directory(h)
    if h.cert_table_size and not append:
        raise AuthenticodeError("image is already signed (add another signature or "
                                "remove the existing ones first)")
    buf = bytearray(image)  # the one copy of the image; everything else is in place
    if h.cert_table_size:
        _entries(image, h)  # validates the existing table
        table_at = h.cert_table_offset
    else:
        buf += bytes(round_up(len(buf), 8) - len(buf))  # hashed padding (§6.1)
        table_at = len(buf)
    digest = authenticode_digest(buf)
    buf += _win_certificate(build_signed_data(digest, signer, extra_certs))
    # The table and the directory entry are outside the hash, so the digest still holds.
    return _set_table(buf, h, table_at, len(buf) - table_at)


def add_signature(image: bytes, signer: Signer,
                  extra_certs: Sequence[x509.Certificate] = ()) -> bytes:
    """Append one more signature, keeping the existing ones (like sbsign does)."""
    return sign(image, signer, extra_certs, append=True)


def remove_signature(image: bytes, index: int) -> bytes:
    """Cut signature ``index`` out of the certificate table."""
    h = parse_pe(image)
    entries = _entries(image, h)
    if not 0 <= index < len(entries):
        raise AuthenticodeError(f"no signature #{index} (image has {len(entries)})")
    start = entries[index][2]
    end = entries[index + 1][2] if index + 1 < len(entries) else len(image)
    buf = bytearray(memoryview(image)[:start])
    buf += memoryview(image)[end:]
    size = h.cert_table_size - (end - start)
    return _set_table(buf, h, h.cert_table_offset if size else 0, size)


def remove_signatures(image: bytes) -> bytes:
    """The image with no certificate table (the §6.1 alignment padding stays)."""
    h = parse_pe(image)
    if not h.cert_table_size:
        return image
    _entries(image, h)
    return _set_table(bytearray(memoryview(image)[:h.cert_table_offset]), h, 0, 0)


# --- reading and verifying ------------------------------------------------------------------

@dataclass(frozen=True)
class SignatureInfo:
    index: int
    digest_algorithm: str
    image_digest: bytes          # the digest the signature claims
    signer_issuer: str
    signer_serial: int
    signer: x509.Certificate | None
    certificates: tuple[x509.Certificate, ...]
    content_der: bytes           # the PKCS#7 ContentInfo

    @property
    def signer_subject(self) -> str:
        return self.signer.subject.rfc4514_string() if self.signer else ""


@dataclass(frozen=True)
class SignatureCheck:
    info: SignatureInfo
    ok: bool
    reason: str   # "" when ok


def _first_line(e: Exception) -> str:
    """asn1crypto appends "while parsing ..." lines; one line is enough for a user."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _parse_all(value: core.Asn1Value) -> None:
    """Parse every typed element below ``value`` (which asn1crypto does lazily), raising
    on a wrong tag or bad content.  Opaque ANY values (attributes asn1crypto does not
    know, such as Microsoft's SpcSpOpusInfo with its context tags) are left to the DER
    walker: ``.native`` would guess their types and fail on valid signatures."""
    if isinstance(value, (core.Any, core.Void)):
        return
    if isinstance(value, core.Choice):
        _parse_all(value.chosen)
    elif isinstance(value, core.Sequence):
        for name in value:
            _parse_all(value[name])
    elif isinstance(value, (core.SequenceOf, core.SetOf)):
        for child in value:
            _parse_all(child)
    else:
        _ = value.native


def _require_canonical(value: core.Asn1Value) -> None:
    """``value`` parsed completely and encoded again is the same bytes: DER has one
    encoding per value, and what we did not check must not hide there."""
    original = bytes(value.dump())
    fresh = value.copy()  # keeps implicit tagging, unlike loading the bytes again
    _parse_all(fresh)
    if bytes(fresh.dump(force=True)) != original:
        raise ValueError(f"{type(value).__name__} is not in canonical DER")


def _parse_signature(index: int, der: bytes) -> tuple[SignatureInfo, cms.SignerInfo, bytes]:
    try:
        return _parse_signature_unchecked(index, der)
    except AuthenticodeError:
        raise
    except Exception as e:
        # Damaged PKCS#7 makes asn1crypto and cryptography raise all sorts of exception
        # types (ValueError, UnicodeDecodeError, UnsupportedAlgorithm, ...), lazily and
        # from deep inside; whatever it is, the signature is malformed, not our bug.
        raise AuthenticodeError(f"signature #{index} is malformed: {_first_line(e)}") from e


def _parse_signature_unchecked(index: int, der: bytes
                               ) -> tuple[SignatureInfo, cms.SignerInfo, bytes]:
    der = _strict_der(der)
    ci = cms.ContentInfo.load(der, strict=True)
    if ci["content_type"].native != "signed_data":
        raise AuthenticodeError(f"signature #{index} is not PKCS#7 SignedData")
    sd = ci["content"]
    for name in ("version", "digest_algorithms"):
        _require_canonical(sd[name])
    if sd["version"].native != "v1":  # ValueErrors here become "... is malformed: ..."
        raise ValueError(f"SignedData version {sd['version'].native}, not v1")
    eci = sd["encap_content_info"]
    if eci["content_type"].dotted != SPC_INDIRECT_DATA_OBJID:
        raise AuthenticodeError(f"signature #{index} does not sign SpcIndirectDataContent")
    idc_der = _content_octets(bytes(eci["content"].dump()))  # drop the [0] wrapper
    idc = SpcIndirectDataContent.load(idc_der, strict=True)
    algorithm = idc["message_digest"]["digest_algorithm"]["algorithm"].native
    claimed = bytes(idc["message_digest"]["digest"].native)
    certs = tuple(x509.load_der_x509_certificate(c.chosen.dump())
                  for c in sd["certificates"] or [] if c.name == "certificate")
    infos = sd["signer_infos"]
    if len(infos) != 1:
        raise AuthenticodeError(f"signature #{index} has {len(infos)} signers, not 1")
    si = infos[0]
    # Not unsignedAttrs: nothing reads them, and asn1crypto mis-models some real ones
    # (Microsoft's timestamp countersignatures); the DER walker has checked their form.
    for name in ("version", "sid", "digest_algorithm", "signed_attrs",
                 "signature_algorithm", "signature"):
        _require_canonical(si[name])
    if si["version"].native != "v1":
        raise ValueError(f"SignerInfo version {si['version'].native}, not v1")
    if si["digest_algorithm"]["algorithm"].native not in {
            a["algorithm"].native for a in sd["digest_algorithms"]}:
        raise ValueError("the signer's digest algorithm is not among digestAlgorithms")
    sid = si["sid"]
    if sid.name != "issuer_and_serial_number":
        raise AuthenticodeError(f"signature #{index} names its signer by key id")
    issuer_der = sid.chosen["issuer"].dump()
    serial = int(sid.chosen["serial_number"].native)
    signer = next((c for c in certs if c.serial_number == serial
                   and c.issuer.public_bytes() == issuer_der), None)
    issuer = (signer.issuer.rfc4514_string() if signer is not None
              else str(sid.chosen["issuer"].human_friendly))
    # Parse every field verification reads (asn1crypto and cryptography parse lazily),
    # so that a damaged one fails here, as "malformed".
    _ = (si["digest_algorithm"]["algorithm"].native, si["signature"].native,
         [(c.public_key(), c.subject.rfc4514_string()) for c in certs])
    info = SignatureInfo(index=index, digest_algorithm=str(algorithm), image_digest=claimed,
                         signer_issuer=issuer, signer_serial=serial,
                         signer=signer, certificates=certs, content_der=der)
    return info, si, idc_der


def list_signatures(image: bytes) -> list[SignatureInfo]:
    """Every PKCS#7 signature in the certificate table, parsed but not verified;
    AuthenticodeError when one is malformed."""
    h = parse_pe(image)
    out: list[SignatureInfo] = []
    for rev, ctype, _, der in _entries(image, h):
        if rev == WIN_CERT_REVISION_2_0 and ctype == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            out.append(_parse_signature(len(out), der)[0])
    return out


def _chains_to(cert: x509.Certificate, pool: Sequence[x509.Certificate],
               trusted: Sequence[x509.Certificate]) -> bool:
    """Does ``cert`` equal or chain (through ``pool``) to a trusted certificate?
    Validity dates are ignored, as EDK2 does."""
    current = cert
    for _ in range(8):
        if current in trusted:
            return True
        for issuer in (*trusted, *pool):
            if issuer.subject != current.issuer or issuer == current:
                continue
            try:
                current.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if issuer in trusted:
                return True
            current = issuer
            break
        else:
            return False
    return False


def _check(image: bytes, index: int, der: bytes,
           trusted: Sequence[x509.Certificate] | None,
           image_digests: dict[str, bytes]) -> SignatureCheck:
    try:
        info, si, idc_der = _parse_signature(index, der)
    except AuthenticodeError as e:
        unknown = SignatureInfo(index=index, digest_algorithm="", image_digest=b"",
                                signer_issuer="", signer_serial=0, signer=None,
                                certificates=(), content_der=der)
        reason = str(e).removeprefix(f"signature #{index} ").removeprefix("is ")
        return SignatureCheck(unknown, False, reason)
    try:
        reason = _failure(image, info, si, idc_der, trusted, image_digests)
    except Exception as e:
        # As in _parse_signature: verifying damaged data can raise anything.
        reason = f"malformed: {_first_line(e)}"
    return SignatureCheck(info, not reason, reason)


def _failure(image: bytes, info: SignatureInfo, si: cms.SignerInfo, idc_der: bytes,
             trusted: Sequence[x509.Certificate] | None,
             image_digests: dict[str, bytes]) -> str:
    """Why the signature does not hold, or "" when it does."""
    if info.digest_algorithm not in HASHES:
        return f"unsupported digest algorithm {info.digest_algorithm}"
    if info.digest_algorithm not in image_digests:  # several signatures: hash once
        image_digests[info.digest_algorithm] = authenticode_digest(image,
                                                                   info.digest_algorithm)
    if image_digests[info.digest_algorithm] != info.image_digest:
        return "image hash does not match the signed hash"
    if info.signer is None:
        return "signer certificate is not included"
    digest = si["digest_algorithm"]["algorithm"].native
    if digest not in HASHES:
        return f"unsupported signer digest algorithm {digest}"
    content_hash = hashlib.new(digest, _content_octets(idc_der)).digest()
    attrs = si["signed_attrs"]
    if not isinstance(attrs, core.Void) and len(attrs):
        values = {a["type"].native: a["values"] for a in attrs}
        md = values.get("message_digest")
        ctype = values.get("content_type")
        if md is None or bytes(md[0].native) != content_hash:
            return "messageDigest attribute does not match the signed content"
        if ctype is None or ctype[0].dotted != SPC_INDIRECT_DATA_OBJID:
            return "contentType attribute is not SpcIndirectDataContent"
        signed = _der_set(bytes(attrs.contents))
    else:
        signed = _content_octets(idc_der)
    # The plain key algorithm, or key-with-hash naming the signer's digest (as OpenSSL).
    allowed = ({"ecdsa", f"{digest}_ecdsa"}
               if isinstance(info.signer.public_key(), ec.EllipticCurvePublicKey)
               else {"rsassa_pkcs1v15", f"{digest}_rsa"})
    if si["signature_algorithm"]["algorithm"].native not in allowed:
        return (f"signature algorithm {si['signature_algorithm']['algorithm'].dotted} does "
                "not match the signer's key")
    if not _check_signature(info.signer, bytes(si["signature"].native), signed, digest):
        return "signature does not verify with the signer's certificate"
    if trusted is not None and not _chains_to(info.signer, info.certificates, trusted):
        return "signer is not trusted by the given certificates"
    return ""


def verify(image: bytes,
           trusted_certs: Sequence[x509.Certificate] | None = None) -> list[SignatureCheck]:
    """Check every signature: image hash, PKCS#7 signature and, when ``trusted_certs``
    is given, that the signer is or chains to one of them.  A malformed signature is a
    failed check (firmware skips it too), not an error."""
    h = parse_pe(image)
    checks: list[SignatureCheck] = []
    image_digests: dict[str, bytes] = {}
    for rev, ctype, _, der in _entries(image, h):
        if rev == WIN_CERT_REVISION_2_0 and ctype == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            checks.append(_check(image, len(checks), der, trusted_certs, image_digests))
    return checks


def verify_image(image: bytes,
                 trusted_certs: Sequence[x509.Certificate] | None = None) -> SignatureCheck:
    """The first valid signature (firmware accepts an image if any signature is trusted);
    AuthenticodeError naming the reasons when none is."""
    checks = verify(image, trusted_certs)
    if not checks:
        raise AuthenticodeError("image is not signed")
    for c in checks:
        if c.ok:
            return c
    raise AuthenticodeError("; ".join(f"signature #{c.info.index}: {c.reason}" for c in checks))
