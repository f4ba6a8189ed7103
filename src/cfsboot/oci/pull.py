"""``oci pull``: an image source → manifest/config/layer splitstreams, objects,
and the linked EROFS image (oci-import.md §3, §9).

Layers are imported by a thread pool, largest first (decompression, hashing and
file writes release the GIL).  Each layer is published (``streams/oci-layer-…``)
only after its whole tar was split and its diff_id checked, so an interrupted
or refused pull leaves no stream that names bad data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.errors import CfsError
from cfsboot.oci.archive import OciArchive
from cfsboot.oci.blobs import (
    MEDIA_CONFIG,
    MEDIA_DELTA,
    TAR_MEDIA_TYPES,
    BlobError,
    Descriptor,
    Readable,
    VerifiedReader,
    decompressor,
)
from cfsboot.oci.image import (
    IMAGE_V1,
    IMAGE_V2,
    OciImageError,
    config_stream,
    create_filesystem,
    diff_ids_of,
    layer_stream,
    manifest_parts,
    manifest_stream,
    open_image,
    parse_json_object,
    read_json_stream,
    tag_image,
)
from cfsboot.oci.layout import LayoutError, OciLayout
from cfsboot.oci.reference import (
    check_new_tag,
    encode_tag,
    parse_digest,
    parse_image_ref,
    split_layout_tag,
)
from cfsboot.oci.tarheader import TarError
from cfsboot.oci.tarsplit import SplitStats, split_tar
from cfsboot.repository import (
    CONTENT_OCI_BLOB,
    CONTENT_OCI_CONFIG,
    CONTENT_OCI_MANIFEST,
    Repository,
)


class ImageSource(Protocol):
    def manifest(self) -> tuple[str, bytes]: ...
    def open_blob(self, desc: Descriptor, what: str) -> VerifiedReader: ...
    def read_blob(self, desc: Descriptor, what: str) -> bytes: ...
    def close(self) -> None: ...


# progress(layer diff_id, bytes just read, total bytes); called from worker threads
Progress = Callable[[str, int, int], None]


@dataclass
class PullResult:
    manifest_digest: str
    config_digest: str
    manifest_verity: bytes  # after the EROFS link rewrite
    image_id: bytes | None  # default-version EROFS (None for artifacts)
    tag: str | None
    stats: SplitStats = field(default_factory=SplitStats)


class _DiffIdCheck:
    """Hashes the uncompressed tar while it is split (upstream does not, §3.4)."""

    def __init__(self, src: Readable, diff_id: str) -> None:
        self._src = src
        self._hash = hashlib.new(diff_id.partition(":")[0])

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return f"{self._hash.name}:{self._hash.hexdigest()}"


def open_source(imgref: str, *, tls_verify: bool = True,
                authfile: str | None = None) -> ImageSource:
    ref = parse_image_ref(imgref)
    if ref.transport == "oci":
        path, tag = split_layout_tag(ref.details)
        return OciLayout(path, tag)
    if ref.transport == "oci-archive" and shutil.which("skopeo") is None:
        path, tag = split_layout_tag(ref.details)
        return OciArchive(path, tag)
    if ref.transport == "oci-archive":
        # skopeo 1.9 creates its /var/tmp directory before opening the file and
        # leaves it behind when the file is missing.  Its path rule: up to the
        # first ':'.
        path = ref.details.partition(":")[0]
        if not os.path.lexists(path):
            raise LayoutError(f"{path}: no such OCI archive")
    from cfsboot.oci.registry import SkopeoSource
    return SkopeoSource(imgref, tls_verify=tls_verify, authfile=authfile)


def ensure_layer(repo: Repository, source: ImageSource, diff_id: str, desc: Descriptor,
                 progress: Progress | None = None) -> tuple[bytes, SplitStats]:
    """§3.4: the layer splitstream ObjectID (importing the layer if needed)."""
    sid = layer_stream(diff_id)
    existing = repo.has_stream(sid)
    if existing is not None:
        return existing, SplitStats()
    raw = source.open_blob(desc, f"layer {desc.digest}")
    if progress is not None:
        raw.on_read = lambda n: progress(diff_id, n, desc.size)
    with raw:
        if desc.media_type in TAR_MEDIA_TYPES:
            tar = _DiffIdCheck(decompressor(desc.media_type, raw), diff_id)
            try:
                writer, stats = split_tar(repo, tar)
            except TarError as e:
                raise TarError(f"layer {desc.digest}: {e}") from None
            while tar.read(1 << 20):  # bytes after the end-of-archive blocks
                pass
            raw.drain()
            if tar.hexdigest() != diff_id:
                raise BlobError(f"layer {desc.digest}: uncompressed content does not match "
                                f"diff_id {diff_id} (got {tar.hexdigest()})")
            return repo.write_stream(writer, sid), stats
        with repo.object_tmpfile() as tmp:
            while data := raw.read(1 << 20):
                tmp.write(data)
            raw.drain()
            stored = tmp.finalize(desc.size)
        w = repo.create_stream(CONTENT_OCI_BLOB)
        w.add_external_size(stored.size)
        w.write_reference(stored.digest)
        return repo.write_stream(w, sid), SplitStats()


def _import_layers(repo: Repository, source: ImageSource, pairs: list[tuple[Descriptor, str]],
                   jobs: int, progress: Progress | None,
                   stats: SplitStats) -> dict[str, bytes]:
    verity: dict[str, bytes] = {}
    todo = sorted(pairs, key=lambda p: -p[0].size)
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo) or 1))) as pool:
        futures = [(diff_id, pool.submit(ensure_layer, repo, source, diff_id, desc, progress))
                   for desc, diff_id in todo]
        try:
            for diff_id, fut in futures:
                v, s = fut.result()
                verity[diff_id] = v
                stats.add(s)
        except BaseException:
            for _, fut in futures:  # stop layers not yet started; fail fast
                fut.cancel()
            raise
    return verity


def pull(repo: Repository, imgref: str, tag: str | None = None, *,
         jobs: int | None = None, progress: Progress | None = None,
         tls_verify: bool = True, authfile: str | None = None) -> PullResult:
    """§3.1: import ``imgref`` and tag it ``tag`` (None: no tag)."""
    if jobs is not None and jobs < 1:
        raise CfsError(f"--jobs must be at least 1 (got {jobs})")
    repo.ensure_writable()
    if tag is not None:
        check_new_tag(tag)  # refuse a bad name before doing any work
    source = open_source(imgref, tls_verify=tls_verify, authfile=authfile)
    try:
        stats = SplitStats()
        manifest_digest, raw_manifest = source.manifest()
        parse_digest(manifest_digest)
        manifest, config_desc, layers = manifest_parts(raw_manifest)
        if manifest.get("artifactType") == MEDIA_DELTA:
            raise CfsError("delta artifacts are not supported")
        cfg_id = config_stream(config_desc.digest)
        config_verity = repo.has_stream(cfg_id)
        if config_verity is not None:
            raw_config, named = read_json_stream(repo, cfg_id, config_verity,
                                                 CONTENT_OCI_CONFIG)
            diff_ids = diff_ids_of(config_desc.media_type, raw_config, layers)
            missing = [d for d in diff_ids if d not in named]
            if missing:
                raise OciImageError(f"stored config {config_desc.digest} lacks layer {missing[0]}")
            layer_refs = [(d, named[d]) for d in diff_ids]
        else:
            raw_config = source.read_blob(config_desc, "config")
            diff_ids = diff_ids_of(config_desc.media_type, raw_config, layers)
            if len(diff_ids) != len(layers):
                raise OciImageError(f"config lists {len(diff_ids)} diff_ids but the manifest "
                                    f"has {len(layers)} layers")
            verity = _import_layers(repo, source, list(zip(layers, diff_ids, strict=True)),
                                    jobs or len(os.sched_getaffinity(0)), progress, stats)
            layer_refs = [(d, verity[d]) for d in diff_ids]
            w = repo.create_stream(CONTENT_OCI_CONFIG)
            for d, v in layer_refs:
                w.add_named_stream_ref(d, v)
            w.write_external(raw_config)
            config_verity = repo.write_stream(w, cfg_id)
        man_id = manifest_stream(manifest_digest)
        manifest_verity = repo.has_stream(man_id)
        if manifest_verity is None:
            manifest_verity = write_manifest(repo, manifest_digest, raw_manifest,
                                              config_desc.digest, config_verity, layer_refs)
    finally:
        source.close()
    image = None
    if config_desc.media_type == MEDIA_CONFIG:
        image, manifest_verity = ensure_composefs_erofs(repo, manifest_digest,
                                                         manifest_verity, tag)
    elif tag is not None:
        tag_image(repo, manifest_digest, tag)
    return PullResult(manifest_digest, config_desc.digest, manifest_verity, image, tag, stats)


def write_manifest(repo: Repository, digest: str, raw: bytes, config_digest: str,
                    config_verity: bytes, layer_refs: list[tuple[str, bytes]],
                    ref: str | None = None) -> bytes:
    w = repo.create_stream(CONTENT_OCI_MANIFEST)
    w.add_named_stream_ref(f"config:{config_digest}", config_verity)
    for d, v in layer_refs:
        w.add_named_stream_ref(d, v)
    w.write_external(raw)
    return repo.write_stream(w, manifest_stream(digest), ref)


def ensure_composefs_erofs(repo: Repository, manifest_digest: str, manifest_verity: bytes,
                           tag: str | None) -> tuple[bytes, bytes]:
    """§9: build the image in every configured format, link the V1/V2 results
    from the config, rewrite config and manifest (and tag).  Returns (default
    image ID, new manifest verity)."""
    img = open_image(repo, manifest_digest, manifest_verity)
    root = create_filesystem(repo, img.config_desc.digest, img.config_verity)
    formats = repo.format_config()
    ids: dict[int, bytes] = {}
    for version in formats.generation_order():
        ids[version] = repo.ensure_object(mkfs_erofs(root, version))
    repo.sync()
    for digest in ids.values():
        repo.publish_image(digest, None)
    default = ids.get(1) if formats.default in (0, 1) else ids.get(2)
    if default is None:
        raise OciImageError("commit_images did not produce the repository's default EROFS "
                            "format (format V0 repositories cannot hold container images)")
    refs = dict(img.layer_refs)
    diff_ids = diff_ids_of(MEDIA_CONFIG, img.config_raw, [])
    layer_refs = [(d, refs[d]) for d in diff_ids]
    extra = img.boot_refs()
    if 2 in ids:
        extra[IMAGE_V2] = ids[2]
    if 1 in ids:
        extra[IMAGE_V1] = ids[1]
    config_verity = write_config(repo, img.config_desc.digest, img.config_raw, layer_refs,
                                 extra)
    ref = "oci/" + encode_tag(tag) if tag is not None else None
    verity = write_manifest(repo, manifest_digest, img.manifest_raw, img.config_desc.digest,
                             config_verity, layer_refs, ref)
    return default, verity


def write_config(repo: Repository, config_digest: str, raw: bytes,
                 layer_refs: list[tuple[str, bytes]], extra: dict[str, bytes]) -> bytes:
    """Config splitstream: layer refs, then V2, V1, then boot refs (§1 order)."""
    w = repo.create_stream(CONTENT_OCI_CONFIG)
    for d, v in layer_refs:
        w.add_named_stream_ref(d, v)
    for key in (IMAGE_V2, IMAGE_V1):
        if key in extra:
            w.add_named_stream_ref(key, extra[key])
    for key, v in extra.items():
        if key not in (IMAGE_V2, IMAGE_V1):
            w.add_named_stream_ref(key, v)
    w.write_external(raw)
    return repo.write_stream(w, config_stream(config_digest))


__all__ = ["ImageSource", "PullResult", "ensure_composefs_erofs", "ensure_layer",
           "open_source", "parse_json_object", "pull", "write_config",
           "write_manifest"]
