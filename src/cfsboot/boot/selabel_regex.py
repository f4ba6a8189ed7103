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
* Rust ``\\<``, ``\\>``, ``\\b{start}`` … become look-around combinations.

Matching mirrors upstream: a Rust-dialect pattern is an *anchored* search
(``re.match``, the lazy DFA is run with ``Anchored::Yes``), a PCRE2 one an
unanchored search (``is_match``); the wrapping ``^(``…``)T$`` makes both a
whole-key match for every well-formed pattern.

Constructs neither engine accepts, or Python cannot express (e.g. a
variable-width look-behind), raise ``RegexDialectError``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace

ALL_BYTES = (1 << 256) - 1


class RegexDialectError(Exception):
    """The pattern is invalid (or untranslatable) in the given dialect."""


# ---- byte sets ---------------------------------------------------------------

def _set(*items: int | tuple[int, int] | str) -> int:
    bits = 0
    for item in items:
        if isinstance(item, str):
            for ch in item.encode("latin-1"):
                bits |= 1 << ch
        elif isinstance(item, tuple):
            lo, hi = item
            bits |= ((1 << (hi - lo + 1)) - 1) << lo
        else:
            bits |= 1 << item
    return bits


DIGIT = _set((0x30, 0x39))
WORD = _set((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), "_")
SPACE = _set((0x09, 0x0D), " ")  # \t \n \v \f \r and space: same in both engines
POSIX_CLASSES = {
    "alnum": _set((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": _set((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": _set((0x00, 0x7F)),
    "blank": _set("\t "),
    "cntrl": _set((0x00, 0x1F), 0x7F),
    "digit": DIGIT,
    "graph": _set((0x21, 0x7E)),
    "lower": _set((0x61, 0x7A)),
    "print": _set((0x20, 0x7E)),
    "punct": _set((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": SPACE,
    "upper": _set((0x41, 0x5A)),
    "word": WORD,
    "xdigit": _set((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}
UPPER = POSIX_CLASSES["upper"]
LOWER = POSIX_CLASSES["lower"]


def fold_ascii(bits: int) -> int:
    """Add the other ASCII case of every letter (both engines fold ASCII only)."""
    return bits | ((bits & UPPER) << 32) | ((bits & LOWER) >> 32)


def _latin1_property(name: str, negate: bool) -> int:
    """PCRE2 ``\\p{..}`` in byte mode: the property of each byte as a Latin-1
    code point.  General categories (``L``, ``Lu``, ``L&``, ``Any``…)."""
    if name.startswith("^"):
        name, negate = name[1:], not negate
    name = name.replace(" ", "").replace("_", "")
    bits = 0
    if name == "Any":
        bits = ALL_BYTES
    else:
        wanted = {"L&": ("Lu", "Ll", "Lt")}.get(name)
        if wanted is None and not (1 <= len(name) <= 2 and name[0].isupper()):
            raise RegexDialectError(f"unsupported Unicode property \\p{{{name}}}")
        for b in range(256):
            cat = unicodedata.category(chr(b))
            if (wanted is not None and cat in wanted) or (wanted is None and cat.startswith(name)):
                bits |= 1 << b
        if bits == 0 and wanted is None and name[0] not in "LMNPSZC":
            raise RegexDialectError(f"unknown Unicode property \\p{{{name}}}")
    return ALL_BYTES & ~bits if negate else bits


# ---- AST ---------------------------------------------------------------------

@dataclass(slots=True)
class Lit:
    data: bytes  # exact, case-sensitive bytes; one atom for repetition


@dataclass(slots=True)
class ByteSet:
    bits: int


@dataclass(slots=True)
class Seq:
    items: list[Node]


@dataclass(slots=True)
class Alt:
    branches: list[Node]


@dataclass(slots=True)
class Group:
    node: Node
    capture: bool
    name: str | None = None


@dataclass(slots=True)
class Repeat:
    node: Node
    lo: int
    hi: int | None
    greedy: bool = True
    possessive: bool = False


@dataclass(slots=True)
class Look:
    node: Node
    ahead: bool
    negate: bool


@dataclass(slots=True)
class Atomic:
    node: Node


@dataclass(slots=True)
class Raw:
    """A zero-width assertion or back-reference, already in Python syntax."""
    text: str


Node = Lit | ByteSet | Seq | Alt | Group | Repeat | Look | Atomic | Raw

START_TEXT = r"\A"
FLAGS_MARKER = Raw("")  # a bare (?flags): emits nothing, cannot be repeated
END_TEXT = r"\Z"


@dataclass(slots=True)
class Flags:
    i: bool = False
    m: bool = False
    s: bool = False
    x: bool = False
    U: bool = False
    R: bool = False  # Rust CRLF mode
    n: bool = False  # PCRE2 no-auto-capture


# ---- parser --------------------------------------------------------------------

@dataclass
class _Parser:
    src: bytes
    rust: bool
    pos: int = 0
    ncaps: int = 0
    names: dict[str, int] = field(default_factory=dict)

    def fail(self, msg: str) -> RegexDialectError:
        return RegexDialectError(f"{msg} at offset {self.pos}")

    def peek(self, n: int = 0) -> int | None:
        p = self.pos + n
        return self.src[p] if p < len(self.src) else None

    def startswith(self, s: bytes) -> bool:
        return self.src.startswith(s, self.pos)

    def eof(self) -> bool:
        return self.pos >= len(self.src)

    # -- structure --

    def parse(self) -> Node:
        node = self.alternation(Flags())
        if not self.eof():
            raise self.fail("unopened group")
        return node

    def skip_blank(self, flags: Flags) -> None:
        while flags.x and not self.eof():
            c = self.src[self.pos]
            if c in b" \t\n\r\x0b\x0c":
                self.pos += 1
            elif c == ord("#"):
                end = self.src.find(b"\n", self.pos)
                self.pos = len(self.src) if end < 0 else end + 1
            else:
                return

    def alternation(self, flags: Flags) -> Node:
        """Parse until ``)`` or end.  ``flags`` is this group's (mutable) copy:
        ``(?i)`` changes it for the rest of the group, later branches included."""
        branches: list[Node] = []
        items: list[Node] = []
        while True:
            self.skip_blank(flags)
            c = self.peek()
            if c is None or c == ord(")"):
                break
            if c == ord("|"):
                self.pos += 1
                branches.append(Seq(items))
                items = []
            elif c in b"*+?":
                self.pos += 1
                self.repeat(items, flags, {ord("*"): (0, None), ord("+"): (1, None),
                                           ord("?"): (0, 1)}[c])
            elif c == ord("{") and self.counted_ahead(flags):
                self.repeat(items, flags, self.counted(flags))
            elif c == ord("{") and self.rust:
                raise self.fail("invalid counted repetition")
            elif c == ord("("):
                node = self.group(flags)
                if node is not None:
                    items.append(node)
            else:
                items.append(self.atom(flags))
        branches.append(Seq(items))
        return branches[0] if len(branches) == 1 else Alt(branches)

    def repeat(self, items: list[Node], flags: Flags, bounds: tuple[int, int | None]) -> None:
        if not items:
            raise self.fail("repetition operator missing expression")
        lo, hi = bounds
        if hi is not None and lo > hi:
            raise self.fail("invalid repetition range")
        greedy, possessive = True, False
        self.skip_blank(flags)
        if self.peek() == ord("?"):
            greedy = False
            self.pos += 1
        elif self.peek() == ord("+") and not self.rust:
            possessive = True
            self.pos += 1
        if flags.U:
            greedy = not greedy
        target = items[-1]
        if target is FLAGS_MARKER:
            raise self.fail("repetition operator missing expression")
        if not self.rust and isinstance(target, Repeat):
            raise self.fail("quantifier does not follow a repeatable item")
        items[-1] = Repeat(target, lo, hi, greedy, possessive)

    def counted_ahead(self, flags: Flags) -> bool:
        """Is ``{`` the start of a valid counted repetition?  (Rust: must be;
        PCRE2: otherwise a literal ``{``.)"""
        m = re.compile(rb"\{\s*(\d*)\s*(,\s*(\d*)\s*)?\}" if self.rust or flags.x
                       else rb"\{(\d*)(,(\d*))?\}").match(self.src, self.pos)
        if m is None:
            return False
        lo, comma, hi = m.group(1), m.group(2), m.group(3)
        if not lo:
            # "{,n}": an error in Rust, a literal in PCRE2 < 10.43 (bootc's era)
            return False
        return comma is None or hi is not None

    def counted(self, flags: Flags) -> tuple[int, int | None]:
        pat = rb"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}" if self.rust or flags.x else rb"\{(\d+)(,(\d*))?\}"
        m = re.compile(pat).match(self.src, self.pos)
        assert m is not None
        self.pos = m.end()
        lo = int(m.group(1))
        if m.group(2) is None:
            return lo, lo
        return lo, (int(m.group(3)) if m.group(3) else None)

    def group(self, flags: Flags) -> Node | None:
        self.pos += 1
        inner = replace(flags)
        capture, name = True, None
        if self.startswith(b"?#") and not self.rust:
            end = self.src.find(b")", self.pos)
            if end < 0:
                raise self.fail("unclosed comment")
            self.pos = end + 1
            return None
        if self.startswith(b"?=") or self.startswith(b"?!") or \
                self.startswith(b"?<=") or self.startswith(b"?<!"):
            if self.rust:
                raise self.fail("look-around not supported")
            ahead = self.src[self.pos + 1] != ord("<")
            negate = self.src[self.pos + (1 if ahead else 2)] == ord("!")
            self.pos += 2 if ahead else 3
            return Look(self.close(inner), ahead, negate)
        if self.startswith(b"?>"):
            if self.rust:
                raise self.fail("atomic groups not supported")
            self.pos += 2
            return Atomic(self.close(inner))
        m = re.compile(rb"\?P?<([A-Za-z_][A-Za-z0-9_]*)>|\?'([A-Za-z_][A-Za-z0-9_]*)'").match(
            self.src, self.pos)
        if m is not None and (not self.rust or m.group(1) is not None):
            name = (m.group(1) or m.group(2)).decode()
            self.pos = m.end()
        elif self.startswith(b"?P=") and not self.rust:
            m = re.compile(rb"\?P=([A-Za-z_][A-Za-z0-9_]*)\)").match(self.src, self.pos)
            if m is None:
                raise self.fail("malformed (?P=name)")
            self.pos = m.end()
            return Raw(f"(?P={m.group(1).decode()})")
        elif self.peek() == ord("?"):
            return self.flag_group(flags, inner)
        elif flags.n:
            capture = False
        if capture:
            self.ncaps += 1
            if name is not None:
                if name in self.names:
                    raise self.fail(f"duplicate group name {name}")
                self.names[name] = self.ncaps
        return Group(self.close(inner), capture, name)

    def flag_group(self, flags: Flags, inner: Flags) -> Node | None:
        m = re.compile(rb"\?([A-Za-z^-]*)([:)])").match(self.src, self.pos)
        if m is None:
            raise self.fail("invalid group syntax")
        spec, end = m.group(1).decode(), m.group(2)
        allowed = "imsxURu" if self.rust else "imsxUn"
        negate = False
        if self.rust and ((not spec and end == b")") or spec.endswith("-")
                          or spec.count("-") > 1 or len(set(spec)) != len(spec)):
            raise self.fail("invalid flags")
        target = flags if end == b")" else inner
        for ch in spec:
            if ch == "-":
                negate = True
            elif ch == "^" and not self.rust:
                for k in "imsxUn":
                    setattr(target, k, False)
            elif ch in allowed:
                if ch == "u":
                    if not negate:
                        raise RegexDialectError("Unicode mode (?u) is not supported")
                    continue
                setattr(target, ch, not negate)
            else:
                raise self.fail(f"unrecognized flag {ch!r}")
        self.pos = m.end()
        if end == b")":
            return FLAGS_MARKER
        return Group(self.close(inner), capture=False)

    def close(self, inner: Flags) -> Node:
        node = self.alternation(inner)
        if self.peek() != ord(")"):
            raise self.fail("unclosed group")
        self.pos += 1
        return node

    # -- atoms --

    def atom(self, flags: Flags) -> Node:
        c = self.src[self.pos]
        if c == ord("["):
            return ByteSet(self.bracket(flags))
        if c == ord("\\"):
            return self.escape(flags, in_class=False)
        self.pos += 1
        if c == ord("."):
            if flags.s:
                return ByteSet(ALL_BYTES)
            if not self.rust:
                return ByteSet(ALL_BYTES & ~_set(0x0A))
            return ByteSet(ALL_BYTES & ~(_set("\r\n") if flags.R else _set(0)))
        if c == ord("^"):
            if not flags.m:
                return Raw(START_TEXT)
            if self.rust:  # the look matcher keeps \n even with line terminator NUL
                return Raw(r"(?:\A|(?<=\n)|(?<=\r)(?!\n))" if flags.R else r"(?:\A|(?<=\n))")
            return Raw(r"(?:\A|(?<=\n)(?!\Z))")
        if c == ord("$"):
            if self.rust:
                if not flags.m:
                    return Raw(END_TEXT)
                return Raw(r"(?:\Z|(?=\r)|(?<!\r)(?=\n))" if flags.R else r"(?=\n|\Z)")
            return Raw(r"(?=\n|\Z)" if flags.m else r"(?=\n?\Z)")
        if c == ord(")"):
            raise self.fail("unopened group")
        if c >= 0x80 and self.rust:
            # one UTF-8 encoded character is one atom in Rust
            start = self.pos - 1
            while self.pos < len(self.src) and 0x80 <= self.src[self.pos] < 0xC0:
                self.pos += 1
            return self.literal(self.src[start:self.pos], flags)
        return self.literal(bytes([c]), flags)

    @staticmethod
    def literal(data: bytes, flags: Flags) -> Node:
        if flags.i and len(data) == 1 and (fold_ascii(1 << data[0]) != 1 << data[0]):
            return ByteSet(fold_ascii(1 << data[0]))
        return Lit(data)

    def escape(self, flags: Flags, in_class: bool) -> Node:
        """Parse ``\\…``; returns Lit/ByteSet (or an assertion/backref outside classes)."""
        self.pos += 1
        c = self.peek()
        if c is None:
            raise self.fail("trailing backslash")
        ch = chr(c)
        self.pos += 1
        perl = {"d": DIGIT, "w": WORD, "s": SPACE}
        if ch.lower() in perl:
            bits = perl[ch.lower()]
            return ByteSet(ALL_BYTES & ~bits if ch.isupper() else bits)
        simple = {"a": 0x07, "f": 0x0C, "t": 0x09, "n": 0x0A, "r": 0x0D}
        if ch in simple:
            return Lit(bytes([simple[ch]]))
        if self.rust:
            return self.rust_escape(ch, flags, in_class)
        return self.pcre_escape(ch, flags, in_class)

    def rust_escape(self, ch: str, flags: Flags, in_class: bool) -> Node:
        if ch == "v":
            return Lit(b"\x0b")
        if ch in "xuU":
            return self.rust_hex(ch, flags)
        if ch.isascii() and not ch.isalnum() and ch not in "<>" and not ch.isspace():
            return self.literal(ch.encode(), flags)
        if ch.isspace() and ch.isascii():
            return self.literal(ch.encode(), flags)  # escaped blank: superfluous escape
        if not in_class:
            asserts = {"A": START_TEXT, "z": END_TEXT, "B": r"\B",
                       "<": r"\b(?=\w)", ">": r"\b(?<=\w)"}
            if ch in asserts:
                return Raw(asserts[ch])
            if ch == "b":
                m = re.compile(rb"\{\s*([A-Za-z-]+)\s*\}").match(self.src, self.pos)
                if m is not None:
                    kinds = {b"start": r"\b(?=\w)", b"end": r"\b(?<=\w)",
                             b"start-half": r"(?<!\w)", b"end-half": r"(?!\w)"}
                    if m.group(1) not in kinds:
                        raise self.fail("unrecognized word boundary")
                    self.pos = m.end()
                    return Raw(kinds[m.group(1)])
                return Raw(r"\b")
        # \pL (Unicode off), \0 / \1 (octal/backrefs off), \e, \Q … : syntax error
        raise self.fail(f"unsupported escape \\{ch}")

    def rust_hex(self, kind: str, flags: Flags) -> Node:
        m = re.compile(rb"\{([0-9A-Fa-f]+)\}").match(self.src, self.pos)
        digits = {"x": 2, "u": 4, "U": 8}[kind]
        if m is not None:
            value, self.pos, fixed = int(m.group(1), 16), m.end(), False
        else:
            text = self.src[self.pos:self.pos + digits]
            if len(text) != digits or not re.fullmatch(rb"[0-9A-Fa-f]+", text):
                raise self.fail("invalid hex escape")
            value, self.pos, fixed = int(text, 16), self.pos + digits, True
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise self.fail("invalid hex escape")
        if kind == "x" and fixed and value > 0x7F:
            return Lit(bytes([value]))  # \xFF is a raw byte with UTF-8 off
        return self.literal(chr(value).encode(), flags)

    def pcre_escape(self, ch: str, flags: Flags, in_class: bool) -> Node:
        extra: dict[str, Node] = {"e": Lit(b"\x1b"),
                 "h": ByteSet(_set("\t ", 0xA0)),
                 "H": ByteSet(ALL_BYTES & ~_set("\t ", 0xA0)),
                 "v": ByteSet(_set((0x0A, 0x0D), 0x85)),
                 "V": ByteSet(ALL_BYTES & ~_set((0x0A, 0x0D), 0x85))}
        if ch in extra:
            return extra[ch]
        if ch == "x":
            m = re.compile(rb"\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{0,2})").match(self.src, self.pos)
            assert m is not None
            self.pos = m.end()
            value = int(m.group(1) or m.group(2) or b"0", 16)
            if value > 0xFF:
                raise self.fail("character code point value too large in non-UTF mode")
            return self.literal(bytes([value]), flags)
        if ch == "o":
            m = re.compile(rb"\{([0-7]+)\}").match(self.src, self.pos)
            if m is None or int(m.group(1), 8) > 0xFF:
                raise self.fail("invalid \\o escape")
            self.pos = m.end()
            return self.literal(bytes([int(m.group(1), 8)]), flags)
        if ch == "c":
            c = self.peek()
            if c is None or c >= 0x80:
                raise self.fail("invalid \\c escape")
            self.pos += 1
            return Lit(bytes([ord(chr(c).upper()) ^ 0x40]))
        if ch in "pP":
            m = re.compile(rb"\{(\^?[A-Za-z_& ]+)\}|([A-Za-z])").match(self.src, self.pos)
            if m is None:
                raise self.fail("malformed \\p")
            self.pos = m.end()
            bits = _latin1_property((m.group(1) or m.group(2)).decode(), ch == "P")
            return ByteSet(fold_ascii(bits) if flags.i else bits)
        if ch.isdigit():
            return self.pcre_number(ch, flags, in_class)
        if in_class:
            if ch == "b":
                return Lit(b"\x08")
            if ch in "NRX":
                raise self.fail(f"\\{ch} not allowed in a class")
        else:
            asserts = {"A": START_TEXT, "G": START_TEXT, "z": END_TEXT,
                       "Z": r"(?=\n?\Z)", "b": r"\b", "B": r"\B"}
            if ch in asserts:
                return Raw(asserts[ch])
            if ch == "N":
                return ByteSet(ALL_BYTES & ~_set(0x0A))
            if ch == "R":
                return Atomic(Alt([Lit(b"\r\n"), ByteSet(_set((0x0A, 0x0D), 0x85))]))
            if ch in "gk":
                return self.pcre_backref(ch)
        if not ch.isalnum() or not ch.isascii():
            return self.literal(ch.encode("latin-1"), flags)
        raise self.fail(f"unsupported escape \\{ch}")

    def pcre_number(self, first: str, flags: Flags, in_class: bool) -> Node:
        m = re.compile(rb"\d*").match(self.src, self.pos)
        assert m is not None
        digits = first + m.group(0).decode()
        if first != "0" and not in_class:
            n = int(digits)
            if n < 10 or n <= self.ncaps or not re.fullmatch(r"[0-7]+", digits):
                self.pos = m.end()
                return Raw(f"(?:\\{n})")
        # octal: up to 3 digits
        m = re.compile(rb"[0-7]{0,2}").match(self.src, self.pos)
        assert m is not None
        octal = first + m.group(0).decode() if first in "01234567" else ""
        if not octal:
            raise self.fail(f"invalid escape \\{digits}")
        self.pos = m.end()
        return self.literal(bytes([int(octal, 8) & 0xFF]), flags)

    def pcre_backref(self, kind: str) -> Node:
        m = re.compile(rb"\{(-?\d+|[A-Za-z_]\w*)\}|<(\w+)>|'(\w+)'|(-?\d+)").match(
            self.src, self.pos)
        if m is None:
            raise self.fail(f"malformed \\{kind}")
        self.pos = m.end()
        ref = (m.group(1) or m.group(2) or m.group(3) or m.group(4)).decode()
        if ref.lstrip("-").isdigit():
            n = int(ref)
            n = self.ncaps + 1 + n if n < 0 else n
            return Raw(f"(?:\\{n})")
        return Raw(f"(?P={ref})")

    # -- bracket classes --

    def bracket(self, flags: Flags) -> int:
        bits = self.rust_bracket(flags) if self.rust else self.pcre_bracket(flags)
        return bits

    def rust_bracket(self, flags: Flags) -> int:
        """``[...]`` in regex-syntax: nested classes, ASCII classes, ``&& -- ~~``."""
        assert self.src[self.pos] == ord("[")
        self.pos += 1
        self.skip_blank(flags)
        negated = False
        if self.peek() == ord("^"):
            negated = True
            self.pos += 1
            self.skip_blank(flags)
        union = 0
        started = False
        while self.peek() == ord("-"):
            union |= _set("-")
            started = True
            self.pos += 1
            self.skip_blank(flags)
        if not started and self.peek() == ord("]"):
            union |= _set("]")
            self.pos += 1
        lhs: int | None = None
        op = ""
        while True:
            self.skip_blank(flags)
            c = self.peek()
            if c is None:
                raise self.fail("unclosed class")
            if c == ord("["):
                ascii_cls = self.ascii_class()
                union |= ascii_cls if ascii_cls is not None else self.rust_bracket(flags)
            elif c == ord("]"):
                self.pos += 1
                break
            elif self.src[self.pos:self.pos + 2] in (b"&&", b"--", b"~~"):
                lhs = union if lhs is None else _apply(op, lhs, union, flags.i)
                op = self.src[self.pos:self.pos + 2].decode()
                self.pos += 2
                union = 0
            else:
                union |= self.class_range(flags)
        result = union if lhs is None else _apply(op, lhs, union, flags.i)
        if flags.i:
            result = fold_ascii(result)
        return ALL_BYTES & ~result if negated else result

    def ascii_class(self) -> int | None:
        m = re.compile(rb"\[:(\^?)([^:\]]*):\]").match(self.src, self.pos)
        if m is None or m.group(2).decode("latin-1") not in POSIX_CLASSES:
            return None
        self.pos = m.end()
        bits = POSIX_CLASSES[m.group(2).decode()]
        return ALL_BYTES & ~bits if m.group(1) else bits

    def class_item(self, flags: Flags) -> Lit | ByteSet:
        c = self.src[self.pos]
        if c == ord("\\"):
            node = self.escape(replace(flags, i=False), in_class=True)
            if isinstance(node, (Lit, ByteSet)):
                return node
            raise self.fail("invalid escape in class")
        if self.rust and c >= 0x80:
            raise self.fail("non-ASCII character in a class with Unicode off")
        self.pos += 1
        return Lit(bytes([c]))

    def class_range(self, flags: Flags) -> int:
        first = self.class_item(flags)
        self.skip_blank(flags)
        if self.peek() is None:
            raise self.fail("unclosed class")
        nxt = self.peek(1)
        if self.peek() != ord("-") or nxt in (ord("]"), None) or (self.rust and nxt == ord("-")):
            return _bits_of(first)
        if not isinstance(first, Lit) or len(first.data) != 1:
            if self.rust:
                raise self.fail("invalid class range")
            return _bits_of(first)  # PCRE2: "\d-z" is \d, '-', 'z'
        self.pos += 1
        self.skip_blank(flags)
        second = self.class_item(flags)
        if not isinstance(second, Lit) or len(second.data) != 1:
            if self.rust:
                raise self.fail("invalid class range")
            return _bits_of(first) | _set("-") | _bits_of(second)
        lo, hi = first.data[0], second.data[0]
        if lo > hi:
            raise self.fail("invalid class range")
        return _set((lo, hi))

    def pcre_bracket(self, flags: Flags) -> int:
        """``[...]`` in PCRE2: ``[`` is literal except in ``[:name:]``."""
        self.pos += 1
        negated = False
        if self.peek() == ord("^"):
            negated = True
            self.pos += 1
        bits = 0
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.fail("missing terminating ] for character class")
            if c == ord("]") and not first:
                self.pos += 1
                break
            first = False
            if c == ord("[") and self.peek(1) in (ord(":"), ord("."), ord("=")):
                ascii_cls = self.ascii_class()
                if ascii_cls is None:
                    raise self.fail("unknown POSIX class name")
                bits |= ascii_cls
            elif self.startswith(b"\\Q"):
                end = self.src.find(b"\\E", self.pos + 2)
                end = len(self.src) if end < 0 else end
                for b in self.src[self.pos + 2:end]:
                    bits |= 1 << b
                self.pos = min(end + 2, len(self.src))
            elif self.startswith(b"\\E"):
                self.pos += 2
            else:
                bits |= self.class_range(flags)
        if flags.i:
            bits = fold_ascii(bits)
        return ALL_BYTES & ~bits if negated else bits


def _apply(op: str, lhs: int, rhs: int, fold: bool) -> int:
    """A Rust class set operation; under (?i) both operands are case folded
    first (``(?i)[\\w--a]`` excludes ``A`` too)."""
    if fold:
        lhs, rhs = fold_ascii(lhs), fold_ascii(rhs)
    if op == "&&":
        return lhs & rhs
    if op == "--":
        return lhs & ~rhs
    return lhs ^ rhs


def _bits_of(node: Lit | ByteSet) -> int:
    if isinstance(node, ByteSet):
        return node.bits
    if len(node.data) != 1:
        raise RegexDialectError("multi-byte character in a class")
    return 1 << node.data[0]


# ---- emission ------------------------------------------------------------------

def _class_text(bits: int) -> str:
    if bits == 0:
        return "(?!)"
    out = []
    b = 0
    while b < 256:
        if bits >> b & 1:
            start = b
            while b + 1 < 256 and bits >> (b + 1) & 1:
                b += 1
            out.append(f"\\x{start:02x}" if start == b else f"\\x{start:02x}-\\x{b:02x}")
        b += 1
    return "[" + "".join(out) + "]"


def emit(node: Node) -> str:
    match node:
        case Lit(data):
            return "".join(f"\\x{b:02x}" if not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A
                                                 or 0x61 <= b <= 0x7A or b in b"/_")
                           else chr(b) for b in data)
        case ByteSet(bits):
            return _class_text(bits)
        case Seq(items):
            return "".join(emit(i) for i in items)
        case Alt(branches):
            return "|".join(emit(b) for b in branches)
        case Group(inner, capture, name):
            head = f"(?P<{name}>" if name else "(" if capture else "(?:"
            return head + emit(inner) + ")"
        case Repeat(inner, lo, hi, greedy, possessive):
            text = emit(inner)
            if not (isinstance(inner, (ByteSet, Group))
                    or (isinstance(inner, Lit) and len(inner.data) == 1)):
                text = "(?:" + text + ")"
            q = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((lo, hi))
            if q is None:
                q = f"{{{lo}}}" if lo == hi else f"{{{lo},{'' if hi is None else hi}}}"
            return text + q + ("+" if possessive else "" if greedy else "?")
        case Look(inner, ahead, negate):
            return "(?" + ("" if ahead else "<") + ("!" if negate else "=") + emit(inner) + ")"
        case Atomic(inner):
            return "(?>" + emit(inner) + ")"
        case Raw(text):
            return text
    raise TypeError(node)


def literal_prefix(node: Node) -> tuple[bytes, bool]:
    """Bytes every match must start with, and whether ``node`` is *only* that
    literal (so a following item may extend the prefix)."""
    match node:
        case Lit(data):
            return data, True
        case Raw(text) if text in (START_TEXT, ""):
            return b"", True
        case Seq(items):
            out = b""
            for item in items:
                part, whole = literal_prefix(item)
                out += part
                if not whole:
                    return out, False
            return out, True
        case Group(inner):
            return literal_prefix(inner)
        case Alt(branches):
            parts = [literal_prefix(b)[0] for b in branches]
            common = parts[0]
            for p in parts[1:]:
                n = 0
                while n < min(len(common), len(p)) and common[n] == p[n]:
                    n += 1
                common = common[:n]
            return common, False
        case Repeat(inner, lo):
            if lo >= 1:
                return literal_prefix(inner)[0], False
            return b"", False
        case Atomic(inner):
            return literal_prefix(inner)[0], False
    return b"", False


@dataclass(frozen=True, slots=True)
class SelinuxRegex:
    """One compiled wrapped pattern (``^(RE)T$``)."""
    source: str
    regex: re.Pattern[bytes]
    pcre: bool            # compiled by the PCRE2 fallback in composefs-rs
    prefix: bytes         # every matching key starts with this
    final_byte: int | None  # every matching key ends with this byte (the type)

    def matches(self, key: bytes) -> bool:
        if self.pcre:
            return self.regex.search(key) is not None
        return self.regex.match(key) is not None


def translate(pattern: str) -> tuple[Node, bool]:
    """Parse ``pattern`` like composefs-rs: Rust dialect, else PCRE2.
    Returns (AST, is_pcre)."""
    data = pattern.encode()
    try:
        return _Parser(data, rust=True).parse(), False
    except RegexDialectError as rust_error:
        try:
            return _Parser(data, rust=False).parse(), True
        except RegexDialectError as pcre_error:
            raise RegexDialectError(
                f"invalid regex (Rust syntax: {rust_error}; PCRE2: {pcre_error})") from None


def compile_selinux_regex(pattern: str) -> SelinuxRegex:
    """Compile one wrapped file_contexts pattern.  Raises RegexDialectError."""
    node, pcre = translate(pattern)
    text = emit(node)
    try:
        compiled = re.compile(text.encode("latin-1"))
    except re.error as e:
        raise RegexDialectError(f"cannot express regex in Python: {e}") from None
    prefix = b""
    # A PCRE2 search is unanchored: only a pattern that starts with ^ (every
    # well-formed wrapped pattern) has a usable prefix.
    first = node.items[0] if isinstance(node, Seq) and node.items else None
    if not pcre or (isinstance(first, Raw) and first.text == START_TEXT):
        prefix = literal_prefix(node)[0]
    final_byte = None
    if isinstance(node, Seq) and len(node.items) >= 2:
        last, before = node.items[-1], node.items[-2]
        if (isinstance(last, Raw) and last.text in (END_TEXT, r"(?=\n?\Z)")
                and isinstance(before, Lit) and len(before.data) == 1):
            final_byte = before.data[0]
    return SelinuxRegex(pattern, compiled, pcre, prefix, final_byte)
