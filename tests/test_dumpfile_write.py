"""write_dumpfile against the line formats and examples of spec dumpfile.md §5."""

from __future__ import annotations

from cfsboot.tree.dumpfile import parse_dumpfile, write_dumpfile
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Socket,
    Sparse,
    Stat,
    Symlink,
    object_path,
)


def st(mode: int = 0, xattrs: dict[bytes, bytes] | None = None) -> Stat:
    return Stat(mode, 0, 0, 0, 0, xattrs or {})


def content_of(root: Directory, name: bytes) -> object:
    node = root.entries[name]
    assert isinstance(node, Leaf)
    return node.content


def test_spec_example_simple_tree() -> None:
    digest = b"\x5a" * 32
    root = Directory(st(0o755), {
        b"blkdev": Leaf(st(), BlockDevice(123)),
        b"chrdev": Leaf(st(), CharDevice(123)),
        b"fifo": Leaf(st(), Fifo()),
        b"regular-external": Leaf(st(), External.from_digest(digest, 1234)),
        b"regular-inline": Leaf(st(), Inline(b"hihi")),
        b"socket": Leaf(st(), Socket()),
        b"symlink": Leaf(st(), Symlink(b"/target")),
    })
    h = digest.hex()
    assert write_dumpfile(root).decode() == (
        "/ 0 40755 2 0 0 0 0.0 - - -\n"
        "/blkdev 0 60000 1 0 0 123 0.0 - - -\n"
        "/chrdev 0 20000 1 0 0 123 0.0 - - -\n"
        "/fifo 0 10000 1 0 0 0 0.0 - - -\n"
        f"/regular-external 1234 100000 1 0 0 0 0.0 {h[:2]}/{h[2:]} - {h}\n"
        "/regular-inline 4 100000 1 0 0 0 0.0 - hihi -\n"
        "/socket 0 140000 1 0 0 0 0.0 - - -\n"
        "/symlink 7 120000 1 0 0 0 0.0 /target - -\n"
    )


def test_spec_escaping_examples() -> None:
    tool = Leaf(Stat(0o755, 0, 0, 1, 5), Inline(b"#!"))
    root = Directory(Stat(0o755, 0, 0, 1700000000, 5), {
        b"a b": Leaf(st(0o644), Inline(b"hello\n")),
        b"dash": Leaf(st(0o777), Symlink(b"-")),
        b"label": Leaf(st(0o644, xattrs={
            b"security.selinux": b"system_u:object_r:bin_t:s0\0",
            b"user.k=v": b"a=b", b"user.empty": b"", b"user.dash": b"-"}), Inline(b"")),
        b"usr": Directory(st(0o755), {b"bin": Directory(st(0o755), {
            b"a": tool, b"b": tool})}),
    })
    assert write_dumpfile(root).decode() == (
        "/ 0 40755 3 0 0 0 1700000000.5 - - -\n"
        "/a\\x20b 6 100644 1 0 0 0 0.0 - hello\\n -\n"
        "/dash 1 120777 1 0 0 0 0.0 \\x2d - -\n"
        "/label 0 100644 1 0 0 0 0.0 - - -"
        " security.selinux=system_u:object_r:bin_t:s0\\x00"
        " user.dash=- user.empty= user.k\\x3dv=a\\x3db\n"
        "/usr 0 40755 3 0 0 0 0.0 - - -\n"
        "/usr/bin 0 40755 2 0 0 0 0.0 - - -\n"
        "/usr/bin/a 2 100755 2 0 0 0 1.5 - #! -\n"
        "/usr/bin/b 0 @120000 - - - - 0.0 /usr/bin/a - -\n"
    )


def test_children_bytewise_order_and_preorder() -> None:
    leaf = Leaf(st(0o644), Inline(b""))
    root = Directory(st(0o755), {
        b"b": Directory(st(0o755), {b"z": leaf}),
        b"a\xff": Leaf(st(0o644), Sparse(7)),
        b"a": Leaf(st(0o644), Inline(b"")),
        b"B": Directory(st(0o755)),
    })
    paths = [line.split(b" ")[0] for line in write_dumpfile(root).splitlines()]
    assert paths == [b"/", b"/B", b"/a", b"/a\\xff", b"/b", b"/b/z"]


def test_external_without_digest_gains_it() -> None:
    d = bytes(range(64))
    root = Directory(st(0o755), {b"f": Leaf(st(0o644), External(9, object_path(d), None))})
    line = write_dumpfile(root).splitlines()[1].decode()
    assert line == f"/f 9 100644 1 0 0 0 0.0 {d.hex()[:2]}/{d.hex()[2:]} - {d.hex()}"
    back = parse_dumpfile(write_dumpfile(root))
    assert content_of(back, b"f") == External.from_digest(d, 9)


def test_c_only_externals_are_written_for_c() -> None:
    d = bytes(32)
    root = Directory(st(0o755), {
        b"p": Leaf(st(0o644), External(9, b"some/path file", None)),
        b"q": Leaf(st(0o644), External(9, b"", d)),
    })
    text = write_dumpfile(root)
    assert text.splitlines()[1:] == [
        b"/p 9 100644 1 0 0 0 0.0 some/path\\x20file - -",
        b"/q 9 100644 1 0 0 0 0.0 - - " + d.hex().encode(),
    ]
    back = parse_dumpfile(text, flavor="c")
    assert content_of(back, b"p") == External(9, b"some/path file", None)
    assert content_of(back, b"q") == External(9, b"", d)
