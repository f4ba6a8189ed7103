"""``cfsboot seal``: make a root filesystem a sealed bootable image, in place.

    cfsboot seal ROOTFS (--key K --cert C | --unsigned) [--karg ARG]... [--allow-missing-verity]
    cfsboot seal ROOTFS --external-signing OUTDIR        (unsigned files + manifest.json)
    cfsboot seal inject SIGNED... --manifest M ROOTFS [--cert DB]
    cfsboot seal verify ROOTFS [--cert DB] [--allow-unsigned]
    cfsboot seal oci --repo R --oci-image NAME --output DIR (--key K --cert C | --unsigned)
    cfsboot seal oci --repo R --oci-image NAME --external-signing OUTDIR
    cfsboot seal inject SIGNED... --manifest M --output DIR [--repo R] [--cert DB]

Sealing checks the prerequisites (one kernel with vmlinuz + initramfs.img in
/usr/lib/modules/<kver>/, systemd-boot, no bootupd, no pre-built UKI), computes
the composefs digest of the final tree (kernel files removed) without changing
ROOTFS, builds the UKI with the kargs.d arguments + composefs=<digest> + --karg,
signs it and systemd-boot, then writes /boot/EFI/Linux/<kver>.efi,
/boot/EFI/BOOT/BOOT<ARCH>.EFI and /boot/EFI/systemd/systemd-boot<arch>.efi,
removes the raw kernel, and re-verifies the final tree's digest.  Any failure,
Ctrl-C, SIGTERM or SIGHUP leaves the tree as it was.  An existing loader at
the systemd-boot paths that is not systemd-boot (e.g. shim) is only replaced
with --force.

External signing: ROOTFS is only read (a read-only mount will do).  Sign the
two emitted files with any Authenticode signer (``cfsboot uki sign``, ``sbsign``,
an HSM service), then ``seal inject`` them.  Without --cert, ``inject`` and
``verify`` check signatures for integrity only (and say so on stderr).  For
``seal oci --external-signing`` the manifest names the image, and ``inject
--output DIR`` writes the signed files to a new DIR in the ESP layout instead
(with --repo it first checks that the stored image still has the sealed digest).
Options go after ROOTFS (``seal build ROOTFS`` is the explicit spelling).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfsboot.boot import authenticode
from cfsboot.boot.manifest import SealManifest
from cfsboot.boot.uki import LAYOUTS
from cfsboot.cli.signing_options import (
    add_signing_options,
    extra_certs_from_args,
    signer_from_args,
)
from cfsboot.errors import CfsError

if TYPE_CHECKING:
    from cfsboot.boot.seal import SealOptions
    from cfsboot.boot.seal_oci import OciSealResult

COMMANDS = ("build", "inject", "verify")


class _AnyName:
    """Choices that let argparse's check pass any first word (``build`` is implied)."""

    def __init__(self, names: dict[str, argparse.ArgumentParser]) -> None:
        self.names = names

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(self.names)


