"""``oci:`` layout imports: the acceptance check (an image built from a known
tree gets ``compute-id --bootable`` == compute-composefs-digest of the tree),
compression variants, layer merging, and hostile layouts (oci-import.md §3-§9)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_oci_support import (
    base_tree,
    dir_entry,
    file_entry,
    gnu_tar,
    info,
    make_layout,
    new_repo,
    put_blob,
    py_tar,
    write_tree,
)

from cfsboot.boot.digest import DigestOptions, compute_composefs_digest
from cfsboot.boot.oci_bootable import bootable_image_id, generate_boot_image
from cfsboot.boot.transform import transform_for_oci
from cfsboot.errors import CfsError
from cfsboot.oci.image import (
    create_filesystem,
    image_id,
    list_tags,
    open_image,
    resolve_tag,
)
from cfsboot.oci.normalize import normalize_for_oci
from cfsboot.oci.pull import pull
from cfsboot.repository import Repository
from cfsboot.repository.commit import compute_image_id
from cfsboot.tree.model import Directory, External, Inline, Leaf, Symlink
from cfsboot.tree.scan import ScanOptions, scan_directory


def sample_tree(root: Path) -> None:
    write_tree(root, {
        "usr/bin/tool": os.urandom(70_000), "usr/lib/x.so": os.urandom(3000),
        "usr/share/doc/readme": b"short", "usr/share/empty": b"",
        "usr/lib/link": "->x.so", "etc/os-release": b"ID=test\n", "boot": None,
        "sysroot": None, "run/junk": b"dropped", "var/tmp": None,
        "usr/" + "long/" * 40 + "f": b"L" * 500, "usr/caf\xe9": b"utf8 name",
    })
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    os.mkfifo(root / "usr/fifo")
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.setxattr(root / "usr/bin/tool", "security.capability", b"\x01\0\0\x02" + bytes(16))
    os.setxattr(root / "usr/lib/x.so", "user.kept", b"v")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repo(tmp_path / "repo")


def bootable_id(repo: Repository, tag: str) -> bytes:
    img = open_image(repo, resolve_tag(repo, tag))
    return bootable_image_id(repo, img.config_desc.digest, img.config_verity)


@pytest.mark.parametrize("how", ["gzip", "gzip-multi", "zstd", "zstd-multi", None])
def test_bootable_id_equals_composefs_digest(repo: Repository, tmp_path: Path,
                                             how: str | None) -> None:
    src = tmp_path / "tree"
    sample_tree(src)
    man, _ = make_layout(tmp_path / "layout", [gnu_tar(src)], how)
    res = pull(repo, f"oci:{tmp_path / 'layout'}:latest", "img")
    assert res.manifest_digest == man
    expected = compute_composefs_digest(str(src), DigestOptions()).digest
    assert bootable_id(repo, "img") == expected
    # and generate_boot_image stores exactly that image, linked from the config
    assert generate_boot_image(repo, man) == expected
    assert open_image(repo, man).image_refs["composefs.image.boot.v1"] == expected
    assert os.path.exists(f"{repo.path}/images/{expected.hex()}")


def test_regular_image_id_matches_scan(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    sample_tree(src)
    make_layout(tmp_path / "layout", [gnu_tar(src)], "gzip")
    res = pull(repo, f"oci:{tmp_path / 'layout'}", "img")
    scanned = scan_directory(str(src), ScanOptions(alg="sha512")).root
    transform_for_oci(scanned)
    assert res.image_id == compute_image_id(scanned, repo.algorithm, repo.format_config())
    img = open_image(repo, res.manifest_digest)
    assert img.image_ref(1) == res.image_id


def test_layers_merge_whiteouts_opaque(repo: Repository, tmp_path: Path) -> None:
    l1 = py_tar([*base_tree(), dir_entry("etc"), file_entry("etc/a", b"a"),
                 file_entry("etc/b", b"b" * 100), dir_entry("opt"), file_entry("opt/x", b"x"),
                 dir_entry("opt/sub"), file_entry("usr/f", b"file")])
    l2 = py_tar([file_entry("etc/.wh.a", b""), file_entry("etc/.wh.missing", b""),
                 dir_entry("opt", mode=0o700), file_entry("opt/.wh..wh..opq", b""),
                 file_entry("opt/new", b"n"), dir_entry("usr/f"),  # dir replaces file
                 file_entry("etc/b", b"B" * 200)])  # duplicate: later layer wins
    make_layout(tmp_path / "l", [l1, l2], "zstd")
    pull(repo, f"oci:{tmp_path / 'l'}", "t")
    img = open_image(repo, resolve_tag(repo, "t"))
    root = create_filesystem(repo, img.config_desc.digest, None)
    etc = root.entries[b"etc"]
    opt = root.entries[b"opt"]
    assert isinstance(etc, Directory) and isinstance(opt, Directory)
    assert sorted(etc.entries) == [b"b"]
    assert sorted(opt.entries) == [b"new"] and opt.stat.mode == 0o700
    assert isinstance(root.get_path(b"/usr/f"), Directory)
    b = etc.entries[b"b"]
    assert isinstance(b, Leaf) and isinstance(b.content, External) and b.content.size == 200


def test_layer_merge_matches_applied_tree(repo: Repository, tmp_path: Path) -> None:
    """Two GNU-tar layers; the reference is the tree with layer 2 applied on disk."""
    a, final = tmp_path / "a", tmp_path / "final"
    sample_tree(a)
    subprocess.run(["cp", "-a", str(a), str(final)], check=True)
    (tmp_path / "b").mkdir()
    write_tree(tmp_path / "b", {"etc/os-release": b"ID=two\n", "etc/.wh.gone": b"",
                                "usr/share/.wh.doc": b"", "usr/new": os.urandom(999)})
    for p in ("etc", "usr", "usr/share"):
        shutil.copystat(a / p, tmp_path / "b" / p)
    shutil.copy2(tmp_path / "b/etc/os-release", final / "etc/os-release")
    shutil.rmtree(final / "usr/share/doc")
    shutil.copy2(tmp_path / "b/usr/new", final / "usr/new")
    for p in ("etc", "usr", "usr/share"):
        shutil.copystat(a / p, final / p)
    make_layout(tmp_path / "l", [gnu_tar(a), gnu_tar(tmp_path / "b")], "gzip")
    pull(repo, f"oci:{tmp_path / 'l'}", "t")
    expected = compute_composefs_digest(str(final), DigestOptions()).digest
    assert bootable_id(repo, "t") == expected


def test_idempotent_and_shared_layers(repo: Repository, tmp_path: Path) -> None:
    t = py_tar([*base_tree(), file_entry("usr/f", os.urandom(5000))])
    make_layout(tmp_path / "l", [t], "gzip")
    r1 = pull(repo, f"oci:{tmp_path / 'l'}", "a")
    r2 = pull(repo, f"oci:{tmp_path / 'l'}", "b")
    assert r1.stats.objects_new == 1 and r2.stats.objects_new == 0
    assert r1.manifest_verity == r2.manifest_verity and r1.image_id == r2.image_id
    assert [n for n, _ in list_tags(repo)] == ["a", "b"]


def test_layout_tag_and_platform_selection(repo: Repository, tmp_path: Path) -> None:
    t = py_tar(base_tree())
    make_layout(tmp_path / "l", [t], tag="v1")
    with pytest.raises(CfsError, match="tag 'v2' not found"):
        pull(repo, f"oci:{tmp_path / 'l'}:v2", "x")
    make_layout(tmp_path / "arm", [t], config_extra={"architecture": "not-this-arch"})
    with pytest.raises(CfsError, match="No manifest found for platform"):
        pull(repo, f"oci:{tmp_path / 'arm'}", "x")


def test_image_without_usr_is_refused(repo: Repository, tmp_path: Path) -> None:
    make_layout(tmp_path / "l", [py_tar([dir_entry("etc")])])
    with pytest.raises(CfsError, match="/usr"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")


def test_normalize_matches_boot_transform(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    sample_tree(src)
    a = scan_directory(str(src), ScanOptions(alg="sha512")).root
    b = scan_directory(str(src), ScanOptions(alg="sha512")).root
    transform_for_oci(a)
    normalize_for_oci(b)
    assert image_id(repo, a) == image_id(repo, b)


# ---- hostile input -------------------------------------------------------------------

def refused(repo: Repository, tmp_path: Path, tars: list[bytes], match: str) -> None:
    make_layout(tmp_path / "h", tars, "gzip")
    with pytest.raises(CfsError, match=match):
        pull(repo, f"oci:{tmp_path / 'h'}", "h")
    assert list_tags(repo) == []


@pytest.mark.parametrize(("entries", "match"), [
    ([file_entry("usr/../../etc/passwd", b"x")], r"Invalid filename '\.\.'"),
    ([file_entry("../escape", b"x")], r"Invalid filename '\.\.'"),
    ([(info("usr/lnk", tarfile.SYMTYPE, link="/etc"), None), file_entry("usr/lnk/x", b"x")],
     "not a subdirectory"),
    ([(info("usr/h", tarfile.LNKTYPE, link="etc/shadow"), None)], "does not exist"),
    ([(info("usr/h", tarfile.LNKTYPE, link="usr/missing"), None)], "does not exist"),
    ([(info("usr/h", tarfile.LNKTYPE, link="usr/../../x"), None)], r"Invalid filename"),
    ([(info("usr/h", tarfile.LNKTYPE, link="boot"), None)], "is a directory"),
    ([file_entry("nodir/x", b"x")], "does not exist"),
    ([file_entry("", b"x")], "root entry"),
    ([file_entry("usr/a", b"x", pax_headers={"path": "usr/a\0b"})], "NUL byte"),
])
def test_hostile_entries(repo: Repository, tmp_path: Path,
                         entries: list[tuple[tarfile.TarInfo, bytes | None]], match: str) -> None:
    refused(repo, tmp_path, [py_tar([*base_tree(), *entries])], match)


def test_absolute_paths_stay_inside(repo: Repository, tmp_path: Path) -> None:
    t = py_tar([*base_tree(), file_entry("/usr/abs", b"x"),
                (info("usr/hl", tarfile.LNKTYPE, link="/usr/abs"), None)])
    make_layout(tmp_path / "l", [t])
    pull(repo, f"oci:{tmp_path / 'l'}", "t")
    img = open_image(repo, resolve_tag(repo, "t"))
    root = create_filesystem(repo, img.config_desc.digest, img.config_verity)
    assert root.get_path(b"/usr/abs") is root.get_path(b"/usr/hl")


def test_trusted_overlay_xattrs(repo: Repository, tmp_path: Path) -> None:
    """trusted.overlay.* from an image never reaches the overlay stack: the OCI
    transform drops it; with user xattrs kept, the writer escapes it."""
    x = {"SCHILY.xattr.trusted.overlay.redirect": "/etc",
         "SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.k": "v"}
    t = py_tar([*base_tree(), file_entry("usr/f", b"x" * 100, pax_headers=x),
                dir_entry("usr/d", pax_headers=x)])
    make_layout(tmp_path / "l", [t])
    pull(repo, f"oci:{tmp_path / 'l'}", "t")
    img = open_image(repo, resolve_tag(repo, "t"))
    root = create_filesystem(repo, img.config_desc.digest, img.config_verity)
    f = root.get_path(b"/usr/f")
    assert isinstance(f, Leaf) and f.stat.xattrs == {}
    kept = create_filesystem(repo, img.config_desc.digest, img.config_verity,
                             "keep-user-xattrs")
    f = kept.get_path(b"/usr/f")
    assert isinstance(f, Leaf) and f.stat.xattrs == {b"user.k": b"v"}


def test_manifest_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    man, _ = make_layout(tmp_path / "l", [py_tar(base_tree())])
    p = tmp_path / "l/blobs/sha256" / man[7:]
    p.write_bytes(p.read_bytes().replace(b"schemaVersion", b"schemaversion"))
    with pytest.raises(CfsError, match="digest mismatch"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")


def test_config_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    _, cfg = make_layout(tmp_path / "l", [py_tar(base_tree())])
    p = tmp_path / "l/blobs/sha256" / cfg[7:]
    p.write_bytes(p.read_bytes().replace(b"linux", b"Linux"))
    with pytest.raises(CfsError, match="digest mismatch"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")


def test_layer_blob_tampered(repo: Repository, tmp_path: Path) -> None:
    make_layout(tmp_path / "l", [py_tar(base_tree())], None)
    blobs = tmp_path / "l/blobs/sha256"
    index = json.loads((tmp_path / "l/index.json").read_text())
    man = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    layer = blobs / man["layers"][0]["digest"][7:]
    data = bytearray(layer.read_bytes())
    data[0] ^= 1
    layer.write_bytes(bytes(data))
    with pytest.raises(CfsError):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")
    assert not [s for s, _ in repo.list_streams() if s.startswith("oci-layer-")]


def test_diff_id_mismatch(repo: Repository, tmp_path: Path) -> None:
    t = py_tar(base_tree())
    make_layout(tmp_path / "l", [t], diff_ids=["sha256:" + hashlib.sha256(b"x").hexdigest()])
    with pytest.raises(CfsError, match="diff_id"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")
    assert not [s for s, _ in repo.list_streams() if s.startswith("oci-layer-")]


def test_blob_size_mismatch_and_missing(repo: Repository, tmp_path: Path) -> None:
    make_layout(tmp_path / "l", [py_tar(base_tree())])
    index = json.loads((tmp_path / "l/index.json").read_text())
    index["manifests"][0]["size"] += 1
    (tmp_path / "l/index.json").write_text(json.dumps(index))
    with pytest.raises(CfsError, match="truncated"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")
    shutil.rmtree(tmp_path / "l/blobs")
    with pytest.raises(CfsError, match="missing"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")


def test_blob_symlink_is_followed_and_still_verified(repo: Repository, tmp_path: Path) -> None:
    """Layouts whose blobs are symlinks (bazel rules_oci) are read as skopeo
    reads them; what the link leads to must still have the blob's digest."""
    man, _ = make_layout(tmp_path / "l", [py_tar(base_tree())])
    p = tmp_path / "l/blobs/sha256" / man[7:]
    data = p.read_bytes()
    (tmp_path / "elsewhere").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size
    p.unlink()
    p.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CfsError, match="digest"):
        pull(repo, f"oci:{tmp_path / 'l'}", "x")


