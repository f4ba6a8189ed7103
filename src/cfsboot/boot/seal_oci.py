"""Sealing an OCI image stored in a repository: the signed boot files, written out.

A stored image is immutable, so unlike directory sealing (``seal.seal``) nothing
is written into the tree: the UKI and systemd-boot go to an output directory in
the ESP layout (``EFI/Linux/<kver>.efi``, ``EFI/BOOT/BOOT<ARCH>.EFI``,
``EFI/systemd/systemd-boot<arch>.efi``).  The UKI seals the image's bootable tree
with the kernel files removed, the very tree ``seal.final_tree_digest`` digests
for a directory: the same OCI normalisation, kernel-file removal, boot transform
and EROFS/fs-verity parameters (``seal.sealed_image`` is that shared step over
a tree model).  Kernel, initramfs, os-release, kargs.d and systemd-boot are read
from the tree (repository objects); the prerequisite checks are those of
``seal.check_prerequisites``, on the tree model.

External signing for a stored image is in seal_oci_external.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from cfsboot.boot import authenticode, uki
from cfsboot.boot.bootloader import BootEntryError, Type1Entry, Type2Entry, get_boot_resources
from cfsboot.boot.kargs import KARGS_DIR, Cmdline, parse_kargs_toml, rust_arch
from cfsboot.boot.oci_bootable import repo_file_reader
from cfsboot.boot.seal import (
    BOOTUPD_PATHS,
    MODULES_DIR,
    OS_RELEASE_PATHS,
    PrerequisiteError,
    SealError,
    SealInputs,
    SealOptions,
    _build,
    check_stub,
    read_stub,
    sealed_image,
    systemd_boot_source,
    systemd_boot_targets,
    uki_target,
)
from cfsboot.boot.seal_install import KERNEL_FILES, fsync_dir
from cfsboot.fsverity import fsverity_digest
from cfsboot.oci.image import OciImageError, create_filesystem, open_image, resolve_ref
from cfsboot.paths import is_within
from cfsboot.repository import Repository
from cfsboot.repository.locate import enclosing_repository
from cfsboot.tree.model import Directory, External, Inline, Leaf

ReadFile = Callable[[Leaf], bytes]
ESP_PREFIX = "boot/"   # the sealed-tree paths are under /boot; the ESP is /boot's content


# --- tree lookups and prerequisites ------------------------------------------------------------

def lookup(root: Directory, rel: str) -> Directory | Leaf | None:
    """The node at ``rel`` (no leading ``/``), never following a symlink."""
    return root.get_path(os.fsencode(rel))


def _is_regular(node: Directory | Leaf | None) -> bool:
    return isinstance(node, Leaf) and isinstance(node.content, (Inline, External))


@dataclass(frozen=True)
class TreeSealInputs:
    kver: str
    efi_arch: str
    vmlinuz: Leaf
    initramfs: Leaf
    os_release: Leaf
    systemd_boot: Leaf


def check_tree_prerequisites(root: Directory, read_file: ReadFile, where: str,
                             efi_arch: str = "x64") -> TreeSealInputs:
    """``seal.check_prerequisites`` on a tree model (the image's), same messages."""
    for name in ("usr", "boot", "sysroot"):
        if not isinstance(lookup(root, name), Directory):
            raise PrerequisiteError(f"not a container root: /{name} is missing or not a "
                                    f"directory in {where}")
    try:
        entries = get_boot_resources(root, read_file)
    except BootEntryError as e:
        raise PrerequisiteError(f"{where}: {e}") from None
    ukis = [e for e in entries if isinstance(e, Type2Entry)]
    if ukis:
        base = f"{MODULES_DIR}/{ukis[0].kver.decode(errors='replace')}" \
            if ukis[0].kver is not None else "boot/EFI/Linux"
        raise PrerequisiteError(f"{where} already contains a UKI at /{base}/"
                                f"{ukis[0].file_path.decode(errors='replace')}; sealing "
                                "builds the UKI")
    type1 = [e for e in entries if isinstance(e, Type1Entry)]
    if type1:
        raise PrerequisiteError(f"{where} has a Type 1 boot entry /boot/loader/entries/"
                                f"{type1[0].filename.decode(errors='replace')}; a sealed "
                                "image boots only its UKI (remove the entry)")
    modules = lookup(root, MODULES_DIR)
    kvers = sorted(name.decode(errors="replace") for name, node in modules.entries.items()
                   if isinstance(node, Directory) and b"vmlinuz" in node.entries) \
        if isinstance(modules, Directory) else []
    if not kvers:
        raise PrerequisiteError(f"no kernel: no /{MODULES_DIR}/<kver>/vmlinuz in {where}")
    if len(kvers) > 1:
        raise PrerequisiteError(f"more than one kernel in /{MODULES_DIR}: {', '.join(kvers)}; "
                                "a sealed image has exactly one")
    kver = kvers[0]
    kernel: dict[str, Leaf] = {}
    for name in KERNEL_FILES:
        rel = f"{MODULES_DIR}/{kver}/{name}"
        node = lookup(root, rel)
        if node is None:
            raise PrerequisiteError(f"/{rel} is missing (a sealed image needs the kernel "
                                    "and its initramfs)")
        if not _is_regular(node):
            raise PrerequisiteError(f"/{rel} is not a regular file")
        assert isinstance(node, Leaf)
        kernel[name] = node
    for rel in BOOTUPD_PATHS:
        if lookup(root, rel) is not None:
            raise PrerequisiteError(f"bootupd is installed (/{rel}); sealed images boot with "
                                    "systemd-boot: remove bootupd")
    sd_rel = systemd_boot_source(efi_arch)
    sd = lookup(root, sd_rel)
    if not _is_regular(sd):
        raise PrerequisiteError(f"systemd-boot is missing: /{sd_rel} is not a regular file "
                                "(install systemd-boot)")
    osrel = next((n for r in OS_RELEASE_PATHS if _is_regular(n := lookup(root, r))), None)
    if not isinstance(osrel, Leaf):
        raise PrerequisiteError(f"no os-release: neither /{OS_RELEASE_PATHS[0]} nor "
                                f"/{OS_RELEASE_PATHS[1]} is a regular file in {where}")
    assert isinstance(sd, Leaf)
    vmlinuz, initramfs = (kernel[n] for n in KERNEL_FILES)
    return TreeSealInputs(kver, efi_arch, vmlinuz, initramfs, osrel, sd)


def kargs_in_tree(root: Directory, read_file: ReadFile, arch: str) -> list[str]:
    """``kargs.kargs_in_root`` on a tree model: ``*.toml`` in kargs.d, sorted, regular."""
    kdir = lookup(root, KARGS_DIR)
    if kdir is None:
        return []
    if not isinstance(kdir, Directory):
        raise SealError(f"/{KARGS_DIR} is not a directory")
    merged = Cmdline()
    for name, node in kdir.sorted_entries():
        text = name.decode(errors="replace")
        if not text.endswith(".toml") or text == ".toml":
            continue
        shown = f"/{KARGS_DIR}/{text}"
        if not _is_regular(node):
            raise SealError(f"{shown} is not a regular file; kargs.d files must be "
                            "regular files")
        assert isinstance(node, Leaf)
        try:
            content = read_file(node).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SealError(f"{shown} is not UTF-8: {e}") from e
        merged.extend(uki.split_cmdline(" ".join(parse_kargs_toml(content, arch, shown))))
    return merged.args


def _stub(root: Directory, read_file: ReadFile, options: SealOptions
          ) -> tuple[bytes, str, str]:
    """As ``seal._stub``: ``--stub``, else the image's own stub, else the host's."""
    own_rel = uki.default_stub_path(options.efi_arch).lstrip("/")
    own = lookup(root, own_rel)
    if options.stub_path is None and _is_regular(own):
        assert isinstance(own, Leaf)
        data, path, origin = read_file(own), f"/{own_rel} (in the image)", "image"
    else:
        path = options.stub_path or uki.default_stub_path(options.efi_arch)
        origin = "option" if options.stub_path else "host"
        data = read_stub(path)
    check_stub(data, path)
    return data, path, origin


# --- sealing -----------------------------------------------------------------------------------

@dataclass
class OciSealResult:
    image: str
    manifest_digest: str
    digest: str
    insecure: bool
    kver: str
    cmdline: str
    signed: bool
    output: str
    written: list[str] = field(default_factory=list)   # relative to the output directory
    stub: str | None = None
    stub_origin: str | None = None
    image_ref: str | None = None    # the sealed image stored in the repository, if any


def esp_path(sealed_rel: str) -> str:
    """A sealed-tree path under /boot as a path on the ESP (the output directory)."""
    if not sealed_rel.startswith(ESP_PREFIX):
        raise SealError(f"/{sealed_rel} is not under /boot")
    return sealed_rel[len(ESP_PREFIX):]


@dataclass
class Prepared:
    """A stored image opened and checked, with what its seal is built from."""
    manifest_digest: str
    tree: TreeSealInputs
    inputs: SealInputs        # as _build wants them (it reads only kver and efi_arch)
    data: dict[str, bytes]    # vmlinuz, initramfs, os_release, systemd_boot
    kargsd: list[str]
    stub: bytes
    stub_path: str
    stub_origin: str
    image: bytes              # the sealed tree's EROFS image: composefs= pins it
    digest: str


@dataclass
class OpenedTree:
    manifest_digest: str
    root: Directory
    read_file: ReadFile
    tree: TreeSealInputs

    def sealed_image(self) -> tuple[bytes, str]:
        """The sealed tree's EROFS image and its digest; changes ``root`` in place."""
        image = sealed_image(self.root, f"{MODULES_DIR}/{self.tree.kver}", self.read_file,
                             "is missing from the tree")
        return image, fsverity_digest(image, "sha512").hex()


def open_tree(repo: Repository, name: str, efi_arch: str) -> OpenedTree:
    """The stored image ``name`` as a tree model, its seal prerequisites checked."""
    manifest_digest, manifest_verity = resolve_ref(repo, name)
    img = open_image(repo, manifest_digest, manifest_verity)
    if not img.is_container:
        raise OciImageError(f"{name} is an artifact, not a container image")
    read_file = repo_file_reader(repo)
    root = create_filesystem(repo, img.config_desc.digest, img.config_verity)
    tree = check_tree_prerequisites(root, read_file, f"image {name}", efi_arch)
    return OpenedTree(manifest_digest, root, read_file, tree)


def prepare(repo: Repository, name: str, options: SealOptions) -> Prepared:
    t = open_tree(repo, name, options.efi_arch)
    read_file, tree = t.read_file, t.tree
    data = {"vmlinuz": read_file(tree.vmlinuz), "initramfs": read_file(tree.initramfs),
            "os_release": read_file(tree.os_release),
            "systemd_boot": read_file(tree.systemd_boot)}
    # kargs.d and the stub are read before sealed_image changes the tree in place.
    kargsd = kargs_in_tree(t.root, read_file,
                           options.kargs_arch or rust_arch(options.efi_arch))
    stub, stub_path, stub_origin = _stub(t.root, read_file, options)
    image, digest = t.sealed_image()
    inputs = SealInputs(f"image {name}", tree.kver, tree.efi_arch, OS_RELEASE_PATHS[0],
                        systemd_boot_source(tree.efi_arch))
    return Prepared(t.manifest_digest, tree, inputs, data, kargsd, stub, stub_path,
                     stub_origin, image, digest)


def seal_oci_image(repo: Repository, name: str, output: str,
                   options: SealOptions | None = None,
                   image_ref_name: str | None = None) -> OciSealResult:
    """Seal the stored OCI image ``name`` (a tag or manifest digest): write the
    signed UKI and systemd-boot to ``output`` (which must not exist, or be an
    empty directory), all at once.  With ``image_ref_name``, also commit the
    sealed tree's image (the one ``composefs=`` pins) as images/refs/NAME."""
    options = options or SealOptions()
    check_output(output, repo)
    check_can_store(repo, image_ref_name)
    p = prepare(repo, name, options)
    built = _build(p.inputs, options, p.data, p.kargsd, p.stub, p.digest)
    files = esp_files(p.tree.kver, p.tree.efi_arch, built.uki, built.systemd_boot)
    _check_built(files, esp_path(uki_target(p.tree.kver)), p.digest,
                 [options.signer.certificate] if options.signer else None)
    write_tree_atomically(output, files)
    image_ref = store_sealed_image(repo, p.image, p.digest, image_ref_name)
    return OciSealResult(name, p.manifest_digest, p.digest, options.allow_missing_verity,
                         p.tree.kver, built.cmdline, options.signer is not None, output,
                         list(files), p.stub_path, p.stub_origin, image_ref)


def esp_files(kver: str, efi_arch: str, uki_image: bytes, sd: bytes) -> dict[str, bytes]:
    files = {esp_path(uki_target(kver)): uki_image}
    for target in systemd_boot_targets(efi_arch):
        files[esp_path(target)] = sd
    return files


def check_can_store(repo: Repository, ref: str | None) -> None:
    if ref is not None and repo.algorithm.digest_size != 64:
        raise SealError("the sealed digest is SHA-512: store the sealed image in a SHA-512 "
                        f"repository (this one is {repo.algorithm.meta_name})")


def store_sealed_image(repo: Repository, image: bytes, digest: str,
                        ref: str | None) -> str | None:
    """Commit the image the UKI pins, so the repository can mount and deploy
    exactly it (its ID is the digest in ``composefs=``).  Only a SHA-512
    repository names images by that digest."""
    if ref is None:
        return None
    check_can_store(repo, ref)
    stored = repo.write_image(ref, image)
    if stored.hex() != digest:
        raise SealError(f"stored image {stored.hex()} is not the sealed digest {digest}")
    return ref


def _check_built(files: dict[str, bytes], uki_rel: str, digest: str,
                 trusted: list[x509.Certificate] | None) -> None:
    problems = uki.check_uki(files[uki_rel], digest)
    for rel, image in files.items() if trusted else ():
        if not any(c.ok for c in authenticode.verify(image, trusted)):
            problems.append(f"{rel}: signature does not verify")
    if problems:
        raise SealError(f"refusing to seal: {problems[0]}")


# --- the output directory ----------------------------------------------------------------------

def check_outside_repository(output: str, repo: Repository | None = None) -> None:
    """Refuse to write into a composefs repository (``repo``, or any found
    above ``output``): its own layout is all a repository may hold, and fsck
    and gc fail on anything else."""
    if repo is not None and is_within(repo.path, output):
        inside: str | None = repo.path
    else:
        found = enclosing_repository(output)
        inside = found[0] if found is not None else None
    if inside is not None:
        raise SealError(f"{output} is inside the repository {inside}; give a directory "
                        "outside it")


def check_output(output: str, repo: Repository | None = None) -> None:
    """A new or empty directory, outside any composefs repository."""
    check_outside_repository(output, repo)
    if os.path.islink(output):
        raise SealError(f"{output} is a symlink; give a new directory")
    if os.path.isdir(output):
        if os.listdir(output):
            raise SealError(f"{output} exists and is not empty; give a new or empty directory")
    elif os.path.lexists(output):
        raise SealError(f"{output} exists and is not a directory")


def write_tree_atomically(output: str, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative paths) into a temporary directory next to
    ``output``, fsync everything, then rename it to ``output`` (replacing at most
    an empty directory): ``output`` appears complete or not at all."""
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise SealError(f"cannot create {output}: {parent} is not a directory")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        dirs = {tmp}
        for rel, data in files.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            d = os.path.dirname(path)
            while d != tmp:
                dirs.add(d)
                d = os.path.dirname(d)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for d in sorted(dirs, key=len, reverse=True):
            fsync_dir(d)
        check_output(output)
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
