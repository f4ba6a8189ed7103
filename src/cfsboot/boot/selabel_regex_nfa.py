"""Linear-time matching for file_contexts regexes: AST -> Thompson NFA ->
lazily built DFA.  (When Python's backtracking ``re`` is safe instead, and
which engine runs a pattern, is decided in selabel_regex_choice.py.)

Why: the policy comes from the image being sealed, and a pattern such as
``(a+)+b`` or ``.*.*.*.*z`` makes a backtracking engine take exponential or
high-polynomial time on a path of a few dozen bytes, while composefs-rs
matches with regex-automata's lazy DFA (linear).  Matching is a pure
membership test (does the wrapped pattern match the key, anchored at the
start like ``re.match`` or anywhere like ``re.search`` for the PCRE2
fallback), so captures, greediness and branch order do not matter and an
automaton answers exactly what ``re`` answers.

The automaton covers everything the AST can express except PCRE2-only
constructs that are not regular or whose meaning depends on backtracking
order: look-around groups (``Look``), atomic groups and possessive
quantifiers, back-references.  ``compile_linear`` returns None for those
(they stay on ``re``, as upstream keeps them on backtracking PCRE2).
Zero-width assertions that only look at the neighbouring bytes (``^ $ \\A
\\z \\Z``, PCRE2's ``$`` before a final newline, ``\\b \\B \\< \\>``,
multi-line ``^``/``$``) are NFA edges checked against the previous byte and
the next byte; the DFA state remembers the previous byte's kind.

The DFA is built on demand: a state is a set of NFA states (plus the kind of
the previous byte), a transition is computed the first time it is needed and
cached per byte class.  Cached states are capped per pattern and across all
patterns (``MAX_DFA_STATES``, ``MAX_CACHED_CELLS``); past the cap a search
continues as plain NFA set simulation, still linear in the key (times the
NFA size), so memory stays bounded whatever the policy.

Not thread-safe: the DFA caches grow during matching (like the policy's
own candidate cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cfsboot.boot.selabel_regex_ast import (
    ALL_BYTES,
    END_TEXT,
    PCRE_DOLLAR,
    START_TEXT,
    WORD,
    Alt,
    Atomic,
    ByteSet,
    Group,
    Lit,
    Look,
    Node,
    Raw,
    Repeat,
    Seq,
)

__all__ = ["LONG_KEY", "MAX_CACHED_CELLS", "MAX_DFA_STATES", "MAX_NFA_STATES", "LinearMatcher",
           "MatchFn", "Nfa", "TooLarge", "Unsupported", "compile_linear"]

MAX_NFA_STATES = 10_000      # bigger automata are refused (huge counted repetitions)
MAX_DFA_STATES = 2_000       # cached DFA states per pattern
MAX_CACHED_CELLS = 4_000_000  # cached transitions + NFA state ids, all patterns (~64 MB)

LONG_KEY = 256               # longer keys skip ``re`` for degree-2 patterns

NL, CR = 0x0A, 0x0D
MatchFn = Callable[[bytes], object]  # truthy if the key matches

# ---- assertions ------------------------------------------------------------------
# A zero-width assertion is a predicate on (previous byte, next byte, "the next
# byte is a newline that ends the key"); -1 stands for the edge of the key.
Assertion = Callable[[int, int, bool], bool]


def _word(b: int) -> bool:
    return b >= 0 and (WORD >> b) & 1 == 1


# keyed by the Raw text the parser emits (selabel_regex_parse)
ASSERTIONS: dict[str, Assertion] = {
    START_TEXT: lambda p, n, last_nl: p < 0,
    END_TEXT: lambda p, n, last_nl: n < 0,
    PCRE_DOLLAR: lambda p, n, last_nl: n < 0 or last_nl,
    "(?!)": lambda p, n, last_nl: False,
    r"\b": lambda p, n, last_nl: _word(p) != _word(n),
    r"\B": lambda p, n, last_nl: _word(p) == _word(n),
    r"\b(?=\w)": lambda p, n, last_nl: not _word(p) and _word(n),
    r"\b(?<=\w)": lambda p, n, last_nl: _word(p) and not _word(n),
    r"(?<!\w)": lambda p, n, last_nl: not _word(p),
    r"(?!\w)": lambda p, n, last_nl: not _word(n),
    r"(?:\A|(?<=\n)|(?<=\r)(?!\n))": lambda p, n, last_nl: p < 0 or p == NL or (
        p == CR and n != NL),
    r"(?:\A|(?<=\n))": lambda p, n, last_nl: p < 0 or p == NL,
    r"(?:\Z|(?=\r)|(?<!\r)(?=\n))": lambda p, n, last_nl: n < 0 or n == CR or (
        p != CR and n == NL),
    r"(?=\n|\Z)": lambda p, n, last_nl: n < 0 or n == NL,
    r"(?:\A|(?<=\n)(?!\Z))": lambda p, n, last_nl: p < 0 or (p == NL and n >= 0),
}
# assertions that never look at the neighbouring bytes' values
# (PCRE2 ``$`` before a final newline is handled apart, see LinearMatcher.matches)
_EDGE_ONLY = frozenset({START_TEXT, END_TEXT, PCRE_DOLLAR, "(?!)"})


def _prev_kind(b: int) -> int:
    """The previous byte, reduced to what any assertion can tell apart."""
    if b in (NL, CR):
        return b
    return ord("a") if _word(b) else ord(" ")


class Unsupported(Exception):
    """The pattern cannot be (or is too large to be) a finite automaton."""


class TooLarge(Unsupported):
    """The automaton would exceed MAX_NFA_STATES (or the nesting limit)."""


# ---- Thompson NFA ----------------------------------------------------------------

_BYTES, _SPLIT, _ASSERT, _MATCH = range(4)


class Nfa:
    """States in parallel lists: a byte state consumes one byte of ``mask``
    and goes to ``out[s][0]``; a split state goes to all of ``out[s]`` for
    free; an assertion state goes to ``out[s][0]`` if its predicate holds."""

    def __init__(self, node: Node) -> None:
        self.kind: list[int] = []
        self.mask: list[int] = []
        self.out: list[list[int]] = []
        self.pred: list[Assertion | None] = []
        self.assertions: set[str] = set()
        try:
            # refuse before spending time on ``(x{1000}){1000}``
            if _size(node) > MAX_NFA_STATES:
                raise TooLarge(f"automaton over {MAX_NFA_STATES} states")
            self.start = self._build(node, self._add(_MATCH, 0, []))
        except RecursionError:
            raise TooLarge("regex nested too deeply") from None

    def _add(self, kind: int, mask: int, out: list[int], pred: Assertion | None = None) -> int:
        if len(self.kind) >= MAX_NFA_STATES:
            raise TooLarge(f"automaton over {MAX_NFA_STATES} states")
        self.kind.append(kind)
        self.mask.append(mask)
        self.out.append(out)
        self.pred.append(pred)
        return len(self.kind) - 1

    def _build(self, node: Node, nxt: int) -> int:
        """The entry state of ``node`` followed by state ``nxt``."""
        match node:
            case Lit(data):
                for b in reversed(data):
                    nxt = self._add(_BYTES, 1 << b, [nxt])
                return nxt
            case ByteSet(bits):
                return self._add(_BYTES, bits, [nxt])
            case Seq(items):
                for item in reversed(items):
                    nxt = self._build(item, nxt)
                return nxt
            case Alt(branches):
                return self._add(_SPLIT, 0, [self._build(b, nxt) for b in branches])
            case Group(inner):
                return self._build(inner, nxt)
            case Repeat(inner, lo, hi, _, possessive):
                if possessive:
                    raise Unsupported("possessive quantifier")
                if hi is None:
                    loop = self._add(_SPLIT, 0, [])
                    self.out[loop] = [self._build(inner, loop), nxt]
                    tail = loop
                else:  # X{0,k} = (X(X(…)?)?)?
                    tail = nxt
                    for _ in range(hi - lo):
                        tail = self._add(_SPLIT, 0, [self._build(inner, tail), nxt])
                for _ in range(lo):
                    tail = self._build(inner, tail)
                return tail
            case Raw(""):
                return nxt
            case Raw(text) if text in ASSERTIONS:
                self.assertions.add(text)
                return self._add(_ASSERT, 0, [nxt], ASSERTIONS[text])
        raise Unsupported(f"not a finite-automaton construct: {type(node).__name__}")

    def closure(self, kernel: Iterable[int], prev: int, nxt: int,
                last_nl: bool) -> tuple[list[int], bool]:
        """Byte states reachable from ``kernel`` without consuming input at a
        position between ``prev`` and ``nxt``, and whether MATCH is."""
        kind, out, pred = self.kind, self.out, self.pred
        seen: set[int] = set()
        stack = list(kernel)
        found: list[int] = []
        matched = False
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            k = kind[s]
            if k == _BYTES:
                found.append(s)
            elif k == _SPLIT:
                stack.extend(out[s])
            elif k == _ASSERT:
                check = pred[s]
                if check is not None and check(prev, nxt, last_nl):
                    stack.append(out[s][0])
            else:
                matched = True
        return found, matched

    def byte_classes(self) -> list[int]:
        """Bytes no state (nor assertion) can tell apart, as 256-bit sets."""
        masks = {m for k, m in zip(self.kind, self.mask, strict=True) if k == _BYTES}
        if self.assertions - _EDGE_ONLY:
            masks |= {WORD, 1 << NL, 1 << CR}
        classes = [ALL_BYTES]
        for m in masks:
            if len(classes) == 256:
                break  # every byte on its own already
            split: list[int] = []
            for c in classes:
                split.extend(part for part in (c & m, c & ~m) if part)
            classes = split
        return classes


def _size(node: Node) -> int:
    """An upper bound of the NFA states of ``node`` (capped above the limit)."""
    match node:
        case Lit(data):
            return len(data)
        case Seq(items):
            return min(sum(_size(i) for i in items), MAX_NFA_STATES + 1)
        case Alt(branches):
            return min(1 + sum(_size(b) for b in branches), MAX_NFA_STATES + 1)
        case Group(inner) | Atomic(inner) | Look(inner):
            return _size(inner)
        case Repeat(inner, lo, hi):
            copies = lo + 1 if hi is None else hi
            return min((_size(inner) + 1) * max(copies, 1), MAX_NFA_STATES + 1)
    return 1


# ---- lazy DFA --------------------------------------------------------------------

_UNKNOWN, _DEAD, _MATCHED, _OVERFLOW = -1, -2, -3, -4
_cells_left = [MAX_CACHED_CELLS]  # shared by all matchers; refunded when one is freed


class LinearMatcher:
    """Matches keys in time linear in their length.  ``search`` False is
    ``re.match`` (anchored at the start, any end), True is ``re.search``."""

    def __init__(self, nfa: Nfa, search: bool) -> None:
        self._cells = 0  # cached transitions held, refunded to _cells_left by __del__
        self._nfa = nfa
        self._search = search
        classes = nfa.byte_classes()
        table = bytearray(256)
        self._reps: list[int] = []
        for index, bits in enumerate(classes):
            self._reps.append((bits & -bits).bit_length() - 1)  # lowest member
            while bits:
                low = bits & -bits
                table[low.bit_length() - 1] = index
                bits ^= low
        self._table = bytes(table)
        self._width = len(classes)
        # only prev-byte-sensitive assertions need the previous byte's kind
        self._track_prev = bool(nfa.assertions - _EDGE_ONLY)
        self._dollar = PCRE_DOLLAR in nfa.assertions
        self._kernels: list[frozenset[int]] = []
        self._prevs: list[int] = []
        self._rows: list[list[int]] = []
        self._at_end: list[int] = []
        self._ids: dict[tuple[frozenset[int], int], int] = {}
        self._pending: tuple[frozenset[int], int] = (frozenset(), -1)
        self._start = self._intern(frozenset([nfa.start]), -1)  # always state 0

    def __del__(self) -> None:
        _cells_left[0] += self._cells

    @property
    def cached_states(self) -> int:
        return len(self._rows)

    def _intern(self, kernel: frozenset[int], prev: int) -> int:
        key = (kernel, prev)
        found = self._ids.get(key)
        if found is not None:
            return found
        cost = self._width + len(kernel)  # the row and the NFA state set
        if self._rows and (len(self._rows) >= MAX_DFA_STATES or _cells_left[0] < cost):
            self._pending = key
            return _OVERFLOW
        _cells_left[0] -= cost
        self._cells += cost
        self._ids[key] = len(self._rows)
        self._kernels.append(kernel)
        self._prevs.append(prev)
        self._rows.append([_UNKNOWN] * self._width)
        self._at_end.append(_UNKNOWN)
        return len(self._rows) - 1

    def _advance(self, kernel: frozenset[int], prev: int, b: int,
                 last_nl: bool) -> tuple[bool, frozenset[int]]:
        """(MATCH reached before ``b``, NFA states after consuming ``b``)."""
        nfa = self._nfa
        states, matched = nfa.closure(kernel, prev, b, last_nl)
        mask, out = nfa.mask, nfa.out
        nxt = {out[s][0] for s in states if mask[s] >> b & 1}
        if self._search:
            nxt.add(nfa.start)
        return matched, frozenset(nxt)

    def _transition(self, state: int, cls: int) -> int:
        b = self._reps[cls]
        matched, kernel = self._advance(self._kernels[state], self._prevs[state], b, False)
        if matched:
            target = _MATCHED
        elif not kernel:
            target = _DEAD
        else:
            target = self._intern(kernel, _prev_kind(b) if self._track_prev else 0)
            if target == _OVERFLOW:
                return target
        self._rows[state][cls] = target
        return target

    def matches(self, key: bytes) -> bool:
        rows = self._rows
        state = self._start
        classes = key.translate(self._table)
        # PCRE2 ``$`` also holds before a final newline: that byte is not a
        # plain middle position, so it is stepped by the NFA below
        tail = 1 if self._dollar and key.endswith(b"\n") else 0
        if tail:
            classes = classes[:-1]
        for pos, cls in enumerate(classes):
            nxt = rows[state][cls]
            if nxt < 0:
                if nxt == _UNKNOWN:
                    nxt = self._transition(state, cls)
                if nxt == _MATCHED:
                    return True
                if nxt == _DEAD:
                    return False
                if nxt == _OVERFLOW:
                    kernel, prev = self._pending
                    return self._simulate(kernel, prev, key, pos + 1)
            state = nxt
        if tail:
            return self._simulate(self._kernels[state], self._prevs[state], key, len(key) - 1)
        end = self._at_end[state]
        if end == _UNKNOWN:
            end = int(self._nfa.closure(self._kernels[state], self._prevs[state], -1, False)[1])
            self._at_end[state] = end
        return end == 1

    def _simulate(self, kernel: frozenset[int], prev: int, key: bytes, pos: int) -> bool:
        """Plain NFA set simulation of ``key[pos:]`` (nothing cached)."""
        for i in range(pos, len(key)):
            b = key[i]
            matched, kernel = self._advance(kernel, prev, b,
                                            self._dollar and b == NL and i == len(key) - 1)
            if matched:
                return True
            if not kernel:
                return False
            prev = _prev_kind(b) if self._track_prev else 0
        return self._nfa.closure(kernel, prev, -1, False)[1]


def compile_linear(node: Node, search: bool) -> LinearMatcher | None:
    """A linear-time matcher for ``node``, or None if it has constructs an
    automaton cannot express (look-around, atomic/possessive, back-references)
    or its NFA would exceed ``MAX_NFA_STATES`` (huge counted repetitions)."""
    try:
        return LinearMatcher(Nfa(node), search)
    except Unsupported:
        return None