def test_corrupt_gzip(repo: Repository, tmp_path: Path) -> None:
    layout = tmp_path / "l"
    make_layout(layout, [py_tar(base_tree())])
    garbage = b"\x1f\x8b\x08\x00" + os.urandom(100)
    blob = put_blob(layout, garbage)
    index = json.loads((layout / "index.json").read_text())
    mpath = layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]
    man = json.loads(mpath.read_bytes())
    man["layers"][0].update(blob)
    mb = put_blob(layout, json.dumps(man).encode())
    index["manifests"][0].update(mb)
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(CfsError, match=r"corrupt gzip|truncated"):
        pull(repo, f"oci:{layout}", "x")


def test_symlink_leaf_content(repo: Repository, tmp_path: Path) -> None:
    t = py_tar([*base_tree(), (info("usr/s", tarfile.SYMTYPE, link="../../../etc"), None)])
    make_layout(tmp_path / "l", [t])
    pull(repo, f"oci:{tmp_path / 'l'}", "t")
    img = open_image(repo, resolve_tag(repo, "t"))
    root = create_filesystem(repo, img.config_desc.digest, img.config_verity)
    s = root.get_path(b"/usr/s")
    assert isinstance(s, Leaf) and s.content == Symlink(b"../../../etc")
    assert isinstance(root.get_path(b"/boot"), Directory)
    assert not isinstance(s.content, Inline)


