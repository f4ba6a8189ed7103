"""``cfsboot uki build|inspect|verify|sign|resign``: unified kernel images and
Authenticode signatures on any PE image.

Signing takes the certificate (``--cert``) and one way to make the RSA signature:
``--key FILE`` (PEM or DER private key), or ``--sign-command CMD`` for HSMs and
remote signers.  The command is split like a shell would (not run by one), gets
the DER-encoded authenticated attributes on stdin and must print the raw
RSASSA-PKCS1-v1_5 signature over their SHA-256 on stdout, exiting 0.
``openssl dgst -sha256 -sign KEY`` is such a command.  A PKCS#11 token key is used
through OpenSSL's pkcs11 engine (libp11): ``--pkcs11-uri 'pkcs11:token=...;object=...'``
or, as with sbsign, ``--engine pkcs11 --key URI`` (``--pkcs11-module LIB`` picks the
token library).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cfsboot.atomic import atomic_write_bytes
from cfsboot.boot import authenticode, uki
from cfsboot.cli.signing_options import (
    add_signing_options,
    extra_certs_from_args,
    signer_from_args,
)
from cfsboot.errors import CfsError
from cfsboot.inputs import read_regular_file
from cfsboot.paths import same_file

# PE offsets and sizes are 32-bit, and firmware loads the whole UKI into memory: a
# UKI with a large initrd is a few hundred MiB, so more than this is a wrong path
# (a disk image, /dev/sda) rather than a PE image, and is refused before reading.
MAX_PE_SIZE = 2 << 30


def read_pe_file(path: str) -> bytes:
    """The bytes of the PE image ``path``: a regular file of at most MAX_PE_SIZE."""
    return read_regular_file(path, "PE image", MAX_PE_SIZE)


@contextmanager
def _about(path: str) -> Iterator[None]:
    """Prefix errors raised while parsing the image ``path`` with its name."""
    try:
        yield
    except CfsError as e:
        raise CfsError(f"{path}: {e}") from e

# Inputs that are "TEXT or @FILE" on the command line, as in ukify.


def _text_or_file(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    return uki.encode_text(value, what)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("uki", help="build, inspect, verify and sign UKIs",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    usub = p.add_subparsers(dest="uki_command", metavar="COMMAND", required=True)

    b = usub.add_parser("build", help="assemble a UKI from the systemd stub (like ukify build)")
    b.add_argument("--linux", metavar="FILE", help="kernel image [.linux]; omit for an addon")
    b.add_argument("--initrd", metavar="FILE", action="append", default=[],
                   help="initrd [.initrd], repeatable (concatenated, 4-byte aligned)")
    b.add_argument("--cmdline", metavar="TEXT|@FILE", help="kernel command line [.cmdline]")
    b.add_argument("--os-release", metavar="TEXT|@FILE",
                   help="os-release [.osrel] (default with --linux: /etc/os-release, "
                        "else /usr/lib/os-release)")
    b.add_argument("--uname", metavar="VERSION", help="kernel release [.uname]")
    b.add_argument("--devicetree", metavar="FILE", help="devicetree blob [.dtb]")
    b.add_argument("--splash", metavar="FILE", help="BMP splash image [.splash]")
    b.add_argument("--pcrpkey", metavar="FILE", help="PEM public key [.pcrpkey]")
    b.add_argument("--microcode", metavar="FILE", help="microcode cpio [.ucode]")
    b.add_argument("--sbat", metavar="TEXT|@FILE", action="append", default=[],
                   help="SBAT entries to merge [.sbat] (default: the uki/uki-addon line)")
    b.add_argument("--section", metavar="NAME:TEXT|@FILE", action="append", default=[],
                   help="extra section, repeatable")
    b.add_argument("--stub", metavar="FILE", help="stub (default: systemd's for --efi-arch)")
    b.add_argument("--efi-arch", default="x64",
                   choices=("x64", "ia32", "aa64", "arm", "riscv64", "loongarch64"))
    b.add_argument("--ukify-layout", choices=uki.LAYOUTS, default="257",
                   help="section order/.sbat ending of this ukify generation (default 257: "
                        ".linux last, .sbat NUL-terminated; 258: .linux before .initrd)")
    b.add_argument("--sign-kernel", action=argparse.BooleanOptionalAction, default=None,
                   help="also sign the .linux PE (default, as ukify: when signing and the "
                        "kernel is an unsigned PE)")
    b.add_argument("--output", "-o", required=True, metavar="FILE")
    add_signing_options(b, required=False)
    b.set_defaults(func=run_build)

    i = usub.add_parser("inspect", help="list sections, cmdline, composefs digest, signatures")
    i.add_argument("image", metavar="FILE")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=run_inspect)

    v = usub.add_parser("verify", help="check UKI structure and Authenticode signatures")
    v.add_argument("image", metavar="FILE")
    v.add_argument("--cert", action="append", default=[], metavar="FILE",
                   help="trusted certificate (db); repeatable. Without it signatures are "
                        "checked for integrity only")
    v.add_argument("--expect-digest", metavar="HEX", help="required composefs= digest")
    v.add_argument("--pe-only", action="store_true",
                   help="only check signatures (any PE image, not necessarily a UKI)")
    v.add_argument("--allow-unsigned", action="store_true", help="do not require a signature")
    v.set_defaults(func=run_verify)

    for name, helptext in (("sign", "add an Authenticode signature to a PE image"),
                           ("resign", "replace all signatures by a new one")):
        s = usub.add_parser(name, help=helptext)
        s.add_argument("image", metavar="FILE")
        s.add_argument("--output", "-o", metavar="FILE", help="default: overwrite FILE")
        if name == "sign":
            s.add_argument("--append", action="store_true",
                           help="add a signature to an already signed image")
        add_signing_options(s, required=True)
        s.set_defaults(func=run_sign if name == "sign" else run_resign)


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CfsError(f"{what} is not UTF-8 text: {e}") from e


def _read_optional(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def run_build(args: argparse.Namespace) -> int:
    sections = [_section_spec(spec) for spec in args.section]
    _check_not_an_input(args.output, _build_inputs(args) + _signing_inputs(args), "UKI")
    signer = signer_from_args(args)  # bad signing options fail before any input is read
    _check_output(args.output)
    extra = [(name, _text_or_file(content, f"--section {name}") or b"")
             for name, content in sections]
    stub_path = _stub_path(args)
    stub = read_pe_file(stub_path)
    cmdline = None
    if args.cmdline is not None:
        cmdline = (Path(args.cmdline[1:]).read_bytes() if args.cmdline.startswith("@")
                   else uki.encode_text(uki.normalize_cmdline(args.cmdline), "--cmdline"))
    os_release = _text_or_file(args.os_release, "--os-release")
    if os_release is None and args.linux is not None:
        default = "/etc/os-release" if os.path.exists("/etc/os-release") else \
            "/usr/lib/os-release"
        os_release = Path(default).read_bytes()
    linux = _read_optional(args.linux)
    if linux is not None and signer is not None and args.sign_kernel is not False:
        linux = _maybe_sign_kernel(linux, signer, forced=bool(args.sign_kernel))
    inputs = uki.UkiInputs(
        linux=linux,
        initrds=[Path(f).read_bytes() for f in args.initrd],
        cmdline=cmdline, os_release=os_release,
        uname=uki.encode_text(args.uname, "--uname") if args.uname else None,
        devicetree=_read_optional(args.devicetree), splash=_read_optional(args.splash),
        pcrpkey=_read_optional(args.pcrpkey), microcode=_read_optional(args.microcode),
        sbat=[_decode(_text_or_file(s, "--sbat") or b"", "--sbat") for s in args.sbat],
        extra_sections=extra)
    image = uki.build_uki(stub, inputs, args.ukify_layout)
    if signer is not None:
        image = authenticode.sign(image, signer, extra_certs_from_args(args))
    _atomic_write(args.output, image, 0o755)
    print(f"wrote {'signed' if signer else 'unsigned'} {args.output}", file=sys.stderr)
    return 0


def _maybe_sign_kernel(kernel: bytes, signer: authenticode.Signer, forced: bool) -> bytes:
    """ukify's --sign-kernel: an unsigned PE kernel gets signed with the UKI's key."""
    try:
        signed = bool(authenticode.list_signatures(kernel))
    except CfsError:
        if forced:
            raise
        return kernel  # not a PE: nothing to sign
    if signed and not forced:
        return kernel
    return authenticode.sign(kernel, signer, append=True)


def run_inspect(args: argparse.Namespace) -> int:
    image = read_pe_file(args.image)
    with _about(args.image):
        report = uki.inspect_uki(image)
    if args.json:
        json.dump(uki.report_to_json(report), sys.stdout, indent=2)
        print()
        return 0
    print(f"machine: {report.machine}  subsystem: {report.subsystem}"
          f"{'  (addon: no .linux)' if report.is_addon else ''}")
    print(f"{'section':<9} {'vaddr':>10} {'vsize':>10} {'rawsize':>10} {'rawptr':>10}  sha256")
    for s in report.sections:
        print(f"{s.name:<9} {s.virtual_address:#10x} {s.virtual_size:#10x} "
              f"{s.raw_size:#10x} {s.raw_pointer:#10x}  {s.sha256}")
    if report.cmdline is not None:
        print(f"cmdline: {report.cmdline}")
        print(f"kargs: {len(report.kargs)}")
        for k in report.kargs:
            print(f"  {k}")
    if report.composefs is not None:
        flag = " (fs-verity optional: unsealed)" if report.composefs.insecure else ""
        print(f"composefs: {report.composefs.digest}{flag}")
    if report.uname is not None:
        print(f"uname: {report.uname}")
    if report.label is not None:
        print(f"os: {report.label}")
    for key, value in report.os_release.items():
        print(f"  {key}={value}")
    if report.boot_digest is not None:
        print(f"boot digest: {report.boot_digest}")
    sbat = next((s for s in report.sections if s.name == ".sbat"), None)
    if sbat is not None and sbat.text is not None:
        print("sbat:")
        for line in sbat.text.splitlines():
            print(f"  {line}")
    print(f"signatures: {len(report.signatures)}")
    for sig in report.signatures:
        print(f"  #{sig.index}: {sig.signer_subject or '(signer certificate missing)'} "
              f"issuer {sig.signer_issuer} serial {sig.signer_serial:x} "
              f"{sig.digest_algorithm} {sig.image_digest.hex()}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    image = read_pe_file(args.image)
    trusted = [authenticode.load_certificate(Path(f).read_bytes()) for f in args.cert]
    with _about(args.image):
        problems = [] if args.pe_only else uki.check_uki(image, args.expect_digest)
        checks = authenticode.verify(image, trusted or None)
    for c in checks:
        state = "OK" if c.ok else f"FAILED: {c.reason}"
        print(f"signature #{c.info.index} ({c.info.signer_subject or '?'}): {state}")
    if not checks and not args.allow_unsigned:
        problems.append("image is not signed")
    elif checks and not any(c.ok for c in checks):
        problems.append("no signature verifies")
    if any(p.startswith("not a UKI") for p in problems):
        problems.append("use --pe-only to check only the signatures of another PE image")
    for problem in problems:
        print(f"cfsboot: {args.image}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.image}: OK")
    return 0


def _section_spec(spec: str) -> tuple[str, str]:
    """``NAME:TEXT|@FILE`` split into name and content."""
    name, sep, content = spec.partition(":")
    if not sep or not name:
        raise CfsError(f"bad --section {spec!r} (want NAME:TEXT or NAME:@FILE)")
    return name, content


def _stub_path(args: argparse.Namespace) -> str:
    """--stub, else the host's stub for a UKI (or for an addon, without --linux)."""
    return args.stub or uki.default_stub_path(args.efi_arch, addon=args.linux is None)


