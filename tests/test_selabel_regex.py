"""The file_contexts regex dialect: which engine composefs-rs would use (Rust
regex-syntax, else the PCRE2 fallback), PCRE2 semantics (checked live
against pcre2test when installed), literal prefixes and errors."""

from __future__ import annotations

import random
import re
import subprocess

import pytest
from conftest import need_tool

from cfsboot.boot.selabel_regex import (
    RegexDialectError,
    compile_selinux_regex,
    literal_prefix,
    translate,
)


def wrap(regex: str, typ: str = ".") -> str:
    return f"^({regex}){typ}$"


# ---- engine choice ------------------------------------------------------------------

@pytest.mark.parametrize("regex", [
    "/usr(/.*)?", "/[[:alpha:]]", "/a(?i)b", "/\\z", "/a**", "/a*+", "/\\<x", "/\\x{e9}",
    "/[a[b]&&[ab]]", "/(?P<n>x)", "/(?<n>x)", "/a{1, 2}", "/(?R).",
])
def test_rust_dialect_patterns(regex: str) -> None:
    assert not compile_selinux_regex(wrap(regex)).pcre


@pytest.mark.parametrize("regex", [
    "/(?=a).", "/(?!a).", "/(?<=a)", "/(?<!a)", "/(a)\\2", "/\\e", "/\\pL", "/a{,2}", "/a{x",
    "/{", "/\\Qa.b\\E", "/(?>a)", "/[é]", "/\\h", "/\\0", "/(?#comment)", "/\\Z", "/\\G",
    "/(?'n'a)",
])
def test_pcre_fallback_patterns(regex: str) -> None:
    assert compile_selinux_regex(wrap(regex)).pcre


@pytest.mark.parametrize("regex, key, expected", [
    # PCRE2 `.` excludes \n (not NUL); `$` also matches before a final \n
    ("/(?=x).", b"/x\x00-", False), ("/(?=x)..", b"/x\x00-", True),
    ("/(?=x).", b"/\n-", False),
    ("/(?!backup).*", b"/website-", True), ("/(?!backup).*", b"/backup_1-", False),
    ("/(?<=/)a", b"/a-", True),
    ("/a{,2}", b"/a{,2}-", True), ("/a{,2}", b"/aa-", False),     # literal before PCRE2 10.43
    ("/\\Qa.b\\E+", b"/a.bb-", True), ("/\\Qa.b\\E", b"/axb-", False),
    ("/\\pL+", "/é".encode("latin-1") + b"-", True),              # byte 0xE9 as Latin-1 é
    ("/\\pL", b"/1-", False),
    ("/[é]", b"/\xa9-", True),                                     # class of single bytes
    ("(?=/)/é+", "/é".encode() + b"\xa9-", True),                  # + repeats the last byte
    ("/(a)\\2", b"/aa-", True), ("/(a)\\2", b"/ab-", False),
    ("/(?P<p>b)(?P=p)\\k<p>", b"/bbb-", True),
    ("/(?>a|ab)c", b"/abc-", False),                              # atomic group
    ("(?=/)/a++a", b"/aa-", False),                                # possessive
    ("/\\h\\R", b"/\t\r\n-", True),
    ("/\\e\\cA\\x41\\o{101}\\101", b"/\x1b\x01AAA-", True),
    ("/(?x) a b (?#c)", b"/ab-", True),
    ("(?=/)/(?i)é", "/É".encode() + b"-", False),                 # no non-ASCII folding
])
def test_pcre_semantics(regex: str, key: bytes, expected: bool) -> None:
    compiled = compile_selinux_regex(wrap(regex))
    assert compiled.pcre
    assert compiled.matches(key) is expected


def test_rust_stacked_repetition_is_not_possessive() -> None:
    # in Rust a*+ is (a*)+, so the trailing a can still match
    assert compile_selinux_regex(wrap("/a*+a")).matches(b"/aa-")


def test_rust_non_ascii_literal_is_one_atom() -> None:
    compiled = compile_selinux_regex(wrap("/é+"))
    assert compiled.matches("/éé-".encode())
    assert not compiled.matches("/é".encode() + b"\xa9-")


# ---- PCRE2 fallback against pcre2test ------------------------------------------------------

PCRE_PIECES = ["(?=a)", "(?!a)", "(?<=a)", "(?<!b)", "\\e", "\\pL", "\\PL", "a{,2}", "\\Q.\\E",
               "(?>a|ab)", "[é]", "\\h", "\\012", "(?#c)", "\\x{41}", "\\Z", "\\N", "\\R",
               "(a)\\2", "a++", "(?i)é", "[[:^space:]]", "$", "(?m)$", "(?m)^", ".", "(?s).",
               "a", "A", "/", "\\d", "[a-c]", "[^a]", "[[:alpha:]]", "é", "(?i)a", "\\b"]
