"""PE parsing, checksum and section appending, checked against pefile and the
worked example of uki-and-signing.md §3.7 (Debian's systemd 252 stub)."""

from __future__ import annotations

import pefile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_uki_support import make_pe, need_stub

from cfsboot.boot import pe

# (name, VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData, flags) from §3.7.
STUB_252_SECTIONS = [
    (".text", 0xBFF0, 0x4000, 0xC000, 0x400, 0x60000020),
    (".reloc", 0xC, 0x10000, 0x200, 0xC400, 0x42000040),
    (".data", 0x34B8, 0x11000, 0x3600, 0xC600, 0xC0000040),
    (".dynamic", 0x100, 0x15000, 0x200, 0xFC00, 0xC0000040),
    (".rela", 0xF30, 0x16000, 0x1000, 0xFE00, 0x40000040),
    (".dynsym", 0x18, 0x17000, 0x200, 0x10E00, 0x40000040),
    (".sbat", 0xE2, 0x19000, 0x200, 0x11000, 0x40000040),
    (".sdmagic", 0x34, 0x19100, 0x200, 0x11200, 0x40000040),
]


def pefile_checksum(data: bytes) -> int:
    return int(pefile.PE(data=data, fast_load=True).generate_checksum())


def test_parse_matches_pefile_on_synthetic_image() -> None:
    image = make_pe([(".text", b"\xc3" * 300), (".data", b"d" * 5000)])
    h = pe.parse_pe(image)
    ref = pefile.PE(data=image, fast_load=True)
    assert h.magic == pe.PE32PLUS_MAGIC and h.machine == 0x8664
    assert h.size_of_headers == ref.OPTIONAL_HEADER.SizeOfHeaders
    assert [(s.name, s.virtual_size, s.virtual_address, s.raw_size, s.raw_pointer)
            for s in h.sections] == [
        (r.Name.rstrip(b"\0").decode(), r.Misc_VirtualSize, r.VirtualAddress,
         r.SizeOfRawData, r.PointerToRawData) for r in ref.sections]
    assert h.checksum_offset == ref.OPTIONAL_HEADER.get_field_absolute_offset("CheckSum")
    sec = ref.OPTIONAL_HEADER.DATA_DIRECTORY[4]
    assert h.cert_directory_offset == sec.get_file_offset()


def test_parse_stub_matches_spec_table() -> None:
    stub = need_stub()
    h = pe.parse_pe(stub)
    if h.size_of_headers != 0x400 or len(stub) != 83297:
        pytest.skip("not the Debian systemd 252 stub of the spec's worked example")
    got = [(s.name, s.virtual_size, s.virtual_address, s.raw_size, s.raw_pointer,
            s.characteristics) for s in h.sections]
    assert got == STUB_252_SECTIONS
    assert h.pointer_to_symbol_table == 0x11400
    assert h.checksum == pe.pe_checksum(stub, h.checksum_offset)


@pytest.mark.parametrize("bad, message", [
    (b"", "no MZ"), (b"MZ" + bytes(100), "no PE signature"),
    (b"ELF" + bytes(100), "no MZ"),
])
def test_parse_rejects_garbage(bad: bytes, message: str) -> None:
    with pytest.raises(pe.PeFormatError, match=message):
        pe.parse_pe(bad)


def test_parse_rejects_truncated_section() -> None:
    image = make_pe([(".text", b"x" * 1000)])
    with pytest.raises(pe.PeFormatError, match="past the end"):
        pe.parse_pe(image[:0x500])


@pytest.mark.parametrize("extra", [b"", b"\x01", b"\xff\xfe\xfd"])
def test_checksum_matches_pefile(extra: bytes) -> None:
    image = make_pe([(".text", bytes(range(256)) * 9)], trailing=extra)
    assert pe.pe_checksum(image, pe.parse_pe(image).checksum_offset) == pefile_checksum(image)
    fixed = pe.with_checksum(image)
    assert pe.parse_pe(fixed).checksum == pefile_checksum(fixed)


def test_add_sections_worked_example() -> None:
    """§3.7: the exact VAs and raw offsets for bootc's five sections on the 252 stub."""
    stub = need_stub()
    if len(stub) != 83297:
        pytest.skip("not the Debian systemd 252 stub of the spec's worked example")
    out = pe.add_sections(stub, [(".osrel", b"o" * 40), (".cmdline", b"c" * 141),
                                 (".uname", b"u" * 10), (".initrd", b"i" * 5000),
                                 (".linux", b"l" * 70001)])
    h = pe.parse_pe(out)
    new = [(s.name, s.virtual_address, s.raw_pointer) for s in h.sections[8:]]
    assert new == [(".osrel", 0x19200, 0x11400), (".cmdline", 0x19400, 0x11600),
                   (".uname", 0x19600, 0x11800), (".initrd", 0x19800, 0x11A00),
                   (".linux", 0x1AC00, 0x12E00)]
    assert len(out) == 0x24000
    assert h.pointer_to_symbol_table == 0 and h.characteristics & pe.FILE_LOCAL_SYMS_STRIPPED
    assert h.size_of_image == pe.round_up(0x1AC00 + 70001, h.section_alignment)
    assert h.checksum == pefile_checksum(out)
    ref = pefile.PE(data=out, fast_load=True)
    assert not ref.get_warnings()
    assert ref.sections[-1].get_data(length=70001) == b"l" * 70001
    assert ref.sections[-1].Characteristics == 0x60000020 - 0x20000000  # CODE|READ


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([".osrel", ".cmdline", ".uname", ".initrd",
                                           ".linux", ".dtb", ".x"]),
                          st.binary(min_size=1, max_size=3000)),
                min_size=1, max_size=6, unique_by=lambda t: t[0]),
       st.binary(max_size=7))
