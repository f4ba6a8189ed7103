"""Parsers for the two regex dialects of SELinux file_contexts patterns:
Rust ``regex-syntax`` (Unicode off, UTF-8 off, line terminator NUL) and the
PCRE2 fallback (byte mode), both producing ``selabel_regex_ast`` nodes.
See ``selabel_regex`` for the dialect rules being reproduced."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from cfsboot.boot.selabel_regex_ast import (
    ALL_BYTES,
    DIGIT,
    END_TEXT,
    FLAGS_MARKER,
    PCRE_DOLLAR,
    POSIX_CLASSES,
    SPACE,
    START_TEXT,
    WORD,
    Alt,
    Atomic,
    ByteSet,
    Flags,
    Group,
    Lit,
    Look,
    Node,
    Raw,
    RegexDialectError,
    Repeat,
    Seq,
    fold_ascii,
    latin1_property,
    set_of,
)

# bytes that are a literal of their own in both dialects, in any position
_PLAIN_RUN = re.compile(rb"[!\"%',/0-9:;<=>@A-Z_`a-z~]+")
_PLAIN = frozenset(b for b in range(128) if _PLAIN_RUN.fullmatch(bytes([b])))


# ---- parser --------------------------------------------------------------------

@dataclass
class _Parser:
    src: bytes
    rust: bool
    pos: int = 0
    ncaps: int = 0
    names: dict[str, int] = field(default_factory=dict)
    open_groups: list[int] = field(default_factory=list)

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
            elif not self.rust and self.startswith(b"\\Q"):
                end = self.src.find(b"\\E", self.pos + 2)
                end = len(self.src) if end < 0 else end
                items.extend(self.literal(bytes([b]), flags) for b in self.src[self.pos + 2:end])
                self.pos = min(end + 2, len(self.src))
            elif not self.rust and self.startswith(b"\\E"):
                self.pos += 2
            elif c in _PLAIN and not flags.i and not flags.x:
                # fast path: a run of plain literal bytes (most of a path regex);
                # a quantifier right after it applies to the last one only
                m = _PLAIN_RUN.match(self.src, self.pos)
                assert m is not None
                run = m.group(0)
                nxt = self.src[m.end():m.end() + 1]
                if len(run) > 1 and nxt and nxt in b"*+?{":
                    run = run[:-1]
                self.pos += len(run)
                items.append(Lit(run))
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
            return self.named_backref(m.group(1).decode())
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
            self.open_groups.append(self.ncaps)
            node = self.close(inner)
            self.open_groups.pop()
            return Group(node, capture, name)
        return Group(self.close(inner), capture, name)

    def flag_group(self, flags: Flags, inner: Flags) -> Node | None:
        m = re.compile(rb"\?([A-Za-z^-]*)([:)])").match(self.src, self.pos)
        if m is None or (not self.rust and "R" in m.group(1).decode()):
            raise self.fail("unsupported group construct (recursion, conditional, …)")
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
                return ByteSet(ALL_BYTES & ~set_of(0x0A))
            return ByteSet(ALL_BYTES & ~(set_of("\r\n") if flags.R else set_of(0)))
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
            return Raw(r"(?=\n|\Z)" if flags.m else PCRE_DOLLAR)
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
                 "h": ByteSet(set_of("\t ", 0xA0)),
                 "H": ByteSet(ALL_BYTES & ~set_of("\t ", 0xA0)),
                 "v": ByteSet(set_of((0x0A, 0x0D), 0x85)),
                 "V": ByteSet(ALL_BYTES & ~set_of((0x0A, 0x0D), 0x85))}
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
            bits = latin1_property((m.group(1) or m.group(2)).decode(), ch == "P")
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
                       "Z": PCRE_DOLLAR, "b": r"\b", "B": r"\B"}
            if ch in asserts:
                return Raw(asserts[ch])
            if ch == "N":
                if self.peek() == ord("{"):
                    raise self.fail("\\N{U+…} needs UTF mode")
                return ByteSet(ALL_BYTES & ~set_of(0x0A))
            if ch == "R":
                return Atomic(Alt([Lit(b"\r\n"), ByteSet(set_of((0x0A, 0x0D), 0x85))]))
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
                return self.backref(n)
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
            return self.backref(self.ncaps + 1 + n if n < 0 else n)
        return self.named_backref(ref)

    def backref(self, n: int) -> Node:
        """A PCRE2 back-reference.  One to a group that is still open (e.g.
        the wrapper's group 1) is unset at that point and cannot match;
        Python refuses to compile it, so it becomes a failing assertion
        (exact except for a reference inside a repeated open group)."""
        return Raw("(?!)" if n in self.open_groups else f"(?:\\{n})")

    def named_backref(self, name: str) -> Node:
        if name in self.names and self.names[name] in self.open_groups:
            return Raw("(?!)")
        return Raw(f"(?P={name})")

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
            union |= set_of("-")
            started = True
            self.pos += 1
            self.skip_blank(flags)
        if not started and self.peek() == ord("]"):
            union |= set_of("]")
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
            raise self.fail("invalid class range")  # [\d-z]: an error in both
        self.pos += 1
        self.skip_blank(flags)
        second = self.class_item(flags)
        if not isinstance(second, Lit) or len(second.data) != 1:
            raise self.fail("invalid class range")
        lo, hi = first.data[0], second.data[0]
        if lo > hi:
            raise self.fail("invalid class range")
        return set_of((lo, hi))

    def pcre_bracket(self, flags: Flags) -> int:
        """``[...]`` in PCRE2: ``[`` is literal except in ``[:name:]``."""
        if re.compile(rb"\[([:.=])[^\]]*\1\]").match(self.src, self.pos):
            raise self.fail("POSIX named classes are supported only within a class")
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
                if self.peek() == ord("-") and self.peek(1) not in (ord("]"), None):
                    raise self.fail("invalid class range")
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



def parse(pattern: bytes, rust: bool) -> Node:
    """Parse ``pattern`` in one dialect; RegexDialectError if it is invalid there."""
    return _Parser(pattern, rust).parse()
