#!/usr/bin/env bash
# Optional differential oracle: C mkcomposefs (Debian forky's composefs package)
# in a minimal debootstrap chroot.  The tests use it when present
# (CFSBOOT_C_ORACLE, default /var/cache/cfsboot-forky) and skip otherwise.
# Needs root, debootstrap and network access to Debian's archive; ~3 minutes.
set -euo pipefail
DEST=${CFSBOOT_C_ORACLE:-/var/cache/cfsboot-forky}
if [ -x "$DEST/usr/bin/mkcomposefs" ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-c-oracle: not root; the C mkcomposefs differential tests will skip" >&2
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
# debootstrap may not know "forky" yet: sid's script works for every recent suite.
script=/usr/share/debootstrap/scripts/sid
rm -rf "$DEST.tmp"
if debootstrap --variant=minbase --include=composefs forky "$DEST.tmp" \
     http://deb.debian.org/debian "$script" >"${TMPDIR:-/tmp}/cfsboot-debootstrap.log" 2>&1; then
  mv "$DEST.tmp" "$DEST"
else
  echo "setup-c-oracle: debootstrap failed (see ${TMPDIR:-/tmp}/cfsboot-debootstrap.log);" \
       "the differential tests will skip" >&2
  rm -rf "$DEST.tmp"
fi
