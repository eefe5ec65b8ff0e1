#!/usr/bin/env bash
# Installs the Debian packages strata builds and tests with (idempotent).
set -euo pipefail
pkgs=(libclang-dev clang containerd docker-registry runc skopeo busybox-static btrfs-progs fuse3 openssl ca-certificates curl jq apache2-utils debootstrap zstd bc strace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged services are not used: tests start their own throwaway instances.
for svc in docker-registry containerd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
"$(dirname "$0")/debian-rootfs.sh"
