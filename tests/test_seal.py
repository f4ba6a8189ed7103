"""``cfsboot seal`` on the public sample tree: final layout, digest of the final tree
in the signed cmdline, independent signature checks, rollback, ``seal verify``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TREE_VECTORS, need_root, need_tool

from cfsboot.boot import authenticode, keys, seal, uki
from cfsboot.cli.main import main
from cfsboot.errors import CfsError

KVER = "6.1.0-sample"
SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
T0 = 1_690_000_000


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    _, files = keys.generate_key_set("cfsboot seal test")
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def make_sample(dest: Path, *, with_sdboot: bool = True) -> Path:
    """The shared sample root (it has a fake kernel + initramfs), plus systemd-boot."""
    need_root()
    script = TREE_VECTORS / "make-sample-root.py"
    if not script.exists():
        pytest.skip(f"sample tree script not found at {script}")
    subprocess.run([sys.executable, str(script), str(dest)], check=True)
    if with_sdboot:
        if not SD_BOOT.exists():
            pytest.skip("systemd-boot-efi not installed")
        efi = dest / "usr/lib/systemd/boot/efi"
        efi.mkdir(parents=True)
        shutil.copyfile(SD_BOOT, efi / SD_BOOT.name)
        # Fixed times, as the script does, so that two samples have equal digests.
        for p in (efi / SD_BOOT.name, efi, efi.parent, efi.parent.parent, dest / "usr/lib"):
            os.utime(p, (T0 + 100, T0 + 100))
    return dest


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return make_sample(tmp_path / "root")


def signer_of(keydir: Path) -> authenticode.KeySigner:
    return authenticode.KeySigner(
        authenticode.load_private_key((keydir / "db.key").read_bytes()),
        authenticode.load_certificate((keydir / "db.crt").read_bytes()))


def cli_digest(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["container", "compute-composefs-digest", str(path)]) == 0
    return capsys.readouterr().out.strip()


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path with mode, mtime (ns), size and content hash: 'nothing changed'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h = ""
            if os.path.isfile(p) and not os.path.islink(p):
                h = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, st.st_size, h)
    return out


def uki_digest(root: Path) -> uki.ComposefsKarg:
    report = uki.inspect_uki((root / f"boot/EFI/Linux/{KVER}.efi").read_bytes())
    assert report.composefs is not None
    return report.composefs


# --- the sealed layout and its digest --------------------------------------------------------

def test_seal_final_layout_and_digest(sample: Path, keydir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    boot_mtime = os.lstat(sample / "boot").st_mtime_ns
    result = seal.seal(str(sample), seal.SealOptions(signer=signer_of(keydir)))
    for rel in (f"boot/EFI/Linux/{KVER}.efi", "boot/EFI/BOOT/BOOTX64.EFI",
                "boot/EFI/systemd/systemd-bootx64.efi"):
        assert (sample / rel).is_file(), rel
    assert not (sample / f"usr/lib/modules/{KVER}/vmlinuz").exists()
    assert not (sample / f"usr/lib/modules/{KVER}/initramfs.img").exists()
    assert [n for n in os.listdir(sample / "boot") if n.startswith(".")] == []
    assert os.lstat(sample / "boot").st_mtime_ns == boot_mtime

    # The digest of the final tree is the one in the signed cmdline.
    karg = uki_digest(sample)
    assert not karg.insecure
    assert karg.digest == result.digest == cli_digest(sample, capsys)
    # ... and it is the digest of the tree minus the kernel, *without* anything in
    # /boot: built independently from a fresh copy of the sample.
    ref = make_sample(tmp_path / "ref")
    kdir = ref / f"usr/lib/modules/{KVER}"
    st = os.lstat(kdir)
    for name in ("vmlinuz", "initramfs.img"):
        (kdir / name).unlink()
    os.utime(kdir, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli_digest(ref, capsys) == karg.digest

    report = uki.inspect_uki((sample / f"boot/EFI/Linux/{KVER}.efi").read_bytes())
    assert report.uname == KVER
    assert report.cmdline == f"composefs={karg.digest}"
    assert not uki.check_uki((sample / f"boot/EFI/Linux/{KVER}.efi").read_bytes(), karg.digest)
    assert (sample / "boot/EFI/BOOT/BOOTX64.EFI").read_bytes() == \
        (sample / "boot/EFI/systemd/systemd-bootx64.efi").read_bytes()

    check = seal.verify_seal(str(sample), [signer_of(keydir).certificate])
    assert check.ok, check.problems


def test_independent_tools_accept_signatures(sample: Path, keydir: Path) -> None:
    seal.seal(str(sample), seal.SealOptions(signer=signer_of(keydir)))
    files = [sample / f"boot/EFI/Linux/{KVER}.efi", sample / "boot/EFI/BOOT/BOOTX64.EFI",
             sample / "boot/EFI/systemd/systemd-bootx64.efi"]
    need_tool("sbverify")
    for f in files:
        done = subprocess.run(["sbverify", "--cert", str(keydir / "db.crt"), str(f)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (f, done.stdout, done.stderr)
    need_tool("osslsigncode")
    for f in files:
        done = subprocess.run(["osslsigncode", "verify", "-CAfile", str(keydir / "db.crt"),
                               "-in", str(f)], capture_output=True, text=True)
        assert done.returncode == 0, (f, done.stdout, done.stderr)


def test_sign_command_and_deterministic(sample: Path, keydir: Path, tmp_path: Path) -> None:
    """An external signing command (here openssl) gives the same bytes as the key file,
    and sealing identical trees gives identical UKIs."""
    need_tool("openssl")
    other = make_sample(tmp_path / "other")
    assert main(["seal", str(sample), "--cert", str(keydir / "db.crt"),
                 "--key", str(keydir / "db.key")]) == 0
    assert main(["seal", str(other), "--cert", str(keydir / "db.crt"), "--sign-command",
                 f"openssl dgst -sha256 -sign {keydir / 'db.key'}",
                 "--cache", str(tmp_path / "cache")]) == 0
    for rel in (f"boot/EFI/Linux/{KVER}.efi", "boot/EFI/BOOT/BOOTX64.EFI"):
        assert (sample / rel).read_bytes() == (other / rel).read_bytes()


def test_boot_mtime_nanoseconds_count(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why seal restores /boot's times: the transform keeps its nanoseconds."""
    before = cli_digest(sample, capsys)
    (sample / "boot/EFI/Linux").mkdir(parents=True)
    (sample / "boot/EFI/Linux/x.efi").write_bytes(b"not really a UKI")
    changed = cli_digest(sample, capsys)
    os.utime(sample / "boot", (T0 + 100, T0 + 100))
    restored = cli_digest(sample, capsys)
    os.utime(sample / "boot", ns=(0, (T0 + 999) * 10**9))   # other seconds: still equal
    assert restored == before == cli_digest(sample, capsys)
    assert changed != before


