#!/usr/bin/env bash
# Installs the peer tools Tandem is tested and benchmarked against (Debian packages; see
# ../shared/reference/peers.md). Safe to run again. Needs root (or sudo).
set -euo pipefail
# qemu-system-misc: qemu-system-riscv32, the reference machine for the VM guests (guests/*.elf).
# The cross compiler for rebuilding the guests (gcc-riscv64-unknown-elf) is not needed by the tests;
# scripts/build-guests.sh says how to get it.
# gnutls-bin: psktool, which writes the TLS-PSK keys files NBD clients and Tandem share.
# python3-libnbd: libnbd's Python bindings (and nbdsh), for tests that drive libnbd request by request.
# chromium: the headless browser the web console is tested in (driven by puppeteer-core).
PKGS=(qemu-utils qemu-block-extra libnbd-bin python3-libnbd nbdkit libiscsi-bin libiscsi-dev tgt fio sanlock qemu-system-misc gnutls-bin chromium)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-peers: all peer tools are installed"
  exit 0
fi
echo "install-peers: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
