"""Unified kernel images: assembly the way ``ukify build`` lays them out, and inspection.

Spec ``uki-and-signing.md`` §2-§5.  Pure functions over bytes: the caller reads the
stub, kernel, initrds and text inputs and writes the result.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cfsboot.boot import authenticode
from cfsboot.boot.pe import (
    MACHINES,
    SUBSYSTEM_EFI_APPLICATION,
    PeFormatError,
    PeHeaders,
    add_sections,
    clear_dll_characteristics,
    parse_pe,
)
from cfsboot.errors import CfsError

SBAT_HEADER = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"
UKI_SBAT = (SBAT_HEADER + "\n"
            "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n")
ADDON_SBAT = (SBAT_HEADER + "\n"
              "uki-addon,1,UKI Addon,addon,1,"
              "https://www.freedesktop.org/software/systemd/man/latest/systemd-stub.html\n")
TEXT_SECTIONS = (".cmdline", ".osrel", ".uname", ".sbat", ".pcrpkey", ".pcrsig", ".profile")
COMPOSEFS_HEX_LENGTHS = (64, 128)  # sha256 / sha512 fs-verity digests
# ukify changed its layout after systemd 257: "258" puts .linux before .initrd and ends
# .sbat with a newline only; "257" (the spec's §3.4 order) keeps .linux after the small
# sections and ends .sbat with "\n\0".  (The exact release of the change is unsure.)
LAYOUTS = ("257", "258")
# Sections a stub must not have: their presence means the "stub" is already a UKI.
UKI_PAYLOAD_SECTIONS = (".linux", ".initrd", ".cmdline", ".uname", ".ucode")
DLL_NX_COMPAT = 0x0100


class UkiError(CfsError):
    """A UKI cannot be built or is not what it should be."""


def default_stub_path(efi_arch: str = "x64", addon: bool = False) -> str:
    kind = "addon" if addon else "linux"
    return f"/usr/lib/systemd/boot/efi/{kind}{efi_arch}.efi.stub"


@dataclass(frozen=True)
class UkiInputs:
    """Section payloads, already read; ``None`` means "no such section"."""
    linux: bytes | None = None
    initrds: Sequence[bytes] = ()
    cmdline: bytes | None = None
    os_release: bytes | None = None
    uname: bytes | None = None
    devicetree: bytes | None = None
    splash: bytes | None = None
    pcrpkey: bytes | None = None
    microcode: bytes | None = None
    sbat: Sequence[str] = ()               # user SBAT texts; default: the UKI/addon line
    extra_sections: Sequence[tuple[str, bytes]] = ()


def normalize_cmdline(text: str) -> str:
    """What ukify does to an inline ``--cmdline``: collapse and trim whitespace."""
    return " ".join(text.split())


def join_initrds(initrds: Sequence[bytes]) -> bytes | None:
    """One initrd verbatim; several each zero-padded to 4 bytes and concatenated."""
    if not initrds:
        return None
    if len(initrds) == 1:
        return initrds[0]
    return b"".join(i + bytes(-len(i) % 4) for i in initrds)


def _sbat_lines(text: str) -> list[str] | None:
    lines = text.splitlines()
    if not lines or not lines[0].startswith("sbat,"):
        return None
    return lines[1:]


def merge_sbat(pe_images: Sequence[bytes], texts: Sequence[str],
               layout: str = "257") -> bytes:
    """The final ``.sbat``: one header, then the entries of the stub's and kernel's
    ``.sbat`` sections and of the user texts (§3.5).  PE inputs without a valid SBAT
    section are skipped, as ukify does."""
    entries: list[str] = []
    for image in pe_images:
        try:
            h = parse_pe(image)
        except PeFormatError:
            continue  # a non-PE kernel has no SBAT to merge
        s = h.section(".sbat")
        if s is not None:
            lines = _sbat_lines(s.data(image).rstrip(b"\0").decode("utf-8", "replace"))
            entries += lines or []
    for text in texts:
        lines = _sbat_lines(text)
        if lines is None:
            raise UkiError("SBAT text does not start with an 'sbat,' header line")
        entries += lines
    text = "\n".join([SBAT_HEADER, *entries]) + "\n"
    return (text + "\0" if layout == "257" else text).encode()


def uki_sections(stub: bytes, inputs: UkiInputs,
                 layout: str = "257") -> list[tuple[str, bytes]]:
    """The sections ukify would add, in its order (§3.4)."""
    if layout not in LAYOUTS:
        raise UkiError(f"unknown ukify layout {layout!r} (one of {', '.join(LAYOUTS)})")
    initrd = join_initrds(inputs.initrds)
    small: list[tuple[str, bytes | None]] = [
        (".osrel", inputs.os_release), (".cmdline", inputs.cmdline),
        (".dtb", inputs.devicetree), (".uname", inputs.uname), (".splash", inputs.splash),
        (".pcrpkey", inputs.pcrpkey)]
    if layout == "257":
        ordered = [*small, (".initrd", initrd), (".ucode", inputs.microcode)]
        tail = [(".linux", inputs.linux)]
    else:
        ordered = [*small, (".linux", inputs.linux), (".initrd", initrd),
                   (".ucode", inputs.microcode)]
        tail = []
    out = [(name, data) for name, data in ordered if data]
    out += list(inputs.extra_sections)
    out += [(name, data) for name, data in tail if data is not None]
    if inputs.linux is not None:
        sbat = merge_sbat([stub, inputs.linux], inputs.sbat or [UKI_SBAT], layout)
    else:
        sbat = merge_sbat([], inputs.sbat or [ADDON_SBAT], layout)
    out.append((".sbat", sbat))
    names = [n for n, _ in out if n != ".dtb"]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UkiError(f"duplicate section {dupes[0]}")
    return out


def encode_text(text: str, what: str) -> bytes:
    """UTF-8 bytes of a command-line string.  argv arrives with undecodable bytes as
    lone surrogates, which must not become a traceback (or land in a UKI)."""
    try:
        return text.encode("utf-8", "strict")
    except UnicodeEncodeError as e:
        raise UkiError(f"{what} is not valid UTF-8 text") from e


def build_uki(stub: bytes, inputs: UkiInputs, layout: str = "257") -> bytes:
    """An unsigned UKI (or a PE addon when there is no ``.linux``)."""
    h = parse_pe(stub)
    if h.subsystem != SUBSYSTEM_EFI_APPLICATION:
        raise UkiError(f"stub is not an EFI application (subsystem {h.subsystem})")
    payload = sorted({s.name for s in h.sections} & set(UKI_PAYLOAD_SECTIONS))
    if payload:
        # Its old sections would shadow or mix with the new ones (an old .initrd with a
        # new .linux); a UKI is not a stub.
        raise UkiError(f"the stub already has a {payload[0]} section (is it a UKI?); "
                       "build from the plain systemd stub")
    if inputs.linux is not None and _lacks_nx_compat(inputs.linux):
        # The UKI must not claim NX compatibility its kernel lacks (newer ukify does this
        # too): firmware enforcing NX would otherwise fail to boot the kernel.  Cleared
        # on the small stub so the big image's checksum is computed only once.
        stub = clear_dll_characteristics(stub, DLL_NX_COMPAT)
    return add_sections(stub, uki_sections(stub, inputs, layout))


def _lacks_nx_compat(kernel: bytes) -> bool:
    try:
        return not parse_pe(kernel).dll_characteristics & DLL_NX_COMPAT
    except PeFormatError:
        return False  # not a PE (test payloads): nothing to compare with


# --- reading ----------------------------------------------------------------------------

def split_cmdline(cmdline: str) -> list[str]:
    """Split on whitespace except inside double quotes (no escapes), like the kernel."""
    return re.findall(r'(?:[^\s"]|"[^"]*"?)+', cmdline)


@dataclass(frozen=True)
class ComposefsKarg:
    digest: str
    insecure: bool   # "composefs=?<hex>": fs-verity optional


def composefs_karg(cmdline: str) -> ComposefsKarg | None:
    """The first ``composefs=[?]<hex>`` argument (bootc's reading), else the first
    ``composefs.digest=[?]v<n>-sha512-12:<hex>`` (composefs-rs's newer spelling)."""
    args = split_cmdline(cmdline)
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "composefs" and sep:
            insecure = value.startswith("?")
            return ComposefsKarg(value.removeprefix("?"), insecure)
    for arg in args:
        key, sep, value = arg.partition("=")
        if key == "composefs.digest" and sep:
            insecure = value.startswith("?")
            m = re.fullmatch(r"v\d+-sha(?:256|512)-\d+:([0-9a-fA-F]+)", value.removeprefix("?"))
            if m:
                return ComposefsKarg(m.group(1), insecure)
    return None


def parse_os_release(text: str) -> dict[str, str]:
    """os-release as a dict, de-quoting values shell-style; the last duplicate wins and a
    value with an unterminated quote is dropped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, raw = line.split("=", 1)
        value = _dequote(raw.strip())
        if value is not None:
            out[key.strip()] = value
    return out


def _dequote(raw: str) -> str | None:
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c in "\"'":
            end = i + 1
            piece = []
            while end < len(raw) and raw[end] != c:
                if c == '"' and raw[end] == "\\" and end + 1 < len(raw):
                    end += 1
                piece.append(raw[end])
                end += 1
            if end >= len(raw):
                return None
            out.append("".join(piece))
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def boot_label(os_release: dict[str, str]) -> str | None:
    name = next((os_release[k] for k in ("PRETTY_NAME", "NAME", "ID") if k in os_release),
                None)
    if name is None:
        return None
    version = next((os_release[k] for k in ("VERSION_ID", "VERSION") if k in os_release),
                   None)
    return f"{name} {version}" if version else name


@dataclass(frozen=True)
class SectionReport:
    name: str
    virtual_address: int
    virtual_size: int
    raw_size: int
    raw_pointer: int
    characteristics: int
    sha256: str
    text: str | None


@dataclass(frozen=True)
class UkiReport:
    machine: str
    subsystem: int
    sections: tuple[SectionReport, ...]
    is_addon: bool
    cmdline: str | None
    kargs: tuple[str, ...]
    composefs: ComposefsKarg | None
    uname: str | None
    os_release: dict[str, str]
    label: str | None
    boot_digest: str | None  # sha256(.linux || .initrd), bootc's kernel de-duplication key
    signatures: tuple[authenticode.SignatureInfo, ...] = field(default=())


def _text(data: bytes) -> str:
    """A text section for display: invalid UTF-8 is replaced rather than fatal, so a
    damaged UKI can still be inspected; trailing NULs (``.sbat``) are dropped."""
    return data.decode("utf-8", "replace").rstrip("\0")


def inspect_uki(image: bytes, *, signatures: bool = True) -> UkiReport:
    """Sections, command line, os-release and (unless ``signatures`` is false) the
    parsed signatures; a malformed signature is an AuthenticodeError."""
    h: PeHeaders = parse_pe(image)
    sections = []
    for s in h.sections:
        data = s.data(image)
        text = _text(data) if s.name in TEXT_SECTIONS else None
        sections.append(SectionReport(
            s.name, s.virtual_address, s.virtual_size, s.raw_size, s.raw_pointer,
            s.characteristics, hashlib.sha256(data).hexdigest(), text))

    def text_of(name: str) -> str | None:
        sec = h.section(name)
        return None if sec is None else _text(sec.data(image))

    cmdline = text_of(".cmdline")
    osrel = parse_os_release(text_of(".osrel") or "")
    linux, initrd = h.section(".linux"), h.section(".initrd")
    boot_digest = None
    if linux is not None and initrd is not None:
        md = hashlib.sha256(linux.data(image))
        md.update(initrd.data(image))
        boot_digest = md.hexdigest()
    return UkiReport(
        machine=MACHINES.get(h.machine, f"{h.machine:#06x}"), subsystem=h.subsystem,
        sections=tuple(sections), is_addon=linux is None, cmdline=cmdline,
        kargs=tuple(split_cmdline(cmdline or "")),
        composefs=composefs_karg(cmdline) if cmdline is not None else None,
        uname=text_of(".uname"), os_release=osrel, label=boot_label(osrel),
        boot_digest=boot_digest,
        signatures=tuple(authenticode.list_signatures(image)) if signatures else ())


def report_to_json(report: UkiReport) -> dict[str, Any]:
    """A JSON-ready dict; section objects carry ``size``/``sha256``/``text`` like
    ``ukify inspect --json`` (as a list, in table order, plus the PE geometry)."""
    return {
        "machine": report.machine,
        "subsystem": report.subsystem,
        "addon": report.is_addon,
        "sections": [{
            "name": s.name, "size": s.virtual_size, "sha256": s.sha256,
            **({"text": s.text} if s.text is not None else {}),
            "virtual_address": s.virtual_address, "raw_size": s.raw_size,
            "raw_pointer": s.raw_pointer, "characteristics": s.characteristics,
        } for s in report.sections],
        "cmdline": report.cmdline,
        "kargs": list(report.kargs),
        "composefs": None if report.composefs is None else {
            "digest": report.composefs.digest, "insecure": report.composefs.insecure},
        "uname": report.uname,
        "os_release": report.os_release,
        "label": report.label,
        "boot_digest": report.boot_digest,
        "signatures": [{
            "index": s.index, "digest_algorithm": s.digest_algorithm,
            "image_digest": s.image_digest.hex(), "signer": s.signer_subject,
            "issuer": s.signer_issuer, "serial": format(s.signer_serial, "x"),
        } for s in report.signatures],
    }


def check_uki(image: bytes, expected_digest: str | None = None) -> list[str]:
    """Structural problems per the §5.4 checklist (signatures are checked separately)."""
    problems = []
    report = inspect_uki(image, signatures=False)
    if report.subsystem != SUBSYSTEM_EFI_APPLICATION:
        problems.append(f"subsystem is {report.subsystem}, not an EFI application (10)")
    if report.is_addon:
        problems.append("not a UKI (no .linux section)")
    if report.composefs is None:
        problems.append("no composefs= argument in .cmdline")
    else:
        digest = report.composefs.digest
        if len(digest) not in COMPOSEFS_HEX_LENGTHS or not re.fullmatch(r"[0-9a-f]+", digest):
            problems.append(f"composefs digest {digest!r} is not 64 or 128 lowercase hex")
        if expected_digest is not None and digest != expected_digest.lower():
            problems.append(f"the UKI has the wrong composefs= parameter (is {digest!r}, "
                            f"should be {expected_digest.lower()!r})")
    sbat = parse_pe(image).section(".sbat")
    if sbat is None:
        problems.append("no .sbat section")
    else:
        data = sbat.data(image)
        if not data.startswith(b"sbat,1,") or not data.rstrip(b"\0").endswith(b"\n"):
            problems.append(".sbat does not start with 'sbat,1,' and end with a newline")
    return problems
