"""Image references (``transport:details``), OCI digests and tag-name encoding
(oci-import.md §2, §4.1, §4.2).  Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cfsboot.errors import CfsError

TRANSPORTS = ("docker", "registry", "oci", "oci-archive", "docker-archive",
              "containers-storage", "dir", "docker-daemon")
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class ReferenceError(CfsError):
    """An image reference, digest or tag name is malformed."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    transport: str  # one of TRANSPORTS
    details: str  # everything after "transport:"

    def __str__(self) -> str:
        return f"{self.transport}:{self.details}"


def parse_image_ref(text: str) -> ImageRef:
    """``docker://…``, ``oci:DIR[:TAG]``, ``oci-archive:FILE[:REF]``, …"""
    transport, sep, details = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise ReferenceError(f"invalid image reference {text!r} (expected TRANSPORT:DETAILS, "
                             f"transport one of {', '.join(TRANSPORTS)})")
    if transport == "docker" and not details.startswith("//"):
        raise ReferenceError(f"invalid image reference {text!r}: docker: needs docker://")
    if not details:
        raise ReferenceError(f"invalid image reference {text!r}: empty location")
    return ImageRef(transport, details)


def split_layout_tag(details: str) -> tuple[str, str | None]:
    """``PATH[:TAG]``: split at the last ``:`` unless a ``/`` follows it."""
    i = details.rfind(":")
    if i < 0 or "/" in details[i + 1:]:
        return details, None
    return details[:i], details[i + 1:]


def parse_digest(text: str) -> str:
    """Validate an OCI digest (``sha256:<64 hex>`` or ``sha512:<128 hex>``)."""
    if not isinstance(text, str) or not _DIGEST.fullmatch(text):
        raise ReferenceError(f"invalid OCI digest {text!r}")
    return text


def encode_tag(name: str) -> str:
    """Tag name → file name below ``streams/refs/oci/``.  Upstream tags are
    free-form; only names that cannot be a file name are refused here (``.``
    and ``..`` fail upstream too, with an errno)."""
    if not name:
        raise ReferenceError("empty tag name")
    if name in (".", ".."):
        raise ReferenceError(f"invalid tag name {name!r}")
    if name.startswith("@"):
        raise ReferenceError(f"tag names must not start with '@': {name!r}")
    if "\0" in name:
        raise ReferenceError("tag names must not contain NUL")
    return name.replace("%", "%25").replace("/", "%2F")


def check_new_tag(name: str) -> str:
    """A name for a tag about to be created: :func:`encode_tag`'s rules, and
    no control characters (a newline would break the line-per-tag output of
    ``oci images``).  Stricter than upstream, so only new tags are checked:
    existing ones stay readable and removable."""
    encode_tag(name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ReferenceError(f"invalid tag name {name!r} (control characters are not allowed)")
    return name


def decode_tag(encoded: str) -> str:
    """Inverse of :func:`encode_tag`: one left-to-right pass, unknown %XX kept."""
    out: list[str] = []
    i = 0
    while i < len(encoded):
        if encoded.startswith("%2F", i):
            out.append("/")
            i += 3
        elif encoded.startswith("%25", i):
            out.append("%")
            i += 3
        else:
            out.append(encoded[i])
            i += 1
    return "".join(out)
