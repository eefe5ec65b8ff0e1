#!/usr/bin/env bash
# run-bench: container start latency with the image already pulled, strata versus
# containerd 1.6 in the same run, alternating, and the memory of one shim per container.
#
#   benches/run-bench.sh [--runs N] [--idle N]
#
# For each run, each tool (in alternating order):
#   exit   `strata run --rm IMAGE true`  vs  `ctr run --rm IMAGE ID true`: wall time of the
#          command, from its start to its return after the container is gone;
#   start  the same running `sh -c ': >/m/started'` (a file created in a bind mount): from
#          the command's start to the file's mtime, i.e. until the container's process runs.
# Then --idle N (default 5) containers of each run `sleep` detached, and the resident
# memory (VmRSS) of their shims, strata-shim versus containerd-shim-runc-v2, is averaged.
#
# The image is a one-layer busybox built by tests/harness/lib.sh and pushed to a local
# docker-registry; strata unpacks it into its overlayfs, containerd into its own.
# containerd keeps its builtin content store. Needs root, a built strata and strata-shim
# (`cargo build --workspace --all-targets`), containerd, ctr, runc, docker-registry, skopeo,
# busybox-static.
set -euo pipefail

runs=10 idle=5
while (($#)); do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --idle) idle="$2"; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--idle N]" >&2; exit 2 ;;
    esac
done

here="$(cd -- "$(dirname -- "$0")/.." && pwd -P)"
# shellcheck source=../tests/harness/lib.sh
source "$here/tests/harness/lib.sh"
bin="${CARGO_TARGET_DIR:-$here/target}/debug"
strata="${STRATA_BIN:-$bin/strata}"
[[ -x "$strata" ]] || { echo "no strata binary at $strata (cargo build first, or set STRATA_BIN)" >&2; exit 1; }
[[ -x "$(dirname "$strata")/strata-shim" ]] || { echo "no strata-shim next to $strata" >&2; exit 1; }

wd="$(mktemp -d /var/tmp/strata-run-bench.XXXXXX)"
log() { echo "run-bench: $*" >&2; }
now_ns() { date +%s%N; }

s_pid=""
cleanup() {
    set +e
    if [[ -n "$s_pid" ]]; then
        for id in $("$strata" --address "$wd/s/strata.sock" ps -q 2>/dev/null); do
            "$strata" --address "$wd/s/strata.sock" rm -f "$id" >/dev/null 2>&1
        done
        kill -TERM "$s_pid" 2>/dev/null
        wait "$s_pid" 2>/dev/null
    fi
    stop_containerd "$wd/c" >/dev/null 2>&1
    stop_registry "$wd/reg" >/dev/null 2>&1
    grep -F " $wd/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$wd"
}
trap cleanup EXIT

mkdir -p "$wd/reg" "$wd/s" "$wd/c" "$wd/m"
hostport="$(start_registry "$wd/reg")"
build_push_test_image "$wd/reg" "$hostport" bench/busybox:latest >/dev/null
ref="$hostport/bench/busybox:latest"

STRATA_LOG=warn setsid "$strata" serve --root "$wd/s/root" --address "$wd/s/strata.sock" \
    </dev/null >>"$wd/s/strata.log" 2>&1 &
s_pid=$!
until "$strata" --address "$wd/s/strata.sock" version >/dev/null 2>&1; do sleep 0.05; done
S=("$strata" --address "$wd/s/strata.sock")
"${S[@]}" pull --plain-http "$ref" >/dev/null

STRATA_BUILTIN_CONTENT=1 STRATA_CONTAINERD_LOG_LEVEL=warn start_containerd "$wd/c" >/dev/null
C=(ctr --address "$wd/c/containerd.sock" -n default)
"${C[@]}" images pull --plain-http --snapshotter overlayfs "$ref" </dev/null >/dev/null 2>&1
mkdir -p "$wd/c/runc" "$wd/c/fifo"
CRUN=("${C[@]}" run --rm --runc-root "$wd/c/runc" --fifo-dir "$wd/c/fifo" --snapshotter overlayfs)

# One warm-up of each: first-use costs (page cache of runc, the shim) are not the point.
"${S[@]}" run --rm "$ref" true
"${CRUN[@]}" "$ref" warmup true </dev/null

mtime_ns() { stat -c %.9Y "$1" | tr -d .; }

# strata_once exit|start N — prints milliseconds.
strata_once() {
    local t0 t1
    rm -f "$wd/m/started"
    t0="$(now_ns)"
    if [[ "$1" == exit ]]; then
        "${S[@]}" run --rm "$ref" true
        t1="$(now_ns)"
    else
        "${S[@]}" run --rm --mount "$wd/m:/m" "$ref" sh -c ': >/m/started'
        t1="$(mtime_ns "$wd/m/started")"
    fi
    echo $(((t1 - t0) / 1000))
}

ctr_once() {
    local t0 t1
    rm -f "$wd/m/started"
    t0="$(now_ns)"
    if [[ "$1" == exit ]]; then
        "${CRUN[@]}" "$ref" "b-$2" true </dev/null
        t1="$(now_ns)"
    else
        "${CRUN[@]}" --mount "type=bind,src=$wd/m,dst=/m,options=rbind:rw" "$ref" "b-$2" sh -c ': >/m/started' </dev/null
        t1="$(mtime_ns "$wd/m/started")"
    fi
    echo $(((t1 - t0) / 1000))
}

median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

echo "run-bench: $ref, $runs runs each, alternating"
printf '%-6s %10s %14s %7s\n' what "strata ms" "containerd ms" ratio
for what in exit start; do
    s=() c=()
    for ((i = 0; i < runs; i++)); do
        if ((i % 2 == 0)); then
            s+=("$(strata_once "$what" "$i")") c+=("$(ctr_once "$what" "$what-$i")")
        else
            c+=("$(ctr_once "$what" "$what-$i")") s+=("$(strata_once "$what" "$i")")
        fi
    done
    sm="$(echo "${s[*]}" | median)" cm="$(echo "${c[*]}" | median)"
    log "$what strata us: ${s[*]}"
    log "$what containerd us: ${c[*]}"
    printf '%-6s %10.1f %14.1f %7.2f\n' "$what" "$(echo "$sm / 1000" | bc -l)" "$(echo "$cm / 1000" | bc -l)" \
        "$(echo "$sm / $cm" | bc -l)"
done

# Shim memory: $idle detached containers each.
for ((i = 0; i < idle; i++)); do
    "${S[@]}" run -d --name "idle-$i" "$ref" sleep 1000 >/dev/null
    "${C[@]}" run -d --runc-root "$wd/c/runc" --snapshotter overlayfs "$ref" "idle-$i" sleep 1000 </dev/null >/dev/null
done
rss_avg() { # PIDS... -> average VmRSS in KiB
    local sum=0 n=0 p
    for p in "$@"; do
        sum=$((sum + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status"))) n=$((n + 1))
    done
    ((n)) && echo $((sum / n)) || echo 0
}
mapfile -t sp < <(pgrep -f "strata-shim .*$wd/s/root" || true)
mapfile -t cp < <(pgrep -f "containerd-shim-runc-v2 .*$wd/c/containerd.sock" || true)
printf 'shim RSS per container: strata-shim %d KiB (%d shims), containerd-shim-runc-v2 %d KiB (%d shims)\n' \
    "$(rss_avg "${sp[@]}")" "${#sp[@]}" "$(rss_avg "${cp[@]}")" "${#cp[@]}"
for ((i = 0; i < idle; i++)); do
    "${C[@]}" task kill -s SIGKILL "idle-$i" >/dev/null 2>&1 || true
done
sleep 0.5
for ((i = 0; i < idle; i++)); do
    "${C[@]}" task delete "idle-$i" >/dev/null 2>&1 || true
    "${C[@]}" containers delete "idle-$i" >/dev/null 2>&1 || true
done
