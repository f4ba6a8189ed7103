"""Linear-time matching for file_contexts regexes: AST -> Thompson NFA ->
lazily built DFA, and the rule for when Python's backtracking ``re`` is safe.

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

``choose_engine`` decides once per pattern which engine runs it, from the
structural rule ``backtracking_degree``: ``re`` when backtracking is proven
linear, ``re`` up to LONG_KEY bytes and the automaton beyond when it is
proven quadratic, the automaton otherwise (a pattern needing it whose NFA
would exceed MAX_NFA_STATES is refused).  ``re`` stays much faster for the
ordinary patterns, which is why it is not replaced outright.

Not thread-safe: the DFA caches grow during matching (like the policy's
own candidate cache).
"""

from __future__ import annotations

import re
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
    RegexDialectError,
    Repeat,
    Seq,
)

__all__ = ["LONG_KEY", "MAX_CACHED_CELLS", "MAX_DFA_STATES", "MAX_NFA_STATES", "LinearMatcher",
           "MatchFn", "backtracking_degree", "choose_engine", "compile_linear"]

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


# ---- when backtracking is safe ---------------------------------------------------

MAX_SAFE_DEGREE = 2   # re may run a pattern whose cost is O(W * n^2) at most
MAX_SAFE_WAYS = 16    # W: bounded choices through the pattern
LOOP_SPAN = 8         # {m,n} with n - m above this is treated as a loop
_CAP = 1 << 20


class _Ambiguous(Exception):
    pass


def backtracking_degree(node: Node) -> int | None:
    """The degree e of a bound O(W * n^e) on Python's backtracking ``re``
    running ``node`` on an n-byte key, or None when no bound with e <=
    MAX_SAFE_DEGREE and W <= MAX_SAFE_WAYS is known.  Conservative and
    purely structural:

    * a *loop* is a repetition that can iterate more than once (``*``, ``+``,
      ``{m,}``, ``{m,n}`` with n - m > LOOP_SPAN).  Every loop body must be
      *iteration-unambiguous*: not nullable, and a sequence of items each of
      which is fixed (literal, class, assertion, fixed count of fixed items),
      an alternation of fixed branches with pairwise disjoint first bytes, or
      a repetition of one byte class containing no byte that can come next
      (later in the body, or first in the next iteration).  Such a body cuts
      a string into iterations in at most one way: ``(a+)+``, ``(a|a)*``,
      ``(.*)*``, ``(\\.[^/]*)*`` fail (exponential), ``(\\.[0-9]+)*``,
      ``([^/]*/)*`` pass;
    * a loop is *decided* when what follows it cannot be empty nor start
      with a byte its body can start with (``[^/]+/``, ``(\\.[0-9]+)*-``):
      the next byte alone says whether to iterate again, so giving
      iterations back fails at once; decided loops add O(n) work to each way
      through the pattern, no choice;
    * every other loop is *ambiguous*: it can end at O(n) places, and d
      ambiguous loops (nested ones included, a fixed count of a loop
      counting each copy) share a key in O(n^d) ways (``.*.*.*z``);
    * W is the product of the bounded choices: each ``?`` or short ``{m,n}``
      that is not decided (n - m + 1 ways, over the whole count), and each
      alternation whose branches may start alike (the sum of their ways).

    Then e = d, plus 1 if there is a decided loop.  ``/usr(/.*)?`` has e = 1;
    ``/usr/lib/(.*/)?foo(/.*)?`` has e = 2 (W = 4)."""
    try:
        ambiguous, decided, ways, _, _ = _cost(node, 0, True)
    except (_Ambiguous, RecursionError):
        return None
    degree = ambiguous + (1 if decided else 0)
    return degree if degree <= MAX_SAFE_DEGREE and ways <= MAX_SAFE_WAYS else None


Cost = tuple[int, int, int, int, bool]


