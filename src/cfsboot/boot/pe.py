"""PE/COFF images as bytes: header parsing, the PE checksum, appending sections.

Only what UKIs and Authenticode need (spec ``uki-and-signing.md`` §1, §3.3, §5.1).
Everything here is a pure function over ``bytes``; nothing touches files.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cfsboot.errors import CfsError

PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
SUBSYSTEM_EFI_APPLICATION = 0x0A
SECURITY_DIRECTORY = 4

SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_MEM_READ = 0x40000000
FILE_LOCAL_SYMS_STRIPPED = 0x0008

SECTION_HEADER_SIZE = 40
COFF_SYMBOL_SIZE = 18

MACHINES = {
    0x014C: "i386", 0x8664: "x86-64", 0x01C2: "arm", 0x01C4: "arm", 0xAA64: "aarch64",
    0x5064: "riscv64", 0x6264: "loongarch64",
}


class PeFormatError(CfsError):
    """The bytes are not a PE image we can handle."""


def round_up(x: int, alignment: int) -> int:
    return (x + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_pointer: int
    characteristics: int
    header_offset: int  # file offset of this section's 40-byte header

    def data(self, image: bytes) -> bytes:
        """The section's payload: ``VirtualSize`` bytes clamped to the raw size (§5.1)."""
        length = self.raw_size if self.virtual_size == 0 else min(self.virtual_size,
                                                                   self.raw_size)
        return image[self.raw_pointer:self.raw_pointer + length]


@dataclass(frozen=True)
class PeHeaders:
    pe_offset: int
    machine: int
    time_date_stamp: int
    pointer_to_symbol_table: int
    number_of_symbols: int
    characteristics: int
    opt_offset: int
    magic: int
    file_alignment: int
    section_alignment: int
    size_of_image: int
    size_of_headers: int
    checksum: int
    subsystem: int
    dll_characteristics: int
    section_table_offset: int
    sections: tuple[Section, ...]
    cert_table_offset: int  # DataDirectory[4].VirtualAddress: a file offset
    cert_table_size: int
    # False when NumberOfRvaAndSizes < 5 or the optional header is too short to hold
    # DataDirectory[4]: such an image has no place to declare a certificate table.
    has_cert_directory: bool = True

    @property
    def coff_offset(self) -> int:
        return self.pe_offset + 4

    @property
    def checksum_offset(self) -> int:
        return self.opt_offset + 64

    @property
    def cert_directory_offset(self) -> int:
        """File offset of the 8-byte DataDirectory[4] entry."""
        return self.opt_offset + (128 if self.magic == PE32_MAGIC else 144)

    def section(self, name: str) -> Section | None:
        """First section with this name (the base profile's, for multi-profile UKIs)."""
        return next((s for s in self.sections if s.name == name), None)


