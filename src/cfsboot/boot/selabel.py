"""SELinux labels from the image's own policy (composefs-rs ``selabel.rs``).

The policy is ``/etc/selinux/config`` (``SELINUXTYPE=name``) and
``/etc/selinux/<name>/contexts/files/file_contexts{,.local,.homedirs}`` plus
substitutions ``file_contexts.subs`` then ``.subs_dist``, all read from the
tree (never the host, symlinks never followed).  Spec lines are collected in
file order and reversed: the *last* matching line wins, with no libselinux
specificity sorting.  A key is the path bytes plus one type byte.

Lookups are fast enough for real policies (thousands of rules) on large
trees: every pattern is compiled once, and indexed by its literal prefix
(``selabel_regex.literal_prefix``) and its type byte, so a key only tries the
patterns whose prefix it starts with, still in priority order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cfsboot.boot.bootloader import BootEntryError, get_directory, get_directory_opt, get_file_opt
from cfsboot.boot.selabel_regex import RegexDialectError, SelinuxRegex, compile_selinux_regex
from cfsboot.errors import CfsError
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    LeafContent,
    Socket,
    Sparse,
    Stat,
    Symlink,
)

XATTR_SECURITY_SELINUX = b"security.selinux"
NO_LABEL = "<<none>>"
SPEC_FILES = ("file_contexts", "file_contexts.local", "file_contexts.homedirs")
SUBS_FILES = ("file_contexts.subs", "file_contexts.subs_dist")
TYPE_CODES = "bcdpls-"

ReadFile = Callable[[Leaf], bytes]


class SelinuxPolicyError(CfsError):
    """The image's SELinux policy files are unusable."""


# Rust char::is_whitespace (Unicode White_Space); str.split() would also
# split on U+001C..U+001F.
_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000")
_SPLIT = re.compile(f"[{_WHITESPACE}]+")


def split_whitespace(line: str) -> list[str]:
    """Rust ``str::split_whitespace``."""
    return [t for t in _SPLIT.split(line) if t]


def rust_trim(s: str) -> str:
    return re.sub(f"^[{_WHITESPACE}]+|[{_WHITESPACE}]+$", "", s)


def rust_lines(data: bytes, name: str) -> Iterator[tuple[int, str]]:
    """Rust ``BufRead::lines`` with 1-based numbers: split on ``\\n``, drop a
    ``\\r`` before it, each line must be UTF-8 (checked lazily, as Rust does)."""
    chunks = data.split(b"\n")
    last = chunks.pop()
    for number, raw in enumerate(chunks, 1):
        yield number, _decode(raw[:-1] if raw.endswith(b"\r") else raw, name, number)
    if last:
        yield len(chunks) + 1, _decode(last, name, len(chunks) + 1)


