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
"""

from __future__ import annotations

import re

from cfsboot.tree.dumpfile_base import (
    CONTENT,
    DIGEST,
    MAX_CHUNKED_SIZE,
    MODE,
    N_FIXED,
    PATH,
    PAYLOAD,
    SIZE,
    U32_MAX,
    U64_MAX,
    DumpfileError,
    LineError,
    fixed_numbers,
    numbered_lines,
    parse_dec,
    parse_oct,
    show,
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


# A line with all 11 fields, plain digits, no '@' and a path without escapes
# (the common case): one regex does the splitting and the digit checks.
_PLAIN_LINE = re.compile(
    rb"(/[^ \\\0]*) ([0-9]{1,20}) ([0-7]{1,11}) ([0-9]{1,10}) ([0-9]{1,10}) ([0-9]{1,10}) "
    rb"([0-9]{1,20}) ([0-9]{1,19})\.([0-9]{1,9}) [^ ]* [^ ]* [^ ]*(?: .*)?", re.S)


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
        self.linked = False
        self.digest_size: int | None = None

    # -- one line -----------------------------------------------------------

    def add_line(self, line: bytes, lineno: int) -> None:
        m = _PLAIN_LINE.fullmatch(line)
        if m is not None:  # fast path; anything unusual takes the general one below
            path, size_f, mode_f, nlink_f, uid_f, gid_f, rdev_f, sec_f, nsec_f = m.groups()
            size, mode, nlink = int(size_f), int(mode_f, 8), int(nlink_f)
            uid, gid, rdev = int(uid_f), int(gid_f), int(rdev_f)
            sec, nsec = int(sec_f), int(nsec_f)
            if (size <= U64_MAX and mode <= U32_MAX and nlink <= U32_MAX and uid <= U32_MAX
                    and gid <= U32_MAX and rdev <= U64_MAX and sec < 2**63 and nsec < 10**9
                    and len(path) <= PATH_MAX and _is_canonical(path)
                    and self.root is not None and path != b"/"):
                fields = line[m.end(9) + 1:].split(b" ")
                xattrs = parse_xattrs(fields[3:]) if len(fields) > 3 else {}
                stat = Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs)
                self._add(path, self._node(mode & S_IFMT, stat, fields, size, nlink, rdev,
                                           -PAYLOAD), lineno)
                return
        fields = line.split(b" ")
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
        if len(fields) < N_FIXED:
            raise LineError(f"missing {_FIELD_NAMES[len(fields)]} field")
        size, nlink, uid, gid, rdev, sec, nsec = fixed_numbers(fields, U32_MAX)
        xattrs = parse_xattrs(fields[N_FIXED:]) if len(fields) > N_FIXED else {}
        stat = Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs)
        node = self._node(mode & S_IFMT, stat, fields, size, nlink, rdev)
        if self.root is None:
            self._set_root(path, stat)
            return
        if path == b"/":
            self.root.stat = stat
            return
        self._add(path, node, lineno)

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
        self.linked = True
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
              rdev: int, shift: int = 0) -> Directory | Leaf:
        """The entry's node; ``fields[PAYLOAD + shift]`` is the PAYLOAD field."""
        payload = fields[PAYLOAD + shift]
        content = fields[CONTENT + shift]
        digest = fields[DIGEST + shift]
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
        if self.replaced or self.linked:
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
    lineno = 1
    for lineno, line, terminated in numbered_lines(data):
        if terminated and line[-1:] == b"\r":
            line = line[:-1]
        if not line.strip():
            continue
        try:
            builder.add_line(line, lineno)
        except (LineError, EscapeError) as e:
            raise DumpfileError(f"line {lineno}: {e}") from None
    return builder.finish(lineno)
