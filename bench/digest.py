"""Benchmark `cfsboot container compute-composefs-digest` against the hashing floor.

    .venv/bin/python bench/digest.py [--dir /var/tmp/cfsboot-bench] [--threads N] [--runs 3]

1. Builds (once; reused while its marker matches) a container root of
   >= 1 GiB shaped like a distribution's /usr: ~25k files whose sizes follow
   the histogram of a Debian /usr (2% <= 64 B, 60% <= 4 KiB, 33% <= 64 KiB,
   4.5% <= 1 MiB) plus a few large libraries, ~3k directories, symlinks and
   hard links.
2. Times, best of --runs, all with a WARM page cache (nothing is dropped; the
   first pass reads the tree into memory, so this measures CPU, not the disk):
   * floor: plain SHA-512 (hashlib, 1 MiB reads) of every regular file's bytes
     on a pool of --threads threads, largest files first;
   * cold:  the CLI (a fresh process, as in a build), no cache;
   * warm:  the CLI with --cache on the unchanged tree (after one run filled it).
3. Prints the times and the ratios cold/floor (target <= 1.3 on 2 cores) and
   warm/cold (target <= 5%).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TREE_VERSION = "cfsboot-bench-tree v2"
SEED = 20261128
MiB = 1 << 20
# (share of files, smallest, largest size) — a Debian /usr size histogram
SIZE_BUCKETS = [(0.02, 1, 64), (0.60, 65, 4096), (0.33, 4097, 64 * 1024),
                (0.05, 64 * 1024 + 1, MiB)]
LARGE_FILES_MIB = [128, 96, 64, 48, 32, 24, 16, 16, 12, 8, 8, 8, 6, 4, 4, 4, 4, 3, 2, 2, 2, 2]
SMALL_FILES = 25_000
PACKAGES = 400


def pick_size(rng: random.Random) -> int:
    """A file size from SIZE_BUCKETS, log-uniform inside the chosen bucket."""
    r = rng.random()
    lo, hi = SIZE_BUCKETS[-1][1:]
    for share, b_lo, b_hi in SIZE_BUCKETS:
        if r < share:
            lo, hi = b_lo, b_hi
            break
        r -= share
    return int(lo * (hi / lo) ** rng.random())


def build_tree(root: Path) -> None:
    """Write the benchmark tree (deterministic: same seed, same bytes)."""
    rng = random.Random(SEED)
    for d in ("usr/bin", "usr/sbin", "usr/lib64", "boot", "sysroot", "run", "tmp", "var/tmp",
              "etc", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    dirs = [root / "usr/bin", root / "usr/sbin", root / "usr/lib64"]
    for p in range(PACKAGES):
        name = f"pkg{p:03d}"
        for sub in (f"usr/lib/{name}", f"usr/lib/{name}/plugins", f"usr/share/{name}",
                    f"usr/share/doc/{name}", f"usr/lib/python3/site-packages/{name}",
                    f"usr/lib/python3/site-packages/{name}/__pycache__",
                    f"usr/share/locale/l{p % 60}/LC_MESSAGES"):
            path = root / sub
            path.mkdir(parents=True, exist_ok=True)
            dirs.append(path)
    files: list[Path] = []
    for i in range(SMALL_FILES):
        size = pick_size(rng)
        path = rng.choice(dirs) / f"f{i:05d}"
        path.write_bytes(rng.randbytes(size))
        files.append(path)
    for i, mib in enumerate(LARGE_FILES_MIB):
        path = root / f"usr/lib64/libbig{i}.so.{mib}"
        with path.open("wb") as f:
            for _ in range(mib):
                f.write(rng.randbytes(MiB))
        files.append(path)
    for i in range(1000):
        target = rng.choice(files)
        os.symlink(os.path.relpath(target, root / "usr/bin"), root / f"usr/bin/link{i:04d}")
    for i in range(200):
        target = rng.choice(files)
        os.link(target, target.parent / f"hardlink{i:03d}")
    os.mkfifo(root / "dev/initctl")


def ensure_tree(base: Path) -> Path:
    root = base / "tree"
    marker = base / "tree.done"
    if marker.exists() and marker.read_text() == TREE_VERSION and root.is_dir():
        return root
    if root.exists():
        shutil.rmtree(root)
    base.mkdir(parents=True, exist_ok=True)
    print(f"building the benchmark tree in {root} (once) ...", file=sys.stderr)
    build_tree(root)
    marker.write_text(TREE_VERSION)
    return root


def regular_files(root: Path) -> list[tuple[int, str]]:
    out = []
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if (st.st_mode & 0o170000) == 0o100000 and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                out.append((st.st_size, path))
    out.sort(reverse=True)
    return out


def floor_once(files: list[tuple[int, str]], threads: int) -> float:
    def sha512_file(path: str) -> bytes:
        h = hashlib.sha512()
        buf = bytearray(MiB)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        return h.digest()

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(sha512_file, [p for _, p in files]):
            pass
    return time.perf_counter() - t


def cli_once(root: Path, threads: int, extra: list[str]) -> tuple[float, dict[str, object]]:
    cmd = [sys.executable, "-m", "cfsboot", "container", "compute-composefs-digest",
           str(root), "--json", "--threads", str(threads), *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{proc.stderr}")
    report: dict[str, object] = json.loads(proc.stdout)
    return elapsed, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/cfsboot-bench", help="where the tree lives")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (best is kept)")
    args = ap.parse_args()

    root = ensure_tree(Path(args.dir))
    files = regular_files(root)
    total = sum(size for size, _ in files)
    print(f"tree: {root}: {len(files)} distinct regular files, {total / MiB:.0f} MiB; "
          f"threads: {args.threads}; warm page cache")
    floor_once(files, args.threads)  # warm the page cache

    floors = [floor_once(files, args.threads) for _ in range(args.runs)]
    colds = [cli_once(root, args.threads, []) for _ in range(args.runs)]
    cache_dir = tempfile.mkdtemp(prefix="cfsboot-bench-cache-", dir=args.dir)
    try:
        _, filled = cli_once(root, args.threads, ["--cache", cache_dir])
        warms = [cli_once(root, args.threads, ["--cache", cache_dir]) for _ in range(args.runs)]
    finally:
        shutil.rmtree(cache_dir)

    digests = {r["digest"] for _, r in colds} | {r["digest"] for _, r in warms}
    if len(digests) != 1:
        sys.exit(f"bench: digests differ between runs: {digests}")
    floor = min(floors)
    cold = min(t for t, _ in colds)
    warm = min(t for t, _ in warms)
    best_cold = min(colds, key=lambda c: c[0])[1]
    best_warm = min(warms, key=lambda c: c[0])[1]
    print(f"floor  (sha512, {args.threads} threads): best {floor:7.3f} s  "
          f"median {statistics.median(floors):7.3f} s  ({total / MiB / floor:.0f} MiB/s)")
    print(f"cold   (cfsboot, no cache):     best {cold:7.3f} s  "
          f"median {statistics.median(t for t, _ in colds):7.3f} s  phases {best_cold['time']}")
    print(f"warm   (cfsboot, --cache):      best {warm:7.3f} s  "
          f"median {statistics.median(t for t, _ in warms):7.3f} s  phases {best_warm['time']}")
    print(f"cache fill run hashed {filled['counts']['bytes_hashed'] / MiB:.0f} MiB; "  # type: ignore[index]
          f"warm run hashed {best_warm['counts']['bytes_hashed']} bytes")  # type: ignore[index]
    print(f"ratio cold/floor: {cold / floor:.2f}  (target <= 1.30)")
    print(f"ratio warm/cold:  {100 * warm / cold:.1f}%  (target <= 5%)")
    print(f"digest: {digests.pop()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
