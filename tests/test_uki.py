"""UKI assembly and inspection: section layout against the spec and pefile, against
systemd's ukify when it is available, and the CLI end to end with sbverify."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pefile
import pytest
from test_uki_support import (
    STUB,
    cli,
    make_pe,
    need_stub,
    need_systemd_boot,
    osslsigncode_ok,
    sbverify_ok,
)

from cfsboot.boot import authenticode as ac
from cfsboot.boot import pe, uki
from cfsboot.errors import CfsError

DIGEST = "3f9a" + "0123456789abcdef" * 7 + "0123456789ab"  # 128 hex
OS_RELEASE = (b'NAME="Fedora Linux"\nVERSION_ID=41\nID=fedora\n'
              b'PRETTY_NAME="Fedora Linux 41 (Forty One)"\n')


def sections_of(image: bytes) -> list[tuple[str, bytes]]:
    """Independent reading through pefile: (name, VirtualSize bytes) per section."""
    ref = pefile.PE(data=image, fast_load=True)
    assert not ref.get_warnings()
    return [(s.Name.rstrip(b"\0").decode(), s.get_data(length=s.Misc_VirtualSize))
            for s in ref.sections]


def bootc_inputs(**kw: object) -> uki.UkiInputs:
    args: dict[str, object] = dict(
        linux=b"\x4d\x5a-not-really-a-kernel" + bytes(range(256)) * 300,
        initrds=[b"070701" + b"c" * 4999], os_release=OS_RELEASE,
        cmdline=f"rw console=ttyS0,115200n8 composefs={DIGEST}".encode(),
        uname=b"6.12.0-100.fc41.x86_64")
    args.update(kw)
    return uki.UkiInputs(**args)  # type: ignore[arg-type]


def test_bootc_uki_sections_and_order() -> None:
    stub = need_stub()
    inputs = bootc_inputs()
    image = uki.build_uki(stub, inputs)
    got = sections_of(image)
    names = [n for n, _ in got]
    stub_names = [s.name for s in pe.parse_pe(stub).sections]
    assert names == [*stub_names, ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    data = dict(got)
    assert data[".osrel"] == OS_RELEASE
    assert data[".cmdline"] == inputs.cmdline
    assert data[".uname"] == b"6.12.0-100.fc41.x86_64"
    assert data[".initrd"] == inputs.initrds[0]
    assert data[".linux"] == inputs.linux
    sbat = data[".sbat"]
    assert sbat.startswith(uki.SBAT_HEADER.encode() + b"\n") and sbat.endswith(b"\n\0")
    lines = sbat.rstrip(b"\0").decode().splitlines()
    assert lines.count(uki.SBAT_HEADER) == 1
    assert lines[-1] == uki.UKI_SBAT.splitlines()[-1]
    stub_sbat = pe.parse_pe(stub).section(".sbat").data(stub)  # type: ignore[union-attr]
    assert lines[1:-1] == stub_sbat.rstrip(b"\0").decode().splitlines()[1:]
    # rebuilding is deterministic
    assert uki.build_uki(stub, inputs) == image


def test_layout_258_order_and_sbat() -> None:
    stub = need_stub()
    image = uki.build_uki(stub, bootc_inputs(), layout="258")
    names = [n for n, _ in sections_of(image)]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".linux", ".initrd"]
    assert dict(sections_of(image))[".sbat"].endswith(b"/\n")
    with pytest.raises(uki.UkiError, match="unknown ukify layout"):
        uki.build_uki(stub, bootc_inputs(), layout="999")


def test_every_optional_section_on_synthetic_stub() -> None:
    stub = make_pe([(".text", b"\xc3" * 64), (".sbat", b"sbat,1,x\nstub,1,S,stub,1,u\n\0")])
    inputs = bootc_inputs(
        initrds=[b"a" * 5, b"bb", b"c" * 8], devicetree=b"\xd0\x0d\xfe\xed",
        splash=b"BM" + bytes(60), pcrpkey=b"-----BEGIN PUBLIC KEY-----\n",
        microcode=b"ucode", extra_sections=[(".extra", b"hello")],
        sbat=["sbat,1,SBAT Version,sbat,1,x\nmine,1,Me,mine,1,https://example.com\n"])
    got = sections_of(uki.build_uki(stub, inputs))
    assert [n for n, _ in got] == [
        ".text", ".sbat", ".osrel", ".cmdline", ".dtb", ".uname", ".splash", ".pcrpkey",
        ".initrd", ".ucode", ".extra", ".linux"]
    data = dict(got)
    assert data[".initrd"] == b"a" * 5 + b"\0" * 3 + b"bb\0\0" + b"c" * 8
    assert data[".sbat"] == (uki.SBAT_HEADER + "\nstub,1,S,stub,1,u\n"
                             "mine,1,Me,mine,1,https://example.com\n\0").encode()


def test_kernel_sbat_is_merged_and_nx_follows_kernel() -> None:
    """A PE kernel's own .sbat entries are merged; NX_COMPAT is dropped when the kernel
    does not declare it."""
    kernel = make_pe([(".text", b"\xc3"), (".sbat", b"sbat,1,h\nlinux,1,Linux,linux,6,u\n\0")])
    stub = bytearray(make_pe([(".text", b"\x90"), (".sbat", b"sbat,1,h\n\0")]))
    h = pe.parse_pe(bytes(stub))
    struct.pack_into("<H", stub, h.opt_offset + 70, uki.DLL_NX_COMPAT)
    image = uki.build_uki(bytes(stub), bootc_inputs(linux=kernel))
    sbat = dict(sections_of(image))[".sbat"].decode()
    assert "linux,1,Linux,linux,6,u\n" in sbat
    assert pe.parse_pe(image).dll_characteristics & uki.DLL_NX_COMPAT == 0
    assert pe.parse_pe(uki.build_uki(bytes(stub), bootc_inputs())).dll_characteristics \
        == uki.DLL_NX_COMPAT  # a non-PE payload leaves it alone


def test_addon_has_no_linux_and_addon_sbat() -> None:
    stub = make_pe([(".text", b"\xc3")])
    image = uki.build_uki(stub, uki.UkiInputs(cmdline=b"quiet"))
    data = dict(sections_of(image))
    assert ".linux" not in data
    assert data[".sbat"] == (uki.ADDON_SBAT + "\0").encode()
    report = uki.inspect_uki(image)
    assert report.is_addon
    assert "no .linux section" in " ".join(uki.check_uki(image))


def test_errors() -> None:
    stub = make_pe([(".text", b"\xc3"), (".sbat", b"sbat,1,h\n\0")])
    with pytest.raises(uki.UkiError, match=r"duplicate section \.osrel"):
        uki.build_uki(stub, bootc_inputs(extra_sections=[(".osrel", b"x")]))
    with pytest.raises(pe.PeFormatError, match="does not fit"):
        uki.build_uki(stub, bootc_inputs(sbat=["sbat,1,h\n" + "x,1,y\n" * 200]))
    with pytest.raises(uki.UkiError, match="'sbat,' header"):
        uki.build_uki(stub, bootc_inputs(sbat=["no header"]))
    with pytest.raises(uki.UkiError, match="not an EFI application"):
        uki.build_uki(make_pe(subsystem=3), bootc_inputs())


def test_inspect_derived_values() -> None:
    stub = make_pe([(".text", b"\xc3")])
    inputs = bootc_inputs(cmdline=f'quiet x="a b" composefs=?{DIGEST}'.encode(),
                          initrds=[b"one", b"two!"])
    image = uki.build_uki(stub, inputs)
    r = uki.inspect_uki(image)
    assert r.kargs == ("quiet", 'x="a b"', f"composefs=?{DIGEST}")
    assert r.composefs == uki.ComposefsKarg(DIGEST, insecure=True)
    assert r.uname == "6.12.0-100.fc41.x86_64"
    assert r.os_release["VERSION_ID"] == "41"
    assert r.label == "Fedora Linux 41 (Forty One) 41"
    assert r.boot_digest == hashlib.sha256(inputs.linux + b"one\0" + b"two!").hexdigest()  # type: ignore[operator]
    j = uki.report_to_json(r)
    assert json.loads(json.dumps(j)) == j
    assert j["composefs"] == {"digest": DIGEST, "insecure": True}
    sec = {s["name"]: s for s in j["sections"]}
    assert sec[".cmdline"]["text"] == inputs.cmdline.decode()  # type: ignore[union-attr]
    assert sec[".linux"]["sha256"] == hashlib.sha256(inputs.linux).hexdigest()  # type: ignore[arg-type]
    assert j["signatures"] == []


@pytest.mark.parametrize("cmdline, expected", [
    (f"composefs={DIGEST}", uki.ComposefsKarg(DIGEST, False)),
    (f"composefs_backup=x composefs={DIGEST} composefs=?ff", uki.ComposefsKarg(DIGEST, False)),
    (f"composefs.digest=?v1-sha512-12:{DIGEST}", uki.ComposefsKarg(DIGEST, True)),
    (f'root=x "composefs={DIGEST}"', None),
    ("composefsx=1 composefs_backup=2", None),
])
def test_composefs_karg(cmdline: str, expected: uki.ComposefsKarg | None) -> None:
    assert uki.composefs_karg(cmdline) == expected


def test_split_cmdline_and_normalize() -> None:
    assert uki.split_cmdline('a  b="c d"  "e f" g\tz') == ["a", 'b="c d"', '"e f"', "g", "z"]
    assert uki.normalize_cmdline("  rw \n console=ttyS0   quiet ") == "rw console=ttyS0 quiet"


def test_parse_os_release_quoting() -> None:
    text = ("# comment\nNAME=\"My \\\"OS\\\"\"\nID='lit $x'\nA=x\"y z\"w\nB=\"open\n"
            "ID_LIKE=rhel\nID_LIKE=fedora\n  VERSION = 1 \n")
    osrel = uki.parse_os_release(text)
    assert osrel["NAME"] == 'My "OS"'
    assert osrel["ID"] == "lit $x"
    assert osrel["A"] == "xy zw"
    assert "B" not in osrel
    assert osrel["ID_LIKE"] == "fedora"
    assert uki.boot_label(osrel) == 'My "OS" 1'
    assert uki.boot_label({}) is None


def test_check_uki(tmp_path: Path) -> None:
    image = uki.build_uki(make_pe([(".text", b"\xc3")]), bootc_inputs())
    assert uki.check_uki(image) == []
    assert uki.check_uki(image, DIGEST.upper()) == []
    wrong = "0" * 128
    [problem] = uki.check_uki(image, wrong)
    assert "wrong composefs= parameter" in problem and wrong in problem
    short = uki.build_uki(make_pe([(".text", b"\xc3")]), bootc_inputs(cmdline=b"composefs=abc"))
    assert "not 64 or 128 lowercase hex" in uki.check_uki(short)[0]


def _find_ukify() -> list[str]:
    """systemd's ukify: $CFSBOOT_UKIFY (a path, e.g. to ukify.py) or ``ukify`` on PATH."""
    path = os.environ.get("CFSBOOT_UKIFY") or shutil.which("ukify")
    if not path:
        pytest.skip("systemd ukify not available (set CFSBOOT_UKIFY or install systemd-ukify)")
    return [sys.executable, path] if path.endswith(".py") else [path]


