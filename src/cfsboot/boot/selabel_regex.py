"""SELinux file_contexts regexes, translated into Python ``re`` bytes patterns.

composefs-rs compiles every wrapped spec pattern (``^(RE)T$``) with Rust's
``regex-syntax`` (Unicode off, UTF-8 off, line terminator NUL) and only falls
back to PCRE2 (byte mode, no UTF, no UCP) for patterns that syntax rejects
(look-arounds, back-references, ``\\pL`` with Unicode off, ``\\e``, an
unescaped ``{`` …).  We reproduce that split: each pattern is parsed with a
Rust-dialect parser; if that parser rejects it, with a PCRE2-dialect parser.
Either parser produces a small AST that is emitted as an explicit Python
pattern, so no construct depends on how Python's ``re`` reads it:

* character classes become explicit byte sets ``[\\xNN-\\xNN]``: this covers
  POSIX classes ``[[:alpha:]]`` / ``[[:^digit:]]``, Rust nested classes
  ``[a[bc]]`` and set operations ``&& -- ~~`` (Python reads ``[[`` and
  ``&&`` literally), ``\\d \\w \\s`` (ASCII in both engines) and case folding;
* ``.`` is ``[^\\x00]`` in Rust (line terminator NUL), all bytes under
  ``(?s)``, and ``[^\\n]`` in PCRE2;
* ``^``/``$`` are start/end of text in Rust (``\\A``/``\\Z`` in Python;
  Rust ``\\z`` too); PCRE2 ``$`` and ``\\Z`` also match before a final
  ``\\n``; multi-line ``(?m)^``/``$`` are look-arounds on ``\\n`` in both
  (regex-automata's look matcher keeps ``\\n`` even though ``.`` stops at NUL;
  ``(?R)`` adds ``\\r``);
* flags may appear anywhere in Rust (``a(?i)b``) and are scoped to the rest
  of the group; we apply them while parsing (Python only accepts global
  flags at the start), ``(?U)`` swaps greediness, ``(?x)`` skips blanks and
  ``#`` comments;
* Rust allows stacked repetitions (``a**`` = ``(?:a*)*``; ``a*+`` is *not*
  possessive there), Python needs a group around the inner one;
* a non-ASCII literal character is one atom in Rust (``é+`` repeats both
  bytes) but single bytes in PCRE2 byte mode;
* PCRE2 ``\\pL``-style properties apply to byte values as Latin-1 code
  points; computed with ``unicodedata`` (general categories only);
* Rust ``\\<``, ``\\>``, ``\\b{start}`` … become look-around combinations;
* in a Rust class under ``(?i)`` both operands of ``&&``/``--``/``~~`` are
  case folded before the operation; a non-ASCII character in a class is an
  error there (so such a pattern goes to PCRE2, where it is single bytes);
* ``{`` that does not start a valid ``{n}``/``{n,}``/``{n,m}`` is an error in
  Rust and a literal in PCRE2; ``{,n}`` is a literal before PCRE2 10.43 and
  a quantifier since (it depends on the libpcre2 bootc links): we follow the
  older reading;
* PCRE2 extras are translated: ``\\Q…\\E``, ``\\h \\v \\R \\N \\e \\cX \\o{}``,
  octal, ``\\g``/``\\k`` back-references, atomic groups, possessive
  quantifiers, ``(?#…)``; a back-reference to a group that is still open
  (e.g. ``\\1``, the wrapper's group) can never match and becomes ``(?!)``;
  recursion and conditionals (``(?R)``, ``(?(…)``) cannot be expressed and
  are errors.

The translation was checked against the real engines: the Rust side against
regex-automata 0.4.16's hybrid DFA with composefs-rs's exact configuration
(a fuzzer over class/flag/anchor/escape constructs, and Debian refpolicy's
5497 rules on 40k host paths, all identical; see
tests/test_selabel_rust_table.py), the PCRE2 side against ``pcre2test``.
Python's backtracking engine can take exponential time on nested or
ambiguous repetitions (``(a+)+b``), and the policy comes from the image:
``selabel_regex_nfa.choose_engine`` gives a pattern whose backtracking cost
is not proven small to that module's linear-time automaton (same answers).

Matching mirrors upstream: a Rust-dialect pattern is an *anchored* search
(``re.match``, the lazy DFA is run with ``Anchored::Yes``), a PCRE2 one an
unanchored search (``is_match``); the wrapping ``^(``…``)T$`` makes both a
whole-key match for every well-formed pattern.

Constructs neither engine accepts, or Python cannot express (e.g. a
variable-width look-behind), raise ``RegexDialectError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cfsboot.boot.selabel_regex_ast import (
    END_TEXT,
    PCRE_DOLLAR,
    START_TEXT,
    Lit,
    Node,
    Raw,
    RegexDialectError,
    Seq,
    emit,
    literal_prefix,
)
from cfsboot.boot.selabel_regex_choice import choose_engine
from cfsboot.boot.selabel_regex_nfa import MatchFn
from cfsboot.boot.selabel_regex_parse import parse

__all__ = ["RegexDialectError", "SelinuxRegex", "compile_selinux_regex", "literal_prefix",
           "translate"]


@dataclass(frozen=True, slots=True)
class SelinuxRegex:
    """One compiled wrapped pattern (``^(RE)T$``)."""
    source: str
    regex: re.Pattern[bytes]
    pcre: bool            # compiled by the PCRE2 fallback in composefs-rs
    prefix: bytes         # every matching key starts with this
    final_byte: int | None  # every matching key ends with this byte (the type)
    # which engine matches (selabel_regex_nfa.choose_engine): "re", "re+linear",
    # "linear" or "re-unproven"; ``matcher`` is set unless it is plain re
    engine: str = "re"
    matcher: MatchFn | None = field(default=None, compare=False, repr=False)

    @property
    def match_function(self) -> MatchFn:
        """``key -> truthy if it matches``: ``re`` (an anchored match, or a
        search for PCRE2) unless the pattern needs the linear engine."""
        if self.matcher is not None:
            return self.matcher
        return self.regex.search if self.pcre else self.regex.match

    def matches(self, key: bytes) -> bool:
        return bool(self.match_function(key))


def translate(pattern: str) -> tuple[Node, bool]:
    """Parse ``pattern`` like composefs-rs: Rust dialect, else PCRE2.
    Returns (AST, is_pcre)."""
    data = pattern.encode()
    try:
        return parse(data, rust=True), False
    except RegexDialectError as rust_error:
        try:
            return parse(data, rust=False), True
        except RegexDialectError as pcre_error:
            raise RegexDialectError(
                f"invalid regex (Rust syntax: {rust_error}; PCRE2: {pcre_error})") from None


def compile_selinux_regex(pattern: str) -> SelinuxRegex:
    """Compile one wrapped file_contexts pattern.  Raises RegexDialectError."""
    try:
        node, pcre = translate(pattern)
        text = emit(node)
        compiled = re.compile(text.encode("latin-1"))
    except re.error as e:
        raise RegexDialectError(f"cannot express regex in Python: {e}") from None
    except RecursionError:
        # Rust's parser has a nest limit too; a policy line like ((((…)))) x5000
        # must be one error line, not a traceback.
        raise RegexDialectError("regex nested too deeply") from None
    prefix = b""
    # A PCRE2 search is unanchored: only a pattern that starts with ^ (every
    # well-formed wrapped pattern) has a usable prefix.
    first = node.items[0] if isinstance(node, Seq) and node.items else None
    if not pcre or (isinstance(first, Raw) and first.text == START_TEXT):
        prefix = literal_prefix(node)[0]
    final_byte = None
    if isinstance(node, Seq) and len(node.items) >= 2:
        last, before = node.items[-1], node.items[-2]
        if (isinstance(last, Raw) and last.text in (END_TEXT, PCRE_DOLLAR)
                and isinstance(before, Lit) and len(before.data) == 1):
            final_byte = before.data[0]
    backtracking = compiled.search if pcre else compiled.match
    engine, match = choose_engine(node, pcre, backtracking, text)
    return SelinuxRegex(pattern, compiled, pcre, prefix, final_byte, engine,
                        None if match is backtracking else match)
