"""The public sample root (vectors/trees/make-sample-root.py) built in memory,
transformed, and compared with the dumpfile composefs-rs wrote for it
(sample-root.dump): metadata, labels, emptied dirs, hard links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TREE_VECTORS

from cfsboot.boot.transform import transform_for_boot, transform_for_oci
from cfsboot.tree.model import (
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Stat,
    Symlink,
    leaf_link_counts,
    walk,
)

T0 = 1_690_000_000
SEL = b"etc/selinux/targeted/contexts/files"
FILE_CONTEXTS = b"\n".join([
    b"/.*            system_u:object_r:default_t:s0",
    b"/              -d system_u:object_r:root_t:s0",
    b"/usr(/.*)?     system_u:object_r:usr_t:s0",
    b"/usr/bin(/.*)? system_u:object_r:bin_t:s0",
    b"/usr/lib(/.*)? system_u:object_r:lib_t:s0",
    b"/etc(/.*)?     system_u:object_r:etc_t:s0",
    b"/boot          -d system_u:object_r:boot_t:s0",
    b"/tmp(/.*)?     <<none>>",
    b"/opt/app/null  -c system_u:object_r:null_device_t:s0",
    b""])


class MemTree:
    """A tree under construction plus the content of its regular files."""

    def __init__(self, root_stat: Stat) -> None:
        self.root = Directory(root_stat)
        self.data: dict[int, bytes] = {}

    def mkdir(self, path: bytes, stat: Stat) -> Directory:
        d = self.root
        for part in path.strip(b"/").split(b"/"):
            child = d.entries.get(part)
            if child is None:
                child = Directory(stat.copy())
                d.entries[part] = child
            assert isinstance(child, Directory)
            d = child
        return d

    def put(self, path: bytes, node: Leaf, data: bytes | None = None) -> Leaf:
        parent, _, name = path.strip(b"/").rpartition(b"/")
        d = self.mkdir(parent, Stat(0o755, 0, 0, 0, 0)) if parent else self.root
        d.entries[name] = node
        if data is not None:
            self.data[id(node)] = data
        return node

    def file(self, path: bytes, data: bytes, mode: int = 0o644, **kw: int) -> Leaf:
        stat = Stat(mode, kw.get("uid", 0), kw.get("gid", 0), T0, kw.get("ns", 0))
        content = Inline(data) if len(data) <= 64 else External.from_digest(
            bytes(64), len(data))
        return self.put(path, Leaf(stat, content), data)

    def read_file(self, leaf: Leaf) -> bytes:
        return self.data[id(leaf)]


def build_sample() -> MemTree:
    dir_stat = Stat(0o755, 0, 0, T0 + 100, 0)
    t = MemTree(Stat(0o755, 0, 0, T0 + 100, 0, {b"security.selinux": b"unconfined_t\0"}))
    for d in [b"usr/bin", b"usr/lib/modules/6.1.0-sample", b"usr/share/doc/sample", b"etc",
              b"var/log", b"boot/loader", b"sysroot/ostree/repo", b"run/lock", b"tmp",
              b"opt/app", SEL]:
        t.mkdir(d, dir_stat)
    tool = t.file(b"usr/bin/tool", b"#!/bin/sh\necho tool\n" * 10, 0o755)
    t.file(b"usr/bin/tiny", b"x" * 64, 0o755)
    t.file(b"usr/bin/small", b"y" * 65, 0o755)
    t.file(b"usr/bin/suid", b"s" * 5000, 0o4755)
    t.put(b"usr/bin/tool-alias", tool)
    t.file(b"usr/lib/libbig.so.1", b"\0" * 3145728, ns=123456789)
    t.put(b"usr/lib/libbig.so", Leaf(Stat(0o777, 0, 0, T0 + 5, 0), Symlink(b"libbig.so.1")))
    t.file(b"usr/lib/modules/6.1.0-sample/vmlinuz", b"K" * 100_000)
    t.file(b"usr/lib/modules/6.1.0-sample/initramfs.img", b"I" * 50_000)
    t.file(b"usr/share/doc/sample/README", b"sample\n", uid=1000, gid=1000)
    ping = t.file(b"usr/bin/ping", b"p" * 300, 0o755)
    ping.stat.xattrs[b"security.capability"] = bytes.fromhex(
        "0100000200200000000000000000000000000000")
    ping.stat.xattrs[b"user.dropped"] = b"not kept by the boot transform"
    t.file(b"etc/os-release", b'NAME="Sample"\nID=sample\nVERSION_ID=1\n')
    t.file(b"etc/hostname", b"sample\n")
    t.file(b"boot/loader/junk.conf", b"this is emptied\n")
    t.file(b"sysroot/ostree/repo/config", b"emptied too\n")
    t.file(b"opt/app/data.bin", b"\0" * 8192)
    t.put(b"opt/app/null", Leaf(Stat(0o666, 0, 0, T0 + 5, 0), CharDevice(259)))
    t.put(b"opt/app/fifo", Leaf(Stat(0o600, 0, 0, T0 + 5, 0), Fifo()))
    t.file(b"etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    t.file(SEL + b"/file_contexts", FILE_CONTEXTS)
    t.file(SEL + b"/file_contexts.subs_dist", b"/opt /usr\n")
    usr = t.root.get_path(b"/usr")
    assert isinstance(usr, Directory)
    usr.stat.mtime_sec, usr.stat.mtime_nsec = T0 + 7, 500
    return t


def _unescape(field: str) -> bytes:
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  field.encode())


def parse_dump(path: Path) -> dict[bytes, dict[str, object]]:
    """The fields this test compares, from composefs-rs's dumpfile."""
    out: dict[bytes, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        f = line.split(" ")
        if f[2].startswith("@"):
            out[_unescape(f[0])] = {"hardlink": _unescape(f[8])}
            continue
        sec, nsec = f[7].split(".")
        xattrs = dict(_unescape(x).split(b"=", 1) for x in f[11:])
        out[_unescape(f[0])] = {
            "mode": int(f[2], 8), "nlink": int(f[3]), "uid": int(f[4]), "gid": int(f[5]),
            "mtime": (int(sec), int(nsec)), "xattrs": xattrs,
        }
    return out


@pytest.fixture(scope="module")
def transformed() -> Directory:
    t = build_sample()
    transform_for_oci(t.root)
    transform_for_boot(t.root, t.read_file)
    return t.root


def test_sample_tree_matches_upstream_dump(transformed: Directory) -> None:
    dump = TREE_VECTORS / "sample-root.dump"
    if not dump.exists():
        pytest.skip(f"{dump} not found")
    expected = parse_dump(dump)
    links = leaf_link_counts(transformed)
    first_path: dict[int, bytes] = {}
    seen = set()
    for path, node in walk(transformed):
        seen.add(path)
        want = expected[path]
        if isinstance(node, Leaf) and id(node) in first_path:
            assert want == {"hardlink": first_path[id(node)]}, path
            continue
        if isinstance(node, Leaf):
            first_path[id(node)] = path
        s = node.stat
        got_mode = s.mode | (0o40000 if isinstance(node, Directory) else {
            Inline: 0o100000, External: 0o100000, Symlink: 0o120000,
            CharDevice: 0o20000, Fifo: 0o10000}[type(node.content)])
        got = {"mode": got_mode, "uid": s.uid, "gid": s.gid,
               "mtime": (s.mtime_sec, s.mtime_nsec), "xattrs": s.xattrs}
        want = {k: v for k, v in want.items() if k != "nlink"}
        assert got == want, path
        if isinstance(node, Leaf):
            assert links[node] == expected[path]["nlink"], path
    assert seen == set(expected)


@pytest.mark.parametrize("path, label", [
    (b"/", b"system_u:object_r:root_t:s0"),
    (b"/opt/app/null", b"system_u:object_r:usr_t:s0"),     # .subs_dist /opt -> /usr
    (b"/opt", b"system_u:object_r:usr_t:s0"),
    (b"/tmp", None),                                        # <<none>>
    (b"/run", b"system_u:object_r:default_t:s0"),
    (b"/sysroot", b"system_u:object_r:default_t:s0"),
    (b"/boot", b"system_u:object_r:boot_t:s0"),
    (b"/usr/bin/ping", b"system_u:object_r:bin_t:s0"),
    (b"/usr/lib/libbig.so", b"system_u:object_r:lib_t:s0"),
])
def test_sample_labels(transformed: Directory, path: bytes, label: bytes | None) -> None:
    node = transformed.get_path(path)
    assert node is not None
    assert node.stat.xattrs.get(b"security.selinux") == label


def test_sample_xattrs_and_emptied_dirs(transformed: Directory) -> None:
    ping = transformed.get_path(b"/usr/bin/ping")
    assert ping is not None
    assert set(ping.stat.xattrs) == {b"security.capability", b"security.selinux"}
    for name in (b"/boot", b"/sysroot", b"/run"):
        d = transformed.get_path(name)
        assert isinstance(d, Directory) and not d.entries
    boot = transformed.get_path(b"/boot")
    assert boot is not None and (boot.stat.mtime_sec, boot.stat.mtime_nsec) == (T0 + 7, 0)
    run = transformed.get_path(b"/run")
    assert run is not None and (run.stat.mtime_sec, run.stat.mtime_nsec) == (T0 + 7, 500)
    assert (transformed.stat.mtime_sec, transformed.stat.mtime_nsec) == (T0 + 7, 500)
