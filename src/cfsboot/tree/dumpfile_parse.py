"""Dumpfile parser with composefs-rs semantics (spec dumpfile.md §2, §4.1, §4.3).

Reproduces ``dumpfile_parse::Entry::parse`` + ``dumpfile_to_filesystem`` of
composefs-rs, plus the deliberate extra rejections of §4.3 (empty xattr keys,
regular files larger than 2**53) and the tree validation composefs-rs runs
before writing an image (orphaned leaves, hard-linked whiteouts).

Quirks kept on purpose (they are what composefs-rs does):
* the input must be UTF-8; blank lines are skipped; ``\\r\\n`` ends a line too;
* a later line for an existing path replaces the entry (a later ``/`` line
  replaces the root stat); hard-link targets are looked up in a path -> leaf
  map that is never pruned, exactly like composefs-rs's ``hardlinks`` map;
* the root line's type is not checked; a hard-link root line gives a zero stat;
* duplicate xattr keys: entries are sorted by (key, value), the last one wins.

Speed: most lines of a real dumpfile are alike, so ``_RsBuilder._add_common``
takes them the short way (modes, small numbers and xattr sets memoised from
earlier lines, no per-field function calls) and gives every other line, and
every line with an error, to the general code, which names the error.
"""

from __future__ import annotations

import re

from cfsboot.tree.dumpfile_base import (
    CONTENT,
    DIGEST,
    GID,
    MAX_CHUNKED_SIZE,
    MEMO_MAX,
    MODE,
    MTIME,
    N_FIXED,
    NLINK,
    PATH,
    PAYLOAD,
    RDEV,
    SIZE,
    U32_MAX,
    U64_MAX,
    UID,
    DumpfileError,
    LineError,
    fixed_numbers,
    parse_dec,
    parse_oct,
    show,
    split_lines,
)
from cfsboot.tree.escape import EscapeError, unescape
from cfsboot.tree.model import (
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    S_IFSOCK,
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
    digest_from_object_path,
    is_whiteout,
    leaf_link_counts,
    object_path,
)

PATH_MAX = 4096
SYMLINK_MAX = 1024
MAX_INLINE_CONTENT = 512
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65535
XATTR_LIST_MAX = 65535

_HEX_DIGEST = re.compile(rb"[0-9a-fA-F]{64}|[0-9a-fA-F]{128}")
_FIELD_NAMES = ("path", "size", "mode", "nlink", "uid", "gid", "rdev", "mtime",
                "payload", "content", "digest")


def unescape_path(field: bytes) -> bytes:
    """composefs-rs ``unescape_to_path``: no NUL, not empty, <= PATH_MAX."""
    p = unescape(field)
    if b"\0" in p:
        raise LineError("path contains a NUL byte")
    if not p:
        raise LineError("empty path")
    if len(p) > PATH_MAX:
        raise LineError(f"path is too long: {len(p)} bytes")
    return p


# An (unescaped) canonical absolute path other than "/" without NUL bytes
# (the fast path asks this only of paths with a component starting with ".").
_CANONICAL = re.compile(rb"(?:/(?!\.\.?(?:/|\Z))[^/\0]+)+", re.S).fullmatch
# A non-empty PAYLOAD without escapes or NUL bytes, at most PATH_MAX long.
_PLAIN_TARGET = re.compile(rb"[^\\\0]{1,%d}" % PATH_MAX).fullmatch


def _is_canonical(p: bytes) -> bool:
    """An absolute path without escapes is canonical (no //, ., .. parts)."""
    return p == b"/" or (b"//" not in p and b"/./" not in p and b"/../" not in p
                         and not p.endswith((b"/", b"/.", b"/..")))


def canonical_path(field: bytes) -> bytes:
    """``unescape_to_path_canonical``: absolute, no empty, ``.`` or ``..`` component."""
    if (field[:1] == b"/" and b"\\" not in field and b"\0" not in field
            and len(field) <= PATH_MAX and _is_canonical(field)):
        return field  # the common case, checked without a Python loop
    p = unescape_path(field)
    if p[:1] != b"/":
        raise LineError(f"path '{show(p)}' is not absolute")
    if p != b"/":
        for comp in p[1:].split(b"/"):
            if comp in (b"", b".", b".."):
                what = "an empty" if not comp else f"a {comp.decode()!r}"
                raise LineError(f"path '{show(p)}' has {what} component")
    return p