def _cost(node: Node, follow: int, follow_nullable: bool) -> Cost:
    """(ambiguous loops, decided loops, bounded ways, first bytes, nullable)
    of ``node`` when what comes after it starts with a byte of ``follow`` or
    (``follow_nullable``) may be empty or anything; _Ambiguous for a loop
    whose iterations can split a string in several ways."""
    match node:
        case Seq(items):
            ambiguous = decided = 0
            ways = 1
            first, nullable = 0, True  # of the items seen so far (a suffix)
            for item in reversed(items):
                # plain items cost nothing: most of a path pattern, kept quick
                if isinstance(item, Lit):
                    if item.data:
                        first, nullable = 1 << item.data[0], False
                elif isinstance(item, ByteSet):
                    first, nullable = item.bits, False
                elif not isinstance(item, Raw):
                    after = first | follow if nullable else first
                    a, d, w, item_first, item_nullable = _cost(item, after,
                                                               nullable and follow_nullable)
                    ambiguous, decided, ways = ambiguous + a, decided + d, min(ways * w, _CAP)
                    if item_nullable:
                        first |= item_first
                    else:
                        first, nullable = item_first, False
            return ambiguous, decided, ways, first, nullable
        case Group(inner) | Atomic(inner):
            return _cost(inner, follow, follow_nullable)
        case Alt(branches):
            costs = [_cost(b, follow, follow_nullable) for b in branches]
            ambiguous = max(c[0] for c in costs)
            decided = max(c[1] for c in costs)
            first, nullable, overlap = 0, False, False
            for c in costs:
                overlap = overlap or c[4] or bool(first & c[3])
                first, nullable = first | c[3], nullable or c[4]
            ways = min(sum(c[2] for c in costs), _CAP) if overlap else max(c[2] for c in costs)
            return ambiguous, decided, ways, first, nullable
        case Look(inner):
            a, d, w, _, _ = _cost(inner, 0, True)
            return a, d, w, 0, True
        case Repeat(inner, lo, hi):
            first, inner_nullable = _first_nullable(inner)
            # after an iteration comes another one or what follows the loop
            a, d, w, _, _ = _cost(inner, first | follow, follow_nullable)
            nullable = lo == 0 or inner_nullable
            if hi == 0:
                return 0, 0, 1, 0, True
            if lo == hi:
                return a * lo, d, _power(w, lo), first, nullable
            unambiguous = _iteration_unambiguous(inner)
            next_byte_decides = unambiguous and not follow_nullable and not first & follow
            if hi is None or hi - lo > LOOP_SPAN:
                if not unambiguous:
                    raise _Ambiguous
                copies = max(lo, 1)
                a, w = a * copies, _power(w, copies)
                if next_byte_decides:
                    return a, d + 1, w, first, nullable
                return a + 1, d, w, first, nullable
            choices = 1 if next_byte_decides else hi - lo + 1
            return a * hi, d, min(_power(w, hi) * choices, _CAP), first, nullable
        case Lit(data):
            return (0, 0, 1, 1 << data[0], False) if data else (0, 0, 1, 0, True)
        case ByteSet(bits):
            return 0, 0, 1, bits, False
    return 0, 0, 1, 0, True  # assertions


def _power(w: int, k: int) -> int:
    return 1 if w == 1 or k == 0 else min(w ** min(k, 64), _CAP)


def _first_nullable(node: Node) -> tuple[int, bool]:
    """(bytes a match can start with, whether it can be empty)."""
    match node:
        case Lit(data):
            return (1 << data[0], False) if data else (0, True)
        case ByteSet(bits):
            return bits, False
        case Seq(items):
            return _first_of(items)
        case Alt(branches):
            first, nullable = 0, False
            for b in branches:
                f, n = _first_nullable(b)
                first, nullable = first | f, nullable or n
            return first, nullable
        case Group(inner) | Atomic(inner):
            return _first_nullable(inner)
        case Repeat(inner, lo, hi):
            if hi == 0:
                return 0, True
            f, n = _first_nullable(inner)
            return f, n or lo == 0
    return 0, True  # assertions and look-arounds are zero-width


def _first_of(items: list[Node]) -> tuple[int, bool]:
    first = 0
    for item in items:
        f, nullable = _first_nullable(item)
        first |= f
        if not nullable:
            return first, False
    return first, True


def _unwrap(node: Node) -> Node:
    while isinstance(node, Group):
        node = node.node
    return node


def _single_class_repeat(node: Node) -> int | None:
    """The byte set of a variable repetition of one byte (``[^/]*``)."""
    node = _unwrap(node)
    if not isinstance(node, Repeat) or node.lo == node.hi:
        return None
    inner = _unwrap(node.node)
    if isinstance(inner, ByteSet):
        return inner.bits
    if isinstance(inner, Lit) and len(inner.data) == 1:
        return 1 << inner.data[0]
    return None