def _decode(raw: bytes, name: str, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SelinuxPolicyError(f"SELinux {name} line {number}: not valid UTF-8") from None


def parse_config(data: bytes) -> str | None:
    """The ``SELINUXTYPE`` of ``/etc/selinux/config`` (None if not set)."""
    for _, line in rust_lines(data, "config"):
        key, sep, value = line.partition("=")
        # ASCII-only case folding, like eq_ignore_ascii_case
        if sep and rust_trim(key).encode().lower() == b"selinuxtype":
            return rust_trim(value)
    return None


def parse_spec_file(data: bytes, name: str) -> Iterator[tuple[int, str, str]]:
    """(line number, wrapped pattern, context) for each rule of a spec file."""
    for number, line in rust_lines(data, name):
        tokens = split_whitespace(line)
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"SELinux {name} line {number}"
        if len(tokens) < 2:
            raise SelinuxPolicyError(f"{where}: missing separator after regex")
        regex, second = tokens[0], tokens[1]
        if second.startswith("-"):
            code = second[1:]
            if len(code) != 1 or code not in TYPE_CODES:
                raise SelinuxPolicyError(f"{where}: invalid type code {second}")
            if len(tokens) < 3:
                raise SelinuxPolicyError(f"{where}: missing context field")
            pattern, context, used = f"^({regex}){code}$", tokens[2], 3
        else:
            pattern, context, used = f"^({regex}).$", second, 2
        if len(tokens) > used:
            raise SelinuxPolicyError(f"{where}: trailing data")
        yield number, pattern, context


def parse_subs_file(data: bytes, name: str, aliases: dict[bytes, bytes]) -> None:
    for number, line in rust_lines(data, name):
        tokens = split_whitespace(line)
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"SELinux {name} line {number}"
        if len(tokens) < 2:
            raise SelinuxPolicyError(f"{where}: missing original path")
        if len(tokens) > 2:
            raise SelinuxPolicyError(f"{where}: trailing data")
        aliases[tokens[0].encode()] = tokens[1].encode()


@dataclass(frozen=True, slots=True)
class Rule:
    regex: SelinuxRegex
    context: str
    origin: str  # "file_contexts line 12", for messages


MatchFn = Callable[[bytes], object]

# A position in the prefix trie: (node reached or -1 once off the trie,
# deepest node on the way that holds rules).
TrieState = tuple[int, int]
TRIE_ROOT: TrieState = (0, 0)


class _PrefixIndex:
    """Rules in a byte trie keyed by their literal prefix.  The candidates
    for a key are the rules stored on the trie path the key spells out, in
    priority order; they are cached per (deepest rule node, type byte).

    Walking is resumable: a directory's state is extended by a child's name,
    so a key costs at most the length of its last component."""

    def __init__(self, rules: list[Rule]) -> None:
        self._rules = rules
        self._children: list[dict[int, int]] = [{}]
        self._parent: list[int] = [-1]
        self._rules_at: list[list[int]] = [[]]
        for index, rule in enumerate(rules):
            node = 0
            for byte in rule.regex.prefix:
                nxt = self._children[node].get(byte)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][byte] = nxt
                    self._children.append({})
                    self._parent.append(node)
                    self._rules_at.append([])
                node = nxt
            self._rules_at[node].append(index)
        self._cache: dict[tuple[int, int], list[tuple[MatchFn, int]]] = {}

    def walk(self, state: TrieState, data: bytes) -> TrieState:
        node, deepest = state
        if node < 0:
            return state
        children, rules_at = self._children, self._rules_at
        for byte in data:
            node = children[node].get(byte, -1)
            if node < 0:
                break
            if rules_at[node]:
                deepest = node
        return node, deepest

    def candidates(self, deepest: int, type_byte: int) -> list[tuple[MatchFn, int]]:
        """(match function, rule index) pairs to try in order."""
        found = self._cache.get((deepest, type_byte))
        if found is None:
            indices: list[int] = []
            node = deepest
            while node >= 0:
                indices.extend(self._rules_at[node])
                node = self._parent[node]
            found = []
            for i in sorted(indices):
                regex = self._rules[i].regex
                if regex.final_byte is None or regex.final_byte == type_byte:
                    found.append((regex.match_function, i))
            self._cache[(deepest, type_byte)] = found
        return found


class SelinuxPolicy:
    """A parsed policy: rules in priority order (index 0 wins) and aliases."""

    def __init__(self, rules: list[Rule], aliases: dict[bytes, bytes]) -> None:
        self.rules = rules
        self.aliases = aliases
        self._index = _PrefixIndex(rules)

    @classmethod
    def from_files(cls, read: Callable[[str], bytes | None]) -> SelinuxPolicy:
        """Build from ``read(name)`` = content of contexts/files/<name> or None."""
        rules: list[Rule] = []
        for name in SPEC_FILES:
            data = read(name)
            if data is None:
                if name == "file_contexts":
                    raise SelinuxPolicyError(
                        "SELinux policy is missing mandatory file_contexts file")
                continue
            for number, pattern, context in parse_spec_file(data, name):
                origin = f"{name} line {number}"
                try:
                    regex = compile_selinux_regex(pattern)
                except RegexDialectError as e:
                    raise SelinuxPolicyError(f"SELinux {origin}: {e}") from None
                rules.append(Rule(regex, context, origin))
        aliases: dict[bytes, bytes] = {}
        for name in SUBS_FILES:
            data = read(name)
            if data is not None:
                parse_subs_file(data, name, aliases)
        rules.reverse()  # the last line of the last file has the highest priority
        return cls(rules, aliases)

    @classmethod
    def from_tree(cls, root: Directory, read_file: ReadFile) -> SelinuxPolicy | None:
        """The policy named by the tree's /etc/selinux/config, None if none."""
        try:
            etc_selinux = get_directory_opt(root, b"etc/selinux")
            if etc_selinux is None:
                return None
            config = _read_opt(etc_selinux, b"config", read_file)
            if config is None:
                return None
            name = parse_config(config)
            if name is None:
                return None
            files = get_directory(get_directory(etc_selinux, name.encode()), b"contexts/files")
        except BootEntryError as e:
            raise SelinuxPolicyError(f"SELinux policy: {e}") from None

        def read(filename: str) -> bytes | None:
            try:
                return _read_opt(files, filename.encode(), read_file)
            except BootEntryError as e:
                raise SelinuxPolicyError(f"SELinux policy: {e}") from None

        return cls.from_files(read)

    def substitute(self, path: bytes) -> bytes:
        return self.aliases.get(path, path)

    def match_index(self, key: bytes) -> int | None:
        """Index (into ``rules``) of the highest-priority rule matching ``key``."""
        return self._match_from(self._index.walk(TRIE_ROOT, key), key)

    def _match_from(self, state: TrieState, key: bytes) -> int | None:
        """Like match_index, with ``state`` = the trie walked over ``key``."""
        for match, index in self._index.candidates(state[1], key[-1]):
            if match(key):
                return index
        return None

    def _label(self, index: int | None) -> bytes | None:
        if index is None:
            return None
        context = self.rules[index].context
        return None if context == NO_LABEL else context.encode()

    def lookup(self, path: bytes, typechar: str) -> bytes | None:
        """The label for ``path`` of type ``typechar`` (one of ``bcdpls-``);
        None for no match or ``<<none>>``."""
        return self._label(self.match_index(path + typechar.encode()))

    def path_state(self, parent: TrieState, parent_path: bytes, path: bytes) -> TrieState:
        """Trie state of ``path``, resuming from its parent directory's state
        when ``path`` extends ``parent_path`` (no substitution happened)."""
        if path.startswith(parent_path):
            return self._index.walk(parent, path[len(parent_path):])
        return self._index.walk(TRIE_ROOT, path)

    def lookup_at(self, state: TrieState, path: bytes, typechar: bytes) -> bytes | None:
        """``lookup`` for a path whose trie state is already known."""
        key = path + typechar
        return self._label(self._match_from(self._index.walk(state, typechar), key))