def test_artifact_blob_layers(repo: Repository, tmp_path: Path) -> None:
    """Non-tar layers are stored as one object each (§3.4); no EROFS, just a tag."""
    layout = tmp_path / "a"
    payload = os.urandom(3000)
    blob = put_blob(layout, payload)
    empty = put_blob(layout, b"{}")
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "artifactType": "application/x-test",
                      "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
                      "layers": [{"mediaType": "application/x-payload", **blob}]}).encode()
    md = put_blob(layout, man)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **md,
         "platform": {"os": "linux", "architecture": "amd64"}}]}))
    (layout / "oci-layout").write_text("{}")
    from cfsboot.oci.layout import host_platform
    if host_platform()[1] != "amd64":
        pytest.skip("layout written for amd64")
    res = pull(repo, f"oci:{layout}", "art")
    assert res.image_id is None
    img = open_image(repo, resolve_tag(repo, "art"))
    assert not img.is_container
    stream = img.layer_refs[blob["digest"]]
    with repo.open_stream(f"oci-layer-{blob['digest']}", stream) as r:
        assert len(r.object_refs) == 1
        with repo.open_object(r.object_refs[0]) as f:
            assert f.read() == payload


def test_gc_keeps_tagged_images(repo: Repository, tmp_path: Path) -> None:
    """A tag keeps manifest, config, layers, objects and the linked EROFS alive."""
    from cfsboot.oci.image import untag_image
    from cfsboot.repository.gc import gc
    src = tmp_path / "tree"
    sample_tree(src)
    make_layout(tmp_path / "l", [gnu_tar(src)], "gzip")
    res = pull(repo, f"oci:{tmp_path / 'l'}", "keep")
    before = bootable_id(repo, "keep")
    gc(repo)
    assert bootable_id(repo, "keep") == before
    assert res.image_id is not None and os.path.exists(f"{repo.path}/images/{res.image_id.hex()}")
    untag_image(repo, "keep")
    gc(repo)
    assert repo.list_streams() == [] and repo.list_images() == []


