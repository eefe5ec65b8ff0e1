#!/usr/bin/env bash
# The main job end to end on a fresh Debian 12 machine (as root): install, build, start a
# local registry with a demo image, start strata and a containerd that uses strata as its
# content store and snapshotter, pull the image through containerd into strata, run a
# container on a strata snapshot, and show the blobs and snapshots strata holds; then the
# same without containerd: `strata pull` and `strata run` (strata's own shim and runc).
# Leaves everything running under the printed work dir; `scripts/demo.sh stop WORKDIR`
# stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source tests/harness/lib.sh

if [ "${1:-}" = stop ]; then
  wd=${2:?usage: scripts/demo.sh stop WORKDIR}
  [ -f "$wd/strata.pid" ] && kill "$(cat "$wd/strata.pid")" 2>/dev/null || true
  stop_all "$wd"
  exit 0
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/strata-target}"
scripts/install-deps.sh
cargo build --workspace --all-targets --locked
strata="$CARGO_TARGET_DIR/debug/strata"

wd=$(mktemp -d /tmp/strata-demo.XXXXXX)
echo "== work dir: $wd"
sock="$wd/run/strata.sock"
setsid "$strata" serve --root "$wd/root" --address "$sock" >"$wd/strata.log" 2>&1 </dev/null &
echo $! >"$wd/strata.pid"
for _ in $(seq 100); do "$strata" --address "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
"$strata" --address "$sock" version

registry=$(start_registry "$wd")
echo "== registry at $registry"
build_push_test_image "$wd" "$registry" strata/demo:1 "hello from a strata demo image" >/dev/null
image="$registry/strata/demo:1"
echo "== pushed $image"

start_containerd "$wd" "$sock" >/dev/null
echo "== containerd uses strata as its content store and snapshotter (see $wd/containerd.toml)"
export STRATA_SNAPSHOTTER=strata
ctr_pull "$wd" "$image" >/dev/null
echo "== pulled $image through containerd; blobs in strata:"
"$strata" --address "$sock" -n "" content ls
echo "== unpacked into strata's overlayfs snapshotter:"
"$strata" --address "$sock" snapshots tree
echo "== running a container on a strata snapshot:"
ctr_run "$wd" "$image" strata-demo
echo "== and strata's own puller, without containerd:"
"$strata" --address "$sock" pull --plain-http "$image"
"$strata" --address "$sock" images ls
echo "== strata run: a container from strata's overlayfs snapshot, run by strata-shim and runc:"
"$strata" --address "$sock" run --rm "$image"
"$strata" --address "$sock" run --rm "$image" sh -c 'echo "hello from strata run, in $(pwd) of $(cat /README)"'
echo "== done. Stop everything with: $root/scripts/demo.sh stop $wd"
