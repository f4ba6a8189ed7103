"""Benchmark ``cfsboot oci pull`` of a multi-layer image against ``tar -x``.

    .venv/bin/python bench/import.py [--dir /var/tmp/cfsboot-bench-import]
                                     [--mib 256] [--layers 4] [--runs 3] [--threads N]
                                     [--compression gzip|zstd|none]

1. Builds (once per parameter set) an OCI layout with --layers layers of about
   --mib/--layers MiB each (log-uniform file sizes, random content; bench/common
   make_tree), tarred by GNU tar and compressed.
2. Times --runs interleaved rounds, warm page cache:
   * import: ``pull(oci:LAYOUT)`` into a fresh insecure repository (layers in
     parallel on --threads threads; includes building the EROFS image);
   * tar -x: every layer extracted by ``tar -x`` (with -z/--zstd) into a fresh
     directory, the same number of layers in parallel.
3. Prints uncompressed throughput of both and the ratio import/tar (wall and
   CPU time; on a shared machine the CPU figure is the steadier one).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zstandard
from common import best_of, make_tree, thread_count

from cfsboot.oci.layout import host_platform
from cfsboot.oci.pull import pull
from cfsboot.repository import SHA512, Repository
from cfsboot.repository.fsck import fsck
from cfsboot.repository.gc import gc

MEDIA = "application/vnd.oci.image.layer.v1.tar"


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_layout(base: Path, mib: int, layers: int, compression: str) -> tuple[Path, int]:
    """(layout dir, total uncompressed tar bytes); reused when already built."""
    layout = base / f"layout-{mib}-{layers}-{compression}"
    marker = layout / "done.json"
    if marker.exists():
        return layout, int(json.loads(marker.read_text())["tar_bytes"])
    shutil.rmtree(layout, ignore_errors=True)
    layout.mkdir(parents=True)
    descs, diff_ids, total = [], [], 0
    for i in range(layers):
        src = base / f"src-{i}"
        shutil.rmtree(src, ignore_errors=True)
        (src / "usr").mkdir(parents=True)
        make_tree(src / "usr" / f"layer{i}", (mib << 20) // layers, seed=i + 1)
        tar = subprocess.run(["tar", "--format=posix", "--numeric-owner", "-C", str(src),
                              "-cf", "-", "."], check=True, capture_output=True).stdout
        shutil.rmtree(src)
        total += len(tar)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        if compression == "gzip":
            blob, media = gzip.compress(tar, 6), MEDIA + "+gzip"
        elif compression == "zstd":
            blob, media = zstandard.ZstdCompressor().compress(tar), MEDIA + "+zstd"
        else:
            blob, media = tar, MEDIA
        descs.append({"mediaType": media, **_blob(layout, blob)})
    os_, arch = host_platform()
    cfg = _blob(layout, json.dumps({"architecture": arch, "os": os_, "rootfs": {
        "type": "layers", "diff_ids": diff_ids}}).encode())
    man = _blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": descs}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **man}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    marker.write_text(json.dumps({"tar_bytes": total}))
    return layout, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp/cfsboot-bench-import")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=thread_count())
    ap.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip")
    args = ap.parse_args()
    base = Path(args.dir)
    layout, tar_bytes = build_layout(base, args.mib, args.layers, args.compression)
    blobs = json.loads((layout / "blobs/sha256" / json.loads(
        (layout / "index.json").read_text())["manifests"][0]["digest"][7:]).read_text())["layers"]
    flag = {"gzip": ["-z"], "zstd": ["--zstd"], "none": []}[args.compression]

    def do_import() -> None:
        target = base / "repo"
        shutil.rmtree(target, ignore_errors=True)
        repo, _ = Repository.init(target, SHA512, insecure=True)
        with repo:
            pull(repo, f"oci:{layout}", "bench", jobs=args.threads)

    def do_tar() -> None:
        target = base / "untar"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()

        def one(i: int) -> None:
            d = target / str(i)
            d.mkdir()
            subprocess.run(["tar", *flag, "-xf", str(layout / "blobs/sha256" /
                                                    blobs[i]["digest"][7:]), "-C", str(d)],
                           check=True)
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(one, range(len(blobs))))

    best = best_of(args.runs, {"import": do_import, "tar -x": do_tar})
    mib = tar_bytes / (1 << 20)
    print(f"image: {args.layers} layers, {mib:.0f} MiB uncompressed tar, "
          f"{args.compression}, {args.threads} threads, best of {args.runs}")
    for name, (wall, cpu) in best.items():
        print(f"  {name:8s} wall {wall:6.2f} s ({mib / wall:6.1f} MiB/s)   cpu {cpu:6.2f} s")
    (iw, ic), (tw, tc) = best["import"], best["tar -x"]
    print(f"ratio import/tar: wall {iw / tw:.2f}  cpu {ic / tc:.2f}")
    do_import()  # leave one imported repository for the maintenance timings

    def do_fsck() -> None:
        with Repository.open(base / "repo", insecure=True) as repo:
            assert fsck(repo).ok

    def do_gc_dry_run() -> None:
        with Repository.open(base / "repo", insecure=True) as repo:
            gc(repo, dry_run=True)

    for name, (wall, cpu) in best_of(args.runs, {"fsck": do_fsck,
                                                 "gc -n": do_gc_dry_run}).items():
        print(f"  {name:8s} wall {wall:6.2f} s   cpu {cpu:6.2f} s")
    shutil.rmtree(base / "repo", ignore_errors=True)
    shutil.rmtree(base / "untar", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