PCRE_ALPHABET = [b"a", b"A", b"b", b"/", b"\x00", b"\n", b"-", b"d", b"1", b" ", b"\xe9",
                 "é".encode(), b"\r", b"\t", b"{,2}", b"."]


def _pcre2test(pattern: str, keys: list[bytes], tool: str) -> list[bool]:
    body = "'" + pattern.encode().hex() + "'hex\n" + "".join(
        "".join(f"\\x{{{b:02x}}}" for b in k) + "\n" for k in keys)
    out = subprocess.run([tool, "-q"], input=body.encode(), capture_output=True,
                         check=True).stdout.decode("latin-1").splitlines()
    results = [line == "No match" for line in out
               if line == "No match" or re.match(r"^ 0:", line)]
    assert len(results) == len(keys), out
    return [not r for r in results]


def test_pcre_fallback_agrees_with_pcre2test() -> None:
    tool = need_tool("pcre2test")
    rng = random.Random(1)
    checked = 0
    for _ in range(60):
        regex = "/" + "".join(rng.choice(PCRE_PIECES) for _ in range(rng.randint(1, 4)))
        pattern = wrap(regex, rng.choice(".-d"))
        compiled = compile_selinux_regex(pattern)
        if not compiled.pcre:
            continue
        keys = [b"/" + b"".join(rng.choice(PCRE_ALPHABET) for _ in range(rng.randint(0, 4)))
                + rng.choice([b"-", b"d", b"\n"]) for _ in range(40)]
        expected = _pcre2test(pattern, keys, tool)
        for key, want in zip(keys, expected, strict=True):
            assert compiled.matches(key) is want, (pattern, key)
        checked += 1
    assert checked > 20


# ---- translation details ---------------------------------------------------------------------

@pytest.mark.parametrize("regex, prefix", [
    ("/usr(/.*)?", b"/usr"), ("/usr/lib/[^/]*\\.so", b"/usr/lib/"), ("/a|/b", b"/"),
    ("/usr/(bin|sbin)/x", b"/usr/"), ("(/usr|/opt)/x", b"/"), ("/a?b", b"/"), ("/ab+c", b"/ab"),
    ("/a{2}x", b"/a"), ("(?i)/etc", b"/"), ("/etc(?i)abc", b"/etc"), ("/a\\.b", b"/a.b"),
    ("/a\\d", b"/a"), ("/x(?=y)", b"/x"), (".*", b""), ("/(?x) a b", b"/ab"),
])
def test_literal_prefix(regex: str, prefix: bytes) -> None:
    assert compile_selinux_regex(wrap(regex)).prefix == prefix


def test_prefix_of_malformed_wrapping_is_safe() -> None:
    # "/a)|(/b" turns the wrapped pattern into a top-level alternation
    compiled = compile_selinux_regex(wrap("/a)|(/b"))
    assert compiled.prefix == b"/"
    assert compiled.final_byte is None
    assert compiled.matches(b"/a-anything")          # ^(/a) alone matches (anchored search)
    assert compiled.matches(b"/bx")


def test_final_byte_is_the_type() -> None:
    assert compile_selinux_regex(wrap("/x", "d")).final_byte == ord("d")
    assert compile_selinux_regex(wrap("/x", "-")).final_byte == ord("-")
    assert compile_selinux_regex(wrap("/x")).final_byte is None


def test_posix_classes_are_translated_not_literal() -> None:
    node, _ = translate(wrap("/[[:digit:]]"))
    compiled = compile_selinux_regex(wrap("/[[:digit:]]"))
    assert compiled.matches(b"/5-") and not compiled.matches(b"/:-")
    assert literal_prefix(node)[0] == b"/"


@pytest.mark.parametrize("regex, message", [
    ("/[a", "unclosed class"),
    ("/a)b", "unopened group"),
    ("/(?<=a*)b", "look-behind requires fixed-width"),
    ("/(?R)(?=x)", "recursion"),
    ("/a{3,1}", "invalid repetition range"),
    ("/[z-a]", "invalid class range"),
    ("/(?u)a", "Unicode mode"),
])
def test_errors(regex: str, message: str) -> None:
    with pytest.raises(RegexDialectError, match=re.escape(message)):
        compile_selinux_regex(wrap(regex))


def test_deeply_nested_pattern_is_one_error() -> None:
    from cfsboot.boot.selabel_regex import RegexDialectError, compile_selinux_regex
    with pytest.raises(RegexDialectError, match="nested too deeply"):
        compile_selinux_regex("^(" + "(" * 5000 + "a" + ")" * 5000 + ")$")