def parse_xattrs(tokens: list[bytes]) -> dict[bytes, bytes]:
    pairs = []
    total_names = 0
    for tok in tokens:
        key, eq, value = tok.partition(b"=")
        if not eq:
            raise LineError(f"xattr '{show(tok)}' has no '='")
        if b"\\" in tok:
            key = unescape(key)
            value = unescape(value)
        if not key:
            # composefs-rs accepts this; C (and we, spec §4.3) do not.
            raise LineError("empty xattr name")
        if b"\0" in key:
            raise LineError("xattr name contains a NUL byte")
        if len(key) > XATTR_NAME_MAX:
            raise LineError(f"xattr name too long ({len(key)} > {XATTR_NAME_MAX} bytes)")
        if len(value) > XATTR_SIZE_MAX:
            raise LineError(f"xattr value too long ({len(value)} > {XATTR_SIZE_MAX} bytes)")
        total_names += len(key)
        pairs.append((key, value))
    if total_names > XATTR_LIST_MAX:
        raise LineError("too many xattrs (names exceed 65535 bytes)")
    if len(pairs) > 1:
        pairs.sort()
    return dict(pairs)


class _RsBuilder:
    def __init__(self) -> None:
        self.root: Directory | None = None
        self.dirs: dict[bytes, Directory] = {}
        self.leaves_by_path: dict[bytes, Leaf] = {}   # composefs-rs ``hardlinks``
        self.leaf_line: dict[Leaf, int] = {}
        self.replaced = False
        self.extra_links: dict[Leaf, int] = {}  # hard-link lines naming each leaf
        self.digest_size: int | None = None
        # Per-parse memos of fields that repeat (see dumpfile_base.MEMO_MAX).
        self.modes: dict[bytes, int] = {}
        self.numbers: dict[bytes, int] = {}
        self.xattrs: dict[bytes, dict[bytes, bytes]] = {}

    # -- one line -----------------------------------------------------------

    def add_line(self, fields: list[bytes], lineno: int) -> None:
        """Add a (non-blank) line, split on spaces, that ``_add_common`` declined."""
        path = canonical_path(fields[PATH])
        if len(fields) <= MODE:
            raise LineError(f"missing {_FIELD_NAMES[len(fields)]} field")
        modeval = fields[MODE]
        at = modeval.find(b"@")
        if at >= 0:
            parse_dec(fields[SIZE], U64_MAX, "size")
            self._hardlink(path, parse_oct(modeval[at + 1:], U32_MAX, "mode"), fields)
            return
        mode = parse_oct(modeval, U32_MAX, "mode")
        if len(self.modes) < MEMO_MAX:
            self.modes[modeval] = mode
        if len(fields) < N_FIXED:
            raise LineError(f"missing {_FIELD_NAMES[len(fields)]} field")
        size, nlink, uid, gid, rdev, sec, nsec = fixed_numbers(fields, U32_MAX, self.numbers)
        stat = Stat(mode & 0o7777, uid, gid, sec, nsec, self._xattrs(fields))
        node = self._node(mode & S_IFMT, stat, fields, size, nlink, rdev)
        if self.root is None:
            self._set_root(path, stat)
            return
        if path == b"/":
            self.root.stat = stat
            return
        self._add(path, node, lineno)

    def _add_common(self, fields: list[bytes], lineno: int) -> bool:
        """Add the common kind of line the short way: a full entry (directory,
        symlink, inline or external file with a DIGEST of the size seen
        before), new in an existing directory, under a plain canonical path,
        with a mode, NLINK, UID, GID and xattrs that earlier lines had.

        False, having changed nothing, for any other line, which the general
        code then takes.  Where this returns True the general code would
        have built the same node and raised nothing: the memos only hold
        values it produced, and every test here is one it makes too."""
        if len(fields) < N_FIXED or self.root is None:
            return False
        path = fields[PATH]
        mode = self.modes.get(fields[MODE])
        numbers = self.numbers
        uid = numbers.get(fields[UID])
        gid = numbers.get(fields[GID])
        size_f = fields[SIZE]
        sec_f, _, nsec_f = fields[MTIME].partition(b".")
        if (mode is None or uid is None or gid is None or fields[RDEV] != b"0"
                or fields[NLINK] not in numbers or not size_f.isdigit()
                or not sec_f.isdigit() or not nsec_f.isdigit()):
            return False
        size, sec, nsec = int(size_f), int(sec_f), int(nsec_f)
        if size > MAX_CHUNKED_SIZE or sec >= 2**63 or nsec >= 10**9:
            return False
        if b"\\" in path:
            try:
                path = unescape(path)
            except EscapeError:
                return False
        if (path[:1] != b"/" or b"//" in path or path[-1:] == b"/" or b"\0" in path
                or len(path) > PATH_MAX or (b"/." in path and _CANONICAL(path) is None)):
            return False
        if len(fields) == N_FIXED:
            xattrs = {}
        else:
            memo = self.xattrs.get(fields[N_FIXED] if len(fields) == N_FIXED + 1
                                   else b" ".join(fields[N_FIXED:]))
            if memo is None:
                return False
            xattrs = memo.copy()  # a fresh dict: trees are edited in place
        payload = fields[PAYLOAD]
        content = fields[CONTENT]
        digest = fields[DIGEST]
        ftype = mode & S_IFMT
        node: Directory | Leaf
        if ftype == S_IFREG and payload != b"-":
            if _PLAIN_TARGET(payload) is None or len(digest) != 2 * (self.digest_size or 0):
                return False
            try:  # with the length check: exactly the hex digits _HEX_DIGEST takes
                raw = bytes.fromhex(digest.decode())
            except ValueError:
                return False
            if len(raw) != self.digest_size:
                return False
            hexd = digest.lower()
            node = Leaf(Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs),
                        External(size, hexd[:2] + b"/" + hexd[2:], raw))
        elif ftype == S_IFREG:
            if digest != b"-":
                return False
            try:
                data = b"" if content == b"-" else unescape(content)
            except EscapeError:
                return False
            if len(data) > MAX_INLINE_CONTENT or (size and not data):
                return False
            node = Leaf(Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs), Inline(data))
        elif content != b"-" or digest != b"-":
            return False
        elif ftype == S_IFDIR:
            node = Directory(Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs))
        elif ftype == S_IFLNK:
            if (payload == b"-" or len(payload) > SYMLINK_MAX
                    or _PLAIN_TARGET(payload) is None):
                return False
            node = Leaf(Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs), Symlink(payload))
        else:
            return False
        parent_path, _, name = path.rpartition(b"/")
        parent = self.dirs.get(parent_path or b"/")
        if parent is None or name in parent.entries:
            return False
        parent.entries[name] = node
        if isinstance(node, Directory):
            self.dirs[path] = node
        else:
            self.leaves_by_path[path] = node
            self.leaf_line[node] = lineno
        return True

    def _xattrs(self, fields: list[bytes]) -> dict[bytes, bytes]:
        """The xattrs of a full line (a fresh dict: trees are edited in place)."""
        if len(fields) == N_FIXED:
            return {}
        tokens = fields[N_FIXED:]
        key = tokens[0] if len(tokens) == 1 else b" ".join(tokens)
        xattrs = self.xattrs.get(key)
        if xattrs is None:
            xattrs = parse_xattrs(tokens)
            if len(self.xattrs) < MEMO_MAX:
                self.xattrs[key] = xattrs
        return xattrs.copy()

    def _add(self, path: bytes, node: Directory | Leaf, lineno: int) -> None:
        if isinstance(node, Leaf):
            self.leaves_by_path[path] = node
            self.leaf_line[node] = lineno
        self._insert(path, node)

    def _hardlink(self, path: bytes, mode: int, fields: list[bytes]) -> None:
        if mode & S_IFMT == S_IFDIR:
            raise LineError("directories cannot be hard-linked")
        if len(fields) <= PAYLOAD:
            raise LineError(f"missing {_FIELD_NAMES[len(fields)]} field")
        if fields[PAYLOAD] == b"-":
            raise LineError("hard link without a target (PAYLOAD is '-')")
        target = canonical_path(fields[PAYLOAD])
        if self.root is None or path == b"/":
            # composefs-rs takes the (all-zero) stat of a hard-link entry.
            self._set_root(path, Stat(0, 0, 0, 0, 0))
            return
        leaf = self.leaves_by_path.get(target)
        if leaf is None:
            raise LineError(f"hard-link target '{show(target)}' is not a file on an earlier line")
        self.extra_links[leaf] = self.extra_links.get(leaf, 0) + 1
        self.leaves_by_path[path] = leaf
        self._insert(path, leaf)

    def _set_root(self, path: bytes, stat: Stat) -> None:
        if path != b"/":
            raise LineError(f"the first line must be the root directory '/', not '{show(path)}'")
        if self.root is None:
            self.root = Directory(stat)
            self.dirs[b"/"] = self.root
        else:
            self.root.stat = stat

    def _insert(self, path: bytes, node: Directory | Leaf) -> None:
        parent_path, _, name = path.rpartition(b"/")
        parent = self.dirs.get(parent_path or b"/")
        if parent is None:
            what = "is not a directory" if parent_path in self.leaves_by_path else "is missing"
            raise LineError(f"parent directory '{show(parent_path)}' {what}")
        old = parent.entries.get(name)
        if old is not None:
            self.replaced = True
            if isinstance(old, Directory):
                # Forget the replaced subtree's directories (each one at most
                # once over the whole parse, so this stays linear).
                stack = [(path, old)]
                while stack:
                    p, d = stack.pop()
                    del self.dirs[p]
                    stack += [(p + b"/" + n, c) for n, c in d.entries.items()
                              if isinstance(c, Directory)]
        parent.entries[name] = node
        if isinstance(node, Directory):
            self.dirs[path] = node

    # -- the entry's content --------------------------------------------------

    def _node(self, ftype: int, stat: Stat, fields: list[bytes], size: int, nlink: int,
              rdev: int) -> Directory | Leaf:
        payload = fields[PAYLOAD]
        content = fields[CONTENT]
        digest = fields[DIGEST]
        if ftype == S_IFREG:
            _no_rdev(rdev)
            return Leaf(stat, self._regular(size, payload, content, digest))
        if content != b"-":
            raise LineError("only regular files can have CONTENT")
        if digest != b"-":
            raise LineError("only regular files can have a DIGEST")
        leaf: LeafContent
        if ftype == S_IFDIR:
            _no_rdev(rdev)
            return Directory(stat)
        if ftype == S_IFLNK:
            _no_rdev(rdev)
            if payload == b"-":
                raise LineError("symlink without a target (PAYLOAD is '-')")
            target = unescape_path(payload)
            if len(target) > SYMLINK_MAX:
                raise LineError(f"symlink target too long ({len(target)} > {SYMLINK_MAX} bytes)")
            leaf = Symlink(target)
        elif ftype == S_IFCHR:
            if rdev == 0 and nlink > 1:
                raise LineError(f"whiteout (character device 0/0) with nlink {nlink}")
            leaf = CharDevice(rdev)
        elif ftype == S_IFBLK:
            leaf = BlockDevice(rdev)
        elif ftype == S_IFIFO:
            _no_rdev(rdev)
            leaf = Fifo()
        elif ftype == S_IFSOCK:
            _no_rdev(rdev)
            leaf = Socket()
        else:
            raise LineError(f"unknown file type in mode {stat.mode | ftype:o}")
        return Leaf(stat, leaf)

    def _regular(self, size: int, payload: bytes, content: bytes,
                 digest: bytes) -> LeafContent:
        if payload == b"-":
            if digest != b"-":
                raise LineError("DIGEST without PAYLOAD")
            data = b"" if content == b"-" else unescape(content)
            if len(data) > MAX_INLINE_CONTENT:
                raise LineError(
                    f"inline content too long ({len(data)} > {MAX_INLINE_CONTENT} bytes)")
            if data or size == 0:
                return Inline(data)
            _check_size(size)
            return Sparse(size)
        path = unescape_path(payload)
        _check_size(size)
        if digest != b"-":
            if _HEX_DIGEST.fullmatch(digest) is None:
                raise LineError(f"invalid DIGEST '{show(digest)}' (need 64 or 128 hex digits)")
            raw = bytes.fromhex(digest.decode("ascii"))
            if len(raw) != self.digest_size:
                self._digest_size(len(raw))
            hexd = digest.lower()
            return External(size, hexd[:2] + b"/" + hexd[2:], raw)
        for n in (32, 64):
            obj = digest_from_object_path(path, n)
            if obj is not None and len(obj) == n:
                self._digest_size(n)
                return External(size, object_path(obj), None)
        raise LineError(f"PAYLOAD '{show(path)}' does not end in an object path (xx/hex...)")

    def _digest_size(self, n: int) -> None:
        if self.digest_size is None:
            self.digest_size = n
        elif self.digest_size != n:
            raise LineError(f"{n}-byte digest after {self.digest_size}-byte digests "
                            "on earlier lines (mixed hash algorithms)")

    # -- whole file -----------------------------------------------------------

    def finish(self, last_line: int) -> Directory:
        if self.root is None:
            raise DumpfileError(f"line {last_line}: empty dumpfile (no root line '/')")
        if not self.replaced:
            # Every leaf is in the tree once per line naming it, so only hard
            # links can give a whiteout more than one link; report the first
            # such line, as the full check below would.
            linked_whiteouts = [(self.leaf_line[leaf], extra + 1)
                                for leaf, extra in self.extra_links.items()
                                if is_whiteout(leaf.content)]
            if linked_whiteouts:
                lineno, n = min(linked_whiteouts)
                raise DumpfileError(
                    f"line {lineno}: whiteout (character device 0/0) with {n} links")
        else:
            counts = leaf_link_counts(self.root)
            for leaf, lineno in self.leaf_line.items():
                n = counts.get(leaf, 0)
                if n == 0:
                    raise DumpfileError(
                        f"line {lineno}: this file is no longer in the tree "
                        "(its path was replaced by a later line)")
                if n > 1 and is_whiteout(leaf.content):
                    raise DumpfileError(
                        f"line {lineno}: whiteout (character device 0/0) with {n} links")
        return self.root


