"""transform_for_oci / transform_for_boot rules (spec §2, §3.1-3.3, §5) and
boot entry discovery (composefs-rs bootloader.rs get_boot_resources)."""

from __future__ import annotations

import pytest

from cfsboot.boot.bootloader import (
    BootEntryError,
    BootLoaderEntryFile,
    Type1Entry,
    Type2Entry,
    UsrLibModulesVmlinuz,
    get_boot_resources,
    path_components,
    resolve_file,
)
from cfsboot.boot.transform import TransformError, transform_for_boot, transform_for_oci
from cfsboot.tree.model import (
    CharDevice,
    Directory,
    External,
    Inline,
    Leaf,
    Sparse,
    Stat,
    Symlink,
)

CAP = b"security.capability"
SEL = b"security.selinux"


def st(mode: int = 0o755, mtime: tuple[int, int] = (100, 1), **xattrs: bytes) -> Stat:
    return Stat(mode, 0, 0, mtime[0], mtime[1],
                {k.replace("_", ".").encode(): v for k, v in xattrs.items()})


class Tree:
    def __init__(self) -> None:
        self.root = Directory(st(0o700, (5, 5), user_x=b"1"))
        self.data: dict[int, bytes] = {}
        for name in (b"usr", b"boot", b"sysroot"):
            self.dir(b"/" + name)

    def dir(self, path: bytes) -> Directory:
        d = self.root
        for part in path.strip(b"/").split(b"/"):
            if part:
                child = d.entries.setdefault(part, Directory(st()))
                assert isinstance(child, Directory)
                d = child
        return d

    def put(self, path: bytes, node: Leaf | Directory) -> None:
        parent, _, name = path.rpartition(b"/")
        self.dir(parent).entries[name] = node

    def file(self, path: bytes, data: bytes = b"x") -> Leaf:
        leaf = Leaf(st(0o644), Inline(data) if len(data) <= 64 else
                    External.from_digest(bytes(64), len(data)))
        self.put(path, leaf)
        self.data[id(leaf)] = data
        return leaf

    def read(self, leaf: Leaf) -> bytes:
        return self.data[id(leaf)]

    def boot(self) -> None:
        transform_for_boot(self.root, self.read)


# ---- transform_for_oci -------------------------------------------------------------------

def test_root_metadata_comes_from_usr_before_filtering() -> None:
    t = Tree()
    usr = t.dir(b"/usr")
    usr.stat = Stat(0o751, 12, 34, 1700000001, 500000000,
                    {SEL: b"container_t", CAP: b"c", b"user.u": b"u"})
    transform_for_oci(t.root)
    r = t.root.stat
    assert (r.mode, r.uid, r.gid, r.mtime_sec, r.mtime_nsec) == (0o751, 12, 34, 1700000001,
                                                                 500000000)
    assert r.xattrs == {CAP: b"c"}
    assert usr.stat.xattrs == {CAP: b"c"}
    assert r.xattrs is not usr.stat.xattrs


@pytest.mark.parametrize("usr", [None, "file", "symlink"])
def test_oci_requires_usr_directory(usr: str | None) -> None:
    t = Tree()
    del t.root.entries[b"usr"]
    if usr == "file":
        t.file(b"/usr")
    elif usr == "symlink":
        t.put(b"/usr", Leaf(st(), Symlink(b"/x")))
    with pytest.raises(TransformError, match="/usr"):
        transform_for_oci(t.root)


def test_run_is_emptied_with_usr_mtime() -> None:
    t = Tree()
    t.dir(b"/usr").stat.mtime_sec, t.dir(b"/usr").stat.mtime_nsec = 77, 88
    run = t.dir(b"/run")
    run.stat = Stat(0o1777, 5, 6, 1, 2, {CAP: b"keep", b"user.x": b"drop"})
    t.file(b"/run/lock/x")
    transform_for_oci(t.root)
    assert run.entries == {}
    assert (run.stat.mode, run.stat.uid, run.stat.gid) == (0o1777, 5, 6)
    assert (run.stat.mtime_sec, run.stat.mtime_nsec) == (77, 88)
    assert run.stat.xattrs == {CAP: b"keep"}


