"""The small regex AST shared by the file_contexts dialect parsers, byte
sets (classes are 256-bit integers), and the emission of explicit Python
``re`` bytes syntax.  See ``selabel_regex`` for the dialect rules."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

ALL_BYTES = (1 << 256) - 1


class RegexDialectError(Exception):
    """The pattern is invalid (or untranslatable) in the given dialect."""


# ---- byte sets ---------------------------------------------------------------

def set_of(*items: int | tuple[int, int] | str) -> int:
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


DIGIT = set_of((0x30, 0x39))
WORD = set_of((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), "_")
SPACE = set_of((0x09, 0x0D), " ")  # \t \n \v \f \r and space: same in both engines
POSIX_CLASSES = {
    "alnum": set_of((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": set_of((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": set_of((0x00, 0x7F)),
    "blank": set_of("\t "),
    "cntrl": set_of((0x00, 0x1F), 0x7F),
    "digit": DIGIT,
    "graph": set_of((0x21, 0x7E)),
    "lower": set_of((0x61, 0x7A)),
    "print": set_of((0x20, 0x7E)),
    "punct": set_of((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": SPACE,
    "upper": set_of((0x41, 0x5A)),
    "word": WORD,
    "xdigit": set_of((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}
UPPER = POSIX_CLASSES["upper"]
LOWER = POSIX_CLASSES["lower"]


def fold_ascii(bits: int) -> int:
    """Add the other ASCII case of every letter (both engines fold ASCII only)."""
    return bits | ((bits & UPPER) << 32) | ((bits & LOWER) >> 32)


def latin1_property(name: str, negate: bool) -> int:
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
END_TEXT = r"\Z"
PCRE_DOLLAR = r"(?=\n?\Z)"
FLAGS_MARKER = Raw("")  # a bare (?flags): emits nothing, cannot be repeated


@dataclass(slots=True)
class Flags:
    i: bool = False
    m: bool = False
    s: bool = False
    x: bool = False
    U: bool = False
    R: bool = False  # Rust CRLF mode
    n: bool = False  # PCRE2 no-auto-capture



# ---- emission ------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _class_text(bits: int) -> str:
    """An explicit Python class; the complemented form when it is shorter."""
    if bits == 0:
        return "(?!)"
    if bits == ALL_BYTES:
        return "[\\x00-\\xff]"
    negate = bits.bit_count() > 128
    if negate:
        bits = ALL_BYTES & ~bits
    out = []
    for m in re.finditer("1+", format(bits, "0256b")[::-1]):  # char i = bit i
        start, end = m.start(), m.end() - 1
        out.append(f"\\x{start:02x}" if start == end else f"\\x{start:02x}-\\x{end:02x}")
    return ("[^" if negate else "[") + "".join(out) + "]"



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

