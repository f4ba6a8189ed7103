"""Signing options shared by ``uki`` and ``seal``: a certificate plus one of a
key file, an external signing command, or a key in an OpenSSL engine/PKCS#11
token (like sbsign's ``--engine``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from cfsboot.boot import authenticode
from cfsboot.errors import CfsError


def add_signing_options(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("signing")
    g.add_argument("--cert", dest="sign_cert", metavar="FILE", required=required,
                   help="signing certificate (PEM or DER)")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--key", metavar="FILE|ID",
                     help="private key (PEM or DER, RSA), or the key id with --engine")
    how.add_argument("--sign-command", metavar="CMD",
                     help="external signer: DER attributes on stdin, raw signature on stdout")
    how.add_argument("--pkcs11-uri", metavar="URI",
                     help="key in a PKCS#11 token (same as --engine pkcs11 --key URI)")
    g.add_argument("--engine", metavar="NAME",
                   help="OpenSSL engine holding --key (e.g. pkcs11), like sbsign --engine")
    g.add_argument("--pkcs11-module", metavar="LIB",
                   help="PKCS#11 library for the pkcs11 engine (PKCS11_MODULE_PATH)")
    g.add_argument("--extra-cert", action="append", default=[], metavar="FILE",
                   help="intermediate certificate to embed, repeatable")


def signer_from_args(args: argparse.Namespace) -> authenticode.Signer | None:
    if not args.sign_cert:
        if args.key or args.sign_command or args.pkcs11_uri:
            raise CfsError("--key/--sign-command/--pkcs11-uri need --cert")
        return None
    cert = authenticode.load_certificate(Path(args.sign_cert).read_bytes())
    if args.pkcs11_uri or (args.engine and args.key):
        engine = args.engine or "pkcs11"
        key_id = args.pkcs11_uri or args.key
        return authenticode.engine_signer(engine, key_id, cert, module=args.pkcs11_module)
    if args.engine:
        raise CfsError("--engine needs --key with the engine's key id")
    if args.key:
        key = authenticode.load_private_key(Path(args.key).read_bytes())
        return authenticode.KeySigner(key, cert)
    if args.sign_command:
        return authenticode.CommandSigner(args.sign_command, cert)
    raise CfsError("--cert needs --key, --sign-command or --pkcs11-uri")


def extra_certs_from_args(args: argparse.Namespace) -> list[x509.Certificate]:
    return [authenticode.load_certificate(Path(f).read_bytes()) for f in args.extra_cert]
