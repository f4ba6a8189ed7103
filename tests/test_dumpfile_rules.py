"""Crafted dumpfiles: each rejection rule of spec dumpfile.md §4.1 (and the
C-only rules of §4.4), for both parser flavours, and what each builds."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.tree.dumpfile import DumpfileError, parse_dumpfile
from cfsboot.tree.model import (
    CharDevice,
    Directory,
    External,
    Inline,
    Leaf,
    Sparse,
    Symlink,
    object_path,
)

ROOT = b"/ 0 40755 2 0 0 0 0.0 - - -"
FILE = b"/f 0 100644 1 0 0 0 0.0 - - -"
DIR = b"/d 0 40755 2 0 0 0 0.0 - - -"
H32 = b"ab" * 32
H64 = b"cd" * 64


def D(*lines: bytes) -> bytes:
    """A dumpfile: the root line, then ``lines``, each with a newline."""
    return b"".join(line + b"\n" for line in (ROOT, *lines))


def F(rest: bytes, path: bytes = b"/f") -> bytes:
    return path + b" " + rest


# (id, dumpfile, line rejected by "rs" or None, line rejected by "c" or None)
CASES: list[tuple[str, bytes, int | None, int | None]] = [
    # 1. missing fields
    ("10-fields", D(b"/f 0 100644 1 0 0 0 0.0 - -"), 2, None),
    ("2-fields", D(b"/f 0"), 2, 2),
    ("hardlink-8-fields", D(FILE, b"/h 0 @100644 - - - - 0.0"), 3, 3),
    ("hardlink-9-fields", D(FILE, b"/h 0 @100644 - - - - 0.0 /f"), None, None),
    # 2. PATH
    ("path-nul", D(b"/a\\x00b 0 100644 1 0 0 0 0.0 - - -"), 2, None),  # C: "/a"
    ("path-empty", D(b" 0 100644 1 0 0 0 0.0 - - -"), 2, 2),
    ("path-too-long", D(b"/" + b"a" * 4096 + b" 0 100644 1 0 0 0 0.0 - - -"), 2, 2),
    ("path-relative", D(b"f 0 100644 1 0 0 0 0.0 - - -"), 2, None),
    ("path-double-slash", D(DIR, b"/d//f 0 100644 1 0 0 0 0.0 - - -"), 3, None),
    ("path-trailing-slash", D(DIR, b"/d/ 0 40755 2 0 0 0 0.0 - - -"), 3, 3),
    ("path-dot", D(DIR, b"/d/./f 0 100644 1 0 0 0 0.0 - - -"), 3, 3),
    ("path-dotdot", D(DIR, b"/d/../f 0 100644 1 0 0 0 0.0 - - -"), 3, 3),
    ("path-last-dot", D(b"/. 0 40755 2 0 0 0 0.0 - - -"), 2, 2),
    ("path-bad-escape", D(b"/a\\q 0 100644 1 0 0 0 0.0 - - -"), 2, 2),
    ("path-dangling-escape", D(b"/a\\ 0 100644 1 0 0 0 0.0 - - -"), 2, 2),
    # 3. numbers
    ("size-word", D(F(b"x 100644 1 0 0 0 0.0 - - -")), 2, 2),
    ("size-plus", D(F(b"+0 100644 1 0 0 0 0.0 - - -")), None, None),
    ("size-u64-overflow", D(F(b"18446744073709551616 100644 1 0 0 0 0.0 - - -")), 2, 2),
    ("mode-not-octal", D(F(b"0 100648 1 0 0 0 0.0 - - -")), 2, 2),
    ("mode-empty", D(F(b"0  1 0 0 0 0.0 - - -")), 2, 2),
    ("nlink-u32-overflow", D(F(b"0 100644 4294967296 0 0 0 0.0 - - -")), 2, None),
    ("uid-word", D(F(b"0 100644 1 root 0 0 0.0 - - -")), 2, 2),
    ("gid-u32-overflow", D(F(b"0 100644 1 0 4294967296 0 0.0 - - -")), 2, None),
    ("rdev-fraction", D(F(b"0 100644 1 0 0 1.5 0.0 - - -")), 2, 2),
    ("mtime-no-dot", D(F(b"0 100644 1 0 0 0 5 - - -")), 2, 2),
    ("mtime-bad-nsec", D(F(b"0 100644 1 0 0 0 5.x - - -")), 2, 2),
    ("mtime-two-dots", D(F(b"0 100644 1 0 0 0 5.1.2 - - -")), 2, 2),
    ("mtime-plus", D(F(b"0 100644 1 0 0 0 +5.+7 - - -")), None, None),
    # 4. hard links
    ("hardlink-dir", D(DIR, b"/h 0 @40755 - - - - 0.0 /d - -"), 3, 3),
    ("hardlink-no-target", D(FILE, b"/h 0 @100644 - - - - 0.0 - - -"), 3, 3),
    ("hardlink-target-not-canonical", D(FILE, b"/h 0 @100644 - - - - 0.0 /f/ - -"), 3, None),
    ("hardlink-to-dir", D(DIR, b"/h 0 @100644 - - - - 0.0 /d - -"), 3, 3),
    ("hardlink-to-root", D(b"/h 0 @100644 - - - - 0.0 / - -"), 2, 2),
    ("hardlink-forward", D(b"/h 0 @100644 - - - - 0.0 /f - -", FILE), 2, None),
    ("hardlink-missing", D(b"/h 0 @100644 - - - - 0.0 /nope - -"), 2, 2),
    ("hardlink-self", D(b"/h 0 @100644 - - - - 0.0 /h - -"), 2, 2),
    ("hardlink-cycle", D(b"/x 0 @100644 - - - - 0.0 /y - -",
                         b"/y 0 @100644 - - - - 0.0 /x - -"), 2, 3),
    ("hardlink-at-later", D(FILE, b"/h 0 1@100644 - - - - 0.0 /f - -"), None, 3),
    # 5. file type
    ("mode-no-type", D(F(b"0 644 1 0 0 0 0.0 - - -")), 2, 2),
    ("mode-type-170000", D(F(b"0 170644 1 0 0 0 0.0 - - -")), 2, 2),
    ("mode-zero", D(F(b"0 0 1 0 0 0 0.0 - - -")), 2, 2),
    # 6. xattrs
    ("xattr-no-equals", D(FILE + b" user.a"), 2, 2),
    ("xattr-empty-token", D(FILE + b"  user.a=1"), 2, 2),
    ("xattr-trailing-space", D(FILE + b" "), 2, None),
    ("xattr-key-escape", D(FILE + b" user\\q=1"), 2, 2),
    ("xattr-value-escape", D(FILE + b" user.a=\\x4"), 2, 2),
    ("xattr-key-nul", D(FILE + b" user.a\\x00b=1"), 2, None),  # C: key "user.a"
    ("xattr-key-empty", D(FILE + b" =1"), 2, 2),
    ("xattr-key-255", D(FILE + b" " + b"k" * 255 + b"=1"), None, None),
    ("xattr-key-256", D(FILE + b" " + b"k" * 256 + b"=1"), 2, 2),
    ("xattr-value-65535", D(FILE + b" user.a=" + b"v" * 65535), None, 2),  # C: budget
    ("xattr-value-65536", D(FILE + b" user.a=" + b"v" * 65536), 2, 2),
    ("xattr-names-total", D(FILE + b"".join(b" %03d" % i + b"k" * 252 + b"=" for i in range(258))),
     2, 2),
    ("xattr-c-budget", D(FILE + b" user.a=" + b"v" * 32748), None, 2),
    ("xattr-c-budget-exact", D(FILE + b" user.a=" + b"v" * 32742), None, None),
    # 7. type rules
    ("dir-content", D(b"/d 3 40755 2 0 0 0 0.0 - abc -"), 2, None),
    ("dir-digest", D(b"/d 0 40755 2 0 0 0 0.0 - - " + H32), 2, None),
    ("dir-rdev", D(b"/d 0 40755 2 0 0 5 0.0 - - -"), 2, None),
    ("fifo-rdev", D(b"/p 0 10644 1 0 0 5 0.0 - - -"), 2, None),
    ("file-rdev", D(F(b"0 100644 1 0 0 5 0.0 - - -")), 2, None),
    ("symlink-no-target", D(b"/l 0 120777 1 0 0 0 0.0 - - -"), 2, 2),
    ("symlink-empty-target", D(b"/l 0 120777 1 0 0 0 0.0  - -"), 2, 2),
    ("symlink-nul", D(b"/l 3 120777 1 0 0 0 0.0 a\\x00b - -"), 2, None),  # C: "a"
    ("symlink-1024", D(b"/l 1024 120777 1 0 0 0 0.0 " + b"t" * 1024 + b" - -"), None, None),
    ("symlink-1025", D(b"/l 1025 120777 1 0 0 0 0.0 " + b"t" * 1025 + b" - -"), 2, None),
    ("symlink-4095", D(b"/l 4095 120777 1 0 0 0 0.0 " + b"t" * 4095 + b" - -"), 2, None),
    ("symlink-4096", D(b"/l 4096 120777 1 0 0 0 0.0 " + b"t" * 4096 + b" - -"), 2, 2),
    ("symlink-content", D(b"/l 1 120777 1 0 0 0 0.0 t x -"), 2, None),
    ("symlink-digest", D(b"/l 1 120777 1 0 0 0 0.0 t - " + H32), 2, None),
    ("device-content", D(b"/c 1 20644 1 0 0 5 0.0 - x -"), 2, None),
    ("inline-512", D(F(b"512 100644 1 0 0 0 0.0 - " + b"c" * 512 + b" -")), None, None),
    ("inline-513", D(F(b"513 100644 1 0 0 0 0.0 - " + b"c" * 513 + b" -")), 2, None),
    ("inline-5001", D(F(b"5001 100644 1 0 0 0 0.0 - " + b"c" * 5001 + b" -")), 2, 2),
    ("inline-size-mismatch", D(F(b"4 100644 1 0 0 0 0.0 - abc -")), None, 2),
    ("digest-without-payload", D(F(b"5 100644 1 0 0 0 0.0 - - " + H32)), 2, None),
    ("digest-not-hex", D(F(b"5 100644 1 0 0 0 0.0 ab/cd - " + b"zz" * 32)), 2, 2),
    ("digest-short", D(F(b"5 100644 1 0 0 0 0.0 ab/cd - abcd")), 2, 2),
    ("digest-sha512", D(F(b"5 100644 1 0 0 0 0.0 ab/cd - " + H64)), None, None),
    ("digest-mixed", D(F(b"5 100644 1 0 0 0 0.0 x - " + H32),
                       F(b"5 100644 1 0 0 0 0.0 x - " + H64, b"/g")), 3, None),
    ("digest-65", D(F(b"5 100644 1 0 0 0 0.0 x - " + H32 + b"z")), 2, None),
    ("payload-not-object", D(F(b"5 100644 1 0 0 0 0.0 some/file - -")), 2, None),
    ("payload-4096", D(F(b"5 100644 1 0 0 0 0.0 " + b"p" * 4096 + b" - " + H32)), None, 2),
    ("payload-4097", D(F(b"5 100644 1 0 0 0 0.0 " + b"p" * 4097 + b" - " + H32)), 2, 2),
    ("size-2^53", D(F(b"9007199254740992 100644 1 0 0 0 0.0 - - -")), None, None),
    ("size-2^53+1", D(F(b"9007199254740993 100644 1 0 0 0 0.0 - - -")), 2, 2),
    ("socket", D(b"/s 0 140644 1 0 0 0 0.0 - - -"), None, None),
    # 8. mtime nanoseconds
    ("nsec-1e9", D(F(b"0 100644 1 0 0 0 0.1000000000 - - -")), 2, 2),
    ("nsec-max", D(F(b"0 100644 1 0 0 0 0.999999999 - - -")), None, None),
    # 9. file level
    ("empty-file", b"", 1, 1),
    ("blank-lines-only", b"\n  \n", 2, 1),
    ("first-not-root", FILE + b"\n" + ROOT + b"\n", 1, 1),
    ("blank-line-inside", D(b"", FILE), None, 2),
    ("root-not-dir", b"/ 0 100644 1 0 0 0 0.0 - - -\n", None, 1),
    ("two-roots", D(ROOT), None, 2),
    ("raw-nul", D(F(b"3 100644 1 0 0 0 0.0 - a\0b -")), None, 2),
    ("not-utf8", D(F(b"1 100644 1 0 0 0 0.0 - \xff -")), 2, None),
    # 10. parents
    ("parent-missing", D(b"/a/b 0 100644 1 0 0 0 0.0 - - -"), 2, 2),
    ("parent-is-file", D(FILE, b"/f/x 0 100644 1 0 0 0 0.0 - - -"), 3, 3),
    ("name-256", D(b"/" + b"n" * 256 + b" 0 100644 1 0 0 0 0.0 - - -"), None, 2),
    # 12. whiteouts
    ("whiteout-nlink-2", D(b"/w 0 20644 2 0 0 0 0.0 - - -"), 2, None),
    ("whiteout-hardlinked", D(b"/w 0 20644 1 0 0 0 0.0 - - -",
                              b"/h 0 @20644 - - - - 0.0 /w - -"), 2, None),
    ("device-nlink-2", D(b"/c 0 20644 2 0 0 5 0.0 - - -"), None, None),
    # 13. duplicates
    ("duplicate-leaf", D(FILE, FILE), 2, 3),
    ("duplicate-linked-leaf", D(FILE, b"/h 0 @100644 - - - - 0.0 /f - -", FILE), None, 4),
    ("duplicate-dir", D(DIR, DIR), None, 3),
    ("dir-replaced-with-child", D(DIR, b"/d/f 0 100644 1 0 0 0 0.0 - - -", DIR), 3, 4),
]


@pytest.mark.parametrize(("dump", "rs_line", "c_line"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rule(dump: bytes, rs_line: int | None, c_line: int | None) -> None:
    for flavor, line in (("rs", rs_line), ("c", c_line)):
        f: Any = flavor
        if line is None:
            assert isinstance(parse_dumpfile(dump, flavor=f), Directory)
        else:
            with pytest.raises(DumpfileError) as e:
                parse_dumpfile(dump, flavor=f)
            msg = str(e.value)
            assert re.fullmatch(rf"line {line}: [^\n]+", msg), (flavor, msg)


def test_case_ids_unique() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


# ---- C strict mode (CFS_PARSE_STRICT) -----------------------------------------

@pytest.mark.parametrize("dump", [
    ROOT + b"\n" + FILE,                                    # no trailing newline
    D(b"/p 0 10644 1 0 0 5 0.0 - - -"),                     # RDEV on a fifo
    D(b"/l 5 120777 1 0 0 0 0.0 t - -"),                    # symlink SIZE != length
    D(b"/l 1 120777 1 0 0 0 0.0 t x -"),                    # content on a symlink
])
def test_c_strict_rejects(dump: bytes) -> None:
    assert isinstance(parse_dumpfile(dump, flavor="c"), Directory)
    with pytest.raises(DumpfileError, match=r"^line \d+: "):
        parse_dumpfile(dump, flavor="c", strict=True)


# ---- what the flavours build ----------------------------------------------------

def leaf(root: Directory, path: bytes) -> Leaf:
    node = root.get_path(path)
    assert isinstance(node, Leaf)
    return node


def test_rs_regular_kinds() -> None:
    d32, d64 = bytes.fromhex(H32.decode()), bytes.fromhex(H64.decode())
    o32 = object_path(d32)
    root = parse_dumpfile(D(
        F(b"100 100644 1 0 0 0 0.0 - - -", b"/sparse"),
        F(b"100 100644 1 0 0 0 0.0 - abc -", b"/inline"),     # SIZE not checked
        F(b"0 100644 1 0 0 0 0.0 - - -", b"/empty"),
        F(b"7 100644 1 0 0 0 0.0 ignored - " + H32.upper(), b"/ext"),
        F(b"7 100644 1 0 0 0 0.0 /objects/" + o32 + b" \\q -", b"/noverity"),
    ))
    assert leaf(root, b"/sparse").content == Sparse(100)
    assert leaf(root, b"/inline").content == Inline(b"abc")
    assert leaf(root, b"/empty").content == Inline(b"")
    assert leaf(root, b"/ext").content == External.from_digest(d32, 7)
    assert leaf(root, b"/noverity").content == External(7, o32, None)
    root = parse_dumpfile(D(F(b"9 100644 1 0 0 0 0.0 " + object_path(d64) + b" - -")))
    assert leaf(root, b"/f").content == External(9, object_path(d64), None)


def test_rs_duplicate_xattrs_largest_value_wins() -> None:
    root = parse_dumpfile(D(FILE + b" user.a=2 user.a=1 user.b=x"))
    assert leaf(root, b"/f").stat.xattrs == {b"user.a": b"2", b"user.b": b"x"}
    root = parse_dumpfile(D(FILE + b" user.a=2 user.a=1"), flavor="c")
    assert leaf(root, b"/f").stat.xattrs == {b"user.a": b"1"}  # C: last one wins


def test_rs_replacements() -> None:
    root = parse_dumpfile(D(
        FILE, b"/h 0 @100644 - - - - 0.0 /f - -",
        b"/f 0 100600 1 0 0 0 0.0 - new -",          # old /f survives as /h
        b"/ 0 40700 2 7 7 0 0.0 - - - user.r=1",     # a later root line: new stat
        DIR, b"/d/sub 0 40755 2 0 0 0 0.0 - - -", DIR,  # replaced dir loses children
    ))
    assert leaf(root, b"/f").content == Inline(b"new")
    assert leaf(root, b"/h").content == Inline(b"")
    assert (root.stat.mode, root.stat.uid, root.stat.xattrs) == (0o700, 7, {b"user.r": b"1"})
    d = root.get_path(b"/d")
    assert isinstance(d, Directory) and d.entries == {}


def test_rs_blank_lines_and_crlf() -> None:
    root = parse_dumpfile(b"\n \t\n" + ROOT + b"\r\n\n" + FILE + b" user.a=1\r\n")
    assert leaf(root, b"/f").stat.xattrs == {b"user.a": b"1"}


def test_rs_hardlink_chain() -> None:
    root = parse_dumpfile(D(FILE, b"/a 0 @100644 - - - - 0.0 /f - -",
                            b"/b 0 @120000 - - - - 0.0 /a - -"))
    assert leaf(root, b"/f") is leaf(root, b"/a") is leaf(root, b"/b")
    assert leaf(root, b"/f").nlink is None


def test_c_hardlinks_keep_nlink_field() -> None:
    root = parse_dumpfile(D(
        b"/c 0 @120000 - - - - 0.0 /b - -",        # forward, through another link
        b"/b 0 @100644 - - - - 0.0 /a - -",
        b"/a 5 100644 7 0 0 0 0.0 - hello -",
        b"/z 0 100644 3 0 0 0 0.0 - - -",
    ), flavor="c")
    a = leaf(root, b"/a")
    assert a is leaf(root, b"/b") is leaf(root, b"/c")
    assert a.nlink == 7 and a.content == Inline(b"hello")
    assert leaf(root, b"/z").nlink == 3


def test_c_lenient_values() -> None:
    root = parse_dumpfile(D(
        b"/l 4 20720777 1 0 0 0 0.0 targ - -",                    # bit 15 -> symlink
        F(b"0 100644 1 4294967297 0 0 0.0 - - -", b"/u"),          # uid truncated to u32
        F(b"10 100644 1 0 0 0 0.0 some/path.file - -", b"/p"),     # arbitrary payload
        F(b"10 100644 1 0 0 0 0.0 - - " + H32, b"/q"),             # digest, no redirect
        F(b"10 100644 1 0 0 0 0.0 x - " + H32, b"/r"),
        F(b"10 100644 1 0 0 0 0.0 y - " + H64, b"/r2"),            # first 64 digits used
        F(b"0 100644 1 0 0 0 0.0 x - " + H32, b"/s"),              # size 0: plain empty
        F(b"5 100644 1 0 0 0 0.0 a\\x00b - -", b"/t"),              # payload is a C string
        b"/e 0 40755 2 0 0 0 0.0 - - -",
        b"//e//x 0 100644 1 0 0 0 0.0 - - -",                      # '//' collapsed
        b"rel 0 100644 1 0 0 0 0.0 - - -",                          # relative = /rel
        b"/w 0 20644 9 0 0 0 0.0 - - - user.a=1 user.a=22",
    ), flavor="c")
    assert leaf(root, b"/l").content == Symlink(b"targ")
    assert leaf(root, b"/l").stat.mode == 0o777
    assert leaf(root, b"/u").stat.uid == 1
    d = bytes.fromhex(H32.decode())
    assert leaf(root, b"/p").content == External(10, b"some/path.file", None)
    assert leaf(root, b"/q").content == External(10, b"", d)
    assert leaf(root, b"/r").content == External(10, b"x", d)
    assert leaf(root, b"/r2").content == External(10, b"y", bytes.fromhex(H64[:64].decode()))
    assert leaf(root, b"/s").content == Inline(b"")
    assert leaf(root, b"/t").content == External(5, b"a", None)
    assert {b"e", b"rel", b"w"} <= set(root.entries)
    assert isinstance(root.get_path(b"/e/x"), Leaf)
    w = leaf(root, b"/w")
    assert w.content == CharDevice(0) and w.nlink == 9 and w.stat.xattrs == {b"user.a": b"22"}


# ---- garbage in: a DumpfileError with a printable one-line message, never a crash ----

_PIECES = [b"/", b"/a", b" ", b"\n", b"\\", b"\\x", b"@", b"0", b"1", b".", b"-", b"=",
           b"40755", b"100644", b"120777", b"20000", b"\0", b"\xff", b"\r", b"\x1b",
           b"/ 0 40755 2 0 0 0 0.0 - - -\n", b" 0 0 0.0 - - -", b"ab/cd", H32]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join),
       st.sampled_from(["rs", "c"]), st.booleans())
def test_garbage_gives_clean_errors(data: bytes, flavor: Any, strict: bool) -> None:
    try:
        parse_dumpfile(data, flavor=flavor, strict=strict)
    except DumpfileError as e:
        msg = str(e)
        assert re.match(r"line [1-9][0-9]*: \S", msg), msg
        assert msg.isprintable(), msg
