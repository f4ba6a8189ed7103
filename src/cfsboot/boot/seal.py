"""Sealing a root filesystem: the signed UKI that binds it (bootc's sealed build).

bootc-composefs-backend.md §3.1-§3.4: the final tree has the UKI at
``/boot/EFI/Linux/<kver>.efi``, a signed systemd-boot at ``/boot/EFI/BOOT/BOOTX64.EFI``
and ``/boot/EFI/systemd/systemd-bootx64.efi``, and no raw ``vmlinuz``/``initramfs.img``
in ``/usr/lib/modules/<kver>/``.  The UKI's ``.cmdline`` carries the composefs
digest of exactly that final tree.

The digest of the final tree is computed without touching the tree: the scanned
tree model loses its kernel-file entries (``final_tree_digest``).  Writing into
``/boot`` afterwards is sound because the boot transform empties ``/boot`` and
sets its mtime *seconds* to ``/usr``'s, keeping only its own mtime *nanoseconds*;
the install puts ``/boot``'s and the kernel directory's times back after writing.
Only that last step writes to the tree (``seal_install``), and it is undone on
any failure, Ctrl-C, SIGTERM or SIGHUP; the tree on disk is re-verified before
the change is kept.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from cfsboot.atomic import atomic_write_bytes
from cfsboot.boot import authenticode, pe, uki
from cfsboot.boot.digest import (
    DigestOptions,
    check_container_root,
    compute_composefs_digest,
    source_reader,
)
from cfsboot.boot.digest_cache import check_cache_outside
from cfsboot.boot.kargs import kargs_in_root, rust_arch, sealed_cmdline
from cfsboot.boot.manifest import MANIFEST_NAME, ManifestFile, ManifestSource, SealManifest
from cfsboot.boot.seal_install import (
    KERNEL_FILES,
    STAGE_PREFIX,
    rootfs_locked,
    sealing_install,
    signals_interrupt,
)
from cfsboot.boot.seal_install import SealInterrupted as SealInterrupted  # re-exported
from cfsboot.boot.transform import transform_for_boot, transform_for_oci
from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.errors import CfsError
from cfsboot.fsverity import DIGEST_SIZE, fsverity_digest
from cfsboot.paths import is_within
from cfsboot.tree.hashcache import HashCache
from cfsboot.tree.model import Directory, Leaf
from cfsboot.tree.scan import ScanOptions, scan_directory

MODULES_DIR = "usr/lib/modules"
UKI_DIR = "boot/EFI/Linux"
ENTRIES_DIR = "boot/loader/entries"
BOOTUPD_PATHS = ("usr/bin/bootupctl", "usr/lib/bootupd/updates")
OS_RELEASE_PATHS = ("usr/lib/os-release", "etc/os-release")
# systemd-boot's .sdmagic section: how bootctl itself recognises its own loader.
SDBOOT_MAGIC = b"#### LoaderInfo: systemd-boot "
LOADER_DIRS = ("boot/EFI", "boot/EFI/Linux", "boot/EFI/BOOT", "boot/EFI/systemd")
# A stage directory survives only a kill -9 (or a crash) during the install step, or
# an interrupted run of an older version (which moved the kernel files into it).
LEFTOVER_HELP = ("it is left from an interrupted seal and holds the kernel files (the digest "
                 "ignores it): if the seal verifies, just remove it; otherwise move its "
                 "vmlinuz and initramfs.img back into /usr/lib/modules/<kver>/ where missing, "
                 "delete /boot/EFI/Linux/*.efi, remove it and seal again")


class SealError(CfsError):
    """The tree cannot be sealed, or a seal does not hold."""


class PrerequisiteError(SealError):
    """The tree does not meet the prerequisites of a sealed image."""


def systemd_boot_source(efi_arch: str) -> str:
    return f"usr/lib/systemd/boot/efi/systemd-boot{efi_arch}.efi"


def systemd_boot_targets(efi_arch: str) -> tuple[str, str]:
    """Fallback loader path and systemd-boot's own path on the ESP (under /boot)."""
    return (f"boot/EFI/BOOT/BOOT{efi_arch.upper()}.EFI",
            f"boot/EFI/systemd/systemd-boot{efi_arch}.efi")


def uki_target(kver: str) -> str:
    return f"{UKI_DIR}/{kver}.efi"


