"""``cfsboot seal`` on the public sample tree: final layout, digest of the final tree
in the signed cmdline, independent signature checks, rollback, ``seal verify``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TREE_VECTORS, need_root, need_tool

from cfsboot.boot import authenticode, keys, seal, seal_install, uki
from cfsboot.cli.main import main

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
    assert [p for p in check.problems if "interrupted seal" in p and "just remove it" in p]
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
        seal.seal(str(sample), seal.SealOptions(force=True))
    assert snapshot(sample) == before


def test_symlinked_efi_dir_is_refused(sample: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sample / "boot/EFI").symlink_to(outside)
    before = snapshot(sample)
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{sample}/boot/EFI is a symlink" in err, err
    assert snapshot(sample) == before and os.listdir(outside) == []
    assert main(["seal", "verify", str(sample)]) == 1
    assert capsys.readouterr().err == \
        f"cfsboot: {sample}/boot/EFI is a symlink: not a sealed layout\n"
    # ... and the writer's own check, in case the prerequisites ever accepted it
    install = seal_install.SealInstall(str(sample), f"usr/lib/modules/{KVER}")
    with pytest.raises(seal_install.InstallError, match="is not a directory"):
        install.prepare({"boot/EFI/Linux/x.efi": b"x"})
    install.rollback()
    assert snapshot(sample) == before and os.listdir(outside) == []


def test_digest_mismatch_rolls_back(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(sample)
    real = seal.tree_digest
    calls = []

    def fake(rootfs: str, threads: int | None = None, cache_dir: str | None = None) -> str:
        calls.append(rootfs)   # the check of the tree on disk, after the install
        assert real(rootfs, threads, cache_dir) != "0" * 128
        return "0" * 128

    monkeypatch.setattr(seal, "tree_digest", fake)
    with pytest.raises(seal.SealError, match=r"final tree.s digest 0+ differs"):
        seal.seal(str(sample))
    assert snapshot(sample) == before and len(calls) == 1


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
    assert main(["seal", str(sample), "--unsigned", "--stub", str(host_stub), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["stub"], doc["stub_origin"]) == (str(host_stub), "option")
    built = uki.inspect_uki((sample / f"boot/EFI/Linux/{KVER}.efi").read_bytes())
    assert built.cmdline is not None and built.cmdline.startswith("composefs=")


# --- interruptions: the digest never touches the tree; signals roll back ----------------------

KILL_SCRIPT = """
import os, signal, sys
from cfsboot.boot import seal
where = sys.argv[2]
real = getattr(seal, where)
def killed(*args, **kwargs):
    if where == "tree_digest":   # the check after the install step
        real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(seal, where, killed)
seal.seal(sys.argv[1])
"""


def _tmpdir_env(sample: Path) -> dict[str, str]:
    """A kill -9 leaves seal's temporary digest cache behind: keep it beside the
    test's tree (outside it), not in /tmp."""
    return {**os.environ, "TMPDIR": str(sample.parent)}


