"""Reusable hypothesis strategies for random valid trees, and a canonical
form to compare trees (including their hard-link structure).

    from strategies import trees, canonical_tree

    @given(trees(max_leaves=20, digest_size=32))
    def test_x(root): ...

Trees are valid for every format in the project: unique names without ``/``
or NUL, never ``.``/``..``; ``mode & 0o7777``; ``mtime_nsec < 10**9``; symlink
targets 1..1024 bytes without NUL; inline data <= 512 bytes; external digests
all of one size; regular sizes <= 2**53; no hard-linked whiteout.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

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
    is_whiteout,
    leaf_link_counts,
    object_path,
    walk,
)

MAX_REGULAR_SIZE = 2**53

# Characters that exercise the dumpfile escaping (and nothing else cares about).
_TRICKY = " \\-=\t\n\r\x7f.@é\u2603"


def names() -> st.SearchStrategy[bytes]:
    """Directory entry names: 1..255 bytes, no '/' or NUL, not '.' or '..'."""
    tricky = st.text(alphabet=_TRICKY + "abcXYZ019", min_size=1, max_size=10).map(
        lambda s: s.encode())
    raw = st.binary(min_size=1, max_size=12).map(
        lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
    plain = st.from_regex(rb"[a-z0-9_.-]{1,12}", fullmatch=True)
    long = st.integers(200, 255).map(lambda n: b"L" * n)
    return st.one_of(plain, tricky, raw, long).filter(lambda n: n not in (b".", b".."))


_XATTR_PREFIXES = [b"user.", b"trusted.", b"security.", b"security.selinux",
                   b"system.posix_acl_access", b"user.overlay.", b"trusted.overlay."]


def xattr_names(overlay: bool = True) -> st.SearchStrategy[bytes]:
    """1..255 bytes without NUL, often with a common prefix; may contain '=', ' ', '\\'.

    ``overlay=False`` leaves out ``trusted.overlay.*``/``user.overlay.*`` names
    (the image writers add and the readers drop some of those)."""
    suffix = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"="))
    prefixed = st.tuples(st.sampled_from(_XATTR_PREFIXES), suffix).map(lambda t: t[0] + t[1])
    name = st.one_of(prefixed, suffix).filter(lambda k: 0 < len(k) <= 255)
    if not overlay:
        name = name.filter(lambda k: not k.startswith((b"trusted.overlay.", b"user.overlay.")))
    return name


def stats(overlay_xattrs: bool = True) -> st.SearchStrategy[Stat]:
    ids = st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1))
    xattr_values = st.one_of(st.binary(max_size=40),
                             st.sampled_from([b"", b"-", b"=", b"a=b", b"x\0", b"\\"]))
    return st.builds(
        Stat,
        mode=st.integers(0, 0o7777),
        uid=ids,
        gid=ids,
        mtime_sec=st.one_of(st.integers(0, 2**31), st.integers(0, 2**63 - 1)),
        mtime_nsec=st.one_of(st.just(0), st.integers(0, 10**9 - 1)),
        xattrs=st.dictionaries(xattr_names(overlay_xattrs), xattr_values, max_size=4),
    )


def leaf_contents(digest_size: int, no_verity: bool = False) -> st.SearchStrategy[LeafContent]:
    """Every leaf kind.  ``no_verity`` adds digest-less Externals
    (composefs-rs ExternalNoVerity: path = object path, digest None)."""
    sizes = st.one_of(st.integers(0, 100_000), st.integers(0, MAX_REGULAR_SIZE))
    digests = st.binary(min_size=digest_size, max_size=digest_size)
    kinds: list[st.SearchStrategy[Any]] = [
        st.builds(Inline, st.binary(max_size=512)),
        st.builds(External.from_digest, digests, sizes),
        st.builds(Sparse, st.integers(1, MAX_REGULAR_SIZE)),
        st.builds(Symlink, st.binary(min_size=1, max_size=1024).map(
            lambda b: b.replace(b"\0", b"x"))),
        st.builds(CharDevice, st.one_of(st.just(0), st.integers(0, 2**32 - 1))),
        st.builds(BlockDevice, st.integers(0, 2**32 - 1)),
        st.just(Fifo()),
        st.just(Socket()),
    ]
    if no_verity:
        kinds.append(st.builds(lambda d, n: External(n, object_path(d), None), digests, sizes))
    return st.one_of(kinds)


@st.composite
def trees(draw: st.DrawFn, max_leaves: int = 20, digest_size: int | None = None,
          max_dirs: int | None = None, no_verity: bool = False,
          overlay_xattrs: bool = True) -> Directory:
    """A random valid tree: up to ``max_leaves`` leaves (plus hard links to
    some of them from any directory), up to ``max_dirs`` directories
    (default max_leaves // 3 + 1) nested at random."""
    ds = digest_size if digest_size is not None else draw(st.sampled_from([32, 64]))
    st_stats = stats(overlay_xattrs)
    root = Directory(draw(st_stats))
    dirs = [root]
    n_dirs = draw(st.integers(0, max_leaves // 3 + 1 if max_dirs is None else max_dirs))

    def new_name(parent: Directory) -> bytes:
        return draw(names().filter(lambda n: n not in parent.entries))

    for _ in range(n_dirs):
        parent = draw(st.sampled_from(dirs))
        d = Directory(draw(st_stats))
        parent.entries[new_name(parent)] = d
        dirs.append(d)
    leaves: list[Leaf] = []
    contents = leaf_contents(ds, no_verity)
    for _ in range(draw(st.integers(0, max_leaves))):
        parent = draw(st.sampled_from(dirs))
        leaf = Leaf(draw(st_stats), draw(contents))
        parent.entries[new_name(parent)] = leaf
        leaves.append(leaf)
    linkable = [leaf for leaf in leaves if not is_whiteout(leaf.content)]
    if linkable:
        for _ in range(draw(st.integers(0, min(5, len(linkable))))):
            leaf = draw(st.sampled_from(linkable))
            parent = draw(st.sampled_from(dirs))
            parent.entries[new_name(parent)] = leaf
    return root


def canonical_tree(root: Directory, *, with_nlink: bool = False) -> list[tuple[Any, ...]]:
    """A comparable form of a tree: one tuple per path in walk order with the
    node kind, stat (xattrs sorted), content and, for leaves, the first path
    of their hard-link group (so equal forms mean equal link structure).
    ``with_nlink`` adds ``Leaf.nlink``."""
    first: dict[Leaf, bytes] = {}
    counts = leaf_link_counts(root)
    out: list[tuple[Any, ...]] = []
    for path, node in walk(root):
        s = node.stat
        stat = (s.mode, s.uid, s.gid, s.mtime_sec, s.mtime_nsec, sorted(s.xattrs.items()))
        if isinstance(node, Directory):
            out.append((path, "dir", stat))
            continue
        group = first.setdefault(node, path)
        row: tuple[Any, ...] = (path, "leaf", stat, node.content, group, counts[node])
        if with_nlink:
            row += (node.nlink,)
        out.append(row)
    return out