# --- finding the kernel (bootc crates/lib/src/kernel.rs) -------------------------------------

@dataclass(frozen=True)
class KernelFound:
    version: str
    unified: bool     # a UKI in /boot/EFI/Linux rather than a vmlinuz
    path: str         # relative to the rootfs: the UKI, or the modules directory


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _lexists(path: str) -> bool:
    return os.path.lexists(path)


def _lstat_opt(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def real_directory(rootfs: str, rel: str) -> bool:
    """``rel`` is a directory inside ``rootfs`` reached without any symlink."""
    d = rootfs
    for part in rel.split("/"):
        d = os.path.join(d, part)
        st = _lstat_opt(d)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def vmlinuz_dirs(rootfs: str) -> list[str]:
    """Kernel versions with a ``vmlinuz`` in ``/usr/lib/modules/<kver>/``."""
    base = os.path.join(rootfs, MODULES_DIR)
    return [k for k in _listdir(base)
            if os.path.isdir(os.path.join(base, k))
            and _lexists(os.path.join(base, k, "vmlinuz"))]


def shown_names(names: Sequence[str]) -> str:
    """File names for a message: bytes that are not UTF-8 as ``\\xff``."""
    return ", ".join(os.fsencode(n).decode("utf-8", "backslashreplace") for n in names)


def find_kernel(rootfs: str) -> KernelFound | None:
    """The first ``*.efi`` in /boot/EFI/Linux (a UKI wins), else the one vmlinuz."""
    ukis = [n for n in _listdir(os.path.join(rootfs, UKI_DIR))
            if os.path.splitext(n)[1] == ".efi"]
    if ukis:
        return KernelFound(os.path.splitext(ukis[0])[0], True, f"{UKI_DIR}/{ukis[0]}")
    kvers = vmlinuz_dirs(rootfs)
    if len(kvers) > 1:
        raise PrerequisiteError(f"more than one kernel in /{MODULES_DIR}: {shown_names(kvers)}")
    if kvers:
        return KernelFound(kvers[0], False, f"{MODULES_DIR}/{kvers[0]}")
    return None


def prebuilt_ukis(rootfs: str) -> list[str]:
    """UKIs composefs-rs would find: ``*.efi`` under /boot/EFI/Linux (any depth) and
    directly in ``/usr/lib/modules/<kver>/``."""
    found = []
    top = os.path.join(rootfs, UKI_DIR)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        found += [os.path.relpath(os.path.join(dirpath, n), rootfs)
                  for n in sorted(filenames) if n.endswith(".efi")]
    modules = os.path.join(rootfs, MODULES_DIR)
    for kver in _listdir(modules):
        found += [f"{MODULES_DIR}/{kver}/{n}" for n in _listdir(os.path.join(modules, kver))
                  if n.endswith(".efi")]
    return found


# --- prerequisites -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SealInputs:
    rootfs: str
    kver: str
    efi_arch: str
    os_release: str      # relative paths inside the rootfs
    systemd_boot: str

    def path(self, rel: str) -> str:
        return os.path.join(self.rootfs, rel)

    @property
    def kernel_dir(self) -> str:
        return f"{MODULES_DIR}/{self.kver}"


def loader_dirs_problem(rootfs: str) -> str | None:
    """``/boot/EFI`` and the loader directories under it, where they exist, must be
    real directories: never follow a symlink (possibly out of the tree)."""
    for rel in LOADER_DIRS:
        st = _lstat_opt(os.path.join(rootfs, rel))
        if st is not None and stat.S_ISLNK(st.st_mode):
            return f"{rootfs}/{rel} is a symlink"
        if st is not None and not stat.S_ISDIR(st.st_mode):
            return f"{rootfs}/{rel} is not a directory"
    return None


def check_prerequisites(rootfs: str, efi_arch: str = "x64") -> SealInputs:
    """The docs' prerequisites for a sealed image, each failing with one clear line."""
    check_container_root(rootfs, boot=True)
    for name in _listdir(os.path.join(rootfs, "boot")):
        if name.startswith(STAGE_PREFIX):
            raise PrerequisiteError(f"{rootfs}/boot/{name}: {LEFTOVER_HELP}")
    problem = loader_dirs_problem(rootfs)
    if problem is not None:
        raise PrerequisiteError(f"{problem}; sealing writes there and never through a "
                                "symlink (remove it)")
    ukis = prebuilt_ukis(rootfs)
    if ukis:
        raise PrerequisiteError(
            f"{rootfs} already contains a UKI at /{ukis[0]}; sealing builds the UKI "
            "(already sealed? check it with 'cfsboot seal verify')")
    entries = [n for n in _listdir(os.path.join(rootfs, ENTRIES_DIR)) if n.endswith(".conf")]
    if entries:
        raise PrerequisiteError(
            f"{rootfs} has a Type 1 boot entry /{ENTRIES_DIR}/{entries[0]}; a sealed image "
            "boots only its UKI (remove the entry)")
    kvers = vmlinuz_dirs(rootfs)
    if not kvers:
        raise PrerequisiteError(f"no kernel: no /{MODULES_DIR}/<kver>/vmlinuz in {rootfs}")
    if len(kvers) > 1:
        raise PrerequisiteError(f"more than one kernel in /{MODULES_DIR}: {shown_names(kvers)}; "
                                "a sealed image has exactly one")
    kver = kvers[0]
    if not real_directory(rootfs, f"{MODULES_DIR}/{kver}"):
        raise PrerequisiteError(f"/{MODULES_DIR}/{kver} is reached through a symlink; "
                                "the kernel directory must be a real directory")
    for name in KERNEL_FILES:
        rel = f"{MODULES_DIR}/{kver}/{name}"
        if not _lexists(os.path.join(rootfs, rel)):
            raise PrerequisiteError(f"/{rel} is missing (a sealed image needs the kernel "
                                    "and its initramfs)")
        if not _is_regular(os.path.join(rootfs, rel)):
            raise PrerequisiteError(f"/{rel} is not a regular file")
    for rel in BOOTUPD_PATHS:
        if _lexists(os.path.join(rootfs, rel)):
            raise PrerequisiteError(f"bootupd is installed (/{rel}); sealed images boot with "
                                    "systemd-boot: remove bootupd")
    sd = systemd_boot_source(efi_arch)
    if not _is_regular(os.path.join(rootfs, sd)):
        raise PrerequisiteError(f"systemd-boot is missing: /{sd} is not a regular file "
                                "(install systemd-boot)")
    osrel = next((r for r in OS_RELEASE_PATHS if _is_regular(os.path.join(rootfs, r))), None)
    if osrel is None:
        raise PrerequisiteError(f"no os-release: neither /{OS_RELEASE_PATHS[0]} nor "
                                f"/{OS_RELEASE_PATHS[1]} is a regular file in {rootfs}")
    return SealInputs(rootfs, kver, efi_arch, osrel, sd)


def read_regular(path: str) -> bytes:
    """A regular file's bytes, never following a symlink out of the tree."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise SealError(f"cannot read {path}: {e.strerror}") from e
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise SealError(f"{path} is not a regular file")
        return f.read()


def pad8(image: bytes) -> bytes:
    """What every Authenticode signer hashes: the file zero-padded to 8 bytes (§6.1).
    Emitting unsigned files already padded makes all signers agree on the hash."""
    return image + bytes(-len(image) % 8)


# --- options and results ---------------------------------------------------------------------

@dataclass
class SealOptions:
    signer: authenticode.Signer | None = None     # None: leave the UKI unsigned
    extra_certs: Sequence[x509.Certificate] = ()
    kargs: Sequence[str] = ()                     # appended after composefs=
    allow_missing_verity: bool = False            # composefs=?<digest>
    efi_arch: str = "x64"
    kargs_arch: str | None = None                 # kargs.d match-architectures name
    stub_path: str | None = None
    layout: str = "257"
    sign_kernel: bool | None = None               # None: as ukify (unsigned PE kernels)
    threads: int | None = None
    cache_dir: str | None = None
    force: bool = False                           # replace a loader that is not systemd-boot


@dataclass
class SealResult:
    digest: str
    insecure: bool
    kver: str
    cmdline: str
    signed: bool
    written: list[str] = field(default_factory=list)   # relative to the rootfs
    removed: list[str] = field(default_factory=list)
    stub: str | None = None          # the UKI stub's path (None: built by an external run)
    stub_origin: str | None = None   # "image" (the image's own), "host" or "option" (--stub)


# --- the digest of the final tree, without touching the tree ---------------------------------

def final_tree_digest(inputs: SealInputs, threads: int | None = None,
                      cache_dir: str | None = None) -> str:
    """The composefs digest of the tree as sealing will leave it, computed from the
    scanned tree minus the kernel files.  Nothing on disk changes: the kernel
    directory keeps its on-disk times in the model, and the install puts them back
    after deleting the files; everything sealing writes goes under /boot, which the
    boot transform empties (its mtime is put back too)."""
    options = DigestOptions()
    check_container_root(inputs.rootfs, boot=True)
    if cache_dir:
        check_cache_outside(inputs.rootfs, cache_dir)
    cache = (HashCache.open(cache_dir, options.alg, DIGEST_SIZE[options.alg])
             if cache_dir else None)
    gc_was_enabled = gc.isenabled()
    gc.disable()   # as compute_composefs_digest: a large graph with no cycles
    try:
        scan = scan_directory(inputs.rootfs, ScanOptions(
            alg=options.alg, track_hardlinks=True, threads=threads, cache=cache))
        transform_for_oci(scan.root)
        image = sealed_image(scan.root, inputs.kernel_dir,
                             source_reader(scan.sources, options.alg), "changed while sealing")
        return fsverity_digest(image, options.alg).hex()
    finally:
        if gc_was_enabled:
            gc.enable()


def sealed_image(root: Directory, kernel_dir: str, read_file: Callable[[Leaf], bytes],
                 if_missing: str) -> bytes:
    """The EROFS image a UKI seals, from an OCI-normalised tree (modified in place):
    the kernel files of ``kernel_dir`` removed, then the boot transform (which
    empties /boot), in the digest's format.  Shared by directory and OCI sealing
    so both pin exactly the same tree; ``if_missing`` ends the error message for
    a kernel file that is not there."""
    kdir = root.get_path(os.fsencode(kernel_dir))
    for name in KERNEL_FILES:
        removed = kdir.entries.pop(name.encode(), None) if isinstance(kdir, Directory) else None
        if not isinstance(removed, Leaf):
            raise SealError(f"/{kernel_dir}/{name} {if_missing}")
    transform_for_boot(root, read_file)
    return mkfs_erofs(root, DigestOptions().format)


@contextlib.contextmanager
def _digest_cache(cache_dir: str | None, rootfs: str) -> Iterator[str]:
    """A per-file digest cache so that re-verifying the final tree does not re-hash it."""
    if cache_dir is not None:
        yield cache_dir
        return
    check_outside(rootfs, tempfile.gettempdir(), "the temporary directory (TMPDIR)",
                  "seal keeps a temporary digest cache there")
    with tempfile.TemporaryDirectory(prefix="cfsboot-seal-cache-") as d:
        yield d


def tree_digest(rootfs: str, threads: int | None = None, cache_dir: str | None = None) -> str:
    """The digest of the tree as it is on disk (``compute-composefs-digest``)."""
    # need_tree: never reuse a cached whole result; each call really rescans.
    options = DigestOptions(threads=threads, cache_dir=cache_dir, need_tree=True)
    return compute_composefs_digest(rootfs, options).hexdigest


# --- building --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Built:
    uki: bytes
    systemd_boot: bytes
    cmdline: str


def _read_inputs(inputs: SealInputs) -> dict[str, bytes]:
    kd = inputs.kernel_dir
    return {"vmlinuz": read_regular(inputs.path(f"{kd}/vmlinuz")),
            "initramfs": read_regular(inputs.path(f"{kd}/initramfs.img")),
            "os_release": read_regular(inputs.path(inputs.os_release)),
            "systemd_boot": read_regular(inputs.path(inputs.systemd_boot))}


def _build(inputs: SealInputs, options: SealOptions, data: dict[str, bytes], kargsd: list[str],
           stub: bytes, digest: str) -> _Built:
    cmdline = sealed_cmdline(kargsd, digest, options.allow_missing_verity, options.kargs)
    linux = data["vmlinuz"]
    signer = options.signer
    if signer is not None and options.sign_kernel is not False:
        linux = _maybe_sign_kernel(linux, signer, bool(options.sign_kernel))
    image = uki.build_uki(stub, uki.UkiInputs(
        linux=linux, initrds=[data["initramfs"]],
        cmdline=uki.encode_text(cmdline, "kernel command line"),
        os_release=data["os_release"], uname=uki.encode_text(inputs.kver, "kernel version")),
        options.layout)
    sd = data["systemd_boot"]
    if authenticode.list_signatures(sd):
        sd = authenticode.remove_signatures(sd)   # the distribution's signature is replaced
    if signer is None:
        return _Built(pad8(image), pad8(sd), cmdline)
    return _Built(authenticode.sign(image, signer, options.extra_certs),
                  authenticode.sign(sd, signer, options.extra_certs), cmdline)


def _maybe_sign_kernel(kernel: bytes, signer: authenticode.Signer, forced: bool) -> bytes:
    """ukify's --sign-kernel default: an unsigned PE kernel is signed with the UKI key."""
    try:
        signed = bool(authenticode.list_signatures(kernel))
    except CfsError:
        if forced:
            raise
        return kernel   # not a PE (a test payload): nothing to sign
    return kernel if signed and not forced else authenticode.sign(kernel, signer, append=True)


def _stub(inputs: SealInputs, options: SealOptions) -> tuple[bytes, str, str]:
    """The UKI stub, its path and origin: ``--stub`` ("option"), else the image's own
    ("image": it matches the image's systemd-boot, as when ukify runs inside the
    image build), else the host's ("host")."""
    path, origin = options.stub_path, "option"
    if path is None:
        own = inputs.path(uki.default_stub_path(options.efi_arch).lstrip("/"))
        path, origin = (own, "image") if _is_file_in_tree(inputs.rootfs, own) else \
            (uki.default_stub_path(options.efi_arch), "host")
    data = read_stub(path)
    check_stub(data, path)
    return data, path, origin


def read_stub(path: str) -> bytes:
    """A UKI stub file from the host (or ``--stub``)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SealError(f"cannot read the UKI stub {path}: {e.strerror} "
                        "(install systemd-boot-efi or give --stub)") from e


def check_stub(data: bytes, path: str) -> None:
    """Refuse a stub that is not a PE image, naming where it came from."""
    try:
        pe.parse_pe(data)
    except CfsError as e:
        raise SealError(f"the UKI stub {path} is unusable: {e}") from e


def _is_file_in_tree(rootfs: str, path: str) -> bool:
    """A regular file reached without following any symlink out of ``rootfs``."""
    try:
        regular = stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
    return regular and os.path.realpath(path) == os.path.join(
        os.path.realpath(rootfs), os.path.relpath(path, rootfs))


def _files(inputs: SealInputs, uki_image: bytes, sd: bytes) -> dict[str, bytes]:
    out = {uki_target(inputs.kver): uki_image}
    for target in systemd_boot_targets(inputs.efi_arch):
        out[target] = sd
    return out


def check_existing_loaders(inputs: SealInputs, force: bool) -> None:
    """Refuse to replace a boot loader at the systemd-boot targets that is not
    systemd-boot (e.g. shim at the fallback path) unless ``force``.

    bootc itself never writes these paths into the image (``bootctl install``
    does, on the ESP, at install time), so there is no upstream behaviour to
    follow; silently replacing another vendor's loader would be surprising."""
    for rel in systemd_boot_targets(inputs.efi_arch):
        path = inputs.path(rel)
        if not _lexists(path):
            continue
        if not _is_regular(path):
            raise SealError(f"/{rel} exists and is not a regular file")
        if force:
            continue
        if SDBOOT_MAGIC not in read_regular(path):
            raise SealError(f"/{rel} exists and is not systemd-boot (shim or another "
                            "loader?); sealing would replace it: remove it or use --force")


# --- sealing ---------------------------------------------------------------------------------

def seal(rootfs: str, options: SealOptions | None = None) -> SealResult:
    """Seal ``rootfs`` in place; on any error or SIGINT/SIGTERM/SIGHUP the tree is
    left as it was.  Nothing is written before the final install step."""
    options = options or SealOptions()
    with rootfs_locked(rootfs):
        return _seal(rootfs, options)


def _seal(rootfs: str, options: SealOptions) -> SealResult:
    inputs = check_prerequisites(rootfs, options.efi_arch)
    check_existing_loaders(inputs, options.force)
    data = _read_inputs(inputs)
    kargsd = kargs_in_root(rootfs, options.kargs_arch or rust_arch(options.efi_arch))
    stub, stub_path, stub_origin = _stub(inputs, options)
    trusted = [options.signer.certificate] if options.signer else None
    with signals_interrupt(), _digest_cache(options.cache_dir, rootfs) as cache:
        digest = final_tree_digest(inputs, options.threads, cache)
        built = _build(inputs, options, data, kargsd, stub, digest)
        result = _install(inputs, digest, options.allow_missing_verity, built.cmdline,
                          _files(inputs, built.uki, built.systemd_boot), trusted,
                          options.threads, cache)
    result.stub, result.stub_origin = stub_path, stub_origin
    return result


def _install(inputs: SealInputs, digest: str, insecure: bool, cmdline: str,
             files: dict[str, bytes], trusted: list[x509.Certificate] | None,
             threads: int | None, cache: str | None) -> SealResult:
    """Put the files in place, remove the kernel files and verify the final tree on
    disk; any failure (or interruption) before the end undoes everything."""
    with sealing_install(inputs.rootfs, inputs.kernel_dir) as install:
        install.prepare(files)
        install.link_backups()
        install.switch()
        final = tree_digest(inputs.rootfs, threads, cache)
        if final != digest:
            raise SealError(f"refusing to seal: the final tree's digest {final} differs from "
                            f"the sealed {digest} (the tree changed while sealing?)")
        problems = uki.check_uki(read_regular(inputs.path(uki_target(inputs.kver))), digest)
        for rel in files if trusted else ():
            checks = authenticode.verify(read_regular(inputs.path(rel)), trusted)
            if not any(c.ok for c in checks):
                problems.append(f"/{rel}: signature does not verify")
        if problems:
            raise SealError(f"refusing to seal: {problems[0]}")
    removed = [f"{inputs.kernel_dir}/{n}" for n in KERNEL_FILES]
    return SealResult(digest, insecure, inputs.kver, cmdline, trusted is not None,
                      list(files), removed)


# --- external signing ------------------------------------------------------------------------

def check_outside(rootfs: str, path: str, what: str, why: str) -> None:
    """Refuse a file the seal writes or reads that lies inside the tree (by
    device and inode: bind mounts count): ``why`` says what would go wrong."""
    if is_within(rootfs, path):
        raise SealError(f"{what} {path} is inside {rootfs}: {why}; use a path outside the tree")


def seal_external(rootfs: str, outdir: str, options: SealOptions | None = None) -> SealManifest:
    """Emit the unsigned UKI and systemd-boot plus a manifest; ``rootfs`` is only read
    (it may be a read-only mount)."""
    options = options or SealOptions()
    inputs = check_prerequisites(rootfs, options.efi_arch)
    check_outside(rootfs, outdir, "OUTDIR",
                  "the unsigned files would become part of the tree they seal")
    data = _read_inputs(inputs)
    kargsd = kargs_in_root(rootfs, options.kargs_arch or rust_arch(options.efi_arch))
    stub, _, _ = _stub(inputs, options)
    unsigned = SealOptions(**{**vars(options), "signer": None})
    digest = final_tree_digest(inputs, options.threads, options.cache_dir)
    built = _build(inputs, unsigned, data, kargsd, stub, digest)
    return write_external(outdir, inputs, built, digest, options.allow_missing_verity, data)


def write_external(outdir: str, inputs: SealInputs, built: _Built, digest: str,
                   insecure: bool, data: dict[str, bytes],
                   source: ManifestSource | None = None) -> SealManifest:
    """Write the unsigned UKI and systemd-boot, then their manifest, into ``outdir``
    (shared by directory and OCI sealing; ``source`` names a stored image)."""
    sd_name = os.path.basename(systemd_boot_source(inputs.efi_arch))
    entries = [("uki", f"{inputs.kver}.efi", built.uki, (uki_target(inputs.kver),)),
               ("systemd-boot", sd_name, built.systemd_boot,
                systemd_boot_targets(inputs.efi_arch))]
    manifest = SealManifest(
        kver=inputs.kver, efi_arch=inputs.efi_arch, cmdline=built.cmdline, digest=digest,
        insecure=insecure,
        vmlinuz_sha256=hashlib.sha256(data["vmlinuz"]).hexdigest(),
        initramfs_sha256=hashlib.sha256(data["initramfs"]).hexdigest(),
        files=tuple(ManifestFile(role, name, hashlib.sha256(image).hexdigest(),
                                 authenticode.authenticode_digest(image).hex(), targets)
                    for role, name, image, targets in entries),
        source=source)
    os.makedirs(outdir, exist_ok=True)
    for _, name, image, _ in entries:
        atomic_write_bytes(os.path.join(outdir, name), image, 0o644)
    atomic_write_bytes(os.path.join(outdir, MANIFEST_NAME), manifest.to_json().encode())
    return manifest


def check_manifest_targets(manifest: SealManifest) -> None:
    """The manifest places exactly one UKI at the kernel version's path and one
    systemd-boot at the two loader paths, and nothing else (an extra UKI would make
    the sealed tree fail ``seal verify``)."""
    want = {"uki": (uki_target(manifest.kver),),
            "systemd-boot": systemd_boot_targets(manifest.efi_arch)}
    roles = [f.role for f in manifest.files]
    if sorted(roles) != sorted(want):
        raise SealError(f"the manifest's files are {', '.join(roles) or 'none'}; "
                        "expected one uki and one systemd-boot")
    for f in manifest.files:
        if tuple(f.targets) != want[f.role]:
            shown = ", ".join(f"/{t}" for t in f.targets) or "nothing"
            raise SealError(f"the manifest puts its {f.role} at {shown}; expected "
                            + ", ".join(f"/{t}" for t in want[f.role]))


def match_signed(manifest: SealManifest, signed: dict[str, bytes],
                 trusted: Sequence[x509.Certificate] | None = None) -> dict[str, bytes]:
    """Pair each signed file with its manifest entry by Authenticode hash; returns
    ``{role: signed bytes}``.  Each must carry a signature that verifies."""
    by_hash = {f.authenticode_sha256: f for f in manifest.files}
    out: dict[str, bytes] = {}
    for name, image in signed.items():
        try:
            digest = authenticode.authenticode_digest(image).hex()
        except CfsError as e:
            raise SealError(f"{name}: not a PE image: {e}") from e
        entry = by_hash.get(digest)
        if entry is None:
            raise SealError(f"{name} matches no file of the manifest: its Authenticode hash "
                            "differs, so more than a signature changed")
        if entry.role in out:
            raise SealError(f"{name}: a second signed file for {entry.name}")
        checks = authenticode.verify(image, trusted)
        if not checks:
            raise SealError(f"{name} is not signed")
        if not any(c.ok for c in checks):
            raise SealError(f"{name}: no signature verifies ({checks[0].reason})")
        out[entry.role] = image
    for f in manifest.files:
        if f.role not in out:
            raise SealError(f"no signed file given for {f.name} ({f.role})")
    return out


def check_signed_uki(manifest: SealManifest, image: bytes) -> None:
    """The signed UKI seals the manifest's digest (its Authenticode hash already
    matched, so this guards against a manifest whose digest was edited)."""
    karg = uki.composefs_karg(uki.inspect_uki(image).cmdline or "")
    if karg is None or karg.digest != manifest.digest:
        raise SealError("the signed UKI does not carry the manifest's composefs digest")


def inject(rootfs: str, manifest: SealManifest, signed: dict[str, bytes],
           trusted: Sequence[x509.Certificate] | None = None, threads: int | None = None,
           cache_dir: str | None = None, force: bool = False) -> SealResult:
    """Complete an externally signed seal: check the manifest, the signed files
    against it and the tree against its digest, then install as ``seal`` does."""
    with rootfs_locked(rootfs):
        return _inject(rootfs, manifest, signed, trusted, threads, cache_dir, force)


def _inject(rootfs: str, manifest: SealManifest, signed: dict[str, bytes],
            trusted: Sequence[x509.Certificate] | None, threads: int | None,
            cache_dir: str | None, force: bool) -> SealResult:
    manifest.require_kind(oci=False)
    check_manifest_targets(manifest)
    by_role = match_signed(manifest, signed, trusted)
    inputs = check_prerequisites(rootfs, manifest.efi_arch)
    if inputs.kver != manifest.kver:
        raise SealError(f"kernel {inputs.kver} in {rootfs}, but the manifest is for "
                        f"{manifest.kver}")
    check_existing_loaders(inputs, force)
    data = _read_inputs(inputs)
    for key, want in (("vmlinuz", manifest.vmlinuz_sha256),
                      ("initramfs", manifest.initramfs_sha256)):
        if hashlib.sha256(data[key]).hexdigest() != want:
            raise SealError(f"the {key} in {rootfs} is not the one the manifest was made from")
    files = {target: by_role[f.role] for f in manifest.files for target in f.targets}
    check_signed_uki(manifest, by_role["uki"])
    with signals_interrupt(), _digest_cache(cache_dir, rootfs) as cache:
        digest = final_tree_digest(inputs, threads, cache)
        if digest != manifest.digest:
            raise SealError(f"{rootfs} changed since 'seal --external-signing': its "
                            f"digest is {digest}, the manifest seals {manifest.digest}")
        result = _install(inputs, digest, manifest.insecure, manifest.cmdline, files,
                          list(trusted) if trusted else None, threads, cache)
    result.signed = True
    return result


# --- verifying a sealed tree -----------------------------------------------------------------

@dataclass
class SealCheck:
    rootfs: str
    uki: str | None                # relative path
    sealed_digest: str | None      # from the UKI's cmdline
    insecure: bool
    tree_digest: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_seal(rootfs: str, trusted: Sequence[x509.Certificate] | None = None, *,
                allow_unsigned: bool = False, allow_insecure: bool = False,
                efi_arch: str = "x64",
                threads: int | None = None,
                digest_fn: Callable[[str], str] | None = None) -> SealCheck:
    """Does ``rootfs`` still match its seal?  Lists every problem found."""
    check_container_root(rootfs, boot=True)
    problem = loader_dirs_problem(rootfs)
    if problem is not None:   # the digest refuses such a tree, and the UKI is not read
        raise SealError(f"{problem}: not a sealed layout")
    check = SealCheck(rootfs, None, None, False, None)
    ukis = [n for n in _listdir(os.path.join(rootfs, UKI_DIR)) if n.endswith(".efi")]
    if not ukis:
        check.problems.append(f"no UKI in /{UKI_DIR}: not sealed")
    elif len(ukis) > 1:
        check.problems.append(f"{len(ukis)} UKIs in /{UKI_DIR}; a sealed image has one")
    digest = (digest_fn or (lambda p: tree_digest(p, threads)))(rootfs)
    check.tree_digest = digest
    if ukis:
        check.uki = f"{UKI_DIR}/{ukis[0]}"
        image = read_regular(os.path.join(rootfs, check.uki))
        report = uki.inspect_uki(image)
        if report.composefs is not None:
            check.sealed_digest = report.composefs.digest
            check.insecure = report.composefs.insecure
            if report.composefs.digest != digest:
                check.problems.append(
                    f"the tree changed after sealing: the UKI seals {report.composefs.digest}, "
                    f"the tree's digest is {digest}")
        check.problems += [f"/{check.uki}: {p}" for p in uki.check_uki(image)]
        if check.insecure and not allow_insecure:
            check.problems.append(f"/{check.uki}: composefs=? (fs-verity optional): "
                                  "not sealed")
        check.problems += _signature_problems(check.uki, image, trusted, allow_unsigned)
    sd_images = []
    for rel in systemd_boot_targets(efi_arch):
        path = os.path.join(rootfs, rel)
        if not _is_regular(path):
            check.problems.append(f"/{rel} is missing")
            continue
        image = read_regular(path)
        sd_images.append(image)
        check.problems += _signature_problems(rel, image, trusted, allow_unsigned)
    if len(sd_images) == 2 and sd_images[0] != sd_images[1]:
        check.problems.append("the two systemd-boot copies differ")
    for name in _listdir(os.path.join(rootfs, "boot")):
        if name.startswith(STAGE_PREFIX):
            check.problems.append(f"/boot/{name}: {LEFTOVER_HELP}")
    for kver in vmlinuz_dirs(rootfs):
        check.problems.append(f"/{MODULES_DIR}/{kver}/vmlinuz is still present "
                              "(the sealed layout removes it)")
    return check


def _signature_problems(rel: str, image: bytes, trusted: Sequence[x509.Certificate] | None,
                        allow_unsigned: bool) -> list[str]:
    checks = authenticode.verify(image, trusted)
    if not checks:
        return [] if allow_unsigned else [f"/{rel} is not signed"]
    if not any(c.ok for c in checks):
        return [f"/{rel}: no signature verifies ({checks[0].reason})"]
    return []
