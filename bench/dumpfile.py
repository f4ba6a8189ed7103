"""Dumpfile parsing and writing speed on a generated, realistic dumpfile.

    .venv/bin/python bench/dumpfile.py [--lines 300000] [--runs 5] [--profile rs|c|write]
                                       [--save FILE] [--c-oracle] [--full]

1. Builds (deterministically, from --seed) a tree shaped like a container's
   /usr and /etc: ~8% directories, ~65% regular files (one in eight inline
   with up to 64 bytes of binary content, the rest external objects with a
   SHA-256 fs-verity digest), ~20% symlinks, ~5% extra hard-link names, a few
   devices, fifos and whiteouts; SELinux labels on most entries, file
   capabilities, user/trusted xattrs; names with spaces, tabs, ``=``, UTF-8
   and non-UTF-8 bytes (so fields need escaping), and mtimes with
   nanoseconds.  ``write_dumpfile`` of that tree is the benchmark input (the
   format composefs-rs and ``composefs-info dump`` write; it is valid for
   both parser flavours and for C mkcomposefs).
2. Times, best of --runs interleaved rounds (wall and CPU seconds):
   ``parse_dumpfile`` with the ``rs`` flavour, the ``c`` flavour and the
   ``c`` flavour with ``strict=True``, and ``write_dumpfile`` of the tree.
   --full adds our whole ``mkcomposefs --from-file`` job in-process (C parse
   and EROFS image); --c-oracle times C mkcomposefs 1.0.8 on the same file
   in the chroot of scripts/setup-c-oracle.sh (needs root; a process start,
   unshare and a proc mount are included, a few milliseconds).
3. --profile NAME runs that case once under cProfile and prints the top
   functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import best_of, timed

from cfsboot.tree.dumpfile import parse_dumpfile, write_dumpfile
from cfsboot.tree.model import (
    BlockDevice,
    CharDevice,
    Directory,
    External,
    Fifo,
    Inline,
    Leaf,
    Stat,
    Symlink,
)

ORACLE = Path(os.environ.get("CFSBOOT_C_ORACLE", "/var/cache/cfsboot-forky"))
WORDS = ["lib", "share", "doc", "locale", "python3", "site-packages", "systemd", "system",
         "man", "man1", "icons", "hicolor", "x86_64-linux-gnu", "perl5", "gconv", "terminfo",
         "zoneinfo", "Europe", "include", "linux", "firmware", "modules", "kernel", "drivers",
         "net", "fs", "crypto", "sound", "pkgconfig", "cmake", "bash-completion", "fonts"]
LABELS = [b"system_u:object_r:usr_t:s0", b"system_u:object_r:lib_t:s0",
          b"system_u:object_r:bin_t:s0", b"system_u:object_r:etc_t:s0",
          b"system_u:object_r:man_t:s0", b"system_u:object_r:textrel_shlib_t:s0",
          b"system_u:object_r:systemd_unit_file_t:s0", b"system_u:object_r:locale_t:s0"]
# security.capability of cap_net_raw+ep (v2): binary, so it is written escaped
FILE_CAP = bytes.fromhex("0000000200200000000000000000000000000000")


def odd_name(rng: random.Random, i: int, odd_one_in: int) -> bytes:
    """A name; one in about ``odd_one_in`` needs escaping in a dumpfile."""
    stem = rng.choice(WORDS).encode()
    r = rng.randrange(4 * odd_one_in)
    if r == 0:
        return stem + b" copy " + b"%d" % i
    if r == 1:
        return f"fichier-é-ü-{i}".encode()
    if r == 2:
        return stem + b"=\t%d\\x" % i
    if r == 3:
        return b"latin1-\xe9\xff-%d" % i
    return stem + b"-%d.%s" % (i, rng.choice([b"so.6", b"py", b"gz", b"conf", b"mo", b"h"]))


def make_stat(rng: random.Random, perm: int) -> Stat:
    xattrs: dict[bytes, bytes] = {}
    r = rng.random()
    if r < 0.7:
        xattrs[b"security.selinux"] = rng.choice(LABELS) + b"\0"
    if r < 0.01:
        xattrs[b"security.capability"] = FILE_CAP
    elif r < 0.02:
        xattrs[b"user.mime_type"] = b"text/plain; charset=utf-8"
    elif r < 0.025:
        xattrs[b"trusted.overlay.opaque"] = b"y"
    sec = 1_700_000_000 + rng.randrange(50_000_000)
    nsec = rng.randrange(1_000_000_000) if rng.random() < 0.5 else 0
    uid = 0 if rng.random() < 0.95 else rng.choice([1, 2, 12, 81, 992, 999, 1000, 65534])
    return Stat(perm, uid, uid, sec, nsec, xattrs)


def make_tree(lines: int, seed: int) -> Directory:
    """A tree whose dumpfile has about ``lines`` lines (see the module docstring)."""
    rng = random.Random(seed)
    root = Directory(make_stat(rng, 0o755))
    dirs = [root]
    depth = {id(root): 0}
    leaves: list[Leaf] = []
    count = 1
    i = 0
    while count < lines:
        i += 1
        # Deeper trees later: new entries go into recent directories mostly.
        parent = dirs[-1 - min(int(rng.expovariate(0.05)), len(dirs) - 1)]
        r = rng.random()
        # Few directories need escapes: all paths below them would.
        name = odd_name(rng, i, 500 if r < 0.08 else 20)
        if name in parent.entries:
            continue
        node: Directory | Leaf
        if r < 0.08:
            node = Directory(make_stat(rng, 0o755))
            if depth[id(parent)] < 7:  # /usr/lib/python3/site-packages/x/y/z
                depth[id(node)] = depth[id(parent)] + 1
                dirs.append(node)
        elif r < 0.13 and leaves:
            node = rng.choice(leaves)  # another name for an existing file
        elif r < 0.33:
            target = b"../" * rng.randrange(3) + rng.choice(WORDS).encode() + b"/%d" % i
            node = Leaf(make_stat(rng, 0o777), Symlink(target))
        elif r < 0.335:
            kind = rng.randrange(4)
            content: CharDevice | BlockDevice | Fifo = (
                CharDevice(0) if kind == 0 else CharDevice((4 << 8) | rng.randrange(64))
                if kind == 1 else BlockDevice((8 << 8) | rng.randrange(16))
                if kind == 2 else Fifo())
            node = Leaf(make_stat(rng, 0o644), content)
        elif r < 0.42:
            data = rng.randbytes(rng.randrange(65)) if rng.random() < 0.5 else \
                b"# config %d\nkey=value\n" % i
            node = Leaf(make_stat(rng, 0o644), Inline(data))
        else:
            size = int(2 ** rng.uniform(6.1, 24))
            node = Leaf(make_stat(rng, rng.choice([0o644, 0o755])),
                        External.from_digest(rng.randbytes(32), size))
        if isinstance(node, Leaf) and not isinstance(node.content, CharDevice):
            leaves.append(node)
        parent.entries[name] = node
        count += 1
    return root


def c_oracle_seconds(dump: bytes, runs: int) -> float | None:
    """Best wall time of C mkcomposefs --from-file on ``dump`` (None: no oracle)."""
    if not (ORACLE / "usr/bin/mkcomposefs").exists() or os.geteuid() != 0:
        print("C oracle: not available (needs root and the chroot)", file=sys.stderr)
        return None
    work = ORACLE / "tmp" / f"cfsboot-bench-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        (work / "in.dump").write_bytes(dump)
        inner = f"/tmp/{work.name}"
        script = 'mount -t proc proc "$0/proc" && exec chroot "$0" mkcomposefs "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(ORACLE), "--from-file", f"{inner}/in.dump", f"{inner}/out.cfs"]
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(argv, check=True)
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        shutil.rmtree(work)


def full_job(dump: bytes) -> None:
    """Our ``mkcomposefs --from-file`` without the file write: parse + image."""
    from cfsboot.erofs.writer import c_effective_version, mkfs_erofs
    root = parse_dumpfile(dump, flavor="c")
    mkfs_erofs(root, c_effective_version(root, 0, 1), c_compat=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", choices=["rs", "c", "strict", "write", "full"])
    ap.add_argument("--save", type=Path, help="also write the generated dumpfile here")
    ap.add_argument("--c-oracle", action="store_true",
                    help="time C mkcomposefs --from-file on the same dumpfile")
    ap.add_argument("--full", action="store_true",
                    help="time our whole mkcomposefs --from-file job (parse + image)")
    args = ap.parse_args()

    start = time.perf_counter()
    tree = make_tree(args.lines, args.seed)
    dump = write_dumpfile(tree)
    n_lines = dump.count(b"\n")
    print(f"generated {n_lines} lines, {len(dump) / 2**20:.1f} MiB "
          f"in {time.perf_counter() - start:.1f}s")
    if args.save:
        args.save.write_bytes(dump)

    cases: dict[str, Callable[[], object]] = {
        "parse rs": lambda: parse_dumpfile(dump, flavor="rs"),
        "parse c": lambda: parse_dumpfile(dump, flavor="c"),
        "parse c strict": lambda: parse_dumpfile(dump, flavor="c", strict=True),
        "write": lambda: write_dumpfile(tree),
    }
    if args.full:
        cases["full job (c)"] = lambda: full_job(dump)
    # Sanity: the rs parse of it writes back the same text.
    assert write_dumpfile(parse_dumpfile(dump, flavor="rs")) == dump

    if args.profile:
        name = {"rs": "parse rs", "c": "parse c", "strict": "parse c strict",
                "write": "write", "full": "full job (c)"}[args.profile]
        fn = cases.get(name) or (lambda: full_job(dump))
        prof = cProfile.Profile()
        prof.runcall(fn)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return

    timed(cases["parse rs"])  # warm-up: imports, allocator
    for name, (wall, cpu) in best_of(args.runs, cases).items():
        print(f"{name:16s} wall {wall:6.3f}s  cpu {cpu:6.3f}s")
    if args.c_oracle:
        c = c_oracle_seconds(dump, args.runs)
        if c is not None:
            print(f"{'C mkcomposefs':16s} wall {c:6.3f}s  (whole job, in the chroot)")


if __name__ == "__main__":
    main()