def _u16(data: bytes | bytearray, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes | bytearray, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def parse_pe(data: bytes | bytearray) -> PeHeaders:
    """Parse the headers and section table, checking every offset against the length."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise PeFormatError("not a PE image (no MZ header)")
    pe = _u32(data, 0x3C)
    if pe + 24 > len(data) or data[pe:pe + 4] != b"PE\0\0":
        raise PeFormatError("not a PE image (no PE signature)")
    coff = pe + 4
    nsec = _u16(data, coff + 2)
    optsz = _u16(data, coff + 16)
    opt = pe + 24
    if opt + optsz > len(data) or optsz < 2:
        raise PeFormatError("truncated PE optional header")
    magic = _u16(data, opt)
    if magic not in (PE32_MAGIC, PE32PLUS_MAGIC):
        raise PeFormatError(f"unknown PE optional header magic {magic:#x}")
    rva_count_off = 92 if magic == PE32_MAGIC else 108
    if optsz < rva_count_off + 4:
        raise PeFormatError("PE optional header too short")
    nrva = _u32(data, opt + rva_count_off)
    cert_dir = opt + rva_count_off + 4 + 8 * SECURITY_DIRECTORY
    has_cert_directory = nrva > SECURITY_DIRECTORY and cert_dir + 8 <= opt + optsz
    if has_cert_directory:
        cert_off, cert_size = struct.unpack_from("<II", data, cert_dir)
    else:
        cert_off, cert_size = 0, 0
    table = opt + optsz
    if table + SECTION_HEADER_SIZE * nsec > len(data):
        raise PeFormatError("truncated PE section table")
    sections = []
    for i in range(nsec):
        h = table + SECTION_HEADER_SIZE * i
        vsize, va, rsize, rptr = struct.unpack_from("<IIII", data, h + 8)
        s = Section(
            name=data[h:h + 8].rstrip(b"\0").decode("ascii", "replace"),
            virtual_size=vsize, virtual_address=va, raw_size=rsize, raw_pointer=rptr,
            characteristics=_u32(data, h + 36), header_offset=h)
        if rsize and rptr + min(rsize, vsize or rsize) > len(data):
            raise PeFormatError(f"section {s.name!r} extends past the end of the file")
        sections.append(s)
    return PeHeaders(
        pe_offset=pe, machine=_u16(data, coff), time_date_stamp=_u32(data, coff + 4),
        pointer_to_symbol_table=_u32(data, coff + 8), number_of_symbols=_u32(data, coff + 12),
        characteristics=_u16(data, coff + 18), opt_offset=opt, magic=magic,
        section_alignment=_u32(data, opt + 32), file_alignment=_u32(data, opt + 36),
        size_of_image=_u32(data, opt + 56), size_of_headers=_u32(data, opt + 60),
        checksum=_u32(data, opt + 64), subsystem=_u16(data, opt + 68),
        dll_characteristics=_u16(data, opt + 70),
        section_table_offset=table, sections=tuple(sections),
        cert_table_offset=cert_off, cert_table_size=cert_size,
        has_cert_directory=has_cert_directory)


def pe_checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The PE CheckSum (§1.2): the 16-bit little-endian words summed with end-around
    carry, plus the file length.  Since 0x10000 = 1 (mod 0xFFFF), the folded word sum is
    the whole file read as one little-endian integer, reduced mod 0xFFFF (0 becomes
    0xFFFF unless everything is zero) -- one pass in C instead of a Python loop.  The
    CheckSum field's share is subtracted from the residue instead of zeroing the field in
    a copy, so a 100 MB image is neither copied nor turned into a second huge integer."""
    value = int.from_bytes(data, "little")
    field = int.from_bytes(data[checksum_offset:checksum_offset + 4], "little")
    folded = (value % 0xFFFF - (field << 8 * checksum_offset) % 0xFFFF) % 0xFFFF
    if folded == 0 and value != field << 8 * checksum_offset:  # not all zero
        folded = 0xFFFF
    return (folded + len(data)) & 0xFFFFFFFF


def set_checksum(buf: bytearray) -> None:
    """Write the correct CheckSum into ``buf`` in place."""
    off = parse_pe(buf).checksum_offset
    struct.pack_into("<I", buf, off, pe_checksum(buf, off))


def with_checksum(data: bytes | bytearray) -> bytes:
    """A copy of ``data`` with a correct CheckSum field."""
    out = bytearray(data)
    set_checksum(out)
    return bytes(out)


def clear_dll_characteristics(data: bytes, mask: int) -> bytes:
    """A copy with ``mask`` bits cleared in DllCharacteristics and a fresh checksum."""
    h = parse_pe(data)
    out = bytearray(data)
    struct.pack_into("<H", out, h.opt_offset + 70, h.dll_characteristics & ~mask)
    set_checksum(out)
    return bytes(out)


def _strip_symbol_table(buf: bytearray, h: PeHeaders) -> bytearray:
    """Drop a COFF symbol table that trails the image (old stubs ship one)."""
    symtab = h.pointer_to_symbol_table
    if not symtab:
        return buf
    size = COFF_SYMBOL_SIZE * h.number_of_symbols
    if symtab + size + 4 <= len(buf):
        size += _u32(buf, symtab + size)  # string table length, counting itself
    if symtab + size != len(buf):
        return buf  # not at the end: leave it alone, it is hashed as trailing data
    del buf[symtab:]
    struct.pack_into("<II", buf, h.coff_offset + 8, 0, 0)
    struct.pack_into("<H", buf, h.coff_offset + 18,
                     h.characteristics | FILE_LOCAL_SYMS_STRIPPED)
    return buf


def _align_raw_sections(buf: bytearray, h: PeHeaders) -> bytearray:
    """Pad sections whose raw pointer/size are not FileAlignment multiples (odd stubs)."""
    fa = h.file_alignment
    shift = 0
    for s in h.sections:
        oldp = s.raw_pointer + shift if s.raw_pointer else 0
        newp, newsz = round_up(oldp, fa), round_up(s.raw_size, fa)
        padp, padsz = newp - oldp, newsz - s.raw_size
        if padp or padsz:
            buf[oldp + s.raw_size:oldp + s.raw_size] = bytes(padsz)
            buf[oldp:oldp] = bytes(padp)
        if newp != s.raw_pointer or newsz != s.raw_size:
            struct.pack_into("<II", buf, s.header_offset + 16, newsz, newp)
        shift += padp + padsz
    return buf


def add_sections(image: bytes, new_sections: Sequence[tuple[str, bytes]]) -> bytes:
    """Append named sections to an unsigned PE image, the way ``ukify`` lays them out.

    A name that already exists among the image's own sections (normally ``.sbat``) is
    replaced in place and must fit into its raw size.  New sections go after the last
    one in both file and memory; ``VirtualSize`` is the exact payload length.
    """
    h = parse_pe(image)
    if h.cert_table_offset or h.cert_table_size:
        raise PeFormatError("the stub is signed; refusing to add sections to a signed image")
    if h.file_alignment == 0 or h.section_alignment == 0:
        raise PeFormatError("PE image has zero file or section alignment")
    buf = _align_raw_sections(_strip_symbol_table(bytearray(image), h), h)
    h = parse_pe(buf)
    fa, sa = h.file_alignment, h.section_alignment
    size_of_headers = round_up(h.size_of_headers, fa)
    if h.sections and size_of_headers > min(
            (s.raw_pointer for s in h.sections if s.raw_size), default=size_of_headers):
        raise PeFormatError("PE headers overlap the first section")
    struct.pack_into("<I", buf, h.opt_offset + 60, size_of_headers)

    original = {s.name: s for s in reversed(h.sections)}  # first occurrence wins
    count = len(h.sections)
    last_va_end = max((s.virtual_address + s.virtual_size for s in h.sections), default=0)
    init_data = _u32(buf, h.opt_offset + 8)
    # New payloads are collected and joined once at the end: growing one bytearray by a
    # 100 MB kernel would copy it again on every reallocation.
    appended: list[bytes] = []
    end = len(buf)
    for name, payload in new_sections:
        if not name.isascii() or not 1 <= len(name) <= 8 or not name.isprintable():
            raise PeFormatError(f"bad PE section name {name!r} (1 to 8 printable ASCII)")
        old = original.get(name)
        if old is not None:
            if len(payload) > old.raw_size:
                raise PeFormatError(
                    f"{name} content ({len(payload)} bytes) does not fit into the stub's "
                    f"{name} section ({old.raw_size} bytes)")
            buf[old.raw_pointer:old.raw_pointer + old.raw_size] = payload + bytes(
                old.raw_size - len(payload))
            struct.pack_into("<I", buf, old.header_offset + 8, len(payload))
            continue
        hdr = h.section_table_offset + SECTION_HEADER_SIZE * count
        if hdr + SECTION_HEADER_SIZE > size_of_headers:
            raise PeFormatError(f"not enough PE header space to add section {name}")
        va = round_up(last_va_end, sa)
        raw_pointer = round_up(end, fa)
        raw_size = round_up(len(payload), fa)
        appended += [bytes(raw_pointer - end), payload, bytes(raw_size - len(payload))]
        end = raw_pointer + raw_size
        flags = SCN_MEM_READ | (SCN_CNT_CODE if name == ".linux" else SCN_CNT_INITIALIZED_DATA)
        buf[hdr:hdr + SECTION_HEADER_SIZE] = struct.pack(
            "<8sIIIIIIHHI", name.encode("ascii"), len(payload), va, raw_size, raw_pointer,
            0, 0, 0, 0, flags)
        count += 1
        last_va_end = va + len(payload)
        init_data = (init_data + len(payload)) & 0xFFFFFFFF
    struct.pack_into("<H", buf, h.coff_offset + 2, count)
    struct.pack_into("<I", buf, h.opt_offset + 8, init_data)
    struct.pack_into("<I", buf, h.opt_offset + 56, round_up(last_va_end, sa))
    out = bytearray().join([buf, *appended])
    set_checksum(out)
    return bytes(out)
