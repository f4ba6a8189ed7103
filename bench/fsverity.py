"""Benchmark: cfsboot fs-verity digests vs the hashing floor.

Generates ~1 GiB of files in a temporary directory (removed afterwards), then
times, for 1 thread and for the usable CPU count, the floor (plain hashlib over
every file, bench/common.py) and ``cfsboot.fsverity.digest_files`` (with the C
accelerator when it is built, and also without it); prints wall times, their
ratio, and the same for CPU time (steadier on a shared machine).

    .venv/bin/python bench/fsverity.py [--size-mib 1024] [--alg sha512] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, hashing_floor, make_tree, thread_count

from cfsboot import native
from cfsboot.fsverity import digest_file, digest_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--alg", choices=("sha256", "sha512"), default="sha512")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds; the best of them counts (the machine is shared)")
    parser.add_argument("--max-file-kib", type=int, default=8192,
                        help="largest generated file (sizes are log-uniform from 0)")
    parser.add_argument("--dir", help="parent of the temporary tree (default: $TMPDIR)")
    parser.add_argument("--with-threads", action="store_true",
                        help="also time digest_file on a thread pool (the design "
                             "digest_files does not use: it convoys on the GIL)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cfsboot-bench-", dir=args.dir) as tmp:
        paths = make_tree(Path(tmp), args.size_mib << 20,
                          max_file=args.max_file_kib << 10)
        # Largest first for both, so neither ends with one big file on one core.
        paths.sort(key=lambda p: p.stat().st_size, reverse=True)
        total = sum(p.stat().st_size for p in paths)
        print(f"{len(paths)} files, {total / (1 << 20):.0f} MiB, alg {args.alg}, "
              f"best of {args.repeat}")
        print(f"{'threads':>7} {'floor s':>8} {'ours s':>8} {'ratio':>6} {'MiB/s':>7}"
              f" {'floor cpu':>9} {'ours cpu':>8} {'cpu ratio':>9}")
        c_module = native.module
        for threads in sorted({1, thread_count()}):
            def floor(threads: int = threads) -> None:
                hashing_floor(paths, args.alg, threads)

            def ours(threads: int = threads) -> None:
                for _ in digest_files(paths, args.alg, threads=threads):
                    pass

            def ours_python(threads: int = threads) -> None:
                native.module = None  # the pure-Python code: forked worker processes
                try:
                    ours(threads)
                finally:
                    native.module = c_module

            def ours_threads(threads: int = threads) -> None:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for _ in pool.map(digest_file, paths, [args.alg] * len(paths)):
                        pass

            cases = {"floor": floor, "ours": ours}
            if c_module is not None:
                cases["python"] = ours_python
            if args.with_threads and threads > 1:
                cases["threads"] = ours_threads
            best = best_of(args.repeat, cases)
            (floor_wall, floor_cpu), (ours_wall, ours_cpu) = best["floor"], best["ours"]
            print(f"{threads:>7} {floor_wall:>8.3f} {ours_wall:>8.3f} "
                  f"{ours_wall / floor_wall:>6.3f} {total / (1 << 20) / ours_wall:>7.0f}"
                  f" {floor_cpu:>9.3f} {ours_cpu:>8.3f} {ours_cpu / floor_cpu:>9.3f}")
            if "python" in best:
                wall, cpu = best["python"]
                print(f"{'':>7} (above: the C accelerator; pure Python: {wall:.3f} s, "
                      f"ratio {wall / floor_wall:.3f}, cpu ratio {cpu / floor_cpu:.3f})")
            if "threads" in best:
                wall, cpu = best["threads"]
                print(f"{'':>7} digest_file on {threads} threads instead: {wall:.3f} s, "
                      f"ratio {wall / floor_wall:.3f} (cpu {cpu:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