def test_same_as_ukify(tmp_path: Path) -> None:
    """The same inputs through systemd's ukify and through us give the same sections with
    the same contents, in the same places; only CheckSum (ukify leaves 0) and the
    LOCAL_SYMS_STRIPPED flag (which ukify means to set but pefile drops) may differ."""
    ukify = _find_ukify()
    need_stub()
    kernel, initrd1, initrd2, osrel = (tmp_path / n for n in ("vmlinuz", "i1", "i2", "osrel"))
    kernel.write_bytes(bytes(range(256)) * 400 + b"k")
    initrd1.write_bytes(b"070701" + b"x" * 1001)
    initrd2.write_bytes(b"second initrd")
    osrel.write_bytes(OS_RELEASE)
    cmdline = f"  rw  console=ttyS0,115200n8   composefs={DIGEST} "
    ref_path = tmp_path / "ukify.efi"
    subprocess.run([*ukify, "build", "--linux", str(kernel), "--initrd", str(initrd1),
                    "--initrd", str(initrd2), "--cmdline", cmdline, "--os-release",
                    f"@{osrel}", "--uname", "6.1.0-test", "--stub", str(STUB),
                    "--output", str(ref_path)], check=True, capture_output=True, cwd=tmp_path)
    ref = ref_path.read_bytes()
    ref_names = [n for n, _ in sections_of(ref)]
    layout = "258" if ref_names.index(".linux") < ref_names.index(".initrd") else "257"
    ours_path = tmp_path / "ours.efi"
    assert cli("uki", "build", "--linux", str(kernel), "--initrd", str(initrd1),
               "--initrd", str(initrd2), "--cmdline", cmdline, "--os-release", f"@{osrel}",
               "--uname", "6.1.0-test", "--stub", str(STUB), "--ukify-layout", layout,
               "--output", str(ours_path)) == 0
    ours = ours_path.read_bytes()
    assert sections_of(ours) == sections_of(ref)
    h = pe.parse_pe(ours)
    masked = bytearray(ref)
    masked[h.checksum_offset:h.checksum_offset + 4] = ours[h.checksum_offset:
                                                           h.checksum_offset + 4]
    flags = h.coff_offset + 18
    masked[flags] |= pe.FILE_LOCAL_SYMS_STRIPPED
    assert bytes(masked) == ours


