#!/usr/bin/env bash
# Makes the Debian bookworm minbase rootfs the lifecycle tests (tests/run.rs) build their
# Debian image from, at /var/tmp/strata-debian/rootfs. Idempotent: a rootfs with
# etc/debian_version is kept. The rootfs is built in a temp dir next to it and renamed
# into place, so an interrupted run never leaves a half rootfs.
#
# Fast path: a minbase rootfs this machine already has (the benchmarks' copy) is copied.
set -euo pipefail
base=/var/tmp/strata-debian
dest="$base/rootfs"
cached=/var/tmp/strata-bench/minbase
if [ -e "$dest/etc/debian_version" ]; then
  exit 0
fi
mkdir -p "$base"
tmp="$(mktemp -d "$base/rootfs.tmp.XXXXXX")"
trap 'rm -rf -- "$tmp"' EXIT
if [ -e "$cached/etc/debian_version" ]; then
  cp -a "$cached/." "$tmp/"
else
  command -v debootstrap >/dev/null || { echo "debian-rootfs.sh: debootstrap is not installed" >&2; exit 1; }
  debootstrap --variant=minbase bookworm "$tmp" http://deb.debian.org/debian >&2
fi
[ -e "$tmp/etc/debian_version" ] || { echo "debian-rootfs.sh: no etc/debian_version in the new rootfs" >&2; exit 1; }
# A rootfs left by an earlier run without etc/debian_version is incomplete: replace it.
rm -rf -- "$dest"
mv -- "$tmp" "$dest"
trap - EXIT
echo "debian-rootfs.sh: $dest ready ($(cat "$dest/etc/debian_version"))" >&2
