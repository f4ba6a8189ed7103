"""Differential tests against C mkcomposefs (Debian forky's composefs 1.0.8).

The oracle runs inside a debootstrap chroot made by scripts/setup-c-oracle.sh
(`make deps` as root).  Random trees are written as dumpfiles and as real
directories; C's image and ours must be byte-identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import trees

from cfsboot.cli.main import main as cfsboot_main
from cfsboot.erofs.writer import c_effective_version, mkfs_erofs
from cfsboot.tree.dumpfile import parse_dumpfile, write_dumpfile
from cfsboot.tree.model import Directory, External, Leaf, walk

ORACLE = Path(os.environ.get("CFSBOOT_C_ORACLE", "/var/cache/cfsboot-forky"))


def need_oracle() -> None:
    if not (ORACLE / "usr/bin/mkcomposefs").exists():
        pytest.skip(f"C mkcomposefs oracle not at {ORACLE} (scripts/setup-c-oracle.sh as root)")
    if os.geteuid() != 0:
        pytest.skip("the C oracle runs in a chroot: needs root")


def c_mkcomposefs(args: list[str], stdin: bytes | None = None) -> bytes:
    # C reads xattrs through /proc/self/fd/N: give the chroot its own /proc
    # in a private mount namespace, so nothing stays mounted afterwards.
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" mkcomposefs "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, str(ORACLE), *args], input=stdin,
                          capture_output=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"C mkcomposefs failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def rs_and_c_agree(root: Directory) -> bool:
    """Trees outside erofs-image.md §11's known differences."""
    acl_names = (b"system.posix_acl_access", b"system.posix_acl_default")
    for _path, node in walk(root):
        if any(k.startswith(b"system.posix_acl_") and k not in acl_names
               for k in node.stat.xattrs):
            return False  # §11.8: C tests the exact names for the ACL flag
        if isinstance(node, Leaf) and isinstance(node.content, External) \
                and node.content.size == 0:
            return False  # §11.5: C writes a plain empty file
    return True


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(root=trees(max_leaves=12, digest_size=32, overlay_xattrs=False),
       version=st.sampled_from([0, 1]))
def test_dumpfile_images_match_c(root: Directory, version: int) -> None:
    need_oracle()
    dump = write_dumpfile(root)
    c_image = c_mkcomposefs(["--from-file", f"--min-version={version}",
                             f"--max-version={version}", "-", "-"], stdin=dump)
    parsed = parse_dumpfile(dump, flavor="c")
    ours = mkfs_erofs(parsed, c_effective_version(parsed, version, version), c_compat=True)
    assert ours == c_image
    if rs_and_c_agree(root):
        assert mkfs_erofs(root, version) == c_image


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(root=trees(max_leaves=12, digest_size=32, overlay_xattrs=False))
def test_default_versions_match_c(root: Directory) -> None:
    """C's default --min-version=0 --max-version=1 with its automatic bump."""
    need_oracle()
    dump = write_dumpfile(root)
    c_image = c_mkcomposefs(["--from-file", "-", "-"], stdin=dump)
    parsed = parse_dumpfile(dump, flavor="c")
    assert mkfs_erofs(parsed, c_effective_version(parsed, 0, 1), c_compat=True) == c_image