def test_cli_build_sign_inspect_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    need_stub()
    keys = tmp_path / "keys"
    assert cli("keys", "generate", str(keys)) == 0
    kernel, initrd, osrel = tmp_path / "vmlinuz", tmp_path / "initrd", tmp_path / "osrel"
    kernel.write_bytes(b"K" * 12345)
    initrd.write_bytes(b"I" * 777)
    osrel.write_bytes(OS_RELEASE)
    out = tmp_path / "uki.efi"
    assert cli("uki", "build", "--linux", str(kernel), "--initrd", str(initrd),
               "--cmdline", f"rw composefs={DIGEST}", "--os-release", f"@{osrel}",
               "--uname", "6.1.0", "--output", str(out), "--cert", str(keys / "db.crt"),
               "--key", str(keys / "db.key")) == 0
    assert sbverify_ok(keys / "db.crt", out) and osslsigncode_ok(keys / "db.crt", out)
    capsys.readouterr()
    assert cli("uki", "inspect", "--json", str(out)) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["composefs"]["digest"] == DIGEST and j["uname"] == "6.1.0"
    assert len(j["signatures"]) == 1 and "Signature Database Key" in j["signatures"][0]["signer"]
    assert cli("uki", "inspect", str(out)) == 0
    text = capsys.readouterr().out
    assert f"composefs: {DIGEST}" in text and "signatures: 1" in text
    assert cli("uki", "verify", str(out), "--cert", str(keys / "db.crt"),
               "--expect-digest", DIGEST) == 0
    assert cli("uki", "verify", str(out), "--cert", str(keys / "KEK.crt")) == 1
    assert cli("uki", "verify", str(out), "--expect-digest", "f" * 128) == 1
    # sign refuses a signed image unless --append; resign replaces
    with pytest.raises(CfsError, match="already signed"):
        cli("uki", "sign", str(out), "--cert", str(keys / "db.crt"), "--key",
            str(keys / "db.key"))
    assert cli("uki", "sign", str(out), "--append", "--cert", str(keys / "KEK.crt"),
               "--sign-command", f"openssl dgst -sha256 -sign {keys / 'KEK.key'}") == 0
    assert len(ac.list_signatures(out.read_bytes())) == 2
    assert sbverify_ok(keys / "KEK.crt", out) and sbverify_ok(keys / "db.crt", out)
    resigned = tmp_path / "resigned.efi"
    assert cli("uki", "resign", str(out), "-o", str(resigned), "--cert",
               str(keys / "KEK.crt"), "--key", str(keys / "KEK.key")) == 0
    assert len(ac.list_signatures(resigned.read_bytes())) == 1
    assert sbverify_ok(keys / "KEK.crt", resigned)
    assert not sbverify_ok(keys / "db.crt", resigned)


