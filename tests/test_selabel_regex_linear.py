"""The linear-time matcher for file_contexts regexes (selabel_regex_nfa).

* hostile patterns (nested / ambiguous / stacked repetitions) finish on keys
  where Python's backtracking ``re`` would run for hours: checked in a child
  process with a generous time limit, so a regression fails instead of
  hanging the suite;
* the automaton agrees with the real Rust engine (the RUST_TABLE results of
  test_selabel_rust_table, and live with CFSBOOT_RUST_REGEX_ORACLE), with the
  ``re`` translation on fuzzed Rust and PCRE2 patterns, and on whole
  policies (the synthetic Fedora-like one; Debian refpolicy with
  CFSBOOT_REFPOLICY_FILE_CONTEXTS=path);
* the engine choice: typical policy patterns stay on ``re``.
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from test_selabel_regex import PCRE_ALPHABET, PCRE_PIECES
from test_selabel_rust_table import RUST_TABLE, _random_regex, _sample

from cfsboot.boot import selabel_regex_choice, selabel_regex_nfa
from cfsboot.boot.selabel import SelinuxPolicy, parse_spec_file
from cfsboot.boot.selabel_regex import (
    RegexDialectError,
    SelinuxRegex,
    compile_selinux_regex,
    translate,
)
from cfsboot.boot.selabel_regex_ast import Node
from cfsboot.boot.selabel_regex_choice import backtracking_degree
from cfsboot.boot.selabel_regex_nfa import (
    LONG_KEY,
    LinearMatcher,
    MatchFn,
    compile_linear,
)


def wrap(regex: str, typ: str = ".") -> str:
    return f"^({regex}){typ}$"


def linear(pattern: str) -> LinearMatcher:
    node, pcre = translate(pattern)
    matcher = compile_linear(node, pcre)
    assert matcher is not None, pattern
    return matcher


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> SelinuxRegex:
    return compile_selinux_regex(pattern)


def re_matches(pattern: str, key: bytes) -> bool:
    compiled = _compiled(pattern)
    if compiled.pcre:
        return compiled.regex.search(key) is not None
    return compiled.regex.match(key) is not None


# ---- hostile patterns ------------------------------------------------------------------

HOSTILE = ["(a+)+b", "(a|a)*c", "(.*)*x", ".*.*.*.*.*.*.*.*z", "(a*)*b", "(a|aa)+!",
           "([a-z]+)*-x", "(\\w|\\d)*!", "/lib(\\.[^/]*)*\\.so", "(a+)+\\e"]


@pytest.mark.parametrize("regex", HOSTILE)
def test_hostile_patterns_go_to_the_automaton(regex: str) -> None:
    assert compile_selinux_regex(wrap(regex, "-")).engine == "linear"


@pytest.mark.parametrize("regex", HOSTILE)
def test_hostile_patterns_agree_with_re_on_short_keys(regex: str) -> None:
    # short enough for backtracking to answer quickly
    rng = random.Random(regex)
    pattern = wrap(regex, "-")
    matcher = linear(pattern)
    keys = [bytes(rng.choice(b"aab.x!/cz-") for _ in range(rng.randint(0, 12))) + b"-"
            for _ in range(300)]
    keys += [_sample(translate(pattern)[0], rng) for _ in range(50)]
    for key in keys:
        assert matcher.matches(key) == re_matches(pattern, key), key


CHILD = textwrap.dedent("""
    import sys, time
    from cfsboot.boot.selabel_regex import compile_selinux_regex
    from cfsboot.boot.selabel import SelinuxPolicy, apply_policy
    from cfsboot.tree.model import Directory, Inline, Leaf, Stat

    def check(regex, typ, key, expected):
        compiled = compile_selinux_regex(f"^({regex}){typ}$")
        got = compiled.matches(key)
        assert got is expected, (regex, len(key), got)

    N = 5000  # backtracking needs ~2**N steps for the nested ones, N**8 for .*x8
    a = b"a" * N
    check("(a+)+b", "-", a + b"-", False)
    check("(a+)+b", "-", a + b"b-", True)
    check("(a|a)*c", "-", a + b"-", False)
    check("(a|a)*c", "-", a + b"c-", True)
    check("(.*)*x", "-", a + b"-", False)
    check("(.*)*x", "-", a + b"x-", True)
    check(".*.*.*.*.*.*.*.*z", "-", a + b"-", False)
    check(".*.*.*.*.*.*.*.*z", "-", a + b"z-", True)
    check("(a*)*b", "d", a + b"b-", False)
    check("(a|aa)+!", "-", a + b"!-", True)
    check("/lib(\\\\.[^/]*)*\\\\.so", "-", b"/lib" + b"." * N + b"-", False)
    check("/lib(\\\\.[^/]*)*\\\\.so", "-", b"/lib" + b"." * N + b".so-", True)
    check("(a+)+\\\\e", "-", a + b"-", False)          # PCRE2 dialect: a search
    # degree-2 patterns stay on re for short keys, not for long ones
    check("/usr/lib/(.*/)?foo(/.*)?", "d", b"/usr/lib/" + b"foo/" * N + b"-", False)
    check("/a(/.*)?/b(/.*)?", "d", b"/a" + b"/b" * N + b"-", False)
    check("/a(/.*)?/b(/.*)?", "d", b"/a" + b"/b" * N + b"d", True)

    # a whole policy of hostile rules labels a tree with long names
    fc = b"/.*\\tsystem_u:object_r:default_t:s0\\n" + b"".join(
        b"/d/(a+)+" + str(i).encode() + b"\\t--\\tsystem_u:object_r:t" + str(i).encode()
        + b"_t:s0\\n" for i in range(200))
    policy = SelinuxPolicy.from_files({"file_contexts": fc}.get)
    root = Directory(Stat(0o755, 0, 0, 0, 0))
    d = Directory(Stat(0o755, 0, 0, 0, 0))
    root.entries[b"d"] = d
    names = [b"a" * 300 + str(i).encode() + b"x" for i in range(50)] + [b"a" * 300 + b"17"]
    for name in names:
        d.entries[name] = Leaf(Stat(0o644, 0, 0, 0, 0), Inline(b""))
    apply_policy(root, policy)
    labels = [d.entries[name].stat.xattrs[b"security.selinux"] for name in names]
    assert labels[:-1] == [b"system_u:object_r:default_t:s0"] * 50
    assert labels[-1] == b"system_u:object_r:t17_t:s0"
    print("ok")
