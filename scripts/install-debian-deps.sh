#!/usr/bin/env bash
# Install the Debian tools that cfsboot's tests use as independent references.
# Runs only as root on Debian/Ubuntu; elsewhere the tests that need them skip.
# gcc, python3-dev and libssl-dev build the optional C accelerator (cfsboot._native).
set -euo pipefail
PKGS=(gcc python3-dev libssl-dev erofs-utils fsverity sbsigntool osslsigncode mtools dosfstools attr debootstrap
      systemd-boot-efi efitools softhsm2 libengine-pkcs11-openssl ovmf pcre2-utils skopeo umoci docker-registry)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-debian-deps: not root or no apt-get; tests needing ${PKGS[*]} will skip" >&2
  exit 0
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
