"""OCI image import into a composefs repository (oci-import.md).

reference (image refs, digests, tag encoding) · layout / archive / registry
(image sources: ``oci:`` dir, ``oci-archive:`` without skopeo, everything else
through ``skopeo experimental-image-proxy``) · blobs (descriptors, verified
readers, decompression) · tarheader / tarsplit (tar → ``ocilayer``
splitstream) · layers (splitstream → entries → merged tree) · normalize (OCI
transform) · image (stored images, tags, filesystem, image ID) · pull (the
pipeline and EROFS linking).
"""
