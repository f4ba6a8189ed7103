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
import datetime as dt
import os
import uuid

from cfsboot.atomic import atomic_write_bytes
from cfsboot.boot.keys import KEY_SIZES, check_key_set_options, generate_key_set
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
    g.add_argument("--force", action="store_true", help="overwrite existing files")
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
    guid, files = generate_key_set(args.common_name, key_size=args.key_size, days=args.days,
                                   owner=owner, now=now)
    os.makedirs(args.directory, exist_ok=True)
    existing = sorted(n for n in files if os.path.exists(os.path.join(args.directory, n)))
    if existing and not args.force:
        raise CfsError(f"{os.path.join(args.directory, existing[0])} exists (use --force)")
    for name, data in files.items():
        mode = 0o600 if name.endswith(".key") else 0o644
        atomic_write_bytes(os.path.join(args.directory, name), data, mode)
    print(f"wrote PK, KEK and db keys to {args.directory} (owner GUID {guid}); "
          "sign images with db.key and db.crt")
    return 0