def _at_file(value: str | None) -> list[str]:
    """The file of a ``TEXT|@FILE`` value, if it names one."""
    return [value[1:]] if value is not None and value.startswith("@") else []


def _build_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(option, file) for every file ``uki build`` reads, defaults included."""
    files: list[tuple[str, str]] = []
    for option, value in (("--linux", args.linux), ("--devicetree", args.devicetree),
                          ("--splash", args.splash), ("--pcrpkey", args.pcrpkey),
                          ("--microcode", args.microcode)):
        if value is not None:
            files.append((option, value))
    files += [("--initrd", f) for f in args.initrd]
    files += [("--cmdline", f) for f in _at_file(args.cmdline)]
    files += [("--sbat", f) for s in args.sbat for f in _at_file(s)]
    files += [("--section", f) for s in args.section for f in _at_file(s.partition(":")[2])]
    files.append(("--stub", _stub_path(args)))
    if args.os_release is not None:
        files += [("--os-release", f) for f in _at_file(args.os_release)]
    elif args.linux is not None:
        files += [("--os-release", f) for f in ("/etc/os-release", "/usr/lib/os-release")]
    return files


def _signing_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(option, file) for the key material and libraries signing reads."""
    files = [("--extra-cert", f) for f in args.extra_cert]
    if args.sign_cert:
        files.append(("--cert", args.sign_cert))
    if args.key and not args.engine:  # with --engine, --key is the engine's key id
        files.append(("--key", args.key))
    if args.pkcs11_module:
        files.append(("--pkcs11-module", args.pkcs11_module))
    return files


