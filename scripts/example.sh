#!/usr/bin/env bash
# The main job on the built-in example: build a small bootc-style root, compute
# its sealed composefs digest (what goes into composefs=<digest>), write the
# dumpfile and a composefs image, and check the image with independent tools.
set -euo pipefail
cd "$(dirname "$0")/.."
CFSBOOT=.venv/bin/cfsboot
OUT=${EXAMPLE_OUT:-$(mktemp -d /tmp/cfsboot-example.XXXXXX)}
rm -rf "$OUT/root"; mkdir -p "$OUT"
.venv/bin/python scripts/make-example-root.py "$OUT/root"
echo "example root:        $OUT/root"

digest=$($CFSBOOT container compute-composefs-digest "$OUT/root" --write-dumpfile-to "$OUT/root.dump")
echo "composefs digest:    $digest   (kernel argument: composefs=$digest)"
echo "dumpfile:            $OUT/root.dump ($(wc -l <"$OUT/root.dump") entries)"

$CFSBOOT mkcomposefs --format 1 --hash sha512 --from-file "$OUT/root.dump" "$OUT/root.cfs" --print-digest \
  | sed 's/^/image digest:        /'
if command -v fsck.erofs >/dev/null; then
  fsck.erofs "$OUT/root.cfs" >/dev/null && echo "fsck.erofs:          ok"
fi
$CFSBOOT composefs-info ls "$OUT/root.cfs" | head -n 5 | sed 's/^/composefs-info ls:   /'
echo "outputs in $OUT"
