"""Random trees through write -> parse -> write, and the 100k-line budget."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from strategies import canonical_tree, trees

from cfsboot.tree.dumpfile import parse_dumpfile, write_dumpfile
from cfsboot.tree.model import Directory, External, Inline, Leaf, leaf_link_counts, walk

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(trees(max_leaves=12))
def test_write_parse_write(root: Directory) -> None:
    text = write_dumpfile(root)
    assert text.endswith(b"\n") and text.count(b"\n") == sum(1 for _ in walk(root))
    parsed = parse_dumpfile(text)
    assert write_dumpfile(parsed) == text
    assert canonical_tree(parsed) == canonical_tree(root)


@SETTINGS
@given(trees(max_leaves=8, no_verity=True))
def test_no_verity_gains_its_digest(root: Directory) -> None:
    """ExternalNoVerity is written with its object id as DIGEST (spec §5.1)."""
    parsed = parse_dumpfile(write_dumpfile(root))
    for (_, a), (_, b) in zip(walk(root), walk(parsed), strict=True):
        if isinstance(a, Leaf) and isinstance(a.content, External):
            assert isinstance(b, Leaf) and isinstance(b.content, External)
            assert b.content.digest is not None and b.content.path == a.content.path
            assert a.content.digest in (None, b.content.digest)
    assert write_dumpfile(parsed) == write_dumpfile(root)


def _as_c_sees_it(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """C mkcomposefs turns an External of size 0 into a plain empty file."""
    out = []
    for row in rows:
        if row[1] == "leaf" and isinstance(row[3], External) and row[3].size == 0:
            row = (*row[:3], Inline(b""), *row[4:])
        out.append(row)
    return out


@SETTINGS
@given(trees(max_leaves=12, digest_size=32))
def test_c_flavor_reads_our_output(root: Directory) -> None:
    text = write_dumpfile(root)
    parsed = parse_dumpfile(text, flavor="c", strict=True)
    assert canonical_tree(parsed) == _as_c_sees_it(canonical_tree(root))
    counts = leaf_link_counts(parsed)
    for _, node in walk(parsed):
        if isinstance(node, Leaf):
            assert node.nlink == counts[node]  # the written NLINK


# ---- speed ------------------------------------------------------------------------

def _big_dump(n_dirs: int = 100, per_dir: int = 1000) -> bytes:
    """A canonical (write_dumpfile-shaped) dump of 1 + n_dirs * (per_dir + 1) lines."""
    label = b" security.selinux=system_u:object_r:bin_t:s0"
    lines = [b"/ 0 40755 %d 0 0 0 1690000000.0 - - -%s" % (n_dirs + 2, label)]
    for d in range(n_dirs):
        lines.append(b"/d%03d 0 40755 2 0 0 0 1690000000.0 - - -%s" % (d, label))
        entries = {}
        for f in range(per_dir):
            if f % 3 == 0:
                h = b"%064x" % (d * per_dir + f)
                name = b"e%04d" % f
                rest = b"123456 100755 1 0 0 0 1690000000.0 %s/%s - %s" % (h[:2], h[2:], h)
            elif f % 3 == 1:
                name = b"f%04d\\x20x" % f
                rest = b"12 100644 1 0 0 0 1690000000.5 - hello\\nworld! -"
            else:
                name = b"l%04d" % f
                rest = b"7 120777 1 0 0 0 1690000000.0 /target - -"
            entries[name] = b"/d%03d/%s %s%s" % (d, name, rest, label)
        lines += [entries[k] for k in sorted(entries)]
    return b"\n".join(lines) + b"\n"


def test_100k_lines_budget() -> None:
    data = _big_dump()
    assert data.count(b"\n") == 100_101
    t0 = time.process_time()
    tree = parse_dumpfile(data)
    t1 = time.process_time()
    out = write_dumpfile(tree)
    t2 = time.process_time()
    parse_dumpfile(data, flavor="c")
    t3 = time.process_time()
    assert out == data  # the dump above is in canonical form
    # ~1-2 s each on an idle machine; the bound leaves room for a busy one.
    assert max(t1 - t0, t2 - t1, t3 - t2) < 8.0, (t1 - t0, t2 - t1, t3 - t2)


def test_hostile_shapes_stay_linear() -> None:
    """Long hard-link chains (forward for C) and repeated directory
    replacements must not go quadratic."""
    n = 20_000
    root = b"/ 0 40755 2 0 0 0 0.0 - - -"
    back = [root, b"/f0 3 100644 9 0 0 0 0.0 - abc -"] + [
        b"/f%d 0 @100644 - - - - 0.0 /f%d - -" % (i, i - 1) for i in range(1, n)]
    fwd = [root] + [b"/f%d 0 @100644 - - - - 0.0 /f%d - -" % (i, i + 1) for i in range(n - 1)]
    fwd.append(b"/f%d 3 100644 9 0 0 0 0.0 - abc -" % (n - 1))
    dirs = [root, b"/x 0 40755 2 0 0 0 0.0 - - -"]
    dirs += [b"/x/d%d 0 40755 2 0 0 0 0.0 - - -" % i for i in range(n)]
    dirs += [b"/x 0 40755 2 0 0 0 0.0 - - -"] * n
    t0 = time.process_time()
    for lines, flavor in ((back, "rs"), (back, "c"), (fwd, "c"), (dirs, "rs")):
        tree = parse_dumpfile(b"\n".join(lines) + b"\n", flavor=flavor)  # type: ignore[arg-type]
        if lines is not dirs:
            assert len({id(leaf) for leaf in tree.entries.values()}) == 1
    assert time.process_time() - t0 < 10.0