def test_cli_sign_systemd_boot(tmp_path: Path) -> None:
    """Any PE can be signed, e.g. systemd-boot for the ESP."""
    image = tmp_path / "systemd-bootx64.efi"
    image.write_bytes(need_systemd_boot())
    keys = tmp_path / "k"
    cli("keys", "generate", str(keys))
    signed = tmp_path / "signed.efi"
    assert cli("uki", "sign", str(image), "-o", str(signed), "--cert", str(keys / "db.crt"),
               "--key", str(keys / "db.key")) == 0
    assert sbverify_ok(keys / "db.crt", signed) and osslsigncode_ok(keys / "db.crt", signed)
    assert cli("uki", "verify", "--pe-only", str(signed), "--cert", str(keys / "db.crt")) == 0
    assert image.read_bytes() == need_systemd_boot()  # the input is untouched with -o


def test_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(CfsError, match="need --cert"):
        cli("uki", "build", "--linux", "/dev/null", "--stub", str(tmp_path / "x"),
            "-o", str(tmp_path / "o"), "--key", "k")
    with pytest.raises(OSError):
        cli("uki", "build", "--linux", "/dev/null", "--stub", str(tmp_path / "missing"),
            "-o", str(tmp_path / "o"))
    bad = tmp_path / "bad.efi"
    bad.write_bytes(b"not a PE at all")
    with pytest.raises(CfsError, match="no MZ"):
        cli("uki", "inspect", str(bad))
    with pytest.raises(CfsError, match="bad --section"):
        cli("uki", "build", "--stub", str(bad), "--section", "nocolon", "-o", str(bad))
    assert not (tmp_path / "o").exists()


