#!/usr/bin/env bash
# The main job on the built-in example, end to end: build a small bootc-style
# root filesystem, make throwaway Secure Boot keys, seal it (composefs digest ->
# UKI with composefs=<digest> -> Authenticode signatures -> final /boot/EFI
# layout), then check the result with independent tools.
set -euo pipefail
cd "$(dirname "$0")/.."
CFSBOOT=.venv/bin/cfsboot
OUT=${EXAMPLE_OUT:-$(mktemp -d /tmp/cfsboot-example.XXXXXX)}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cfsboot-example
ROOT=$OUT/root
rm -rf "$ROOT" "$OUT/keys"; mkdir -p "$OUT" "$CACHE"
say() { printf '%-30s %s\n' "$1" "$2"; }
# Run an independent check; a failing check fails the example.
check() {
  local label=$1; shift
  if "$@" >/dev/null 2>&1; then say "$label" "ok"; else say "$label" "FAILED: $*"; exit 1; fi
}

.venv/bin/python scripts/make-example-root.py "$ROOT"
placeholder_kver=6.12.0-example
if fetched=$(bash scripts/fetch-debian-kernel.sh "$CACHE"); then
  read -r kver vmlinuz <<<"$fetched"
  mv "$ROOT/usr/lib/modules/$placeholder_kver" "$ROOT/usr/lib/modules/$kver"
  cp "$vmlinuz" "$ROOT/usr/lib/modules/$kver/vmlinuz"
  say "kernel:" "Debian's real kernel $kver (initramfs.img is a placeholder: no root-setup yet)"
else
  kver=$placeholder_kver
  say "kernel:" "PLACEHOLDER vmlinuz and initramfs (apt could not fetch linux-image-amd64)"
fi
# systemd-boot and the UKI stub come from the image itself, as in a real image.
efi=/usr/lib/systemd/boot/efi
if [ ! -f "$efi/systemd-bootx64.efi" ] && command -v apt-get >/dev/null; then
  (mkdir -p "$CACHE/sdboot" && cd "$CACHE/sdboot" && apt-get download -q systemd-boot-efi >/dev/null 2>&1 \
    && dpkg-deb -x systemd-boot-efi_*.deb .) || true
  efi=$CACHE/sdboot$efi
fi
if [ ! -f "$efi/systemd-bootx64.efi" ]; then
  echo "example: systemd-boot-efi is not available (run as root: make deps)" >&2; exit 1
fi
mkdir -p "$ROOT/usr/lib/systemd/boot/efi"
cp "$efi/systemd-bootx64.efi" "$efi/linuxx64.efi.stub" "$ROOT/usr/lib/systemd/boot/efi/"
say "example root:" "$ROOT"


$CFSBOOT keys generate "$OUT/keys" >/dev/null
say "keys:" "$OUT/keys (PK/KEK/db .crt/.esl/.auth for firmware enrolment)"
$CFSBOOT seal "$ROOT" --key "$OUT/keys/db.key" --cert "$OUT/keys/db.crt" --karg console=ttyS0 >/dev/null
uki=$ROOT/boot/EFI/Linux/$kver.efi
cmdline=$($CFSBOOT uki inspect "$uki" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["cmdline"])')
say "sealed UKI:" "$uki"
say "  cmdline:" "$cmdline"
say "systemd-boot:" "$ROOT/boot/EFI/BOOT/BOOTX64.EFI, $ROOT/boot/EFI/systemd/systemd-bootx64.efi"

# Independent checks.  The final tree (kernel moved into the UKI) must have
# exactly the digest the signed UKI asserts, or the image would not boot.
digest=$($CFSBOOT container compute-composefs-digest "$ROOT" --write-dumpfile-to "$OUT/root.dump")
case " $cmdline " in
  *" composefs=$digest "*) say "final tree digest:" "$digest = the UKI's composefs= (the seal holds)" ;;
  *) echo "example: the sealed tree's digest $digest is not the UKI's!" >&2; exit 1 ;;
esac
check "cfsboot seal verify:" $CFSBOOT seal verify "$ROOT" --cert "$OUT/keys/db.crt"
for f in "$uki" "$ROOT/boot/EFI/BOOT/BOOTX64.EFI"; do
  if command -v sbverify >/dev/null; then
    check "sbverify $(basename "$f"):" sbverify --cert "$OUT/keys/db.crt" "$f"
  else say "sbverify:" "not installed (make deps as root), skipped"; fi
  if command -v osslsigncode >/dev/null; then
    check "osslsigncode $(basename "$f"):" osslsigncode verify -CAfile "$OUT/keys/db.crt" -in "$f"
  else say "osslsigncode:" "not installed (make deps as root), skipped"; fi
done
$CFSBOOT mkcomposefs --format 1 --hash sha512 --from-file "$OUT/root.dump" "$OUT/root.cfs"
if command -v fsck.erofs >/dev/null; then
  check "fsck.erofs root.cfs:" fsck.erofs "$OUT/root.cfs"
else say "fsck.erofs:" "not installed (make deps as root), skipped"; fi
say "outputs:" "$OUT"