def _fixed(node: Node) -> bool:
    """Matches in at most one way (one length, no choice)."""
    match node:
        case Lit() | ByteSet() | Raw():
            return True
        case Group(inner):
            return _fixed(inner)
        case Seq(items):
            return all(_fixed(i) for i in items)
        case Repeat(inner, lo, hi):
            return lo == hi and _fixed(inner)
    return False


def _disjoint_starts(branches: list[Node]) -> bool:
    seen = 0
    for b in branches:
        first, nullable = _first_nullable(b)
        if nullable or seen & first:
            return False
        seen |= first
    return True


def _flatten(node: Node) -> list[Node]:
    node = _unwrap(node)
    if isinstance(node, Seq):
        return [leaf for item in node.items for leaf in _flatten(item)]
    return [node]


def _iteration_unambiguous(body: Node) -> bool:
    first, nullable = _first_nullable(body)
    if nullable:
        return False
    items = _flatten(body)
    for j, item in enumerate(items):
        if _fixed(item):
            continue
        single = _single_class_repeat(item)
        if single is not None:
            cont, cont_nullable = _first_of(items[j + 1:])
            if cont_nullable:
                cont |= first  # the next iteration
            if single & cont:
                return False
            continue
        if isinstance(item, Alt) and all(_fixed(b) for b in item.branches) \
                and _disjoint_starts(item.branches):
            continue
        return False
    return True


# ---- the choice ------------------------------------------------------------------

# a translation without quantifier or alternation cannot backtrack (literals
# and classes are emitted as \xNN escapes, so these bytes are syntax)
_CHOICE_SYNTAX = re.compile(r"[*+{|]|(?<!\()\?")


def choose_engine(node: Node, search: bool, backtracking: MatchFn,
                  emitted: str | None = None) -> tuple[str, MatchFn]:
    """(engine name, match function) for ``node``, whose ``re`` translation
    is ``backtracking``; decided once, at compile time:

    * ``"re"``: ``backtracking_degree`` <= 1 (plus 1 for a search that is
      not anchored at the start: it is retried at every position), re's
      work is O(W * n);
    * ``"re+linear"``: degree 2, O(W * n^2): re for keys up to LONG_KEY
      bytes, the automaton (built on the first longer key) beyond;
    * ``"linear"``: no bound known, the automaton for every key;
    * ``"re-unproven"``: no bound known but the automaton cannot express the
      pattern (PCRE2 look-around, atomic group, possessive quantifier,
      back-reference): backtracking, as upstream's PCRE2 (which has a match
      limit; we have none).

    A pattern with no bound whose automaton would be too large (huge nested
    counted repetitions, ``(a{0,100}){0,100}b``) is refused with
    RegexDialectError rather than risk exponential time.

    ``emitted``, the Python text of ``node`` (selabel_regex_ast.emit), only
    allows a quick answer for the many patterns without any choice."""
    if emitted is not None and _CHOICE_SYNTAX.search(emitted) is None:
        return "re", backtracking
    degree = backtracking_degree(node)
    if degree is not None and search and not _anchored(node):
        degree += 1  # re.search tries every start position
    if degree is not None and degree <= 1:
        return "re", backtracking
    if degree is not None:
        return "re+linear", _long_key_guard(node, search, backtracking)
    try:
        return "linear", LinearMatcher(Nfa(node), search).matches
    except TooLarge as e:
        raise RegexDialectError(f"regex too complex to match in linear time ({e})") from None
    except Unsupported:
        return "re-unproven", backtracking


def _anchored(node: Node) -> bool:
    """Does every match start with ``\\A`` (so a search fails fast elsewhere)?"""
    match node:
        case Seq(items):
            for item in items:
                if isinstance(item, Raw) and item.text == START_TEXT:
                    return True
                if not (isinstance(item, Raw) and item.text == "") \
                        and not (isinstance(item, Group) and _anchored(item.node)):
                    return False
            return False
        case Group(inner):
            return _anchored(inner)
        case Alt(branches):
            return all(_anchored(b) for b in branches)
    return isinstance(node, Raw) and node.text == START_TEXT


def _long_key_guard(node: Node, search: bool, backtracking: MatchFn) -> MatchFn:
    built: list[MatchFn] = []

    def match(key: bytes) -> object:
        if len(key) <= LONG_KEY:
            return backtracking(key)
        if not built:
            linear = compile_linear(node, search)
            built.append(backtracking if linear is None else linear.matches)
        return built[0](key)

    return match
