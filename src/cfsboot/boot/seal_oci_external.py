"""External signing of a stored OCI image: ``seal oci --external-signing``
and ``seal inject --output``.

``seal_oci_external`` writes the unsigned UKI and systemd-boot plus a manifest
naming the image, as ``seal.seal_external`` does for a directory;
``inject_oci`` checks the signed files against it (``seal.match_signed``: each
differs from its unsigned file only by the signature) and writes them in the
ESP layout, all at once, as ``seal_oci.seal_oci_image`` would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from cryptography import x509

from cfsboot.boot.manifest import ManifestSource, SealManifest
from cfsboot.boot.seal import (
    SealError,
    SealOptions,
    _build,
    check_manifest_targets,
    check_signed_uki,
    match_signed,
    write_external,
)
from cfsboot.boot.seal_oci import (
    OciSealResult,
    check_can_store,
    check_output,
    check_outside_repository,
    esp_files,
    open_tree,
    prepare,
    store_sealed_image,
    write_tree_atomically,
)
from cfsboot.repository import Repository


def seal_oci_external(repo: Repository, name: str, outdir: str,
                      options: SealOptions | None = None,
                      image_ref_name: str | None = None) -> SealManifest:
    """``seal.seal_external`` for a stored image: the unsigned UKI and systemd-boot
    plus a manifest naming the image, written to ``outdir``; ``seal inject
    --output`` later writes the signed files in the ESP layout."""
    options = replace(options or SealOptions(), signer=None)
    check_outside_repository(outdir, repo)
    check_can_store(repo, image_ref_name)
    p = prepare(repo, name, options)
    built = _build(p.inputs, options, p.data, p.kargsd, p.stub, p.digest)
    manifest = write_external(outdir, p.inputs, built, p.digest, options.allow_missing_verity,
                              p.data, ManifestSource(name, p.manifest_digest))
    store_sealed_image(repo, p.image, p.digest, image_ref_name)
    return manifest


def inject_oci(manifest: SealManifest, signed: dict[str, bytes], output: str,
               trusted: Sequence[x509.Certificate] | None = None,
               repo: Repository | None = None) -> OciSealResult:
    """Complete ``seal_oci_external``: check the signed files against the manifest
    (as ``seal.inject``), then write them to ``output`` in the ESP layout, all at
    once.  With ``repo``, the image the manifest names must still seal its digest."""
    manifest.require_kind(oci=True)
    source = manifest.source
    assert source is not None
    check_output(output, repo)
    check_manifest_targets(manifest)
    by_role = match_signed(manifest, signed, trusted)
    check_signed_uki(manifest, by_role["uki"])
    if repo is not None:
        _check_source(repo, manifest, source.manifest_digest)
    files = esp_files(manifest.kver, manifest.efi_arch, by_role["uki"],
                       by_role["systemd-boot"])
    write_tree_atomically(output, files)
    return OciSealResult(source.oci_image, source.manifest_digest, manifest.digest,
                         manifest.insecure, manifest.kver, manifest.cmdline, True, output,
                         list(files))


def _check_source(repo: Repository, manifest: SealManifest, manifest_digest: str) -> None:
    """The stored image still seals to the manifest: same kernel, same digest."""
    t = open_tree(repo, manifest_digest, manifest.efi_arch)
    where = f"image {manifest_digest} in {repo.path}"
    if t.tree.kver != manifest.kver:
        raise SealError(f"{where} has kernel {t.tree.kver}, the manifest {manifest.kver}")
    for what, leaf, want in (("vmlinuz", t.tree.vmlinuz, manifest.vmlinuz_sha256),
                             ("initramfs", t.tree.initramfs, manifest.initramfs_sha256)):
        if hashlib.sha256(t.read_file(leaf)).hexdigest() != want:
            raise SealError(f"the {what} of {where} is not the one the manifest was made from")
    _, digest = t.sealed_image()
    if digest != manifest.digest:
        raise SealError(f"{where} seals {digest}, not the manifest's {manifest.digest}")
