"""Benchmark the serial tail of `compute-composefs-digest`: transforms and EROFS image.

    .venv/bin/python bench/erofs.py [--dir /var/tmp/cfsboot-bench] [--runs 5]
                                    [--selinux] [--profile CASE]

The tree model is the scan of bench/digest.py's tree (``--dir``/tree), made
once and pickled next to it (tree-model.pickle, rebuilt when the tree's
marker changes).  Each round loads a fresh copy (the transforms modify the
tree; loading is not timed) and times, with the cyclic GC off as
compute_composefs_digest runs them:

* transform: transform_for_oci + transform_for_boot (boot/digest.py's calls);
* v1-rs:     mkfs_erofs(root, 1), what the digest command builds;
* v0-c:      mkfs_erofs(root, 0, c_compat=True), the C mkcomposefs layout;
* v2-rs:     mkfs_erofs(root, 2), the legacy layout.

``--selinux`` gives every node a ``security.selinux`` label (one of ~40, as
a labelled image has) after the transform, so xattr sharing has work to do;
the bench tree has no policy, so its own labelling step adds none.
``--profile CASE`` runs one case under cProfile and prints the top 20
functions by own time instead of timing.  Each image's SHA-256 prefix is
printed, so runs of two versions of the writer show they agree.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import os
import pickle
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cfsboot.boot.digest import source_reader
from cfsboot.boot.transform import transform_for_boot, transform_for_oci
from cfsboot.erofs.writer import mkfs_erofs
from cfsboot.tree.model import Directory, Leaf
from cfsboot.tree.scan import ScanOptions, scan_directory

Model = tuple[Directory, dict[bytes, str]]  # (root, object digest -> source path)
ALG = "sha512"


def load_model(base: Path) -> bytes:
    """The pickled (root, sources) of the scanned bench tree, scanning once."""
    tree, marker = base / "tree", base / "tree.done"
    if not marker.exists():
        sys.exit(f"no benchmark tree in {base}: run bench/digest.py once to build it")
    cached, cached_marker = base / "tree-model.pickle", base / "tree-model.done"
    if cached.exists() and cached_marker.exists() and \
            cached_marker.read_text() == marker.read_text():
        return cached.read_bytes()
    print(f"scanning {tree} (once) ...", file=sys.stderr)
    scan = scan_directory(str(tree), ScanOptions(alg=ALG, track_hardlinks=True))
    data = pickle.dumps((scan.root, scan.sources), protocol=pickle.HIGHEST_PROTOCOL)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cached)
    cached_marker.write_text(marker.read_text())
    return data


def fresh(data: bytes) -> Model:
    root, sources = pickle.loads(data)
    return root, sources


def transform(model: Model) -> None:
    root, sources = model
    transform_for_oci(root)
    transform_for_boot(root, source_reader(sources, ALG))


def add_selinux_labels(root: Directory) -> None:
    """A label per node from a small set (deterministic), like a labelled image."""
    labels = [b"system_u:object_r:type%d_t:s0\0" % i for i in range(40)]
    stack, n = [root], 0
    while stack:
        d = stack.pop()
        d.stat.xattrs[b"security.selinux"] = labels[n % 7]
        for name, child in sorted(d.entries.items()):
            n += 1
            if isinstance(child, Directory):
                stack.append(child)
            elif isinstance(child, Leaf):
                child.stat.xattrs[b"security.selinux"] = labels[(n * 31 + len(name)) % 40]


def count_inodes(root: Directory) -> tuple[int, int]:
    """(directories, distinct leaves)."""
    dirs, leaves, stack = 0, set(), [root]
    while stack:
        d = stack.pop()
        dirs += 1
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            else:
                leaves.add(id(child))
    return dirs, len(leaves)


CASES: dict[str, Callable[[Directory], bytes]] = {
    "v1-rs": lambda root: mkfs_erofs(root, 1),
    "v0-c": lambda root: mkfs_erofs(root, 0, c_compat=True),
    "v2-rs": lambda root: mkfs_erofs(root, 2),
}


def prepared(data: bytes, selinux: bool) -> Directory:
    model = fresh(data)
    transform(model)
    if selinux:
        add_selinux_labels(model[0])
    return model[0]


def profile(data: bytes, case: str, selinux: bool) -> None:
    prof = cProfile.Profile()
    if case == "transform":
        model = fresh(data)
        gc.disable()
        prof.runcall(transform, model)
    else:
        root = prepared(data, selinux)
        gc.disable()
        prof.runcall(CASES[case], root)
    gc.enable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/cfsboot-bench", type=Path)
    ap.add_argument("--runs", type=int, default=5, help="rounds (the best is shown)")
    ap.add_argument("--selinux", action="store_true", help="label every node")
    ap.add_argument("--profile", choices=["transform", *CASES], help="cProfile one case")
    args = ap.parse_args()
    data = load_model(args.dir)
    if args.profile:
        profile(data, args.profile, args.selinux)
        return 0
    best = dict.fromkeys(["transform", *CASES], float("inf"))
    made: dict[str, tuple[int, str]] = {}  # case -> (image size, SHA-256 prefix)
    for _ in range(args.runs):
        model = fresh(data)
        gc.collect()
        gc.disable()  # as compute_composefs_digest
        try:
            start = time.perf_counter()
            transform(model)
            best["transform"] = min(best["transform"], time.perf_counter() - start)
            root = model[0]
            if args.selinux:
                add_selinux_labels(root)
            for name, case in CASES.items():
                start = time.perf_counter()
                image = case(root)
                best[name] = min(best[name], time.perf_counter() - start)
                made[name] = (len(image), hashlib.sha256(image).hexdigest()[:16])
                del image
        finally:
            gc.enable()
    dirs, leaves = count_inodes(fresh(data)[0])
    print(f"tree: {dirs} directories, {leaves} leaves; best of {args.runs} rounds"
          + (", every node labelled" if args.selinux else ""))
    for name, seconds in best.items():
        extra = (f"  ({made[name][0] / 2**20:.1f} MiB image, sha256 {made[name][1]}…)"
                 if name in made else "")
        print(f"  {name:<10} {seconds * 1000:8.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