def test_tree_change_detected_by_verify(sample: Path, keydir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    seal.seal(str(sample), seal.SealOptions(signer=signer_of(keydir)))
    assert main(["seal", "verify", str(sample), "--cert", str(keydir / "db.crt")]) == 0
    with open(sample / "etc/hostname", "ab") as f:
        f.write(b"changed\n")
    capsys.readouterr()
    assert main(["seal", "verify", str(sample), "--cert", str(keydir / "db.crt")]) == 1
    err = capsys.readouterr().err
    assert "the tree changed after sealing" in err
    check = seal.verify_seal(str(sample), [signer_of(keydir).certificate])
    assert check.tree_digest != check.sealed_digest


def test_verify_reports_interrupted_seal_and_lint_accepts_sealed(
        sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seal", str(sample), "--unsigned"]) == 0
    capsys.readouterr()
    assert main(["container", "lint", "--rootfs", str(sample), "--json"]) == 1
    lints = {x["name"]: x for x in json.loads(capsys.readouterr().out)["lints"]}
    assert lints["nonempty-boot"]["sections"] == [
        {"header": "Found non-empty /boot", "items": ["loader"]}]   # EFI is allowed
    st = os.lstat(sample / "boot")
    (sample / "boot/.cfsboot-seal-abc").mkdir()                  # as seal leaves it: /boot's
    os.utime(sample / "boot", ns=(st.st_atime_ns, st.st_mtime_ns))   # times put back
    check = seal.verify_seal(str(sample), allow_unsigned=True)
    assert [p for p in check.problems if "interrupted seal" in p]
    assert check.sealed_digest == check.tree_digest


def test_verify_detects_untrusted_and_tampered(sample: Path, keydir: Path,
                                               tmp_path: Path) -> None:
    seal.seal(str(sample), seal.SealOptions(signer=signer_of(keydir)))
    _, other = keys.generate_key_set("someone else")
    stranger = authenticode.load_certificate(other["db.crt"])
    check = seal.verify_seal(str(sample), [stranger])
    assert any("no signature verifies" in p for p in check.problems)
    sd = sample / "boot/EFI/BOOT/BOOTX64.EFI"
    data = bytearray(sd.read_bytes())
    data[0x400] ^= 0xFF
    sd.write_bytes(bytes(data))
    check = seal.verify_seal(str(sample), [signer_of(keydir).certificate])
    assert any("BOOTX64.EFI: no signature verifies" in p for p in check.problems)
    assert any("copies differ" in p for p in check.problems)


def test_unsigned_allow_missing_verity_kargs(sample: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    kd = sample / "usr/lib/bootc/kargs.d"
    kd.mkdir(parents=True)
    (kd / "10-rw.toml").write_text('kargs = ["rw", "console=ttyS0,115200n8"]\n')
    (kd / "20-arm.toml").write_text('kargs = ["arm-only"]\nmatch-architectures = ["aarch64"]\n')
    (kd / "30-x86.toml").write_text('kargs = ["x86-only", "rw"]\n'
                                    'match-architectures = ["x86_64"]\n')
    assert main(["seal", str(sample), "--unsigned", "--allow-missing-verity",
                 "--karg", "quiet", "--karg", "console=tty0", "--json"]) == 0
    karg = uki_digest(sample)
    assert karg.insecure
    cmdline = uki.inspect_uki((sample / f"boot/EFI/Linux/{KVER}.efi").read_bytes()).cmdline
    assert cmdline == (f"rw console=ttyS0,115200n8 x86-only composefs=?{karg.digest} "
                       "quiet console=tty0")
    assert karg.digest == cli_digest(sample, capsys)
    assert not authenticode.list_signatures((sample / "boot/EFI/BOOT/BOOTX64.EFI").read_bytes())
    assert main(["seal", "verify", str(sample)]) == 1
    assert main(["seal", "verify", str(sample), "--allow-unsigned",
                 "--allow-missing-verity"]) == 0


# --- prerequisites: one clear line each, nothing changed -------------------------------------

def _break_prebuilt_uki(root: Path) -> None:
    (root / "boot/EFI/Linux").mkdir(parents=True)
    (root / "boot/EFI/Linux/other.efi").write_bytes(b"MZ")


def _break_type1(root: Path) -> None:
    (root / "boot/loader/entries").mkdir(parents=True)
    (root / "boot/loader/entries/a.conf").write_text("title a\nlinux /vmlinuz\n")


def _break_no_kernel(root: Path) -> None:
    (root / f"usr/lib/modules/{KVER}/vmlinuz").unlink()


def _break_two_kernels(root: Path) -> None:
    (root / "usr/lib/modules/6.2.0").mkdir()
    (root / "usr/lib/modules/6.2.0/vmlinuz").write_bytes(b"K")


def _break_no_initramfs(root: Path) -> None:
    (root / f"usr/lib/modules/{KVER}/initramfs.img").unlink()


def _break_symlink_kernel(root: Path) -> None:
    (root / f"usr/lib/modules/{KVER}/vmlinuz").unlink()
    (root / f"usr/lib/modules/{KVER}/vmlinuz").symlink_to("/etc/passwd")


def _break_symlinked_kernel_dir(root: Path) -> None:
    real = root.parent / "elsewhere"
    shutil.move(str(root / f"usr/lib/modules/{KVER}"), real)
    (root / f"usr/lib/modules/{KVER}").symlink_to(real)


def _break_bootupd(root: Path) -> None:
    (root / "usr/lib/bootupd/updates").mkdir(parents=True)


def _break_no_sdboot(root: Path) -> None:
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").unlink()


def _break_no_os_release(root: Path) -> None:
    (root / "etc/os-release").unlink()


def _break_no_sysroot(root: Path) -> None:
    shutil.rmtree(root / "sysroot")


def _break_bad_kargs(root: Path) -> None:
    (root / "usr/lib/bootc/kargs.d").mkdir(parents=True)
    (root / "usr/lib/bootc/kargs.d/a.toml").write_text('kargs = ["x"]\nextra = 1\n')


def _break_composefs_karg(root: Path) -> None:
    (root / "usr/lib/bootc/kargs.d").mkdir(parents=True)
    (root / "usr/lib/bootc/kargs.d/a.toml").write_text('kargs = ["composefs=abc"]\n')


PREREQUISITES = [
    (_break_prebuilt_uki, "already contains a UKI at /boot/EFI/Linux/other.efi"),
    (_break_type1, "has a Type 1 boot entry /boot/loader/entries/a.conf"),
    (_break_no_kernel, "no kernel: no /usr/lib/modules/<kver>/vmlinuz in"),
    (_break_two_kernels, f"more than one kernel in /usr/lib/modules: {KVER}, 6.2.0"),
    (_break_no_initramfs, f"/usr/lib/modules/{KVER}/initramfs.img is missing"),
    (_break_symlink_kernel, f"/usr/lib/modules/{KVER}/vmlinuz is not a regular file"),
    (_break_symlinked_kernel_dir, f"/usr/lib/modules/{KVER} is reached through a symlink"),
    (_break_bootupd, "bootupd is installed (/usr/lib/bootupd/updates)"),
    (_break_no_sdboot, "systemd-boot is missing: /usr/lib/systemd/boot/efi/"
                       "systemd-bootx64.efi is not a regular file"),
    (_break_no_os_release, "no os-release: neither /usr/lib/os-release nor /etc/os-release"),
    (_break_no_sysroot, "not a container root: /sysroot is missing"),
    (_break_bad_kargs, "/usr/lib/bootc/kargs.d/a.toml: unknown key 'extra'"),
    (_break_composefs_karg, "kernel argument 'composefs=abc' is not allowed"),
]


@pytest.mark.parametrize(("breakage", "message"), PREREQUISITES,
                         ids=[b.__name__.removeprefix("_break_") for b, _ in PREREQUISITES])
def test_prerequisite_errors(sample: Path, breakage: object, message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    breakage(sample)  # type: ignore[operator]
    before = snapshot(sample)
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cfsboot: ") and err.count("\n") == 1, err
    assert message in err
    assert snapshot(sample) == before


def test_already_sealed_is_refused(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seal", str(sample), "--unsigned"]) == 0
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned"]) == 1
    assert f"already contains a UKI at /boot/EFI/Linux/{KVER}.efi" in capsys.readouterr().err


def test_signing_options_required(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seal", str(sample)]) == 1
    assert "sealing needs --cert" in capsys.readouterr().err


# --- failures after writing leave nothing behind ---------------------------------------------

def test_failed_final_check_rolls_back(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (sample / "boot/EFI/BOOT").mkdir(parents=True)
    (sample / "boot/EFI/BOOT/BOOTX64.EFI").write_bytes(b"old loader")   # gets backed up
    before = snapshot(sample)
    monkeypatch.setattr(uki, "check_uki", lambda image, digest=None: ["injected problem"])
    with pytest.raises(seal.SealError, match="refusing to seal: injected problem"):
        seal.seal(str(sample))
    assert snapshot(sample) == before


def test_symlinked_efi_dir_is_refused(sample: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sample / "boot/EFI").symlink_to(outside)
    before = snapshot(sample)
    with pytest.raises(CfsError, match="'EFI' is not a subdirectory"):   # the digest's check
        seal.seal(str(sample))
    assert snapshot(sample) == before and os.listdir(outside) == []
    # ... and the writer's own check, in case the digest ever accepted it
    inputs = seal.check_prerequisites(str(sample))
    tx = seal._SealTransaction(inputs)
    with pytest.raises(seal.SealError, match="is not a directory"):
        tx.prepare({"boot/EFI/Linux/x.efi": b"x"})
    tx.rollback()
    assert snapshot(sample) == before and os.listdir(outside) == []


def test_digest_mismatch_rolls_back(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(sample)
    real = seal.tree_digest
    calls = []

    def fake(rootfs: str, threads: int | None = None, cache_dir: str | None = None) -> str:
        calls.append(rootfs)
        return real(rootfs, threads, cache_dir) if len(calls) == 1 else "0" * 128

    monkeypatch.setattr(seal, "tree_digest", fake)
    with pytest.raises(seal.SealError, match=r"final tree.s digest 0+ differs"):
        seal.seal(str(sample))
    assert snapshot(sample) == before


# --- external signing ------------------------------------------------------------------------

def test_external_signing_round_trip_with_sbsign(sample: Path, keydir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sbsign = need_tool("sbsign")
    out = tmp_path / "out"
    before = snapshot(sample)
    assert main(["seal", str(sample), "--external-signing", str(out)]) == 0
    assert snapshot(sample) == before                       # the tree is untouched
    names = sorted(os.listdir(out))
    assert names == [f"{KVER}.efi", "manifest.json", "systemd-bootx64.efi"]
    signed = []
    for name in (f"{KVER}.efi", "systemd-bootx64.efi"):
        dst = tmp_path / f"{name}.signed"
        subprocess.run([sbsign, "--key", str(keydir / "db.key"), "--cert",
                        str(keydir / "db.crt"), "--output", str(dst), str(out / name)],
                       check=True, capture_output=True)
        signed.append(str(dst))
    assert main(["seal", "inject", *signed, "--manifest", str(out / "manifest.json"),
                 str(sample), "--cert", str(keydir / "db.crt")]) == 0
    karg = uki_digest(sample)
    assert karg.digest == cli_digest(sample, capsys)
    assert (sample / f"boot/EFI/Linux/{KVER}.efi").read_bytes() == Path(signed[0]).read_bytes()
    assert main(["seal", "verify", str(sample), "--cert", str(keydir / "db.crt")]) == 0
    need_tool("sbverify")
    subprocess.run(["sbverify", "--cert", str(keydir / "db.crt"),
                    str(sample / "boot/EFI/BOOT/BOOTX64.EFI")], check=True, capture_output=True)


@pytest.fixture
def external(sample: Path, keydir: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    out = tmp_path / "out"
    manifest = seal.seal_external(str(sample), str(out))
    signer = signer_of(keydir)
    signed = {f.name: authenticode.sign((out / f.name).read_bytes(), signer)
              for f in manifest.files}
    return sample, out, signed


def _inject(root: Path, out: Path, signed: dict[str, bytes], tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    paths = []
    for name, data in signed.items():
        p = tmp_path / f"{name}.signed"
        p.write_bytes(data)
        paths.append(str(p))
    capsys.readouterr()
    rc = main(["seal", "inject", *paths, "--manifest", str(out / "manifest.json"), str(root)])
    return rc, capsys.readouterr().err


def test_inject_refuses_changed_file(external: tuple[Path, Path, dict[str, bytes]],
                                     keydir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    root, out, signed = external
    name = f"{KVER}.efi"
    image = bytearray((out / name).read_bytes())
    at = image.find(b"composefs=")
    image[at + 10] = ord("0") if image[at + 10] != ord("0") else ord("1")
    signed[name] = authenticode.sign(bytes(image), signer_of(keydir))
    before = snapshot(root)
    rc, err = _inject(root, out, signed, tmp_path, capsys)
    assert rc == 1 and "matches no file of the manifest" in err
    assert snapshot(root) == before


def test_inject_refuses_unsigned_and_missing(external: tuple[Path, Path, dict[str, bytes]],
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root, out, signed = external
    unsigned = dict(signed, **{f"{KVER}.efi": (out / f"{KVER}.efi").read_bytes()})
    rc, err = _inject(root, out, unsigned, tmp_path, capsys)
    assert rc == 1 and f"{KVER}.efi.signed is not signed" in err
    rc, err = _inject(root, out, {f"{KVER}.efi": signed[f"{KVER}.efi"]}, tmp_path, capsys)
    assert rc == 1 and "no signed file given for systemd-bootx64.efi" in err


def test_inject_refuses_changed_tree(external: tuple[Path, Path, dict[str, bytes]],
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out, signed = external
    (root / "usr/bin/tiny").write_bytes(b"z" * 64)
    before = snapshot(root)
    rc, err = _inject(root, out, signed, tmp_path, capsys)
    assert rc == 1 and "changed since 'seal --external-signing'" in err
    assert snapshot(root) == before


def test_manifest_records_padded_authenticode_hash(
        external: tuple[Path, Path, dict[str, bytes]]) -> None:
    _, out, signed = external
    from cfsboot.boot.manifest import SealManifest
    manifest = SealManifest.from_json((out / "manifest.json").read_text())
    for f in manifest.files:
        data = (out / f.name).read_bytes()
        assert len(data) % 8 == 0
        assert hashlib.sha256(data).hexdigest() == f.sha256
        assert authenticode.authenticode_digest(signed[f.name]).hex() == f.authenticode_sha256


def test_image_own_stub_is_preferred(sample: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The UKI is built from the image's own systemd stub (as ukify inside the
    image build would), and --stub overrides it."""
    host_stub = Path(uki.default_stub_path("x64"))
    if not host_stub.exists():
        pytest.skip("systemd-boot-efi not installed")
    own = sample / host_stub.relative_to("/")
    own.write_bytes(b"not a PE stub")
    assert main(["seal", str(sample), "--unsigned"]) == 1
    assert "stub" in capsys.readouterr().err.lower()
    assert main(["seal", str(sample), "--unsigned", "--stub", str(host_stub)]) == 0
    built = uki.inspect_uki((sample / f"boot/EFI/Linux/{KVER}.efi").read_bytes())
    assert built.cmdline.startswith("composefs=")