def test_kill_9_after_digest_leaves_tree_untouched(sample: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 once the digest of the final tree is known: nothing was changed, and
    sealing again just works (the old design had moved the kernel away by then)."""
    before = snapshot(sample)
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(sample), "_build"],
                          env=_tmpdir_env(sample))
    assert done.returncode == -9
    assert snapshot(sample) == before
    assert main(["seal", str(sample), "--unsigned"]) == 0
    assert seal.verify_seal(str(sample), allow_unsigned=True).ok


def test_kill_9_during_install_is_recoverable(sample: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 in the install step leaves a stage directory; verify and seal say what
    to do, and doing it gives a tree whose seal verifies."""
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(sample), "tree_digest"],
                          env=_tmpdir_env(sample))
    assert done.returncode == -9
    stages = [n for n in os.listdir(sample / "boot") if n.startswith(".cfsboot-seal-")]
    assert len(stages) == 1
    check = seal.verify_seal(str(sample), allow_unsigned=True)
    assert check.sealed_digest == check.tree_digest
    assert len(check.problems) == 1 and "if the seal verifies, just remove it" in \
        check.problems[0]
    assert sorted(os.listdir(sample / "boot" / stages[0])) == ["initramfs.img", "vmlinuz"]
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "left from an interrupted seal" in err
    st = os.lstat(sample / "boot")
    shutil.rmtree(sample / "boot" / stages[0])
    os.utime(sample / "boot", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert seal.verify_seal(str(sample), allow_unsigned=True).ok


def _signal_during_install(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    """Deliver ``signum`` to ourselves once the new files are in place and the kernel
    files removed (the check of the final tree runs then)."""
    import signal
    import time

    def interrupted(*args: object, **kwargs: object) -> str:
        os.kill(os.getpid(), signum)
        time.sleep(5)   # the handler raises during the sleep
        raise AssertionError("the signal did not interrupt sealing")

    monkeypatch.setattr(seal, "tree_digest", interrupted)
    assert signal.getsignal(signum) is not None


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_roll_back(sample: Path, monkeypatch: pytest.MonkeyPatch,
                                      name: str) -> None:
    import signal
    signum = getattr(signal, name)
    handler = signal.getsignal(signum)
    before = snapshot(sample)
    _signal_during_install(monkeypatch, signum)
    with pytest.raises(KeyboardInterrupt if name == "SIGINT" else seal.SealInterrupted):
        seal.seal(str(sample))
    assert snapshot(sample) == before
    assert signal.getsignal(signum) is handler   # put back


def test_sighup_rolls_back_via_cli(sample: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import signal
    (sample / "boot/EFI/BOOT").mkdir(parents=True)     # an existing loader is restored too
    shutil.copyfile(SD_BOOT, sample / "boot/EFI/BOOT/BOOTX64.EFI")
    before = snapshot(sample)
    _signal_during_install(monkeypatch, signal.SIGHUP)
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned"]) == 1
    assert capsys.readouterr().err == ("cfsboot: interrupted by SIGHUP; the tree was left "
                                       "as it was\n")
    assert snapshot(sample) == before


def test_digest_is_computed_without_touching_the_tree(sample: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(sample)
    real = seal._build
    seen = []

    def build(*args: object) -> object:
        seen.append(snapshot(sample) == before)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(seal, "_build", build)
    seal.seal(str(sample))
    assert seen == [True]


def test_external_signing_on_read_only_mount(sample: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    need_root()
    ro = tmp_path / "ro"
    ro.mkdir()
    before = snapshot(sample)
    subprocess.run(["mount", "--bind", str(sample), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        with pytest.raises(OSError):
            (ro / "probe").write_bytes(b"")
        assert main(["seal", str(ro), "--external-signing", str(tmp_path / "out")]) == 0
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert snapshot(sample) == before
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    # The same digest as sealing in place computes (and verifies on disk).
    assert seal.seal(str(sample)).digest == manifest["digest"]


# --- messages, manifests, caches, existing loaders ---------------------------------------------

def test_no_cert_warns_integrity_only(external: tuple[Path, Path, dict[str, bytes]],
                                      tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, out, signed = external
    rc, err = _inject(root, out, signed, tmp_path, capsys)
    assert rc == 0
    assert err == ("cfsboot: warning: no --cert given: signatures were checked for integrity "
                   "only, not against a trusted certificate\n")
    assert main(["seal", "verify", str(root)]) == 0
    assert "warning: no --cert given" in capsys.readouterr().err


def test_verify_with_cert_does_not_warn(sample: Path, keydir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    seal.seal(str(sample), seal.SealOptions(signer=signer_of(keydir)))
    capsys.readouterr()
    assert main(["seal", "verify", str(sample), "--cert", str(keydir / "db.crt")]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["files"][0]["targets"].append("boot/EFI/Linux/x.efi"),
     f"puts its uki at /boot/EFI/Linux/{KVER}.efi, /boot/EFI/Linux/x.efi"),
    (lambda m: m["files"][1]["targets"].pop(),
     "puts its systemd-boot at /boot/EFI/BOOT/BOOTX64.EFI; expected"),
    (lambda m: m["files"][1]["targets"].__setitem__(0, "etc/passwd"),
     "puts its systemd-boot at /etc/passwd"),
    (lambda m: m["files"].append(dict(m["files"][0], name="again")),
     "expected one uki and one systemd-boot"),
], ids=["extra-uki", "missing-target", "outside-boot", "second-uki"])
def test_inject_validates_manifest_targets(external: tuple[Path, Path, dict[str, bytes]],
                                           tmp_path: Path, change: object, message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, out, signed = external
    doc = json.loads((out / "manifest.json").read_text())
    change(doc)  # type: ignore[operator]
    (out / "manifest.json").write_text(json.dumps(doc))
    before = snapshot(root)
    rc, err = _inject(root, out, signed, tmp_path, capsys)
    assert rc == 1 and err.count("\n") == 1 and message in err, err
    assert snapshot(root) == before


@pytest.mark.parametrize("how", ["world", "group", "other-owner"])
def test_unsafe_cache_dir_is_refused(sample: Path, tmp_path: Path, how: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    if how == "world":
        cache.chmod(0o1777)
    elif how == "group":
        cache.chmod(0o770)
    else:
        need_root()
        os.chown(cache, 4242, 4242)
    before = snapshot(sample)
    for argv in (["seal", str(sample), "--unsigned", "--cache", str(cache)],
                 ["container", "compute-composefs-digest", str(sample), "--cache", str(cache)]):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "whoever can write it dictates the digest" in err, err
        assert ("owned by uid 4242" if how == "other-owner" else "writable by") in err
    assert snapshot(sample) == before and os.listdir(cache) == []


def test_insecure_seal_says_so_and_stub_is_reported(sample: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned", "--allow-missing-verity"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(f"sealed {sample} (UNSIGNED, INSECURE: composefs=?"), first
    assert f"UKI stub: {uki.default_stub_path('x64')} (the host's)" in out


def test_stub_origin_in_json(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host_stub = Path(uki.default_stub_path("x64"))
    if not host_stub.exists():
        pytest.skip("systemd-boot-efi not installed")
    own = sample / host_stub.relative_to("/")
    shutil.copyfile(host_stub, own)
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["stub"], doc["stub_origin"]) == (str(own), "image")


def test_foreign_loader_needs_force(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (sample / "boot/EFI/BOOT").mkdir(parents=True)
    shim = sample / "boot/EFI/BOOT/BOOTX64.EFI"
    shim.write_bytes(b"MZ shim, not systemd-boot")
    before = snapshot(sample)
    capsys.readouterr()
    assert main(["seal", str(sample), "--unsigned"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "/boot/EFI/BOOT/BOOTX64.EFI exists and is not systemd-boot" in err
    assert "--force" in err
    assert snapshot(sample) == before
    assert main(["seal", str(sample), "--unsigned", "--force"]) == 0
    assert shim.read_bytes() == (sample / "boot/EFI/systemd/systemd-bootx64.efi").read_bytes()


def test_existing_systemd_boot_is_replaced(sample: Path) -> None:
    (sample / "boot/EFI/systemd").mkdir(parents=True)
    shutil.copyfile(SD_BOOT, sample / "boot/EFI/systemd/systemd-bootx64.efi")
    result = seal.seal(str(sample))
    assert "boot/EFI/systemd/systemd-bootx64.efi" in result.written
    assert [n for n in os.listdir(sample / "boot/EFI/systemd") if n.startswith(".")] == []
    assert seal.verify_seal(str(sample), allow_unsigned=True).ok


@pytest.mark.parametrize("hashing", ["python", "c"])
def test_sigterm_to_process_group_while_hashing(sample: Path, tmp_path: Path,
                                                hashing: str) -> None:
    """SIGTERM to the whole process group (as a service manager or a hangup sends it)
    while workers hash (forked processes in Python, threads with the C accelerator):
    one line, no worker traceback, the tree unchanged."""
    from cfsboot import native
    if hashing == "c" and native.module is None:
        pytest.skip("cfsboot._native not built")
    big = sample / "usr/share/big"
    big.mkdir(parents=True)
    for i in range(6):
        # The C accelerator hashes a few GB/s: give it enough to still be busy.
        (big / f"blob{i}").write_bytes(os.urandom(1 << 20) * (96 if hashing == "c" else 24))
    before = snapshot(sample)
    env = {**os.environ, "CFSBOOT_NATIVE": "1" if hashing == "c" else "0"}
    proc = subprocess.Popen([sys.executable, "-m", "cfsboot.cli.main", "seal", str(sample),
                             "--unsigned", "--threads", "2"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    tasks = Path(f"/proc/{proc.pid}/task")
    import signal
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if hashing == "python" and children.read_text().split():
                break
            if hashing == "c" and len(os.listdir(tasks)) > 1:
                break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.skip("sealing finished before forking hashing workers")
    time.sleep(0.2 if hashing == "python" else 0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert err == "cfsboot: interrupted by SIGTERM; the tree was left as it was\n"
    assert snapshot(sample) == before


def test_hard_linked_kernel(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The in-memory removal drops one reference of a hard-linked kernel, as unlinking
    does on disk (the install re-verifies the tree on disk, so a difference fails)."""
    kdir = sample / f"usr/lib/modules/{KVER}"
    st = os.lstat(kdir)
    os.link(kdir / "vmlinuz", sample / "usr/lib/vmlinuz-hardlink")
    os.utime(sample / "usr/lib", (T0 + 100, T0 + 100))
    os.utime(kdir, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = seal.seal(str(sample))
    assert os.lstat(sample / "usr/lib/vmlinuz-hardlink").st_nlink == 1
    assert result.digest == cli_digest(sample, capsys)


def test_non_utf8_karg_is_one_line(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(sample)
    assert main(["seal", str(sample), "--unsigned", "--karg", "x=\udcff"]) == 1
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and err.count("\n") == 1, err
    assert snapshot(sample) == before
