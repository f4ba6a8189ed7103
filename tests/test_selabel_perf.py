"""A Fedora-sized synthetic policy (5000 rules) on a 100k-file tree: the
prefix-indexed matcher must agree with a naive try-every-pattern reference
(plain Python ``re`` on the untranslated wrapped patterns, DOTALL, fullmatch).
The time is reported, not asserted (bench/selabel.py measures it)."""

from __future__ import annotations

import importlib.util
import random
import re
import sys
import time
from types import ModuleType

from conftest import REPO

from cfsboot.boot.selabel import apply_policy
from cfsboot.tree.model import Directory, Leaf, Symlink, walk

LABEL = b"security.selinux"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_selabel", REPO / "bench" / "selabel.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def naive_lookup(rules: list[tuple[re.Pattern[bytes], str]], key: bytes) -> bytes | None:
    for regex, context in rules:  # highest priority first
        if regex.fullmatch(key):
            return None if context == "<<none>>" else context.encode()
    return None


def test_indexed_matcher_agrees_with_naive_reference_at_scale() -> None:
    bench = load_bench()
    fc: bytes = bench.synthetic_file_contexts(5000)
    started = time.process_time()
    policy = bench.policy_from(fc)
    compiled_at = time.process_time()
    root: Directory = bench.build_tree(bench.synthetic_paths(100_000))
    nodes = list(walk(root))
    assert len(nodes) > 100_000
    labeling_from = time.process_time()
    apply_policy(root, policy)
    done = time.process_time()
    print(f"\n{len(policy.rules)} rules compiled in {compiled_at - started:.2f} s CPU; "
          f"{len(nodes)} nodes labeled in {done - labeling_from:.2f} s CPU", file=sys.stderr)

    # the reference: every spec line, last one first, matched as Python re
    # (its only POSIX class spelled the Python way)
    naive = []
    for line in fc.decode().splitlines():
        tokens = line.split()
        regex = tokens[0].replace("[[:alpha:]]", "[A-Za-z]")
        type_re = re.escape(tokens[1][1]) if len(tokens) == 3 else "."
        naive.append((re.compile(f"^({regex}){type_re}$".encode(), re.DOTALL), tokens[-1]))
    naive.reverse()
    rng = random.Random(5)
    labeled = 0
    for path, node in rng.sample(nodes, 600):
        type_byte = b"d" if isinstance(node, Directory) else (
            b"l" if isinstance(node, Leaf) and isinstance(node.content, Symlink) else b"-")
        want = naive_lookup(naive, path + type_byte)
        assert node.stat.xattrs.get(LABEL) == want, path
        labeled += want is not None
    assert labeled > 300  # the sample exercises real matches, not just "no label"
