"""``c_compat=True`` against real C mkcomposefs (the chroot oracle of
test_c_oracle.py), aimed at spec erofs-image.md section 11 and at C's xattr
replace-and-budget rule: each dumpfile below must give C's exact image, or be
refused by both."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import trees
from test_c_oracle import ORACLE, need_oracle

from cfsboot.erofs.writer import ErofsWriteError, c_effective_version, mkfs_erofs
from cfsboot.tree.dumpfile import parse_dumpfile, write_dumpfile
from cfsboot.tree.model import Directory

R = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
D = b"/d 0 40755 2 0 0 0 0.0 - - -"
WH = b" 0 20644 1 0 0 0 0.0 - - -"
XS130 = b" ".join(b"user.x%03d=v" % i for i in range(130))

CASES: dict[str, bytes] = {
    # Leaf.primary: C places a hard-linked inode at its full line, wherever it is
    "primary-same-dir": R + b"/a 0 @100644 - - - - 0.0 /m - -\n"
                            b"/b 3 100644 1 0 0 0 0.0 - abc -\n/m 4 100644 2 0 0 0 0.0 - defg -\n",
    "primary-cross-dir": R + b"/a 0 40755 2 0 0 0 0.0 - - -\n/a/x 0 @100644 - - - - 0.0 /z/y - -\n"
                             b"/a/q 3 100644 1 0 0 0 0.0 - abc -\n/z 0 40755 2 0 0 0 0.0 - - -\n"
                             b"/z/y 4 100644 2 0 0 0 0.0 - defg -\n",
    "primary-deep": R + b"/b 0 40755 2 0 0 0 0.0 - - -\n/b/l 0 @100644 - - - - 0.0 /a/d/f - -\n"
                        b"/a 0 40755 2 0 0 0 0.0 - - -\n/a/d 0 40755 2 0 0 0 0.0 - - -\n"
                        b"/a/d/f 4 100644 5 0 0 0 0.0 - defg -\n",
    # 11.9: SIZE of devices/fifos makes the inode extended above 4 GiB
    "c-size": R + b"/c 5000000000 20644 1 0 0 5 0.0 - - -\n/f 5000000000 10644 1 0 0 0 0.0 - - -\n",
    "c-size-whiteout": R + b"/w 5000000000" + WH[2:] + b"\n",
    # 11.2: duplicate names are replaced (with C's budget arithmetic)
    "dup-opaque-v1": R + D + b" trusted.overlay.opaque=y user.overlay.opaque=z\n/d/w" + WH + b"\n",
    "dup-whiteouts": R + D + b" user.overlay.whiteouts=abc\n/d/a" + WH + b"\n/d/b" + WH + b"\n",
    "dup-user-whiteout": R + b"/w 0 20644 1 0 0 0 0.0 - - - user.overlay.whiteout=abcdefghijkl\n",
    "dup-budget-wraps": R + b"/w" + WH + b" user.overlay.whiteout=q trusted.overlay.whiteout=r\n",
    "escaped-metacopy": R + b"/e 10 100644 1 0 0 0 0.0 ab/cd - - trusted.overlay.metacopy=zz\n",
    # 11.3, 11.4, 11.5, 11.7, 11.8
    "stub-lookalike": R + b"/0a" + WH + b"\n",
    "nlink-field": R + b"/f 0 100644 7 0 0 0 0.0 - - -\n/g 0 100644 70000 0 0 0 0.0 - - -\n",
    "external-size-0": R + b"/e 0 100644 1 0 0 0 0.0 ab/cd - " + b"1" * 64 + b"\n",
    "shared-cap": R + b"/a 0 10644 1 0 0 0 0.0 - - - " + XS130 + b"\n"
                      b"/b 0 10644 1 0 0 0 0.0 - - - " + XS130 + b"\n",
    "acl-prefix-only": R[:-1] + b" system.posix_acl_accessX=1\n",
    "acl-exact": R[:-1] + b" system.posix_acl_default=1\n",
    # payloads that are not object paths; files without payload
    "payloads": R + b"/p 10 100644 1 0 0 0 0.0 ab/cdef.file - -\n"
                    b"/q 10 100644 1 0 0 0 0.0 /abs/path - -\n/s 12345 100644 1 0 0 0 0.0 - - -\n",
    # data blocks: long symlinks, large inline content, big xattrs
    "long-symlink": R + b"/l 4095 120777 1 0 0 0 0.0 " + b"a" * 4095 + b" - - user.a=" + b"b" * 100
                    + b"\n",
    "inline-5000": R + b"/f 5000 100644 1 0 0 0 0.0 - " + b"x" * 5000 + b" -\n",
    "inline-and-xattr": R + b"/f 4000 100644 1 0 0 0 0.0 - " + b"x" * 4000 + b" - user.a="
                        + b"b" * 3000 + b"\n",
    "mtime-max": R + b"/f 0 100644 1 0 0 0 18446744073709551615.0 - - -\n",
    "lustre": R + b"/f 0 100644 1 0 0 0 0.0 - - - lustre.foo=bar\n",
}


def c_mkcomposefs(dump: bytes, lo: int, hi: int) -> bytes | None:
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" mkcomposefs "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           str(ORACLE), f"--min-version={lo}", f"--max-version={hi}",
                           "--from-file", "-", "-"],
                          input=dump, capture_output=True, check=False, timeout=60)
    return proc.stdout if proc.returncode == 0 else None


def ours(dump: bytes, lo: int, hi: int) -> bytes | None:
    tree = parse_dumpfile(dump, flavor="c")
    try:
        return mkfs_erofs(tree, c_effective_version(tree, lo, hi), c_compat=True)
    except ErofsWriteError:
        return None


@pytest.mark.parametrize("versions", [(0, 1), (0, 0), (1, 1)], ids=["default", "v0", "v1"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_c_compat_matches_c(name: str, versions: tuple[int, int]) -> None:
    need_oracle()
    dump = CASES[name]
    assert ours(dump, *versions) == c_mkcomposefs(dump, *versions)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(root=trees(max_leaves=10, digest_size=32, overlay_xattrs=True),
       versions=st.sampled_from([(0, 1), (0, 0), (1, 1)]))
def test_random_trees_with_overlay_xattrs_match_c(root: Directory,
                                                   versions: tuple[int, int]) -> None:
    """Random trees including user ``trusted.overlay.*``/``user.overlay.*``
    xattrs (escaping, replacement, budget) and whiteouts."""
    need_oracle()
    dump = write_dumpfile(root)
    assert ours(dump, *versions) == c_mkcomposefs(dump, *versions)