FILES = st.lists(
    st.tuples(st.sampled_from(["a", "b", "sub/c", "sub/d", "sub/deeper/e", "f g", "h-i"]),
              st.one_of(st.binary(max_size=200), st.integers(0, 20000).map(lambda n: b"z" * n)),
              st.sampled_from([0o644, 0o755, 0o600, 0o4755])),
    max_size=7, unique_by=lambda t: t[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=FILES, with_xattr=st.booleans(), with_links=st.booleans())
def test_directory_images_match_c(files: list[tuple[str, bytes, int]], with_xattr: bool,
                                  with_links: bool) -> None:
    """`cfsboot mkcomposefs DIR` == C `mkcomposefs DIR` (and the digest store)."""
    need_oracle()
    work = Path(tempfile.mkdtemp(dir=ORACLE / "tmp"))
    try:
        src = work / "src"
        src.mkdir()
        for rel, data, mode in files:
            p = src / rel
            if p.parent.exists() and not p.parent.is_dir():
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.exists():
                continue
            p.write_bytes(data)
            p.chmod(mode)
            if with_xattr:
                os.setxattr(p, "user.test", data[:10] or b"v")
        if with_links:
            os.symlink("a", src / "link")
            os.mkfifo(src / "fifo")
            first = next((src / r for r, _, _ in files if (src / r).is_file()), None)
            if first is not None:
                os.link(first, src / "hardlink")
        inside = "/" + str(work.relative_to(ORACLE))
        c_mkcomposefs([f"--digest-store={inside}/c-store", f"{inside}/src",
                       f"{inside}/c.cfs"])
        rc = cfsboot_main(["mkcomposefs", f"--digest-store={work}/our-store", str(src),
                           str(work / "our.cfs")])
        assert rc == 0
        assert (work / "our.cfs").read_bytes() == (work / "c.cfs").read_bytes()
        assert _store_listing(work / "our-store") == _store_listing(work / "c-store")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _store_listing(store: Path) -> dict[str, bytes]:
    if not store.exists():
        return {}
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file()}


def test_device_number_above_32_bits_truncated_like_c() -> None:
    need_oracle()
    dump = b"/ 0 40755 2 0 0 0 0.0 - - -\n/dev 0 20644 1 0 0 4294967299 0.0 - - -\n"
    parsed = parse_dumpfile(dump, flavor="c")
    assert mkfs_erofs(parsed, 0, c_compat=True) == c_mkcomposefs(["--from-file", "-", "-"],
                                                                 stdin=dump)



def test_paths_longer_than_path_max_fail_in_c_but_not_here(tmp_path: Path) -> None:
    """C mkcomposefs 1.0.8 fails on a tree deeper than PATH_MAX ("error computing
    digest: File name too long"); composefs-rs, and so bootc, reads it with
    openat, and so do we (test_scan.py checks what we read; the kernel mount of
    the image is checked in test_mkcomposefs_mount.py)."""
    need_oracle()
    from test_scan import make_deep
    work = Path(tempfile.mkdtemp(dir=ORACLE / "tmp"))
    try:
        (work / "src").mkdir()
        make_deep(work / "src")
        inside = "/" + str(work.relative_to(ORACLE))
        with pytest.raises(AssertionError, match="File name too long"):
            c_mkcomposefs([f"{inside}/src", f"{inside}/c.cfs"])
        assert cfsboot_main(["mkcomposefs", str(work / "src"), str(work / "our.cfs")]) == 0
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_digest_store_inside_source_is_filled_after_the_scan_as_c_does() -> None:
    """C reads SOURCE before it creates and fills the store, so the first image
    shows no store at all; ours must be the same image, and the same store."""
    need_oracle()
    work = Path(tempfile.mkdtemp(dir=ORACLE / "tmp"))
    try:
        src = work / "src"
        (src / "usr/lib").mkdir(parents=True)
        for i in range(5):
            (src / f"usr/lib/f{i}").write_bytes(bytes([i]) * (100 + 5000 * i))
        (src / "small").write_bytes(b"inline")
        os.utime(src / "usr/lib", ns=(10**18, 10**18))
        os.utime(src, ns=(10**18, 10**18))
        subprocess.run(["cp", "-a", str(src), str(work / "ours")], check=True)
        inside = "/" + str(work.relative_to(ORACLE))
        c_mkcomposefs([f"--digest-store={inside}/src/store", f"{inside}/src",
                       f"{inside}/c.cfs"])
        rc = cfsboot_main(["mkcomposefs", f"--digest-store={work}/ours/store",
                           str(work / "ours"), str(work / "our.cfs")])
        assert rc == 0
        assert (work / "our.cfs").read_bytes() == (work / "c.cfs").read_bytes()
        assert _store_listing(work / "ours/store") == _store_listing(src / "store")
        assert len(_store_listing(src / "store")) == 5
    finally:
        shutil.rmtree(work, ignore_errors=True)
