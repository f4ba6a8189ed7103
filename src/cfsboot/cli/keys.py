"""``cfsboot keys generate DIR``: Secure Boot keys for signing UKIs and enrolling in firmware.

Writes PK, KEK and db key pairs (``*.key`` PEM private keys, ``*.crt`` PEM and ``*.cer``
DER certificates), EFI signature lists (``*.esl``), signed variable updates
(``*.auth``: PK and KEK signed by PK, db by KEK) and the owner GUID (``GUID.txt``).
Sign images with ``db.key``/``db.crt``.  Enrol with systemd-boot (copy the ``*.auth``
files to ``ESP/loader/keys/NAME/``), ``efi-updatevar -f``, or for OVMF
``virt-fw-vars --set-pk GUID PK.crt --add-kek GUID KEK.crt --add-db GUID db.crt``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import secrets
import uuid

from cfsboot.boot.keys import (
    KEY_SET_FILES,
    KEY_SIZES,
    check_key_set_options,
    generate_key_set,
)
from cfsboot.errors import CfsError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="Secure Boot key material",
                       description="Secure Boot key material (PK/KEK/db).")
    ksub = p.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    g = ksub.add_parser(
        "generate", help="make PK/KEK/db keys, certificates, .esl and .auth files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("directory", metavar="DIR", help="output directory (created if missing)")
    g.add_argument("--common-name", default="cfsboot", metavar="NAME",
                   help="certificate subject prefix (default: cfsboot)")
    g.add_argument("--key-size", type=int, default=2048, choices=KEY_SIZES,
                   help="RSA key size; 2048 is what every firmware supports (default)")
    g.add_argument("--days", type=int, default=3650, help="certificate validity in days")
    g.add_argument("--owner-guid", metavar="GUID", help="EFI signature owner (default: random)")
    g.add_argument("--timestamp", metavar="ISO8601",
                   help="EFI_TIME of the .auth files (default: now, UTC)")
    g.add_argument("--force", action="store_true",
                   help="overwrite existing files (symbolic links are always refused)")
    g.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    try:
        owner = uuid.UUID(args.owner_guid) if args.owner_guid else None
    except ValueError as e:
        raise CfsError(f"bad --owner-guid {args.owner_guid!r}") from e
    now = None
    if args.timestamp:
        try:
            now = dt.datetime.fromisoformat(args.timestamp)
        except ValueError as e:
            raise CfsError(f"bad --timestamp {args.timestamp!r} (want ISO 8601)") from e
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
    check_key_set_options(args.common_name, args.days, now)  # before the slow key generation
    _check_targets(args.directory, force=args.force)
    guid, files = generate_key_set(args.common_name, key_size=args.key_size, days=args.days,
                                   owner=owner, now=now)
    assert set(files) == set(KEY_SET_FILES)
    os.makedirs(args.directory, exist_ok=True)
    dir_fd = os.open(args.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    written: list[tuple[str, str]] = []  # (temporary, final) names in DIR
    try:
        # Every file is complete before any is renamed into place, so a failure
        # (a full disk) leaves the old key set whole rather than half replaced.
        for name, data in files.items():
            written.append((_write_temporary(dir_fd, args.directory, name, data,
                                             0o600 if name.endswith(".key") else 0o644),
                            name))
        for tmp, name in written:
            try:
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as e:
                raise CfsError(f"cannot write {os.path.join(args.directory, name)}: "
                               f"{e.strerror or e}") from None
        written.clear()
        os.fsync(dir_fd)
    finally:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        os.close(dir_fd)
    print(f"wrote PK, KEK and db keys to {args.directory} (owner GUID {guid}); "
          "sign images with db.key and db.crt")
    return 0


def _check_targets(directory: str, *, force: bool) -> None:
    """Refuse, before any key is made, existing files (without ``--force``) and
    symbolic links (always: writing through one would put a private key
    wherever it points, outside DIR)."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CfsError(f"{directory} is not a directory")
    for name in KEY_SET_FILES:
        path = os.path.join(directory, name)
        if os.path.islink(path):
            raise CfsError(f"{path} is a symbolic link; keys are only written into "
                           f"{directory} itself (remove the link)")
        if os.path.lexists(path) and not force:
            raise CfsError(f"{path} exists (use --force)")
        if os.path.lexists(path) and not os.path.isfile(path):
            raise CfsError(f"{path} is not a regular file; remove it first")


def _write_temporary(dir_fd: int, directory: str, name: str, data: bytes, mode: int) -> str:
    """A complete, fsynced new file in DIR for ``name``, under a temporary name
    (O_EXCL|O_NOFOLLOW: never through a symlink); returns that name.  Renaming
    it over ``name`` later replaces a link created meanwhile, not its target."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
    except OSError as e:
        raise CfsError(f"cannot write {os.path.join(directory, name)}: "
                       f"{e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(e, OSError):
            raise CfsError(f"cannot write {os.path.join(directory, name)}: "
                           f"{e.strerror or e}") from None
        raise
    return tmp