def _archive(layout: Path, out: Path, extra: list[tarfile.TarInfo] | None = None) -> None:
    with tarfile.open(out, "w") as tf:
        for info_ in extra or []:
            tf.addfile(info_)
        tf.add(layout, arcname=".")


def test_native_oci_archive(repo: Repository, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without skopeo, oci-archive: is read in place; same result as the layout."""
    monkeypatch.setattr("cfsboot.oci.pull.shutil.which", lambda name: None)
    src = tmp_path / "tree"
    sample_tree(src)
    man, _ = make_layout(tmp_path / "l", [gnu_tar(src)], "zstd", tag="v1")
    _archive(tmp_path / "l", tmp_path / "a.tar")
    res = pull(repo, f"oci-archive:{tmp_path / 'a.tar'}:v1", "a")
    assert res.manifest_digest == man
    assert bootable_id(repo, "a") == compute_composefs_digest(str(src), DigestOptions()).digest
    # a blob smuggled in as a symlink member is not followed: it is "missing"
    link = tarfile.TarInfo(f"blobs/sha256/{man[7:]}")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    (tmp_path / "l2").mkdir()
    shutil.copy(tmp_path / "l/index.json", tmp_path / "l2/index.json")
    _archive(tmp_path / "l2", tmp_path / "b.tar", [link])
    with pytest.raises(CfsError, match="missing"):
        pull(repo, f"oci-archive:{tmp_path / 'b.tar'}", "b")
    (tmp_path / "c.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(CfsError, match="OCI archive"):
        pull(repo, f"oci-archive:{tmp_path / 'c.tar'}", "c")