""")


def test_hostile_patterns_finish_on_long_keys() -> None:
    # a child with a time limit: minutes of slack over the ~1 s it needs, but
    # backtracking would take years; no timing of normal code paths
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ---- engine choice ---------------------------------------------------------------------

@pytest.mark.parametrize("regex, degree", [
    ("/usr(/.*)?", 1), ("/etc/passwd", 0), ("/usr/lib/(.*/)?foo(/.*)?", 2),
    ("/home/[^/]+/\\.cache(/.*)?", 2), ("/dev/tty[0-9]*", 1), ("/lib\\.so(\\.[0-9]+)*", 1),
    ("/usr/(bin|sbin)/x", 0), ("/var/[^/]+/x", 1), ("/x[0-9]{1,3}\\.y", 0),
    ("([^/]*/)*x", 2), ("(a+)+b", None), ("(a|a)*", None), ("(.*)*", None),
    (".*.*.*z", None), ("/lib(\\.[^/]*)*", None), ("(a|b){0,20}(a|b){0,20}", 2),
    ("(a|a){0,20}", None), ("(a?){8}", None), ("a?a?a?a?a?a?", None), ("a?a?a?a?", 0),
])
def test_backtracking_degree(regex: str, degree: int | None) -> None:
    node, _ = translate(wrap(regex, "-"))
    assert backtracking_degree(node) == degree


@pytest.mark.parametrize("regex, engine", [
    ("/usr(/.*)?", "re"), ("/usr/lib/(.*/)?foo(/.*)?", "re+linear"),
    ("/usr/(.*/)?lib(64)?/.*\\.so(\\.[^/]*)*", "linear"),
    ("(?=a)(a+)+b", "re-unproven"), ("(?>a+)+b", "re-unproven"), ("(a)(a+)+\\2", "re-unproven"),
    ("(x{100}){200}", "re"),
    # an unanchored PCRE2 search (malformed wrapping) is retried at every position
    ("/a\\e.*", "re"), ("/a\\e)|(.*", "re+linear"),
])
def test_engine_choice(regex: str, engine: str) -> None:
    assert compile_selinux_regex(wrap(regex)).engine == engine


@pytest.mark.parametrize("regex", ["(a{0,100}){0,100}b", "(x{100}){200}(a+)+"])
def test_unprovable_and_too_large_is_refused(regex: str) -> None:
    with pytest.raises(RegexDialectError, match="too complex"):
        compile_selinux_regex(wrap(regex))


def test_degree_two_uses_re_up_to_long_key(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = compile_selinux_regex(wrap("/a(/.*)?/b(/.*)?", "d"))
    built: list[bool] = []
    real = selabel_regex_choice.compile_linear

    def spy(node: Node, search: bool) -> LinearMatcher | None:
        built.append(search)
        return real(node, search)

    monkeypatch.setattr(selabel_regex_choice, "compile_linear", spy)
    short = b"/a/b" + b"/x" * ((LONG_KEY - 8) // 2) + b"d"
    assert len(short) <= LONG_KEY and compiled.matches(short)
    assert not built
    long = b"/a/b" + b"/x" * LONG_KEY + b"d"
    assert compiled.matches(long) and not compiled.matches(long[:-1] + b"-")
    assert built == [False]  # built once, on the first long key


def test_inexpressible_constructs() -> None:
    for regex in ["(?=a)a", "(?<=/)a", "(?>a|ab)c", "\\e?a++", "(a)\\2", "(?P<p>b)(?P=p)"]:
        node, _ = translate(wrap("/" + regex))
        assert compile_linear(node, True) is None, regex
    node, _ = translate(wrap("(a{100}){200}"))
    assert compile_linear(node, False) is None


# ---- agreement -----------------------------------------------------------------------

@pytest.mark.parametrize("regex, typ, matching, other", RUST_TABLE,
                         ids=[entry[0] for entry in RUST_TABLE])
def test_automaton_matches_rust_table(regex: str, typ: str, matching: list[bytes],
                                      other: list[bytes]) -> None:
    matcher = linear(wrap(regex, typ))
    for key in matching:
        assert matcher.matches(key), key
    for key in other:
        assert not matcher.matches(key), key


def _pcre_regex(rng: random.Random) -> str:
    return "/" + "".join(rng.choice(PCRE_PIECES) for _ in range(rng.randint(1, 5)))


def _keys(node: Node, rng: random.Random) -> list[bytes]:
    keys = [_sample(node, rng) for _ in range(12)]
    keys += [b"/" + b"".join(rng.choice(PCRE_ALPHABET) for _ in range(rng.randint(0, 5)))
             + rng.choice([b"-", b"d", b"\n"]) for _ in range(8)]
    return keys


def test_automaton_agrees_with_re_on_fuzzed_patterns() -> None:
    rng = random.Random(11)
    compared = pcre = 0
    for i in range(500):
        regex = _random_regex(rng) if i % 2 else _pcre_regex(rng)
        pattern = wrap(regex, rng.choice(".-d"))
        try:
            node, is_pcre = translate(pattern)
            compile_selinux_regex(pattern)
        except RegexDialectError:
            continue
        matcher = compile_linear(node, is_pcre)
        if matcher is None:
            continue  # look-around, atomic, back-reference: stays on re
        for key in _keys(node, rng):
            assert matcher.matches(key) == re_matches(pattern, key), (pattern, key)
        compared += 1
        pcre += is_pcre
    assert compared > 320 and pcre > 70


def test_automaton_agrees_with_rust_oracle_live() -> None:
    oracle = os.environ.get("CFSBOOT_RUST_REGEX_ORACLE")
    if not oracle:
        pytest.skip("set CFSBOOT_RUST_REGEX_ORACLE (see test_selabel_rust_table.py)")
    rng = random.Random(int(os.environ.get("CFSBOOT_ORACLE_SEED", "1")))
    cases = []
    for _ in range(3000):
        pattern = wrap(_random_regex(rng), rng.choice(".-d"))
        try:
            node, _ = translate(pattern)
        except RegexDialectError:
            continue
        cases.append((pattern, node, _keys(node, rng)))
    body = "".join(f"R\nP {p.encode().hex()}\n" + "".join(f"K {k.hex()}\n" for k in keys)
                   for p, _, keys in cases)
    out = iter(subprocess.run([oracle], input=body.encode(), capture_output=True,
                              check=True).stdout.decode().splitlines())
    checked = 0
    for pattern, node, keys in cases:
        verdict = next(out)
        results = [next(out) for _ in keys]
        if verdict.startswith("X"):
            continue  # PCRE2 for composefs-rs
        matcher = compile_linear(node, False)
        assert matcher is not None, pattern
        for key, result in zip(keys, results, strict=True):
            assert matcher.matches(key) == (result == "0"), (pattern, key)
        checked += 1
    assert checked > 2000


@pytest.mark.parametrize("pattern, key, expected", [
    # PCRE2 `$` and \Z also match before a final newline (\e makes it PCRE2)
    ("^(/a\\e?)-$", b"/a-\n", True), ("^(/a\\e?)-$", b"/a-\n\n", False),
    ("^(/a\\e?)-$", b"/a-", True), ("^(/a\\e?)-\\Z", b"/a-\n", True),
    ("^(/a\\e?)-\\z", b"/a-\n", False), ("^(/a\\e?)-$\\n", b"/a-\n", True),
    ("^(/a\\e?(?m)$\\n.)", b"/a\nx\n", True), ("^(/a\\e?(?m)$\\n.)", b"/a\n\n", False),
    # Rust: `$` is the very end, (?m) looks at \n, (?R) at \r too
    ("^(/a)-$", b"/a-\n", False), ("^(/a(?m)$\\n)", b"/a\n", True),
    ("^(/a(?Rm)$\\r)", b"/a\r", True), ("^(/\\ba\\b)-$", b"/a-", True),
    ("^(/a\\Ba)-$", b"/aa-", True), ("^(/\\<a\\>)-$", b"/a-", True),
])
def test_assertions(pattern: str, key: bytes, expected: bool) -> None:
    assert re_matches(pattern, key) is expected
    assert linear(pattern).matches(key) is expected


def test_state_cap_falls_back_to_nfa_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    # the DFA of (a|b)*a(a|b){10} has 2**11 states: cap it far below that
    monkeypatch.setattr(selabel_regex_nfa, "MAX_DFA_STATES", 20)
    pattern = wrap("(a|b)*a(a|b){10}", "-")
    matcher = linear(pattern)
    rng = random.Random(3)
    for _ in range(300):
        key = bytes(rng.choice(b"ab") for _ in range(rng.randint(8, 40))) + b"-"
        assert matcher.matches(key) == re_matches(pattern, key), key
    assert matcher.cached_states <= 20


def test_shared_cache_budget_is_respected_and_refunded() -> None:
    pattern = wrap("(a|a|b)*a(a|b){6}", "-")
    rng = random.Random(8)
    keys = [bytes(rng.choice(b"ab") for _ in range(30)) + b"-" for _ in range(100)]
    expected = [re_matches(pattern, key) for key in keys]
    budget = selabel_regex_nfa._cells_left
    saved = budget[0]
    budget[0] = 200
    try:
        matcher = linear(pattern)
        assert [matcher.matches(key) for key in keys] == expected
        assert 1 < matcher.cached_states < 200 and budget[0] >= 0
        del matcher
        assert budget[0] == 200
    finally:
        budget[0] = saved


def test_too_complex_pattern_is_one_policy_error() -> None:
    from cfsboot.boot.selabel import SelinuxPolicyError
    fc = b"/a(.*)*\tctx\n/b(a{0,100}){0,100}x\tctx\n"
    with pytest.raises(SelinuxPolicyError, match="file_contexts line 2: regex too complex"):
        SelinuxPolicy.from_files({"file_contexts": fc}.get)


def _policy_keys(fc: bytes, rng: random.Random, per_rule: int) -> list[bytes]:
    """Keys near each rule: its literal prefix, then random path-like bytes."""
    keys = []
    for _, pattern, _ in parse_spec_file(fc, "file_contexts"):
        prefix = compile_selinux_regex(pattern).prefix
        for _ in range(per_rule):
            tail = b"".join(rng.choice([b"/", b"a", b"lib", b".so", b".1", b"bin", b"x-1",
                                        b".conf", b"64", b"/usr"])
                            for _ in range(rng.randint(0, 6)))
            keys.append(prefix + tail + rng.choice([b"-", b"d", b"l"]))
    return keys


def _compare_policy(fc: bytes, keys: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = SelinuxPolicy.from_files({"file_contexts": fc}.get)
    assert any(r.regex.engine != "re" for r in chosen.rules)

    def all_linear(node: Node, search: bool, re_match: MatchFn,
                   emitted: str | None = None) -> tuple[str, MatchFn]:
        matcher = compile_linear(node, search)
        return ("linear", matcher.matches) if matcher else ("re-unproven", re_match)

    import cfsboot.boot.selabel_regex as selabel_regex
    monkeypatch.setattr(selabel_regex, "choose_engine", all_linear)
    automaton = SelinuxPolicy.from_files({"file_contexts": fc}.get)
    assert all(r.regex.engine == "linear" for r in automaton.rules)
    monkeypatch.undo()
    matched = 0
    for key in keys:
        want = chosen.match_index(key)
        assert automaton.match_index(key) == want, key
        matched += want is not None
    assert matched > len(keys) // 4


def test_synthetic_policy_same_labels_with_automaton_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_selabel", REPO / "bench" / "selabel.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fc: bytes = bench.synthetic_file_contexts(600)
    rng = random.Random(4)
    keys = _policy_keys(fc, rng, 3)
    keys += [p + rng.choice([b"-", b"d"]) for p in bench.synthetic_paths(2000)]
    _compare_policy(fc, keys, monkeypatch)


def test_refpolicy_same_labels_with_automaton_only(monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.environ.get("CFSBOOT_REFPOLICY_FILE_CONTEXTS")
    if not path:
        pytest.skip("set CFSBOOT_REFPOLICY_FILE_CONTEXTS to a refpolicy file_contexts")
    with open(path, "rb") as f:
        fc = f.read()
    _compare_policy(fc, _policy_keys(fc, random.Random(5), 4), monkeypatch)
