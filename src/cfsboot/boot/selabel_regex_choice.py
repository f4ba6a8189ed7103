"""Which engine runs a file_contexts regex: Python's backtracking ``re`` when
a structural rule proves its work small, the linear-time automaton of
selabel_regex_nfa.py otherwise.

``choose_engine`` decides once per pattern, from ``backtracking_degree``:
``re`` when backtracking is proven linear, ``re`` up to LONG_KEY bytes and the
automaton beyond when it is proven quadratic, the automaton otherwise (a
pattern needing it whose NFA would exceed MAX_NFA_STATES is refused).  ``re``
stays much faster for the ordinary patterns, which is why it is not replaced
outright.
"""

from __future__ import annotations

import re

from cfsboot.boot.selabel_regex_ast import (
    START_TEXT,
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
from cfsboot.boot.selabel_regex_nfa import (
    LONG_KEY,
    LinearMatcher,
    MatchFn,
    Nfa,
    TooLarge,
    Unsupported,
    compile_linear,
)

__all__ = ["backtracking_degree", "choose_engine"]

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
