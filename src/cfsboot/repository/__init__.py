"""composefs repository (composefs-rs @0fbc853 compatible): content-addressed
objects, splitstreams, images, refs, GC, fsck and mounting.

Typical use (e.g. an OCI import)::

    with Repository.open(path) as repo:
        with repo.object_tmpfile() as t:        # thread-safe; one per object
            t.write(chunk); oid = t.finalize().digest
        w = repo.create_stream(CONTENT_OCI_LAYER)   # or SplitStreamBuilder
        w.write_inline(header); w.add_external_size(n); w.write_reference(oid)
        repo.write_stream(w, "oci-layer-sha256:…", ref=None)   # syncfs, then symlink
"""

from cfsboot.repository.meta import SHA256, SHA512, Algorithm, FormatConfig, RepoMetadata
from cfsboot.repository.objects import ObjectError, ObjectTmpfile, StoreResult
from cfsboot.repository.repo import (
    ImageNotFound,
    RefEntry,
    Repository,
    RepositoryError,
    StreamNotFound,
)
from cfsboot.repository.splitstream import (
    CONTENT_OCI_BLOB,
    CONTENT_OCI_CONFIG,
    CONTENT_OCI_LAYER,
    CONTENT_OCI_MANIFEST,
    ExternalChunk,
    SplitStreamBuilder,
    SplitStreamError,
    SplitStreamReader,
    SplitStreamWriter,
)

__all__ = [
    "CONTENT_OCI_BLOB",
    "CONTENT_OCI_CONFIG",
    "CONTENT_OCI_LAYER",
    "CONTENT_OCI_MANIFEST",
    "SHA256",
    "SHA512",
    "Algorithm",
    "ExternalChunk",
    "FormatConfig",
    "ImageNotFound",
    "ObjectError",
    "ObjectTmpfile",
    "RefEntry",
    "RepoMetadata",
    "Repository",
    "RepositoryError",
    "SplitStreamBuilder",
    "SplitStreamError",
    "SplitStreamReader",
    "SplitStreamWriter",
    "StoreResult",
    "StreamNotFound",
]
