"""Helpers for the OCI tests: OCI layouts written directly (JSON + blobs),
tars made by GNU tar or Python's tarfile (independent of our parser), raw
tar headers for hostile cases, and repositories."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import zstandard

from cfsboot.oci.layout import host_platform
from cfsboot.repository import SHA512, Repository

LAYER = "application/vnd.oci.image.layer.v1.tar"


def new_repo(path: Path) -> Repository:
    repo, _ = Repository.init(path, SHA512, insecure=True)
    return repo


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    d = sha(data)
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / d[7:]).write_bytes(data)
    return {"digest": d, "size": len(data)}


def compress(tar: bytes, how: str | None) -> tuple[bytes, str]:
    if how is None:
        return tar, LAYER
    if how == "gzip":
        return gzip.compress(tar), LAYER + "+gzip"
    if how == "gzip-multi":  # two gzip members
        half = len(tar) // 2
        return gzip.compress(tar[:half]) + gzip.compress(tar[half:]), LAYER + "+gzip"
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(tar), LAYER + "+zstd"
    if how == "zstd-multi":  # one frame per 10 KiB, like zstd:chunked
        c = zstandard.ZstdCompressor()
        return b"".join(c.compress(tar[i:i + 10240])
                        for i in range(0, max(len(tar), 1), 10240)), LAYER + "+zstd"
    raise ValueError(how)


def make_layout(layout: Path, tars: list[bytes], how: str | None = "gzip", *,
                tag: str | None = "latest", config_extra: dict[str, Any] | None = None,
                diff_ids: list[str] | None = None) -> tuple[str, str]:
    """Write an OCI layout holding one image; returns (manifest, config) digests."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layers = []
    for t in tars:
        blob, media = compress(t, how)
        layers.append({"mediaType": media, **put_blob(layout, blob)})
    os_, arch = host_platform()
    config = {"architecture": arch, "os": os_,
              "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(t) for t in tars]},
              "config": {}, **(config_extra or {})}
    cfg = put_blob(layout, json.dumps(config).encode())
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": layers}).encode()
    man = put_blob(layout, manifest)
    desc: dict[str, Any] = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **man}
    if tag is not None:
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return man["digest"], cfg["digest"]


def gnu_tar(src: Path, *members: str) -> bytes:
    """POSIX-format tar (nanosecond mtimes, xattrs) of a directory, by GNU tar."""
    return subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner",
         "--sort=name", "-C", str(src), "-cf", "-", *(members or ["."])],
        check=True, capture_output=True).stdout


def py_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]],
           fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, mode: int = 0o644,
         link: str = "", mtime: int = 1700000000, **extra: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.linkname = link
    ti.mtime = mtime
    for k, v in extra.items():
        setattr(ti, k, v)
    return ti


def file_entry(name: str, data: bytes, **kw: Any) -> tuple[tarfile.TarInfo, bytes]:
    return info(name, size=len(data), **kw), data


def dir_entry(name: str, **kw: Any) -> tuple[tarfile.TarInfo, None]:
    kw.setdefault("mode", 0o755)
    return info(name, tarfile.DIRTYPE, **kw), None


def base_tree() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The minimum an importable image needs (/usr) plus boot dirs."""
    return [dir_entry("usr"), dir_entry("boot"), dir_entry("sysroot")]


def raw_header(name: bytes, typeflag: bytes = b"0", size_field: bytes | None = None, *,
               size: int = 0, link: bytes = b"", gnu: bool = False,
               fix_checksum: bool = True) -> bytes:
    """A hand-made 512-byte header (for sizes and fields tarfile will not write)."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"%011o\0" % 1700000000
    h[156:157] = typeflag
    h[157:157 + len(link)] = link
    h[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    if fix_checksum:
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def end_blocks() -> bytes:
    return bytes(1024)


def write_tree(root: Path, files: dict[str, bytes | str | None]) -> None:
    """Create files (bytes), symlinks ("->target" strings) and dirs (None)."""
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir(exist_ok=True)
        elif isinstance(content, str):
            os.symlink(content.removeprefix("->"), p)
        else:
            p.write_bytes(content)
