"""``oci:DIR[:TAG]`` — reading a local OCI image layout (oci-import.md §4.2).

Blobs may be symlinks (Bazel rules_oci layouts link into a separate store, and
skopeo follows them): a link is followed, but what it reaches must be a regular
file, so a FIFO or device is refused instead of hanging or reading forever.
Every blob is size- and digest-checked (stricter than upstream), so following
a link cannot change what is imported."""

from __future__ import annotations

import json
import os
import platform
from typing import Any, BinaryIO

from cfsboot.errors import CfsError
from cfsboot.inputs import NotRegularError, open_regular
from cfsboot.oci.blobs import (
    MEDIA_CONFIG,
    MEDIA_DELTA,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    BlobError,
    Descriptor,
    VerifiedReader,
    read_verified,
)

REF_NAME = "org.opencontainers.image.ref.name"
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386",
            "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


class LayoutError(CfsError):
    """The OCI layout directory is unusable."""


def host_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", _GO_ARCH.get(machine, machine)


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BlobError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BlobError(f"{what} is not a JSON object")
    return obj


class OciLayout:
    """An image source over an OCI layout directory."""

    def __init__(self, path: str, tag: str | None) -> None:
        self.path = path
        self.tag = tag
        try:
            self._dir = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LayoutError(f"{path}: no such OCI layout directory") from None
        except NotADirectoryError:
            raise LayoutError(f"{path}: not a directory") from None

    def close(self) -> None:
        os.close(self._dir)

    def __enter__(self) -> OciLayout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs -------------------------------------------------------------------

    def _open_raw(self, digest: str) -> BinaryIO:
        algo, _, hexpart = digest.partition(":")
        try:
            fd = open_regular(f"blobs/{algo}/{hexpart}", self._dir)
        except FileNotFoundError:
            raise BlobError(f"{self.path}: blob {digest} is missing") from None
        except NotRegularError:
            raise BlobError(f"{self.path}: blob {digest} is not a regular file") from None
        except OSError as e:
            raise BlobError(f"{self.path}: cannot open blob {digest}: {e.strerror}") from None
        return os.fdopen(fd, "rb")

    def open_blob(self, desc: Descriptor, what: str) -> VerifiedReader:
        return VerifiedReader(self._open_raw(desc.digest), desc.digest, desc.size, what)

    def read_blob(self, desc: Descriptor, what: str) -> bytes:
        return read_verified(self._open_raw(desc.digest), desc, what)

    # -- manifest selection --------------------------------------------------------

    def _open_index(self) -> BinaryIO:
        try:
            fd = open_regular("index.json", self._dir)
        except FileNotFoundError:
            raise LayoutError(f"{self.path}: not an OCI layout (no index.json)") from None
        except NotRegularError:
            raise LayoutError(f"{self.path}: index.json is not a regular file") from None
        except OSError as e:
            raise LayoutError(f"{self.path}: cannot open index.json: {e.strerror}") from None
        return os.fdopen(fd, "rb")

    def _index(self) -> dict[str, Any]:
        with self._open_index() as f:
            data = f.read((4 << 20) + 1)
        if len(data) > 4 << 20:
            raise LayoutError(f"{self.path}: index.json is too large")
        return parse_json(data, f"{self.path}/index.json")

    def manifest(self) -> tuple[str, bytes]:
        """(manifest digest, raw manifest bytes) for the host platform."""
        index = self._index()
        entries = index.get("manifests")
        if not isinstance(entries, list):
            raise LayoutError(f"{self.path}/index.json has no manifests list")
        descs = [Descriptor.from_json(e, f"{self.path}/index.json") for e in entries]
        if len(descs) == 1 and descs[0].artifact_type == MEDIA_DELTA:
            raise LayoutError("delta artifacts are not supported")
        if self.tag is not None:
            descs = [d for d in descs if (d.annotations or {}).get(REF_NAME) == self.tag]
            if not descs:
                raise LayoutError(f"{self.path}: tag {self.tag!r} not found in index.json")
        want = host_platform()
        seen: list[str] = []
        for desc in descs:
            found = self._match(desc, want, seen, nested=False)
            if found is not None:
                return found
        raise LayoutError(f"No manifest found for platform {want[0]}/{want[1]} in "
                          f"{self.path} (available: {', '.join(seen) or 'none'})")

    def _match(self, desc: Descriptor, want: tuple[str, str], seen: list[str],
               nested: bool) -> tuple[str, bytes] | None:
        if desc.media_type == MEDIA_INDEX:
            if nested:
                raise LayoutError(f"{self.path}: image indexes nested more than one level")
            inner = parse_json(self.read_blob(desc, "image index"), "image index")
            for e in inner.get("manifests") or []:
                found = self._match(Descriptor.from_json(e, "image index"), want, seen, True)
                if found is not None:
                    return found
            return None
        if desc.media_type not in (MEDIA_MANIFEST, ""):
            seen.append(f"{desc.media_type} (unsupported)")
            return None
        if desc.platform is not None:
            have = (desc.platform.get("os"), desc.platform.get("architecture"))
            seen.append(f"{have[0]}/{have[1]}")
            return (desc.digest, self.read_blob(desc, "manifest")) if have == want else None
        raw = self.read_blob(desc, "manifest")
        manifest = parse_json(raw, "manifest")
        config = Descriptor.from_json(manifest.get("config"), "manifest config")
        if config.media_type != MEDIA_CONFIG:
            seen.append("artifact")
            return None
        cfg = parse_json(self.read_blob(config, "config"), "config")
        have = (cfg.get("os"), cfg.get("architecture"))
        seen.append(f"{have[0]}/{have[1]}")
        return (desc.digest, raw) if have == want else None