# What a blank line (skipped, as composefs-rs does) starts with; b"" is in it too.
_BLANK_START = b" \t\r\x0b\x0c"


def _no_rdev(rdev: int) -> None:
    if rdev != 0:
        raise LineError(f"RDEV {rdev} on a file that is not a device")


def _check_size(size: int) -> None:
    if size > MAX_CHUNKED_SIZE:
        raise LineError(f"file too large ({size} > 2^53 bytes, needs > 1024 chunks)")


def parse_rs(data: bytes) -> Directory:
    """Parse ``data`` as composefs-rs does (plus the spec §4.3 rejections)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise DumpfileError(f"line {lineno}: not valid UTF-8") from None
    builder = _RsBuilder()
    add_common, add_line = builder._add_common, builder.add_line
    lines, terminated = split_lines(data)
    lineno = 0
    try:
        for lineno, line in enumerate(lines, 1):
            if line[-1:] == b"\r" and lineno <= terminated:
                line = line[:-1]
            fields = line.split(b" ")
            if add_common(fields, lineno):
                continue
            if line[:1] in _BLANK_START and not line.strip():
                continue
            add_line(fields, lineno)
    except (LineError, EscapeError) as e:
        raise DumpfileError(f"line {lineno}: {e}") from None
    return builder.finish(max(lineno, 1))