def test_add_sections_pefile_roundtrip(sections: list[tuple[str, bytes]],
                                       trailing: bytes) -> None:
    base = make_pe([(".text", b"\xc3" * 77)], trailing=trailing, symbols=3)
    out = pe.add_sections(base, sections)
    ref = pefile.PE(data=out, fast_load=True)
    assert not ref.get_warnings()
    assert ref.FILE_HEADER.PointerToSymbolTable == 0
    assert ref.OPTIONAL_HEADER.CheckSum == ref.generate_checksum()
    got = {s.Name.rstrip(b"\0").decode(): s for s in ref.sections}
    prev_end = 0
    for name, data in sections:
        s = got[name]
        assert s.get_data(length=s.Misc_VirtualSize) == data
        assert s.Misc_VirtualSize == len(data)
        assert s.VirtualAddress % ref.OPTIONAL_HEADER.SectionAlignment == 0
        assert s.PointerToRawData % ref.OPTIONAL_HEADER.FileAlignment == 0
        assert s.VirtualAddress >= prev_end
        prev_end = s.VirtualAddress + s.Misc_VirtualSize
    assert ref.OPTIONAL_HEADER.SizeOfImage >= prev_end


def test_symbol_table_not_at_end_is_kept() -> None:
    base = make_pe([(".text", b"\xc3")], symbols=2) + b"extra"
    out = pe.add_sections(base, [(".osrel", b"x")])
    assert pe.parse_pe(out).pointer_to_symbol_table != 0


def test_existing_section_replaced_in_place() -> None:
    base = make_pe([(".text", b"\xc3" * 10), (".sbat", b"sbat,1,old\n\0")])
    out = pe.add_sections(base, [(".sbat", b"sbat,1,new,longer\n\0")])
    h = pe.parse_pe(out)
    assert [s.name for s in h.sections] == [".text", ".sbat"]
    assert h.section(".sbat").data(out) == b"sbat,1,new,longer\n\0"  # type: ignore[union-attr]
    with pytest.raises(pe.PeFormatError, match="does not fit"):
        pe.add_sections(base, [(".sbat", b"x" * 513)])


def test_unaligned_raw_sections_are_padded() -> None:
    image = bytearray(make_pe([(".text", b"\xc3" * 0x200), (".data", b"d" * 0x200)]))
    h = pe.parse_pe(bytes(image))
    # Make .data start 0x10 bytes early with an unaligned size, like a stripped old stub.
    data_hdr = h.sections[1].header_offset
    del image[0x600 - 0x10:0x600]
    image[data_hdr + 16:data_hdr + 24] = (0x1F0).to_bytes(4, "little") + (
        0x5F0).to_bytes(4, "little")
    out = pe.add_sections(bytes(image), [(".osrel", b"x")])
    h2 = pe.parse_pe(out)
    assert all(s.raw_pointer % 0x200 == 0 and s.raw_size % 0x200 == 0 for s in h2.sections)
    assert h2.section(".data").data(out)[:0x1F0] == b"d" * 0x1F0  # type: ignore[union-attr]


def test_header_space_exhausted() -> None:
    base = make_pe()
    room = (0x400 - pe.parse_pe(base).section_table_offset) // 40 - 1
    pe.add_sections(base, [(f".s{i}", b"x") for i in range(room)])
    with pytest.raises(pe.PeFormatError, match="not enough PE header space"):
        pe.add_sections(base, [(f".s{i}", b"x") for i in range(room + 1)])


@pytest.mark.parametrize("name", ["", ".toolongname", ".bad\n", ".\u00e4", ".\udcff"])
def test_bad_section_names(name: str) -> None:
    with pytest.raises(pe.PeFormatError, match="bad PE section name"):
        pe.add_sections(make_pe(), [(name, b"x")])


def test_signed_stub_refused() -> None:
    image = bytearray(make_pe())
    h = pe.parse_pe(bytes(image))
    image[h.cert_directory_offset:h.cert_directory_offset + 8] = bytes([0, 6, 0, 0, 8, 0, 0, 0])
    with pytest.raises(pe.PeFormatError, match="signed"):
        pe.add_sections(bytes(image), [(".osrel", b"x")])


@pytest.mark.parametrize("size, offset", [(0, 0x58), (64, 0x58), (4097, 0x59), (4096, 3)])
def test_checksum_without_copy_matches_zeroed_field(size: int, offset: int) -> None:
    """The in-place arithmetic equals the definition: sum with the field zeroed."""
    import random
    rng = random.Random(size + offset)
    data = bytearray(rng.randbytes(size)) if size else bytearray(0x60)
    data[offset:offset + 4] = b"\xff\xfe\xfd\xfc"
    zeroed = bytearray(data)
    zeroed[offset:offset + 4] = bytes(4)
    words = [int.from_bytes(zeroed[i:i + 2], "little") for i in range(0, len(zeroed), 2)]
    total = 0
    for w in words:
        total += w
        total = (total & 0xFFFF) + (total >> 16)
    assert pe.pe_checksum(data, offset) == (total + len(data)) & 0xFFFFFFFF