def _read_opt(d: Directory, name: bytes, read_file: ReadFile) -> bytes | None:
    leaf = get_file_opt(d, name)
    if leaf is None or isinstance(leaf.content, Sparse):
        return None
    return read_file(leaf)


# selabel_file(5) type codes of the key's last byte, per leaf content kind
TYPE_BYTES: dict[type, bytes] = {
    Inline: b"-", External: b"-", Sparse: b"-", Symlink: b"l", CharDevice: b"c",
    BlockDevice: b"b", Fifo: b"p", Socket: b"s",
}


def type_char(content: LeafContent) -> str:
    """The type code (``-``, ``l``, ``c``, ``b``, ``p``, ``s``) of a leaf."""
    return TYPE_BYTES[type(content)].decode()


def _set_label(stat: Stat, label: bytes | None) -> None:
    if label is None:
        stat.xattrs.pop(XATTR_SECURITY_SELINUX, None)
    else:
        stat.xattrs[XATTR_SECURITY_SELINUX] = label  # no trailing NUL


def _join(path: bytes, name: bytes) -> bytes:
    """Rust ``PathBuf::push`` of a plain name."""
    if not path or path.endswith(b"/"):
        return path + name
    return path + b"/" + name


def apply_policy(root: Directory, policy: SelinuxPolicy) -> None:
    """Label every directory and leaf (pre-order, names in byte order).

    A hard-linked leaf takes the label of its first path; a later path whose
    label differs gets its own clone of the leaf (the link is broken)."""
    first_label: dict[int, tuple[Leaf, bytes | None]] = {}
    root_state = policy.path_state(TRIE_ROOT, b"", b"/")
    _set_label(root.stat, policy.lookup_at(root_state, b"/", b"d"))
    stack = [(b"/", root_state, root, iter(root.sorted_entries()))]
    while stack:
        path, state, directory, entries = stack[-1]
        for name, child in entries:
            real = policy.substitute(_join(path, name))
            child_state = policy.path_state(state, path, real)
            if isinstance(child, Directory):
                _set_label(child.stat, policy.lookup_at(child_state, real, b"d"))
                stack.append((real, child_state, child, iter(child.sorted_entries())))
                break
            label = policy.lookup_at(child_state, real, TYPE_BYTES[type(child.content)])
            seen = first_label.get(id(child))
            if seen is None:
                first_label[id(child)] = (child, label)
            elif seen[1] != label:
                clone = Leaf(child.stat.copy(), child.content, child.nlink)
                directory.entries[name] = clone
                first_label[id(clone)] = (clone, label)
                child = clone
            _set_label(child.stat, label)
        else:
            stack.pop()


def strip_labels(root: Directory) -> None:
    """Remove ``security.selinux`` from every directory and leaf."""
    stack = [root]
    while stack:
        d = stack.pop()
        d.stat.xattrs.pop(XATTR_SECURITY_SELINUX, None)
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            else:
                child.stat.xattrs.pop(XATTR_SECURITY_SELINUX, None)


def selabel(root: Directory, read_file: ReadFile) -> None:
    """Label the tree from its own policy, or strip all labels if it has none."""
    policy = SelinuxPolicy.from_tree(root, read_file)
    if policy is None:
        strip_labels(root)
    else:
        apply_policy(root, policy)
