#!/usr/bin/env bash
# lazy-bench: time from the command to the first line of output of the image's own Python
# (`-c 'import json, decimal, asyncio; print("ok")'`) in the python-like image of
# pull-bench.sh, converted with `strata convert --estargz`:
#
#   strata-lazy   `strata run --lazy REF python ...` (nothing pulled before)
#   strata-prefetch  the same, of the image converted with `--prefetch-from` the files
#                 the workload opens (recorded once with strace, as `ctr-remote image
#                 optimize` records them): those come in one go at mount time
#   strata-full   `strata pull REF` (the plain gzip image) + `strata run REF python ...`
#   containerd    `ctr images pull` + `ctr run` of the plain gzip image (containerd 1.6)
#   stargz        stargz-snapshotter as containerd 1.6's proxy snapshotter: `ctr-remote
#                 images rpull` of the eStargz image + `ctr run --snapshotter stargz`
#                 (containerd-stargz-grpc built from Debian's Go sources by
#                 benches/stargz-grpc, once, into the cache)
#
#   benches/lazy-bench.sh [--runs N] [--only "strata-lazy strata-prefetch stargz stargz-prefetch strata-full containerd"]
#
# Then read throughput (`--throughput N` rounds, default 1, 0 skips): the time to `cat`
# every file of the python tree inside the container, page cache dropped first: through
# the lazy mount fetching on demand (background fetch off), through it again once every
# chunk is local, and through overlayfs after a full pull; MB/s, and each against
# overlayfs in the same round.
#
# Every run gets a fresh loop-mounted ext4 and a fresh daemon; the tools alternate, run for
# run; medians of N (default 5). Also printed: the bytes strata-lazy fetched from the
# registry by the first output (the lazy servers' own counters) against the image's size.
# Needs what pull-bench.sh needs (root, a built strata, containerd, ctr, runc,
# docker-registry, skopeo, debootstrap, strace) and, for stargz, Debian's
# stargz-snapshotter (ctr-remote), golang-github-containerd-stargz-snapshotter-dev and
# golang-go.
set -euo pipefail

tp_runs=1 runs=5 tools="strata-lazy strata-prefetch stargz stargz-prefetch strata-full containerd"
while (($#)); do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --only) tools="$2"; shift 2 ;;
        --throughput) tp_runs="$2"; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--only TOOLS] [--throughput N]" >&2; exit 2 ;;
    esac
done

here="$(cd -- "$(dirname -- "$0")/.." && pwd -P)"
# shellcheck source=../tests/harness/lib.sh
source "$here/tests/harness/lib.sh"
log() { echo "lazy-bench: $*" >&2; }
# shellcheck source=lib.sh
source "$here/benches/lib.sh"
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/strata}"
[[ -x "$strata" ]] || { echo "no strata binary at $strata (cargo build first, or set STRATA_BIN)" >&2; exit 1; }

code='import json, decimal, asyncio; print("ok")'

# first_line T0 CMD... — runs CMD, prints the seconds from T0 to the Python's first line
# of output ("ok"; lines a pull prints before it are skipped).
first_line() {
    local t0="$1"; shift
    local line t1=""
    exec 3< <("$@" 2>&1)
    while IFS= read -r line <&3; do
        if [[ "$line" == ok ]]; then
            t1="$(now)"
            break
        fi
        echo "$line" >>"$cache/lazy-bench.out"
    done
    cat <&3 >/dev/null || true
    exec 3<&-
    [[ -n "$t1" ]] || { log "no output from: $*"; tail -n 5 "$cache/lazy-bench.out" >&2; exit 1; }
    echo "$t1 - $t0" | bc -l
}

start_strata() {
    local sock="$mnt/run/strata.sock"
    env ${strata_config:+STRATA_CONFIG="$strata_config"} STRATA_LOG=warn setsid "$strata" serve --root "$mnt/root" --address "$sock" \
        </dev/null >>"$cache/strata.log" 2>&1 &
    s_pid=$!
    local n=0
    until "$strata" --address "$sock" version >/dev/null 2>&1; do
        ((n++ < 600)) || { log "strata serve did not start"; tail -n 5 "$cache/strata.log" >&2; exit 1; }
        sleep 0.05
    done
    S=("$strata" --address "$sock")
}

