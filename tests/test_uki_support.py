"""Helpers shared by the PE/Authenticode/UKI/keys tests (no tests here).

Synthetic PE images (so most tests run without systemd-boot-efi), throw-away keys and
certificates, and wrappers for the independent checkers sbverify and osslsigncode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import need_tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def need_stub() -> bytes:
    if not STUB.exists():
        pytest.skip(f"{STUB} missing (apt-get install systemd-boot-efi)")
    return STUB.read_bytes()


def need_systemd_boot() -> bytes:
    if not SYSTEMD_BOOT.exists():
        pytest.skip(f"{SYSTEMD_BOOT} missing (apt-get install systemd-boot-efi)")
    return SYSTEMD_BOOT.read_bytes()


def make_pe(sections: Sequence[tuple[str, bytes]] = ((".text", b"\xc3" * 100),),
            *, trailing: bytes = b"", symbols: int = 0, file_alignment: int = 0x200,
            section_alignment: int = 0x1000, subsystem: int = 10) -> bytes:
    """A minimal PE32+ x86-64 EFI application; ``symbols`` > 0 appends a COFF symbol
    table (and string table) after ``trailing`` data, as old stubs have."""
    opt_size = 240
    table = 0x40 + 24 + opt_size
    headers = 0x400
    body = bytearray()
    shdrs = b""
    va = section_alignment
    raw = headers
    for name, data in sections:
        rsize = -(-len(data) // file_alignment) * file_alignment
        flags = 0x60000020 if name == ".text" else 0x40000040
        shdrs += struct.pack("<8sIIIIIIHHI", name.encode(), len(data), va, rsize, raw,
                             0, 0, 0, 0, flags)
        body += data + bytes(rsize - len(data))
        raw += rsize
        va += -(-len(data) // section_alignment) * section_alignment
    image_size = va
    tail = bytes(trailing)
    symptr = 0
    if symbols:
        symptr = headers + len(body) + len(tail)
        tail += bytes(18 * symbols) + struct.pack("<I", 8) + b"abcd"
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, symptr, symbols, opt_size, 0x22)
    opt = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 2, 0, 0x1000, 0, 0,
                      section_alignment, section_alignment, 0, section_alignment,
                      file_alignment, 0, 0, 0, 0, 0, 0, 0, image_size, headers, 0, subsystem,
                      0, 0, 0, 0, 0, 0, 16) + bytes(128)
    hdr = bytes(dos) + b"PE\0\0" + coff + opt + shdrs
    assert len(hdr) <= headers and table == 0x40 + 24 + opt_size
    return hdr + bytes(headers - len(hdr)) + bytes(body) + tail


def make_cert(cn: str, *, issuer: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None,
              ca: bool = False, key_size: int = 2048
              ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_key, issuer_name = (key, name) if issuer is None else (issuer[0], issuer[1].subject)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


def write_key_cert(tmp: Path, stem: str, key: rsa.RSAPrivateKey,
                   cert: x509.Certificate) -> tuple[Path, Path]:
    k, c = tmp / f"{stem}.key", tmp / f"{stem}.crt"
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return k, c


def sbverify_ok(cert: Path, image: Path) -> bool:
    tool = need_tool("sbverify")
    done = subprocess.run([tool, "--cert", str(cert), str(image)], capture_output=True,
                          text=True, check=False)
    return done.returncode == 0 and "Signature verification OK" in done.stdout


def sbverify_count(image: Path) -> int:
    tool = need_tool("sbverify")
    done = subprocess.run([tool, "--list", str(image)], capture_output=True, text=True,
                          check=False)
    return sum(1 for line in done.stdout.splitlines() if line.startswith("signature "))


def osslsigncode_ok(cert: Path, image: Path) -> bool:
    tool = need_tool("osslsigncode")
    done = subprocess.run([tool, "verify", "-CAfile", str(cert), "-in", str(image)],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and "Succeeded" in done.stdout


def cli(*argv: str) -> int:
    """Run our ``keys``/``uki`` commands without importing every CLI module."""
    from cfsboot.cli import keys, uki
    parser = argparse.ArgumentParser(prog="cfsboot")
    sub = parser.add_subparsers(dest="command", required=True)
    keys.register(sub)
    uki.register(sub)
    args = parser.parse_args(list(argv))
    rc: int = args.func(args)
    return rc