class _DefaultCommandAction(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-commands where an unknown first word means ``build`` (so ``seal ROOTFS``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = _AnyName(self._name_parser_map)  # type: ignore[assignment]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values and values[0] not in self._name_parser_map:
            values = ["build", *values]
        super().__call__(parser, namespace, values, option_string)


class _IntermixedParser(argparse.ArgumentParser):
    """Options may come between positionals (``inject A B --manifest M ROOTFS``)."""

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("seal", help="seal a root filesystem with a signed UKI (also inject, "
                       "verify)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.register("action", "default_command", _DefaultCommandAction)
    ssub = p.add_subparsers(dest="seal_command", metavar="[build|inject|verify|oci]",
                            action="default_command", required=True,
                            parser_class=_IntermixedParser)

    b = ssub.add_parser("build", help="seal ROOTFS in place (the default command)")
    b.add_argument("rootfs", metavar="ROOTFS", help="root filesystem directory")
    b.add_argument("--unsigned", action="store_true", help="do not sign (testing only)")
    b.add_argument("--external-signing", metavar="OUTDIR",
                   help="do not change ROOTFS: write the unsigned UKI, systemd-boot and "
                        "manifest.json to OUTDIR for an external signer")
    b.add_argument("--karg", action="append", default=[], metavar="ARG",
                   help="kernel argument after composefs=, repeatable")
    b.add_argument("--allow-missing-verity", action="store_true",
                   help="write composefs=?<digest> (fs-verity optional: not sealed)")
    b.add_argument("--arch", dest="kargs_arch", metavar="ARCH",
                   help="architecture for kargs.d match-architectures (Rust names; default: "
                        "from --efi-arch)")
    b.add_argument("--stub", metavar="FILE",
                   help="UKI stub (default: the image's own systemd stub, else the host's)")
    b.add_argument("--efi-arch", default="x64", choices=("x64", "aa64", "ia32", "riscv64",
                                                         "loongarch64"))
    b.add_argument("--ukify-layout", choices=LAYOUTS, default="257")
    b.add_argument("--sign-kernel", action=argparse.BooleanOptionalAction, default=None,
                   help="also sign the kernel PE (default: when it is an unsigned PE)")
    b.add_argument("--cache", metavar="DIR",
                   help="keep file digests in DIR for later runs (writable only by you)")
    _force(b)
    _common(b)
    add_signing_options(b, required=False)
    b.set_defaults(func=run_build)

    i = ssub.add_parser("inject", help="complete an externally signed seal (into ROOTFS, "
                        "or to --output for 'seal oci')")
    i.add_argument("paths", nargs="+", metavar="SIGNED... ROOTFS",
                   help="the signed files, then the root filesystem (no ROOTFS with "
                        "--output)")
    i.add_argument("--manifest", required=True, metavar="FILE",
                   help="manifest.json written by 'seal [oci] --external-signing'")
    i.add_argument("--output", metavar="DIR",
                   help="for a manifest from 'seal oci': new (or empty) directory for the "
                        "signed files in the ESP layout")
    i.add_argument("--cert", action="append", default=[], metavar="FILE",
                   help="trusted certificate the signatures must chain to; repeatable "
                        "(without it signatures are checked for integrity only)")
    _force(i)
    _common(i)
    from cfsboot.cli.repo import add_repo_options
    add_repo_options(i, repo_help="with --output: check first that the image the manifest "
                     "names still seals its digest in this repository (not checked without "
                     "--repo/--user/--system)")
    i.set_defaults(func=run_inject)

    _register_oci(ssub)

    v = ssub.add_parser("verify", help="check that ROOTFS still matches its seal")
    v.add_argument("rootfs", metavar="ROOTFS")
    v.add_argument("--cert", action="append", default=[], metavar="FILE",
                   help="trusted certificate (db); repeatable; without it signatures are "
                        "checked for integrity only")
    v.add_argument("--allow-unsigned", action="store_true")
    v.add_argument("--allow-missing-verity", action="store_true",
                   help="accept composefs=?<digest>")
    v.add_argument("--efi-arch", default="x64")
    _common(v)
    v.set_defaults(func=run_verify)


def _register_oci(ssub: argparse._SubParsersAction[_IntermixedParser]) -> None:
    """``seal oci --repo R --oci-image NAME --output DIR``: a stored image is immutable, so
    the sealed boot files go to DIR in the ESP layout (EFI/Linux, EFI/BOOT, EFI/systemd)."""
    from cfsboot.cli.repo import add_repo_options

    o = ssub.add_parser("oci", help="seal an OCI image stored in a repository: write its "
                        "UKI and systemd-boot to --output in the ESP layout (or unsigned, "
                        "with --external-signing)")
    o.add_argument("--oci-image", required=True, metavar="NAME",
                   help="the stored image: a tag or a manifest digest")
    o.add_argument("--output", metavar="DIR",
                   help="new (or empty) directory for EFI/Linux/<kver>.efi, "
                        "EFI/BOOT/BOOT<ARCH>.EFI and EFI/systemd/systemd-boot<arch>.efi")
    o.add_argument("--external-signing", metavar="OUTDIR",
                   help="instead of --output: write the unsigned UKI, systemd-boot and "
                        "manifest.json to OUTDIR for an external signer, then "
                        "'seal inject --output'")
    o.add_argument("--store-image", metavar="REF",
                   help="also commit the sealed tree's image (the one composefs= pins; "
                        "SHA-512 repository) as images/refs/REF, ready to mount")
    o.add_argument("--unsigned", action="store_true", help="do not sign (testing only)")
    o.add_argument("--karg", action="append", default=[], metavar="ARG",
                   help="kernel argument after composefs=, repeatable")
    o.add_argument("--allow-missing-verity", action="store_true",
                   help="write composefs=?<digest> (fs-verity optional: not sealed)")
    o.add_argument("--arch", dest="kargs_arch", metavar="ARCH",
                   help="architecture for kargs.d match-architectures (Rust names)")
    o.add_argument("--stub", metavar="FILE",
                   help="UKI stub (default: the image's own systemd stub, else the host's)")
    o.add_argument("--efi-arch", default="x64", choices=("x64", "aa64", "ia32", "riscv64",
                                                         "loongarch64"))
    o.add_argument("--ukify-layout", choices=LAYOUTS, default="257")
    o.add_argument("--sign-kernel", action=argparse.BooleanOptionalAction, default=None,
                   help="also sign the kernel PE (default: when it is an unsigned PE)")
    o.add_argument("--json", action="store_true", help="print the result as JSON")
    add_repo_options(o)
    add_signing_options(o, required=False)
    o.set_defaults(func=run_oci)


def run_oci(args: argparse.Namespace) -> int:
    from cfsboot.boot import seal_oci
    from cfsboot.cli.repo import open_repo_from_args

    signer = _checked_signer(args, output_option=True)
    options = _seal_options(args, signer)
    if args.external_signing:
        return _run_oci_external(args, options)
    with open_repo_from_args(args) as repo:
        result = seal_oci.seal_oci_image(repo, args.oci_image, args.output, options,
                                         image_ref_name=args.store_image)
    _emit_oci_result(args, result)
    return 0


def _emit_oci_result(args: argparse.Namespace, result: OciSealResult) -> None:
    how = "signed" if result.signed else "UNSIGNED"
    if result.insecure:
        how += ", INSECURE: composefs=? does not require fs-verity, not a real seal"
    stub = [f"UKI stub: {result.stub} ({STUB_ORIGINS.get(result.stub_origin or '', '?')})"] \
        if result.stub else []
    _emit(args, asdict(result), [
        f"sealed {result.image} ({result.manifest_digest}) ({how})",
        f"composefs digest: {result.digest}", f"cmdline: {result.cmdline}", *stub,
        *(f"wrote {result.output}/{w}" for w in result.written),
        *([f"stored the sealed image as images/refs/{result.image_ref}"]
          if result.image_ref else [])])


def _run_oci_external(args: argparse.Namespace, options: SealOptions) -> int:
    from cfsboot.boot import seal_oci_external
    from cfsboot.cli.repo import open_repo_from_args

    out = args.external_signing
    with open_repo_from_args(args) as repo:
        m = seal_oci_external.seal_oci_external(repo, args.oci_image, out, options,
                                                image_ref_name=args.store_image)
    assert m.source is not None
    _emit(args, {"manifest": json.loads(m.to_json())}, [
        f"image: {m.source.oci_image} ({m.source.manifest_digest})",
        f"composefs digest: {m.digest}", f"cmdline: {m.cmdline}",
        *(f"unsigned: {out}/{f.name}" for f in m.files),
        f"manifest: {out}/manifest.json",
        *([f"stored the sealed image as images/refs/{args.store_image}"]
          if args.store_image else []),
        f"sign the files, then: cfsboot seal inject SIGNED... --manifest {out}/manifest.json "
        "--output DIR"])
    return 0


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace an existing /boot/EFI/BOOT/BOOT<ARCH>.EFI or "
                        "/boot/EFI/systemd loader even when it is not systemd-boot (e.g. shim)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--threads", type=int, metavar="N", help="hashing threads")


def _certs(paths: Sequence[str]) -> list[Any]:
    return [authenticode.load_certificate(Path(f).read_bytes()) for f in paths]


def _emit(args: argparse.Namespace, doc: dict[str, Any], lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for line in lines:
            print(line)


def _checked_signer(args: argparse.Namespace, *, output_option: bool) -> Any:
    """The signer, after checking that exactly one of signing options,
    --unsigned and --external-signing was chosen (and, for ``seal oci``, that
    --output goes with the first two)."""
    signer = signer_from_args(args)
    if args.external_signing:
        if signer is not None or args.unsigned or (output_option and args.output):
            drop = "--key/--unsigned/--output" if output_option else "--key/--unsigned"
            raise CfsError(f"--external-signing writes unsigned files to OUTDIR: drop {drop}")
        return signer
    if output_option and not args.output:
        raise CfsError("seal oci needs --output DIR (or --external-signing OUTDIR)")
    if signer is None and not args.unsigned:
        raise CfsError("sealing needs --cert with --key/--sign-command/--pkcs11-uri "
                       "(or --unsigned for testing, or --external-signing OUTDIR)")
    if signer is not None and args.unsigned:
        raise CfsError("--unsigned conflicts with signing options")
    return signer


def _seal_options(args: argparse.Namespace, signer: Any, **more: Any) -> SealOptions:
    from cfsboot.boot.seal import SealOptions
    return SealOptions(
        signer=signer, extra_certs=extra_certs_from_args(args), kargs=args.karg,
        allow_missing_verity=args.allow_missing_verity, efi_arch=args.efi_arch,
        kargs_arch=args.kargs_arch, stub_path=args.stub, layout=args.ukify_layout,
        sign_kernel=args.sign_kernel, **more)


def run_build(args: argparse.Namespace) -> int:
    from cfsboot.boot import seal

    signer = _checked_signer(args, output_option=False)
    options = _seal_options(args, signer, threads=args.threads, cache_dir=args.cache,
                            force=args.force)
    if args.key and os.path.exists(args.key):
        seal.check_outside(args.rootfs, args.key, "signing key",
                           "it would ship in the sealed image")
    if args.external_signing:
        m = seal.seal_external(args.rootfs, args.external_signing, options)
        _emit(args, {"manifest": json.loads(m.to_json())}, [
            f"composefs digest: {m.digest}", f"cmdline: {m.cmdline}",
            *(f"unsigned: {args.external_signing}/{f.name}" for f in m.files),
            f"manifest: {args.external_signing}/manifest.json",
            "sign the files, then: cfsboot seal inject SIGNED... --manifest "
            f"{args.external_signing}/manifest.json {args.rootfs}"])
        return 0
    result = seal.seal(args.rootfs, options)
    _emit_result(args, result)
    return 0


STUB_ORIGINS = {"image": "the image's own", "host": "the host's", "option": "--stub"}


def _emit_result(args: argparse.Namespace, result: Any) -> None:
    how = "signed" if result.signed else "UNSIGNED"
    if result.insecure:
        how += ", INSECURE: composefs=? does not require fs-verity, not a real seal"
    stub = [f"UKI stub: {result.stub} ({STUB_ORIGINS.get(result.stub_origin, '?')})"] \
        if result.stub else []
    _emit(args, asdict(result), [
        f"sealed {args.rootfs if hasattr(args, 'rootfs') else ''}".rstrip() + f" ({how})",
        f"composefs digest: {result.digest}{' (fs-verity optional)' if result.insecure else ''}",
        f"cmdline: {result.cmdline}",
        *stub,
        *(f"wrote /{w}" for w in result.written),
        *(f"removed /{r}" for r in result.removed)])


def _warn_untrusted(args: argparse.Namespace) -> None:
    if not args.cert:
        print("cfsboot: warning: no --cert given: signatures were checked for integrity "
              "only, not against a trusted certificate", file=sys.stderr)


def run_inject(args: argparse.Namespace) -> int:
    from cfsboot.boot import seal

    manifest = SealManifest.from_json(Path(args.manifest).read_text())
    manifest.require_kind(oci=args.output is not None)
    if args.output is not None:
        return _run_inject_oci(args, manifest)
    if _repo_given(args):
        raise CfsError("--repo is for a manifest from 'seal oci'")
    if len(args.paths) < 2:
        raise CfsError("seal inject needs the signed files and then ROOTFS")
    *signed_paths, rootfs = args.paths
    for path, what in [*((p, "signed file") for p in signed_paths), (args.manifest, "manifest")]:
        seal.check_outside(rootfs, path, what, "the tree would no longer be the one the "
                           "manifest seals")
    signed = {p: Path(p).read_bytes() for p in signed_paths}
    result = seal.inject(rootfs, manifest, signed, _certs(args.cert) or None, args.threads,
                         force=args.force)
    _warn_untrusted(args)
    args.rootfs = rootfs
    _emit_result(args, result)
    return 0


def _repo_given(args: argparse.Namespace) -> bool:
    return bool(args.repo or args.user or args.system)


def _run_inject_oci(args: argparse.Namespace, manifest: SealManifest) -> int:
    from cfsboot.boot import seal_oci_external
    from cfsboot.cli.repo import open_repo_from_args

    if args.force:
        raise CfsError("--force is for a ROOTFS; --output must be a new or empty directory")
    rootfs = next((p for p in args.paths if Path(p).is_dir()), None)
    if rootfs is not None:
        raise CfsError(f"{rootfs} is a directory: with --output give only the signed files")
    signed = {p: Path(p).read_bytes() for p in args.paths}
    trusted = _certs(args.cert) or None
    with contextlib.ExitStack() as stack:
        repo = stack.enter_context(open_repo_from_args(args)) if _repo_given(args) else None
        result = seal_oci_external.inject_oci(manifest, signed, args.output, trusted, repo)
    _warn_untrusted(args)
    _emit_oci_result(args, result)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from cfsboot.boot import seal

    check = seal.verify_seal(args.rootfs, _certs(args.cert) or None,
                             allow_unsigned=args.allow_unsigned,
                             allow_insecure=args.allow_missing_verity,
                             efi_arch=args.efi_arch, threads=args.threads)
    _warn_untrusted(args)
    if args.json:
        print(json.dumps({**asdict(check), "ok": check.ok}, indent=2))
    else:
        print(f"UKI: /{check.uki}" if check.uki else "UKI: none")
        print(f"sealed digest: {check.sealed_digest}")
        print(f"tree digest:   {check.tree_digest}")
        for problem in check.problems:
            print(f"cfsboot: {args.rootfs}: {problem}", file=sys.stderr)
        if check.ok:
            print(f"{args.rootfs}: seal OK")
    return 0 if check.ok else 1