def test_run_missing_is_fine_and_non_directory_fails() -> None:
    t = Tree()
    transform_for_oci(t.root)
    assert b"run" not in t.root.entries
    t = Tree()
    t.file(b"/run")
    with pytest.raises(TransformError, match="/run is not a directory"):
        transform_for_oci(t.root)


def test_xattr_allowlist_is_exactly_security_capability() -> None:
    t = Tree()
    xattrs = {CAP: b"c", SEL: b"s", b"user.a": b"", b"trusted.overlay.x": b"",
              b"security.ima": b"", b"system.posix_acl_access": b"",
              b"security.capability2": b"", b"Security.capability": b""}
    leaf = t.file(b"/usr/bin/ping")
    leaf.stat.xattrs = dict(xattrs)
    t.put(b"/usr/bin/ping2", leaf)
    t.dir(b"/etc").stat.xattrs = dict(xattrs)
    link = Leaf(st(), Symlink(b"ping"))
    link.stat.xattrs = dict(xattrs)
    t.put(b"/usr/bin/link", link)
    transform_for_oci(t.root)
    assert leaf.stat.xattrs == {CAP: b"c"}
    assert link.stat.xattrs == {CAP: b"c"}
    assert t.dir(b"/etc").stat.xattrs == {CAP: b"c"}
    bin_dir = t.dir(b"/usr/bin")
    assert bin_dir.entries[b"ping"] is bin_dir.entries[b"ping2"]  # hard link kept


# ---- transform_for_boot ----------------------------------------------------------------------

def test_boot_and_sysroot_emptied_seconds_only() -> None:
    t = Tree()
    t.dir(b"/usr").stat.mtime_sec, t.dir(b"/usr").stat.mtime_nsec = 1000, 999
    boot = t.dir(b"/boot")
    boot.stat = Stat(0o700, 1, 2, 5, 123, {CAP: b"k"})
    t.file(b"/boot/vmlinuz")
    t.file(b"/sysroot/ostree/repo/config")
    t.dir(b"/sysroot").stat.mtime_nsec = 456
    t.boot()
    assert boot.entries == {} and t.dir(b"/sysroot").entries == {}
    assert (boot.stat.mode, boot.stat.uid, boot.stat.gid) == (0o700, 1, 2)
    assert (boot.stat.mtime_sec, boot.stat.mtime_nsec) == (1000, 123)
    sysroot = t.dir(b"/sysroot").stat
    assert (sysroot.mtime_sec, sysroot.mtime_nsec) == (1000, 456)
    assert boot.stat.xattrs == {CAP: b"k"}  # no policy: only labels are stripped


