#!/usr/bin/env bash
# Fetch Debian's current amd64 kernel (linux-image-amd64's dependency) with
# `apt-get download` into CACHE and print "KVER PATH-TO-VMLINUZ".  Exits
# non-zero (printing nothing) when apt cannot fetch it; callers fall back to a
# placeholder kernel.
set -euo pipefail
CACHE=${1:?usage: fetch-debian-kernel.sh CACHE-DIR}
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || exit 1
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$pkg" ] || exit 1
kver=${pkg#linux-image-}
if [ ! -s "$CACHE/$kver/vmlinuz" ]; then
  mkdir -p "$CACHE/dl"
  (cd "$CACHE/dl" && rm -f ./*.deb && apt-get download -q "$pkg" >/dev/null 2>&1) || exit 1
  rm -rf "$CACHE/$kver.tmp" && mkdir -p "$CACHE/$kver.tmp"
  dpkg-deb --fsys-tarfile "$CACHE"/dl/"$pkg"_*.deb | tar -x -C "$CACHE/$kver.tmp" "./boot/vmlinuz-$kver"
  mv "$CACHE/$kver.tmp/boot/vmlinuz-$kver" "$CACHE/$kver.tmp/vmlinuz"
  rmdir "$CACHE/$kver.tmp/boot"
  rm -rf "$CACHE/$kver" "$CACHE/dl" && mv "$CACHE/$kver.tmp" "$CACHE/$kver"
fi
echo "$kver $CACHE/$kver/vmlinuz"