def test_cli_signs_unsigned_pe_kernel(tmp_path: Path) -> None:
    """As ukify does by default when signing: an unsigned PE kernel is signed too."""
    need_stub()
    keys = tmp_path / "keys"
    cli("keys", "generate", str(keys))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(make_pe([(".text", b"\x90" * 4000)]))
    sign = ["--cert", str(keys / "db.crt"), "--key", str(keys / "db.key")]
    out = tmp_path / "uki.efi"
    assert cli("uki", "build", "--linux", str(kernel), "--cmdline", "x", "--os-release",
               "ID=t", "-o", str(out), *sign) == 0
    linux = dict(sections_of(out.read_bytes()))[".linux"]
    assert len(ac.list_signatures(linux)) == 1
    inner = tmp_path / "linux.efi"
    inner.write_bytes(linux)
    assert sbverify_ok(keys / "db.crt", inner) and sbverify_ok(keys / "db.crt", out)
    assert cli("uki", "build", "--linux", str(inner), "--cmdline", "x", "--os-release",
               "ID=t", "-o", str(out), *sign) == 0  # already signed: left alone
    assert dict(sections_of(out.read_bytes()))[".linux"] == linux
    assert cli("uki", "build", "--linux", str(kernel), "--cmdline", "x", "--os-release",
               "ID=t", "-o", str(out), "--no-sign-kernel", *sign) == 0
    assert dict(sections_of(out.read_bytes()))[".linux"] == kernel.read_bytes()