stop_strata() {
    local id
    for id in $("${S[@]}" ps -q 2>/dev/null); do "${S[@]}" rm -f "$id" >/dev/null 2>&1 || true; done
    kill -TERM "$s_pid" 2>/dev/null || true
    local n=0
    while kill -0 "$s_pid" 2>/dev/null && ((n++ < 200)); do sleep 0.05; done
    kill -KILL "$s_pid" 2>/dev/null || true
    wait "$s_pid" 2>/dev/null || true
    # Lazy layers' servers outlive the daemon by design; the benchmark's go with its fs
    # (all of them gone before it is unmounted, or its loop device stays busy).
    pkill -KILL -f "lazy-serve .*$mnt/" 2>/dev/null || true
    local n=0
    while pgrep -f "lazy-serve .*$mnt/" >/dev/null && ((n++ < 100)); do sleep 0.05; done
    grep -F " $mnt/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
}

# Bytes the lazy servers fetched, from their counters.
lazy_fetched() {
    cat "$mnt"/root/snapshots/lazy/snapshots/*/lazy/stats.json 2>/dev/null \
        | grep -o '"fetched":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END{print s+0}'
}

strata-lazy_run() {
    fresh_fs
    start_strata
    local t0 t
    t0="$(now)"
    t="$(first_line "$t0" "${S[@]}" run --rm --lazy --plain-http "$lazy_ref" "$py/bin/python3" -c "$code")"
    sleep 0.3 # the servers publish their counters every 200 ms
    echo "$t $(lazy_fetched)"
    stop_strata
    drop_fs
}

strata-prefetch_run() {
    fresh_fs
    start_strata
    local t0 t
    t0="$(now)"
    t="$(first_line "$t0" "${S[@]}" run --rm --lazy --plain-http "$prefetch_ref" "$py/bin/python3" -c "$code")"
    sleep 0.3
    echo "$t $(lazy_fetched)"
    stop_strata
    drop_fs
}

# The files the workload opens, in order, as the image names them (the python is the
# host's own tree and the base the host's Debian, so host paths resolve as in the image).
record_prefetch() {
    local out="$cache/prefetch.list"
    [[ -s "$out" ]] && return
    strace -f -qq -e trace=openat,execve -o "$cache/py.strace" "$py/bin/python3" -c "$code" >/dev/null
    {
        realpath -e /lib64/ld-linux-x86-64.so.2
        grep -v '= -1' "$cache/py.strace" | grep -o '\(openat\|execve\)([^"]*"[^"]*"' |
            sed 's/.*"\(.*\)"/\1/' | xargs -r realpath -e 2>/dev/null
    } | awk '!seen[$0]++' | while read -r f; do [[ -f "$f" ]] && echo "$f"; done >"$out.tmp"
    mv "$out.tmp" "$out"
}

# Milliseconds to cat every file of the python tree in a container of IMAGE.
cat_tree() {
    local out
    sync
    echo 3 >/proc/sys/vm/drop_caches
    out="$("${S[@]}" run --rm --plain-http "$@" "$py/bin/python3" -c "
import os, time
t = time.monotonic()
for d, _, fs in os.walk('$py'):
    for f in fs:
        p = os.path.join(d, f)
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, 'rb') as h:
                while h.read(1 << 20):
                    pass
print('TP', int((time.monotonic() - t) * 1000))")"
    grep -o 'TP [0-9]*' <<<"$out" | cut -d' ' -f2
}

throughput_run() {
    mnt="$cache/mnt-tp" fs_img="$cache/fs-tp.img"
    fresh_fs
    strata_config="$cache/tp.toml"
    printf '[snapshots]\nlazy_background_fetch_secs = 0\n' >"$strata_config"
    start_strata
    local cold local_ overlay
    cold="$(cat_tree --lazy "$lazy_ref")"
    local_="$(cat_tree --lazy "$lazy_ref")"
    "${S[@]}" pull --plain-http "$plain_ref" >/dev/null
    overlay="$(cat_tree "$plain_ref")"
    echo "$cold $local_ $overlay"
    stop_strata
    strata_config=""
    drop_fs
}

# stargz-snapshotter under containerd, as its documentation sets it up: containerd's own
# content store, stargz as proxy snapshotter "stargz", `ctr-remote images rpull`.
stargz_with() {
    local ref="$1"
    fresh_fs
    local wd="$mnt/ctr" sgz="$mnt/stargz"
    mkdir -p "$wd/runc" "$wd/fifo" "$sgz"
    setsid "$stargz_bin" -address "$sgz/stargz.sock" -root "$sgz/root" \
        </dev/null >>"$cache/stargz.log" 2>&1 &
    g_pid=$!
    local n=0
    until [[ -S "$sgz/stargz.sock" ]]; do
        ((n++ < 600)) || { log "containerd-stargz-grpc did not start"; tail -n 5 "$cache/stargz.log" >&2; exit 1; }
        sleep 0.05
    done
    STRATA_BUILTIN_CONTENT=1 STRATA_PROXY_NAME=stargz STRATA_CONTAINERD_LOG_LEVEL=warn \
        start_containerd "$wd" "$sgz/stargz.sock" >/dev/null
    local t0 t
    t0="$(now)"
    t="$(first_line "$t0" bash -c 'ctr-remote --address "$1/containerd.sock" -n default images rpull --plain-http --snapshotter stargz "$2" >/dev/null </dev/null &&
        ctr --address "$1/containerd.sock" -n default run --rm --runc-root "$1/runc" --fifo-dir "$1/fifo" --snapshotter stargz "$2" bench "$P" -c "$C" </dev/null' \
        _ "$wd" "$ref")"
    echo "$t 0"
    stop_containerd "$wd" >/dev/null 2>&1
    kill -TERM "$g_pid" 2>/dev/null || true
    n=0
    while kill -0 "$g_pid" 2>/dev/null && ((n++ < 100)); do sleep 0.05; done
    kill -KILL "$g_pid" 2>/dev/null || true
    wait "$g_pid" 2>/dev/null || true
    grep -F " $mnt/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    drop_fs
}
stargz_run() { stargz_with "$lazy_ref"; }
stargz-prefetch_run() { stargz_with "$prefetch_ref"; }

strata-full_run() {
    fresh_fs
    start_strata
    local t0 t
    t0="$(now)"
    t="$(first_line "$t0" bash -c '"$@" pull --plain-http "$R" >/dev/null && "$@" run --rm --plain-http "$R" "$P" -c "$C"' \
        _ "${S[@]}")"
    echo "$t 0"
    stop_strata
    drop_fs
}

containerd_run() {
    fresh_fs
    local wd="$mnt/ctr"
    mkdir -p "$wd/runc" "$wd/fifo"
    STRATA_BUILTIN_CONTENT=1 STRATA_CONTAINERD_LOG_LEVEL=warn start_containerd "$wd" >/dev/null
    local c=(ctr --address "$wd/containerd.sock" -n default)
    local t0 t
    t0="$(now)"
    t="$(first_line "$t0" bash -c '"$@" images pull --plain-http --snapshotter overlayfs "$R" >/dev/null </dev/null &&
        "$@" run --rm --runc-root "$W/runc" --fifo-dir "$W/fifo" --snapshotter overlayfs "$R" bench "$P" -c "$C" </dev/null' \
        _ "${c[@]}")"
    echo "$t 0"
    stop_containerd "$wd" >/dev/null 2>&1
    drop_fs
}

stargz_bin="$cache/containerd-stargz-grpc"
if [[ " $tools " == *" stargz"* ]]; then
    for c in ctr-remote go; do
        command -v "$c" >/dev/null || {
            echo "the stargz peers need $c: apt-get install stargz-snapshotter golang-github-containerd-stargz-snapshotter-dev golang-go" >&2
            exit 1
        }
    done
fi
if [[ " $tools " == *" stargz"* && ! -x "$stargz_bin" ]]; then
    log "building containerd-stargz-grpc from Debian's Go sources"
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$cache/go-cache" \
        bash -c 'cd "$1" && go build -o "$2" ./benches/stargz-grpc' _ "$here" "$stargz_bin"
fi

trap 'stop_strata 2>/dev/null; drop_fs; stop_registry "$cache/registry" >/dev/null 2>&1 || true' EXIT
s_pid="" S=("$strata")
build_layers
make_layout gzip
mkdir -p "$cache/registry"
stop_registry "$cache/registry" >/dev/null 2>&1 || true
hostport="$(start_registry "$cache/registry")"
plain_ref="$hostport/bench/python:gzip" lazy_ref="$hostport/bench/python:estargz"
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$cache/oci-gzip:gzip" "docker://$plain_ref" >/dev/null
# The registry's storage persists in $cache/registry: convert once.
if ! grep -q ': converted ' "$cache/convert.out" 2>/dev/null; then
    log "strata convert --estargz $plain_ref $lazy_ref"
    "$strata" convert --estargz --plain-http "$plain_ref" "$lazy_ref" >"$cache/convert.tmp"
    mv "$cache/convert.tmp" "$cache/convert.out"
fi
py="$(cat "$cache/layers/python")"
prefetch_ref="$hostport/bench/python:estargz-prefetch"
if ! grep -q ': converted ' "$cache/convert-prefetch.out" 2>/dev/null; then
    record_prefetch
    log "strata convert --estargz --prefetch-from ($(wc -l <"$cache/prefetch.list") files) $plain_ref $prefetch_ref"
    "$strata" convert --estargz --plain-http --prefetch-from "$cache/prefetch.list" "$plain_ref" "$prefetch_ref" \
        >"$cache/convert.tmp"
    mv "$cache/convert.tmp" "$cache/convert-prefetch.out"
fi
image_bytes="$(grep -o '([0-9]* bytes' "$cache/convert.out" | tr -dc '0-9\n' | awk '{s+=$1} END{print s}')"
export R="$plain_ref" P="$py/bin/python3" C="$code" W="$mnt/ctr"
echo "lazy-bench: $py in a $((image_bytes / 1000000)) MB eStargz image; $runs runs each, alternating"

read -r -a order <<<"$tools"
declare -A times fetched
for ((i = 0; i < runs; i++)); do
    # Rotate which tool goes first.
    for ((k = 0; k < ${#order[@]}; k++)); do
        tool="${order[$(((i + k) % ${#order[@]}))]}"
        # A filesystem of its own per run: nothing one run leaves can reach the next.
        mnt="$cache/mnt-$i-$tool" fs_img="$cache/fs-$i-$tool.img" W="$cache/mnt-$i-$tool/ctr"
        export W
        read -r t f < <("${tool}_run")
        rmdir "$mnt" 2>/dev/null || true
        log "$tool run $((i + 1)): ${t}s${f:+, fetched $f bytes}"
        times[$tool]+="$t " fetched[$tool]+="$f "
    done
done

base=""
[[ " $tools " == *" containerd "* ]] && base="$(echo "${times[containerd]}" | median)"
printf '%-12s %14s %10s %s\n' tool "first out s" "ratio" "runs (s)"
for tool in "${order[@]}"; do
    m="$(echo "${times[$tool]}" | median)"
    ratio="-"
    [[ -n "$base" ]] && ratio="$(printf '%.3f' "$(echo "$m / $base" | bc -l)")"
    printf '%-12s %14.2f %10s %s\n' "$tool" "$m" "$ratio" "${times[$tool]}"
done
if ((tp_runs > 0)); then
    tree_bytes="$(find "$py" -type f -printf '%s\n' | awk '{s+=$1} END{print s}')"
    printf '\nread throughput, cat of the python tree (%.0f MB), page cache dropped:\n' \
        "$(echo "$tree_bytes / 1000000" | bc -l)"
    printf '%-8s %12s %12s %12s %16s\n' round lazy-cold lazy-local overlayfs "local/overlayfs"
    for ((i = 1; i <= tp_runs; i++)); do
        read -r c l o < <(throughput_run)
        mbs() { echo "$tree_bytes / 1000 / $1" | bc -l; }
        printf '%-8s %9.0f MB/s %7.0f MB/s %7.0f MB/s %16.2f\n' "$i" "$(mbs "$c")" "$(mbs "$l")" \
            "$(mbs "$o")" "$(echo "$o / $l" | bc -l)"
    done
fi
for tool in strata-lazy strata-prefetch; do
    [[ -n "${fetched[$tool]:-}" ]] || continue
    f="$(echo "${fetched[$tool]}" | median)"
    printf '%s fetched %.1f MB of %.1f MB (%.1f%%) by its first output\n' "$tool" \
        "$(echo "$f / 1000000" | bc -l)" "$(echo "$image_bytes / 1000000" | bc -l)" \
        "$(echo "100 * $f / $image_bytes" | bc -l)"
done