def _check_not_an_input(out: str, inputs: list[tuple[str, str]], what: str,
                        label: str = "--output") -> None:
    """Refuse an output that is one of the inputs: the atomic write would replace
    a file the user still needs (a kernel, a stub, a private key)."""
    for option, path in inputs:
        if same_file(out, path):
            raise CfsError(f"{label} {out} is also the {option} input; write the {what} "
                           "elsewhere")


def _check_output(out: str) -> None:
    """Fail before any work (or HSM signing) when ``out`` cannot be written, naming it
    rather than the temporary file the atomic write would fail on."""
    if os.path.isdir(out):
        raise CfsError(f"{out}: is a directory (--output names the file to write)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CfsError(f"{out}: directory {parent} does not exist")


def _atomic_write(out: str, image: bytes, mode: int) -> None:
    try:
        atomic_write_bytes(out, image, mode)
    except OSError as e:  # name the output, not the temporary file the error is about
        raise CfsError(f"cannot write {out}: {e.strerror or e}") from e


def _output_and_mode(args: argparse.Namespace) -> tuple[str, int]:
    """Where a signed image goes and with which mode.  In place, a symlink's target is
    replaced (the link stays a link) and the file keeps its mode; a new ``--output``
    file gets 0755 like sbsign's, an existing one keeps its mode."""
    out = args.output or os.path.realpath(args.image)
    # The image itself may be the output (signing in place); its key material may not.
    _check_not_an_input(args.output or args.image, _signing_inputs(args), "signed image",
                        "--output" if args.output else "FILE")
    _check_output(out)
    try:
        mode = os.stat(out).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o755
    return out, mode


def _write_signed(out: str, mode: int, image: bytes) -> int:
    _atomic_write(out, image, mode)
    count = len(authenticode.list_signatures(image))
    print(f"wrote {out} ({count} signature{'s' if count != 1 else ''})", file=sys.stderr)
    return 0


def run_sign(args: argparse.Namespace) -> int:
    signer = signer_from_args(args)
    assert signer is not None
    out, mode = _output_and_mode(args)
    image = read_pe_file(args.image)
    with _about(args.image):  # signing errors after this are the signer's, not the image's
        signed = bool(authenticode.list_signatures(image))
    if signed and not args.append:
        raise CfsError(f"{args.image} is already signed (use --append to add a signature, "
                       "or 'uki resign' to replace)")
    return _write_signed(out, mode, authenticode.sign(image, signer, extra_certs_from_args(args),
                                                 append=True))


def run_resign(args: argparse.Namespace) -> int:
    signer = signer_from_args(args)
    assert signer is not None
    out, mode = _output_and_mode(args)
    data = read_pe_file(args.image)
    with _about(args.image):
        image = authenticode.remove_signatures(data)
    return _write_signed(out, mode, authenticode.sign(image, signer, extra_certs_from_args(args)))