@pytest.mark.parametrize("name", [b"usr", b"boot", b"sysroot"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_boot_requires_usr_boot_sysroot(name: bytes, kind: str) -> None:
    t = Tree()
    del t.root.entries[name]
    if kind == "file":
        t.file(b"/" + name)
    # a non-directory /usr or /boot is already refused by the boot entry scan
    with pytest.raises(TransformError, match=name.decode()):
        t.boot()


def test_boot_without_policy_strips_labels() -> None:
    t = Tree()
    t.root.stat.xattrs[SEL] = b"x"
    t.file(b"/usr/f").stat.xattrs[SEL] = b"x"
    t.boot()
    assert SEL not in t.root.stat.xattrs
    f = t.root.get_path(b"/usr/f")
    assert f is not None and SEL not in f.stat.xattrs


def test_policy_inside_emptied_boot_is_not_used() -> None:
    t = Tree()
    t.file(b"/etc/selinux/config", b"SELINUXTYPE=t\n")
    t.file(b"/etc/selinux/t/contexts/files/file_contexts", b"/.* system_u:object_r:x_t:s0\n")
    t.file(b"/boot/x")
    t.boot()
    boot = t.root.get_path(b"/boot")
    assert boot is not None and boot.stat.xattrs[SEL] == b"system_u:object_r:x_t:s0"


def test_policy_errors_become_transform_errors() -> None:
    t = Tree()
    t.file(b"/etc/selinux/config", b"SELINUXTYPE=t\n")
    with pytest.raises(TransformError, match="does not exist"):
        t.boot()


# ---- spec §5 example ------------------------------------------------------------------------

def test_spec_example_end_to_end() -> None:
    root = Directory(Stat(0o700, 0, 0, 1700000000, 123456789, {b"user.x": b"1"}))
    data: dict[int, bytes] = {}

    def node(path: bytes, n: Leaf | Directory, content: bytes | None = None) -> None:
        d = root
        parts = path.strip(b"/").split(b"/")
        for part in parts[:-1]:
            child = d.entries.setdefault(part, Directory(Stat(0o755, 0, 0, 1700000000,
                                                              123456789)))
            assert isinstance(child, Directory)
            d = child
        d.entries[parts[-1]] = n
        if content is not None:
            data[id(n)] = content

    def leaf(path: bytes, content: bytes, mode: int = 0o644) -> None:
        c = Inline(content) if len(content) <= 64 else External.from_digest(b"\x11" * 64,
                                                                            len(content))
        node(path, Leaf(Stat(mode, 0, 0, 1700000000, 123456789), c), content)

    node(b"/usr", Directory(Stat(0o755, 0, 0, 1700000001, 500000000,
                                 {SEL: b"system_u:system_r:container_t:s0\0"})))
    leaf(b"/usr/bin/sh", b"#" * 1000, 0o755)
    leaf(b"/boot/vmlinuz", b"anything")
    leaf(b"/sysroot/ostree/x", b"anything")
    node(b"/run/lock", Directory(Stat(0o755, 0, 0, 1700000000, 123456789)))
    leaf(b"/etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    leaf(b"/etc/selinux/targeted/contexts/files/file_contexts", b"""\
/                 system_u:object_r:root_t:s0
/usr(/.*)?        system_u:object_r:usr_t:s0
/usr/bin(/.*)?    system_u:object_r:bin_t:s0
/boot             -d system_u:object_r:boot_t:s0
/etc(/.*)?        system_u:object_r:etc_t:s0
""")
    transform_for_oci(root)
    transform_for_boot(root, lambda lf: data[id(lf)])

    def get(path: bytes) -> Leaf | Directory:
        n = root.get_path(path)
        assert n is not None
        return n

    def label(name: str) -> dict[bytes, bytes]:
        return {SEL: f"system_u:object_r:{name}_t:s0".encode()}

    assert (root.stat.mode, root.stat.mtime_sec, root.stat.mtime_nsec) == (0o755, 1700000001,
                                                                          500000000)
    assert root.stat.xattrs == label("root")
    assert get(b"/usr").stat.xattrs == label("usr")
    assert get(b"/usr/bin").stat.xattrs == label("bin")
    sh = get(b"/usr/bin/sh")
    assert isinstance(sh, Leaf) and sh.stat.xattrs == label("bin")
    assert sh.content == External.from_digest(b"\x11" * 64, 1000)
    boot, sysroot, run = get(b"/boot"), get(b"/sysroot"), get(b"/run")
    assert isinstance(boot, Directory) and boot.entries == {}
    assert (boot.stat.mtime_sec, boot.stat.mtime_nsec) == (1700000001, 123456789)
    assert boot.stat.xattrs == label("boot")
    assert isinstance(sysroot, Directory) and sysroot.entries == {}
    assert (sysroot.stat.mtime_sec, sysroot.stat.mtime_nsec) == (1700000001, 123456789)
    assert sysroot.stat.xattrs == {}
    assert isinstance(run, Directory) and run.entries == {}
    assert (run.stat.mtime_sec, run.stat.mtime_nsec) == (1700000001, 500000000)
    assert run.stat.xattrs == {}
    assert get(b"/etc/selinux/config").stat.xattrs == label("etc")
    assert get(b"/etc").stat.xattrs == label("etc")


# ---- boot entries --------------------------------------------------------------------------

ENTRY = b"title T\nversion 1\nlinux /boot/vmlinuz\ninitrd\t /boot/initrd.img\n" \
        b"initrd /boot/extra.img\noptions quiet\n"


def test_type1_entries_resolved_from_image_root() -> None:
    t = Tree()
    t.file(b"/boot/loader/entries/a.conf", ENTRY)
    t.file(b"/boot/loader/entries/notes.txt", b"\xff")        # ignored: not .conf
    for f in (b"/boot/vmlinuz", b"/boot/initrd.img", b"/boot/extra.img"):
        t.file(f)
    entries = get_boot_resources(t.root, t.read)
    assert len(entries) == 1 and isinstance(entries[0], Type1Entry)
    assert set(entries[0].files) == {"/boot/vmlinuz", "/boot/initrd.img", "/boot/extra.img"}
    assert entries[0].entry.get_value("options") == "quiet"
    t.boot()  # valid entries: transform proceeds and empties /boot


@pytest.mark.parametrize("entry, message", [
    (b"linux /boot/missing\n", "does not exist"),
    (b"linux vmlinuz\n", "does not exist"),                 # relative: from the root
    (b"efi /boot\n", "is a directory"),
    (b"initrd /boot/link\n", "not a regular file"),
    (b"linux /boot/vmlinuz/x\n", "not a subdirectory"),
    (b"linux ../vmlinuz\n", "invalid filename"),
    (b"linux /\n", "invalid filename"),
    (b"linux \n", "invalid filename"),
    (b"linux /boot/vmlinuz \n", "does not exist"),          # trailing blank is kept
])
def test_type1_bad_paths(entry: bytes, message: str) -> None:
    t = Tree()
    t.file(b"/boot/vmlinuz")
    t.put(b"/boot/link", Leaf(st(), Symlink(b"vmlinuz")))
    t.file(b"/boot/loader/entries/a.conf", entry)
    with pytest.raises(BootEntryError, match=message):
        get_boot_resources(t.root, t.read)
    with pytest.raises(TransformError, match=message):
        t.boot()


@pytest.mark.parametrize("entry", [
    b"linuxefi /nope\n", b" linux /nope\n", b"# linux /nope\n", b"Linux /nope\n",
    b"linux\x0b/nope\n",  # \v is not ASCII whitespace for Rust
])
def test_type1_lines_that_are_not_keys(entry: bytes) -> None:
    t = Tree()
    t.file(b"/boot/loader/entries/a.conf", entry)
    assert len(get_boot_resources(t.root, t.read)) == 1


def test_type1_relative_and_dotted_paths() -> None:
    t = Tree()
    t.file(b"/vmlinuz")
    t.file(b"/boot/k")
    t.file(b"/boot/loader/entries/a.conf", b"linux vmlinuz\ninitrd /boot/./k\nefi //boot//k/\n")
    entry = get_boot_resources(t.root, t.read)[0]
    assert isinstance(entry, Type1Entry) and len(entry.files) == 3


@pytest.mark.parametrize("kind, message", [
    ("dir", "is a directory"), ("symlink", "not a regular file"), ("utf8", "UTF-8"),
    ("loader_file", "not a subdirectory"),
])
def test_type1_bad_conf(kind: str, message: str) -> None:
    t = Tree()
    if kind == "dir":
        t.dir(b"/boot/loader/entries/a.conf")
    elif kind == "symlink":
        t.put(b"/boot/loader/entries/a.conf", Leaf(st(), Symlink(b"x")))
    elif kind == "utf8":
        t.file(b"/boot/loader/entries/a.conf", b"title \xff\n")
    else:
        t.file(b"/boot/loader")
    with pytest.raises(BootEntryError, match=message):
        get_boot_resources(t.root, t.read)


def test_sparse_conf_reads_as_empty() -> None:
    t = Tree()
    t.put(b"/boot/loader/entries/a.conf", Leaf(st(), Sparse(100)))
    assert len(get_boot_resources(t.root, t.read)) == 1


def test_type2_ukis_and_addons() -> None:
    t = Tree()
    t.file(b"/boot/EFI/Linux/os.efi")
    t.file(b"/boot/EFI/Linux/os.efi.extra.d/a.addon.efi")
    t.file(b"/boot/EFI/Linux/readme")
    t.dir(b"/boot/EFI/Linux/dir.efi")              # a directory is searched, not checked
    t.file(b"/usr/lib/modules/6.1/uki.efi")
    t.file(b"/usr/lib/modules/stray.efi")                   # files in modules/ are skipped
    entries = [e for e in get_boot_resources(t.root, t.read) if isinstance(e, Type2Entry)]
    got = sorted((e.kver or b"", e.file_path, e.is_addon) for e in entries)
    assert got == [(b"", b"os.efi", False), (b"", b"os.efi.extra.d/a.addon.efi", True),
                   (b"6.1", b"uki.efi", False)]


@pytest.mark.parametrize("path", [b"/boot/EFI/Linux/x.efi", b"/boot/EFI/Linux/d/x.efi",
                                  b"/usr/lib/modules/6.1/x.efi"])
def test_type2_efi_must_be_regular(path: bytes) -> None:
    t = Tree()
    t.put(path, Leaf(st(), Symlink(b"y")))
    with pytest.raises(BootEntryError, match="not a regular file"):
        get_boot_resources(t.root, t.read)


def test_efi_dir_that_is_a_file_fails() -> None:
    t = Tree()
    t.file(b"/boot/EFI")
    with pytest.raises(BootEntryError, match="not a subdirectory"):
        get_boot_resources(t.root, t.read)


def test_usr_lib_modules_vmlinuz() -> None:
    t = Tree()
    t.file(b"/usr/lib/modules/6.1.0/vmlinuz")
    t.file(b"/usr/lib/modules/6.1.0/initramfs.img")
    t.file(b"/usr/lib/modules/6.2.0/vmlinuz")
    t.dir(b"/usr/lib/modules/6.3.0/vmlinuz")                      # not a file: ignored
    t.put(b"/usr/lib/modules/6.4.0/vmlinuz", Leaf(st(), CharDevice(1)))  # ignored
    t.dir(b"/usr/lib/modules/\xff-nokernel")                       # no vmlinuz: not checked
    entries = [e for e in get_boot_resources(t.root, t.read)
               if isinstance(e, UsrLibModulesVmlinuz)]
    assert [(e.kver, e.initramfs is not None) for e in entries] == [("6.1.0", True),
                                                                    ("6.2.0", False)]


def test_vmlinuz_kver_must_be_utf8() -> None:
    t = Tree()
    t.file(b"/usr/lib/modules/\xff/vmlinuz")
    with pytest.raises(TransformError, match="not UTF-8"):
        t.boot()


def test_entry_file_helpers() -> None:
    e = BootLoaderEntryFile.parse("title  A B\nlinux\t/k\noptions a\noptions b\n")
    assert e.lines == ["title  A B", "linux\t/k", "options a", "options b"]
    assert e.get_value("title") == "A B"
    assert e.get_values("options") == ["a", "b"]
    assert e.get_value("titl") is None
    assert BootLoaderEntryFile.parse("").lines == []


def test_path_components_like_rust() -> None:
    assert path_components(b"/a//b/./c/") == [b"/", b"a", b"b", b"c"]
    assert path_components(b"./a") == [b".", b"a"]
    assert path_components(b"a/..") == [b"a", b".."]
    assert path_components(b"") == []
    t = Tree()
    f = t.file(b"/boot/k")
    assert resolve_file(t.root, b"boot/k") is f
    with pytest.raises(BootEntryError):
        resolve_file(t.root, b"./boot/k")
