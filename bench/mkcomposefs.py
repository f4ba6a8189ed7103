"""Benchmark `cfsboot mkcomposefs DIR IMAGE` against its peer, C `mkcomposefs`.

    .venv/bin/python bench/mkcomposefs.py [--dir /var/tmp/cfsboot-bench] [--runs 3]

Both build the same image (C semantics: SHA-256 object ids, hard links not
tracked, format V0 with the automatic bump) from bench/digest.py's 1.1 GiB
tree, with a warm page cache; the images must be byte-identical.  C
mkcomposefs 1.0.8 runs in the Debian forky chroot `make oracle` creates (as
root; the tree is bind-mounted into it), so its figure includes ~10 ms of
unshare/chroot start-up.  Also shown: the SHA-256 hashing floor (hashlib, 1
MiB reads, the same thread count as cfsboot).  Prints best-of-N wall and CPU
time and the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, hashing_floor, thread_count
from digest import ensure_tree, regular_files

ORACLE = Path(os.environ.get("CFSBOOT_C_ORACLE", "/var/cache/cfsboot-forky"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/cfsboot-bench", help="where the tree lives")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not (ORACLE / "usr/bin/mkcomposefs").exists() or os.geteuid() != 0:
        sys.exit(f"bench: needs root and C mkcomposefs in {ORACLE} (make oracle)")
    root = ensure_tree(Path(args.dir))
    files = [Path(p) for _, p in regular_files(root)]
    mount_point = ORACLE / "mnt/cfsboot-bench-tree"
    mount_point.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ORACLE / "tmp") as work:
        ours_image = Path(work) / "ours.cfs"
        c_image = Path(work) / "c.cfs"
        inside = "/" + str(c_image.relative_to(ORACLE))
        script = ('mount --bind "$1" "$0/mnt/cfsboot-bench-tree" && mount -t proc proc "$0/proc"'
                  ' && exec chroot "$0" mkcomposefs /mnt/cfsboot-bench-tree "$2"')

        def c_tool() -> None:
            subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                            str(ORACLE), str(root), inside], check=True)

        def ours() -> None:
            subprocess.run([sys.executable, "-m", "cfsboot", "mkcomposefs", str(root),
                            str(ours_image)], check=True)

        def floor() -> None:
            hashing_floor(files, "sha256", thread_count())

        best = best_of(args.runs, {"floor": floor, "c": c_tool, "ours": ours})
        if ours_image.read_bytes() != c_image.read_bytes():
            sys.exit("bench: the images differ")
    (fw, fc), (cw, cc), (ow, oc) = best["floor"], best["c"], best["ours"]
    print(f"tree: {root}: {len(files)} files; threads: {thread_count()}; images identical")
    print(f"floor (sha256, {thread_count()} threads)  wall {fw:6.3f} s  cpu {fc:6.3f} s")
    print(f"C mkcomposefs 1.0.8              wall {cw:6.3f} s  cpu {cc:6.3f} s")
    print(f"cfsboot mkcomposefs              wall {ow:6.3f} s  cpu {oc:6.3f} s")
    print(f"ratio cfsboot/C (wall): {ow / cw:.2f}   cfsboot/floor (wall): {ow / fw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
