"""Dumpfile parser with C mkcomposefs semantics (spec dumpfile.md §4.2, §4.4).

Follows composefs (C) ``tools/mkcomposefs.c`` (``tree_from_dump_line``) and
the node setters of ``libcomposefs/lcfs-writer.c`` it calls, so that the tree
carries exactly what C's EROFS writer (``lcfs-writer-erofs.c``) uses:

* Raw bytes, no UTF-8 requirement.  Every line is parsed, so blank lines are
  errors ("empty path"); a final line without ``\\n`` is accepted unless strict.
* Fields are split on single spaces; missing trailing fields read as empty.
* Strings are C strings: a ``\\x00`` escape truncates paths, payloads and
  xattr names (xattr values keep their length).
* Paths: ``/`` is the root and must come first and be a directory; other paths
  are split on runs of ``/`` (``/a//b`` = ``/a/b``, a relative ``a`` is
  ``/a``); the last component (after the last ``/``) is the name: empty,
  ``.``, ``..`` or longer than 255 bytes is rejected; duplicates are rejected.
* MODE: strtoull base 8 truncated to u32; the type is ``mode & S_IFMT`` and the
  image keeps ``(u16)mode``, i.e. type + ``mode & 0o7777``, so higher bits are
  simply dropped (``20720777`` is a *symlink*: bit 15 belongs to S_IFMT).
  UID/GID/NLINK are truncated to u32 (``lcfs_node_set_uid(uint32_t)`` etc.).
* Hard links (``@`` first in MODE): only PATH, MODE and PAYLOAD are read; the
  target path is resolved after the whole file, in reverse line order like C's
  fixup list, through other hard links; self links and missing targets are
  rejected like C does, cycles like C's writer does (ELOOP), and directory
  targets as a deviation (below).
* The leaf of a hard-link group records the path of its full line in
  ``Leaf.primary``: C's "real" node, where C's writer puts the inode in its
  breadth-first order (it need not be the first path in pre-order).
* nlink: C stores the NLINK field of a leaf's own line (``lcfs_node_set_nlink``)
  and ``tree_resolve_hardlinks`` saves and restores the target's nlink around
  ``lcfs_node_make_hardlink`` (which would increment it), so hard links never
  change it: ``Leaf.nlink`` = the NLINK field of the leaf's full line, for
  every leaf.  (Directories' nlink is recomputed by the writer.)
* Regular files (what ``add_overlayfs_xattrs`` / ``compute_erofs_inode_size``
  do with size, content, payload, digest):
  CONTENT set -> its length must equal SIZE (any type), <= 5000 bytes;
  non-empty content -> ``Inline``; SIZE 0 -> ``Inline(b"")`` (C writes a plain
  empty file, ignoring payload and digest); otherwise size > 2**53 is
  rejected ("File too large"), and the file is ``External(size, payload or
  b"", digest or None)``, or ``Sparse(size)`` when it has neither (C then
  writes only an empty metacopy xattr; an empty payload means no redirect).
* DIGEST is only used for such external files; there C's ``digest_to_raw``
  converts the first 64 hex digits to the 32-byte SHA-256 digest and ignores
  the rest (so a SHA-512 digest is cut in half); shorter or non-hex input
  would leave uninitialised bytes in the image and is rejected.  Elsewhere
  DIGEST is ignored.
* Symlinks: target (payload, NUL-truncated) non-empty and < 4096 bytes; other
  types: payload < 4096 bytes.  SIZE of symlinks is ignored (C uses the
  target length), of directories too (recomputed).
* Xattrs: ``key=value`` tokens, the xattr part of a line <= 65535 bytes, key
  1..255 bytes, value <= 65535 bytes, duplicate keys replace the earlier
  value, and the per-node budget of ``lcfs_node_set_xattr_internal``
  (32767 bytes; each entry 7 + key + value, + 12 for the first).
* ``strict`` (CFS_PARSE_STRICT): trailing newline, RDEV 0 on non-devices,
  symlink SIZE == target length, no CONTENT on symlinks.

Deliberate deviations, all on inputs where C is undefined or absurd (checked
against C mkcomposefs 1.0.8, which accepts them): numeric fields must be
``[+]digits`` within u64 (strtoull saturates on overflow and accepts blanks
and signs, and mkcomposefs ignores some parse errors: GID and RDEV are only
checked when UID is 0, and a bad SIZE/NLINK passes when the next fields are
nonzero); MTIME nanoseconds must be < 10**9; DIGEST (see above); a hard
link whose target is a directory is rejected (C's
``lcfs_compute_tree`` never checks link nodes, so it writes a second directory
entry for the directory's inode, which the tree model cannot hold); sizes
above 2**53 are rejected even where C's chunk count overflows (SIZE near
2**64) and lets them through.

The SIZE of devices, fifos and sockets, which C keeps and only uses to choose
an extended inode when it exceeds 4 GiB, goes to ``Leaf.c_size``.

Speed: as in the composefs-rs parser, ``_CBuilder._add_common`` takes the
common lines the short way and leaves the rest, errors included, to the
general code.
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
    PAYLOAD,
    RDEV,
    SIZE,
    U32_MAX,
    U64_MAX,
    UID,
    DumpfileError,
    LineError,
    fixed_numbers,
    parse_oct,
    show,
    split_lines,
)
from cfsboot.tree.escape import EscapeError, unescape, unescape_optional
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
)

PATH_MAX = 4096               # payloads must be shorter (strlen >= PATH_MAX fails)
NAME_MAX = 255                # LCFS_MAX_NAME_LENGTH
INLINE_CONTENT_MAX = 5000     # LCFS_INLINE_CONTENT_MAX
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 65535
XATTR_LINE_MAX = 65535        # "Too many xattrs"
XATTR_BUDGET = 32767          # LCFS_INODE_EXTERNAL_XATTR_MAX
XATTR_ENTRY_COST = 7          # 2 * LCFS_INODE_XATTRMETA_SIZE - 1
XATTR_HEADER_COST = 12        # LCFS_XATTR_HEADER_SIZE

_TYPES = {S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK}
_HEX64 = re.compile(rb"[0-9a-fA-F]{64}")


def _cstr(b: bytes) -> bytes:
    """What a C string holding ``b`` sees: everything before the first NUL."""
    nul = b.find(b"\0")
    return b if nul < 0 else b[:nul]


def _key(path: bytes) -> bytes:
    """Normalised lookup key: components without empty ones (root = b"")."""
    if b"//" in path or path[:1] == b"/" or path[-1:] == b"/":
        return b"/".join([c for c in path.split(b"/") if c])
    return path


class _HardLink:
    __slots__ = ("line", "name", "parent", "target")

    def __init__(self, line: int, parent: Directory, name: bytes, target: bytes | None):
        self.line = line
        self.parent = parent
        self.name = name
        self.target = target


class _CBuilder:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.root: Directory | None = None
        self.nodes: dict[bytes, Directory | Leaf] = {}
        # Hard-link lines get a placeholder Leaf in the tree until resolved.
        self.links: dict[Leaf, _HardLink] = {}
        # Per-parse memos of fields that repeat (see dumpfile_base.MEMO_MAX).
        self.modes: dict[bytes, tuple[int, bool]] = {}
        self.numbers: dict[bytes, int] = {}
        self.xattrs: dict[bytes, dict[bytes, bytes]] = {}

    def add_line(self, line: bytes, lineno: int) -> None:
        nul = line.find(b"\0")
        if nul >= 0:
            raise LineError(f"embedded NUL character at position {nul}")
        fields = line.split(b" ", N_FIXED)
        if self._add_common(fields):
            return
        xattr_part = fields[N_FIXED] if len(fields) > N_FIXED else b""
        if len(fields) < N_FIXED:
            fields += [b""] * (N_FIXED - len(fields))
        path = fields[0]
        if b"\\" in path:
            path = _cstr(unescape(path))
        if not path:
            raise LineError("empty path")
        modeval = fields[MODE]
        known = self.modes.get(modeval)
        if known is None:
            is_link = modeval[:1] == b"@"
            mode = parse_oct(modeval[1:] if is_link else modeval, U64_MAX, "mode") & U32_MAX
            if mode & S_IFMT not in _TYPES:
                raise LineError(f"invalid mode {mode:o}")
            if len(self.modes) < MEMO_MAX:
                self.modes[modeval] = (mode, is_link)
        else:
            mode, is_link = known
        ftype = mode & S_IFMT
        if path == b"/":
            if ftype != S_IFDIR:
                raise LineError("the root must be a directory")
            if self.root is not None:
                raise LineError("more than one root line '/'")
            parent, name, key = None, b"", b""
        else:
            parent, name, key = self._place(path)
        if is_link:
            if ftype == S_IFDIR:
                raise LineError("directories cannot be hard-linked")
            target = unescape_optional(fields[PAYLOAD])
            assert parent is not None  # the root is a directory
            placeholder = Leaf(Stat(0, 0, 0, 0, 0), Fifo())
            self.links[placeholder] = _HardLink(
                lineno, parent, name, None if target is None else _cstr(target))
            self._add(parent, name, key, placeholder)
            return
        node = self._node(ftype, mode, fields, xattr_part)
        if parent is None:
            assert isinstance(node, Directory)
            self.root = node
            self.nodes[b""] = node
        else:
            self._add(parent, name, key, node)

    def _add_common(self, fields: list[bytes]) -> bool:
        """Add the common kind of line the short way: a full entry (directory,
        symlink or regular file, RDEV 0) new in an existing directory, under
        an absolute path without ``//``, with a mode, NLINK, UID, GID and
        xattrs that earlier lines had.

        False, having changed nothing, for any other line, which the general
        code then takes.  Where this returns True the general code would
        have built the same node and raised nothing: the memos only hold
        values it produced, and every test here is one it makes too."""
        if len(fields) < N_FIXED or self.root is None:
            return False
        known = self.modes.get(fields[MODE])
        numbers = self.numbers
        nlink = numbers.get(fields[NLINK])
        uid = numbers.get(fields[UID])
        gid = numbers.get(fields[GID])
        size_f = fields[SIZE]
        sec_f, _, nsec_f = fields[MTIME].partition(b".")
        if (known is None or known[1] or nlink is None or uid is None or gid is None
                or fields[RDEV] != b"0" or not size_f.isdigit() or not sec_f.isdigit()
                or not nsec_f.isdigit()):
            return False
        size, sec, nsec = int(size_f), int(sec_f), int(nsec_f)
        if size > MAX_CHUNKED_SIZE or sec >= 2**63 or nsec >= 10**9:
            return False
        try:
            path = fields[0]
            if b"\\" in path:
                path = _cstr(unescape(path))
            slash = path.rfind(b"/")
            name = path[slash + 1:]
            parent = self.nodes.get(path[1:slash])
            if (path[:1] != b"/" or b"//" in path or not isinstance(parent, Directory)
                    or not name or name == b"." or name == b".." or len(name) > NAME_MAX
                    or name in parent.entries):
                return False
            xattrs: dict[bytes, bytes] = {}
            if len(fields) > N_FIXED and fields[N_FIXED]:
                memo = self.xattrs.get(fields[N_FIXED])
                if memo is None:
                    return False
                xattrs = memo.copy()  # a fresh dict: trees are edited in place
            # (The line has no NUL: only an escape can make one.)
            payload_f, content_f, digest_f = fields[PAYLOAD], fields[CONTENT], fields[DIGEST]
            payload = (None if payload_f == b"-" else payload_f if b"\\" not in payload_f
                       else _cstr(unescape(payload_f)))
            content = (None if content_f == b"-" else content_f if b"\\" not in content_f
                       else unescape(content_f))
            digest = (None if digest_f == b"-" else digest_f if b"\\" not in digest_f
                      else unescape(digest_f))
            if content is not None and len(content) != size:
                return False
            mode = known[0]
            ftype = mode & S_IFMT
            stat = Stat(mode & 0o7777, uid & U32_MAX, gid & U32_MAX, sec, nsec, xattrs)
            node: Directory | Leaf
            if ftype == S_IFLNK:
                if (not payload or len(payload) >= PATH_MAX
                        or (self.strict and (size != len(payload) or content))):
                    return False
                node = Leaf(stat, Symlink(payload), nlink=nlink & U32_MAX)
            elif ((payload is not None and len(payload) >= PATH_MAX)
                  or (content is not None and len(content) > INLINE_CONTENT_MAX)):
                return False
            elif ftype == S_IFDIR:
                node = Directory(stat)
            elif ftype == S_IFREG:
                leaf: LeafContent
                if content is None and size and payload and digest and len(digest) >= 64:
                    # What _regular makes of the usual external file, where
                    # 32 bytes from 64 hex digits is _HEX64's test.
                    raw = bytes.fromhex(digest[:64].decode())
                    if len(raw) != 32:
                        return False
                    leaf = External(size, payload, raw)
                else:
                    leaf = _regular(size, payload, content, digest)
                node = Leaf(stat, leaf, nlink=nlink & U32_MAX)
            else:
                return False
        except (LineError, EscapeError, ValueError):  # ValueError: from bytes.fromhex
            return False
        parent.entries[name] = node
        self.nodes[path[1:]] = node
        return True

    def _place(self, path: bytes) -> tuple[Directory, bytes, bytes]:
        """Parent directory, name and lookup key of a new non-root path."""
        if self.root is None:
            raise LineError("the first line must be the root directory '/'")
        slash = path.rfind(b"/")
        name = path[slash + 1:]
        if path[:1] == b"/" and b"//" not in path:
            parent_key = path[1:slash]  # what _key gives, the common case
        else:
            parent_key = _key(path[:slash]) if slash >= 0 else b""
        parent = self.nodes.get(parent_key)
        if parent is None:
            raise LineError(f"parent directory missing for '{show(path)}'")
        if not isinstance(parent, Directory):
            raise LineError(f"parent of '{show(path)}' is not a directory")
        if name in (b".", b".."):
            raise LineError(f"invalid . or .. in path '{show(path)}'")
        if not name:
            raise LineError(f"path '{show(path)}' has an empty name")
        if len(name) > NAME_MAX:
            raise LineError(f"name too long ({len(name)} > {NAME_MAX} bytes)")
        if name in parent.entries:
            raise LineError(f"path '{show(path)}' already exists")
        return parent, name, (parent_key + b"/" + name if parent_key else name)

    def _add(self, parent: Directory, name: bytes, key: bytes, node: Directory | Leaf) -> None:
        parent.entries[name] = node
        self.nodes[key] = node

    def _node(self, ftype: int, mode: int, fields: list[bytes],
              xattr_part: bytes) -> Directory | Leaf:
        size, nlink, uid, gid, rdev, sec, nsec = fixed_numbers(fields, U64_MAX, self.numbers)
        # lcfs_node_set_nlink/uid/gid take a uint32_t
        nlink, uid, gid = nlink & U32_MAX, uid & U32_MAX, gid & U32_MAX
        payload = unescape_optional(fields[PAYLOAD])
        content = unescape_optional(fields[CONTENT])
        if content is not None and len(content) != size:
            raise LineError(f"content size {len(content)} does not match SIZE {size}")
        digest = unescape_optional(fields[DIGEST])
        if ftype not in (S_IFCHR, S_IFBLK) and rdev != 0:
            if self.strict:
                raise LineError("nonzero RDEV on a file that is not a device")
            rdev = 0
        if payload is not None:
            payload = _cstr(payload)
        if ftype == S_IFLNK:
            if not payload or len(payload) >= PATH_MAX:
                raise LineError("invalid symlink target (empty, missing or >= 4096 bytes)")
            if self.strict and size != len(payload):
                raise LineError(f"symlink SIZE {size} does not match target length "
                                f"{len(payload)}")
            if self.strict and content:
                raise LineError("symlink cannot have content")
        else:
            if payload is not None and len(payload) >= PATH_MAX:
                raise LineError(f"PAYLOAD too long ({len(payload)} >= {PATH_MAX} bytes)")
            if content is not None and len(content) > INLINE_CONTENT_MAX:
                raise LineError(f"inline content size {len(content)} exceeds maximum "
                                f"{INLINE_CONTENT_MAX}")
        if xattr_part:
            xattrs = self.xattrs.get(xattr_part)
            if xattrs is None:
                xattrs = _parse_xattrs(xattr_part)
                if len(self.xattrs) < MEMO_MAX:
                    self.xattrs[xattr_part] = xattrs
            xattrs = xattrs.copy()  # a fresh dict: trees are edited in place
        else:
            xattrs = {}
        stat = Stat(mode & 0o7777, uid, gid, sec, nsec, xattrs)
        leaf: LeafContent
        if ftype == S_IFDIR:
            return Directory(stat)
        if ftype == S_IFREG:
            leaf = _regular(size, payload, content, digest)
        elif ftype == S_IFLNK:
            assert payload
            leaf = Symlink(payload)
        elif ftype == S_IFCHR:
            leaf = CharDevice(rdev)
        elif ftype == S_IFBLK:
            leaf = BlockDevice(rdev)
        elif ftype == S_IFIFO:
            leaf = Fifo()
        else:
            leaf = Socket()
        if ftype in (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK) and size:
            return Leaf(stat, leaf, nlink=nlink, c_size=size)
        return Leaf(stat, leaf, nlink=nlink)

    def finish(self, last_line: int) -> Directory:
        if self.root is None:
            raise DumpfileError(f"line {last_line}: empty dumpfile (no root line '/')")
        # First the direct target of every hard-link line ...
        direct: dict[Leaf, Directory | Leaf] = {}
        for placeholder, link in reversed(self.links.items()):
            if link.target is None:
                raise DumpfileError(f"line {link.line}: hard link without a target")
            target = self.nodes.get(_key(link.target))
            if target is None:
                raise DumpfileError(
                    f"line {link.line}: no target at '{show(link.target)}' for hard link")
            if target is placeholder:
                raise DumpfileError(f"line {link.line}: self-referential hard link")
            direct[placeholder] = target
        # ... then follow chains of hard links to the real leaf, which keeps
        # the path of its own line (C's real node: where its inode goes).
        key_of = {node: key for key, node in self.nodes.items() if isinstance(node, Leaf)}
        final: dict[Leaf, Directory | Leaf] = {}
        for placeholder, link in reversed(self.links.items()):
            chain = {placeholder: None}  # insertion-ordered set
            node = direct[placeholder]
            while isinstance(node, Leaf) and node in direct and node not in final:
                if node in chain:  # C: ELOOP when writing
                    raise DumpfileError(f"line {link.line}: hard-link cycle")
                chain[node] = None
                node = direct[node]
            node = final.get(node, node) if isinstance(node, Leaf) else node
            for p in chain:  # remembered, so long chains stay linear
                final[p] = node
            if isinstance(node, Directory):
                raise DumpfileError(f"line {link.line}: hard link to a directory")
            link.parent.entries[link.name] = node
            node.primary = b"/" + key_of[node]
        return self.root


def _regular(size: int, payload: bytes | None, content: bytes | None,
             digest: bytes | None) -> LeafContent:
    if content:
        return Inline(content)
    if size == 0:
        return Inline(b"")
    if size > MAX_CHUNKED_SIZE:
        raise LineError(f"file too large ({size} > 2^53 bytes, needs > 1024 chunks)")
    raw = None
    if digest is not None:
        # digest_to_raw fills 32 bytes from the first 64 hex digits and stops
        # (a SHA-512 digest is cut to its first half); fewer or non-hex digits
        # leave uninitialised bytes, so those are rejected.
        if _HEX64.match(digest) is None:
            raise LineError(f"invalid DIGEST '{show(digest)}' (need 64 hex digits)")
        raw = bytes.fromhex(digest[:64].decode("ascii"))
    if raw is None and not payload:
        return Sparse(size)
    return External(size, payload or b"", raw)


def _parse_xattrs(part: bytes) -> dict[bytes, bytes]:
    if not part:
        return {}
    if len(part) > XATTR_LINE_MAX:
        raise LineError("too many xattrs (xattr part of the line > 65535 bytes)")
    xattrs: dict[bytes, bytes] = {}
    budget = 0  # lcfs_node_s.xattr_size
    for tok in part.split(b" "):
        k, eq, v = tok.partition(b"=")
        if not eq:
            raise LineError(f"missing = in xattr '{show(tok)}'")
        key = _cstr(unescape(k))
        value = unescape(v)
        if not key or len(key) > XATTR_NAME_MAX:
            raise LineError(f"can't set xattr: name length {len(key)} not in 1..255")
        if len(value) > XATTR_VALUE_MAX:
            raise LineError(f"can't set xattr: value too long ({len(value)} bytes)")
        old = xattrs.pop(key, None)
        if old is not None:  # lcfs_node_unset_xattr's accounting
            budget = budget - XATTR_ENTRY_COST - len(key) - len(old) if xattrs else 0
        cost = XATTR_ENTRY_COST + len(key) + len(value)
        if not xattrs:
            cost += XATTR_HEADER_COST
        if budget + cost > XATTR_BUDGET:
            raise LineError(f"can't set xattr '{show(key)}': node xattrs exceed "
                            f"{XATTR_BUDGET} bytes")
        xattrs[key] = value
        budget += cost
    return xattrs


def parse_c(data: bytes, strict: bool = False) -> Directory:
    """Parse ``data`` as C ``mkcomposefs --from-file`` does."""
    builder = _CBuilder(strict)
    add_line = builder.add_line
    lines, terminated = split_lines(data)
    if strict and terminated < len(lines):
        # Only the last line can lack its newline; C stops at the first error.
        lines = lines[:-1]
        stop: str | None = "missing trailing newline"
    else:
        stop = None
    lineno = 0
    try:
        for lineno, line in enumerate(lines, 1):
            add_line(line, lineno)
    except (LineError, EscapeError) as e:
        raise DumpfileError(f"line {lineno}: {e}") from None
    if stop is not None:
        raise DumpfileError(f"line {len(lines) + 1}: {stop}")
    return builder.finish(max(lineno, 1))
