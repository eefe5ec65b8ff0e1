#!/usr/bin/env bash
# pull-bench: cold and warm pull + unpack of a python-like 3-layer image, `strata pull`
# into overlayfs versus containerd 1.6 `ctr images pull` (its built-in overlayfs).
#
#   benches/pull-bench.sh [--runs N] [--variants gzip,zstd] [--no-warm] [--only strata]
#
# The image is built once and cached under $STRATA_BENCH_CACHE (/var/tmp/strata-bench):
#   layer 1  Debian bookworm `debootstrap --variant=minbase`
#   layer 2  the largest Python under /root/.pyenv/versions
#   layer 3  a few files, a whiteout (etc/motd) and an opaque directory (usr/share/doc/apt)
# pushed gzip-compressed and zstd-compressed to a local docker-registry.
#
# Every run of either tool gets a freshly made loop-mounted ext4 for its whole root (the
# root disk's aged ext4 swings by 5x between runs); the tools alternate, run for run.
# Times are wall-clock of the pull command; "+sync" adds a `sync` right after it, for
# containerd does not sync its layers while strata syncs each one before committing it.
# Needs root, a built strata (`cargo build --workspace --all-targets`), containerd, ctr,
# docker-registry, skopeo, debootstrap, zstd.
set -euo pipefail

runs=3 variants="gzip,zstd" warm=1 tools="strata containerd"
while (($#)); do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --only) tools="$2"; shift 2 ;;
        --variants) variants="$2"; shift 2 ;;
        --no-warm) warm=0; shift ;;
        *) echo "usage: $0 [--runs N] [--variants gzip,zstd] [--no-warm]" >&2; exit 2 ;;
    esac
done

here="$(cd -- "$(dirname -- "$0")/.." && pwd -P)"
# shellcheck source=../tests/harness/lib.sh
source "$here/tests/harness/lib.sh"
strata="${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/strata}"
[[ -x "$strata" ]] || { echo "no strata binary at $strata (cargo build first, or set STRATA_BIN)" >&2; exit 1; }
log() { echo "pull-bench: $*" >&2; }
# shellcheck source=lib.sh
source "$here/benches/lib.sh"

# ---- one run of each tool ---------------------------------------------------------------

# strata_run REF WARM — prints "seconds seconds_with_sync peak_rss_kib".
strata_run() {
    local ref="$1" warm="$2"
    fresh_fs
    local sock="$mnt/run/strata.sock"
    STRATA_LOG=warn setsid "$strata" serve --root "$mnt/root" --address "$sock" \
        </dev/null >>"$cache/strata.log" 2>&1 &
    local pid=$!
    until "$strata" --address "$sock" version >/dev/null 2>&1; do sleep 0.05; done
    if ((warm)); then
        "$strata" --address "$sock" pull --plain-http --no-unpack "$ref" >/dev/null
        sync
    fi
    local t0 t1 t2
    t0="$(now)"
    "$strata" --address "$sock" pull --plain-http "$ref" >"$cache/strata-pull.out" 2>&1 \
        || { cat "$cache/strata-pull.out" >&2; exit 1; }
    t1="$(now)"
    sync
    t2="$(now)"
    local rss
    rss="$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")"
    kill -TERM "$pid"
    wait "$pid" || true
    drop_fs
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t0" | bc -l) $rss"
}

# containerd_run REF WARM — prints "seconds seconds_with_sync peak_rss_kib".
containerd_run() {
    local ref="$1" warm="$2"
    fresh_fs
    local wd="$mnt/ctr"
    mkdir -p "$wd"
    STRATA_BUILTIN_CONTENT=1 STRATA_CONTAINERD_LOG_LEVEL=warn start_containerd "$wd" >/dev/null
    local pid; pid="$(cat "$wd/containerd.pid")"
    local c=(ctr --address "$wd/containerd.sock" -n default)
    if ((warm)); then
        "${c[@]}" content fetch --plain-http "$ref" >/dev/null 2>&1
        sync
    fi
    local t0 t1 t2
    t0="$(now)"
    "${c[@]}" images pull --plain-http --snapshotter overlayfs "$ref" </dev/null >"$cache/ctr-pull.out" 2>&1 \
        || { tail -n 20 "$cache/ctr-pull.out" >&2; exit 1; }
    t1="$(now)"
    sync
    t2="$(now)"
    local rss
    rss="$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")"
    stop_containerd "$wd" >/dev/null 2>&1
    drop_fs
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t0" | bc -l) $rss"
}


# ---- main -------------------------------------------------------------------------------

trap 'drop_fs; stop_registry "$cache/registry" >/dev/null 2>&1 || true' EXIT
build_layers
mkdir -p "$cache/registry"
stop_registry "$cache/registry" >/dev/null 2>&1 || true
hostport="$(start_registry "$cache/registry")"
IFS=, read -r -a vs <<<"$variants"
for v in "${vs[@]}"; do
    make_layout "$v"
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$cache/oci-$v:$v" \
        "docker://$hostport/bench/python:$v" >/dev/null
done
py="$(cat "$cache/layers/python")"
echo "pull-bench: layers $(du -b "$cache"/layers/{1,2,3}.tar.gz | awk '{s+=$1} END{printf "%.0f MB gzip", s/1e6}'),"\
    "$(du -b "$cache"/layers/{1,2,3}.tar.zst | awk '{s+=$1} END{printf "%.0f MB zstd", s/1e6}'); layer 2 = $py; $runs runs each"

modes=(cold)
((warm)) && modes+=(warm)
printf '%-5s %-5s %-11s %9s %9s %9s %12s %s\n' variant mode tool "median s" "+sync s" "ratio" "peak RSS MB" "runs (s)"
for v in "${vs[@]}"; do
    ref="$hostport/bench/python:$v"
    for m in "${modes[@]}"; do
        w=0; [[ "$m" == warm ]] && w=1
        s_t=() s_ts=() s_r=() c_t=() c_ts=() c_r=()
        for ((i = 0; i < runs; i++)); do
            # Alternate which tool goes first.
            if ((i % 2 == 0)); then order=(strata containerd); else order=(containerd strata); fi
            if [[ "$tools" != *containerd* ]]; then order=(strata); fi
            for tool in "${order[@]}"; do
                read -r t ts r < <("${tool}_run" "$ref" "$w")
                log "$v $m $tool run $((i + 1)): ${t}s (+sync ${ts}s), peak RSS $((r / 1024)) MB"
                if [[ "$tool" == strata ]]; then s_t+=("$t") s_ts+=("$ts") s_r+=("$r"); else c_t+=("$t") c_ts+=("$ts") c_r+=("$r"); fi
            done
        done
        sm="$(echo "${s_t[*]}" | median)" sms="$(echo "${s_ts[*]}" | median)" sr="$(echo "${s_r[*]}" | median)"
        # With --only strata the ratios are against 1 s: meaningless, but the table prints.
        ((${#c_t[@]})) || c_t=(1) c_ts=(1) c_r=(0)
        cm="$(echo "${c_t[*]}" | median)" cms="$(echo "${c_ts[*]}" | median)" cr="$(echo "${c_r[*]}" | median)"
        printf '%-7s %-5s %-11s %9.2f %9.2f %9.2f %12.0f %s\n' "$v" "$m" strata "$sm" "$sms" \
            "$(echo "$sm / $cm" | bc -l)" "$(echo "$sr / 1024" | bc -l)" "$(printf '%.2f ' "${s_t[@]}")"
        printf '%-7s %-5s %-11s %9.2f %9.2f %9s %12.0f %s\n' "$v" "$m" containerd "$cm" "$cms" "1" \
            "$(echo "$cr / 1024" | bc -l)" "$(printf '%.2f ' "${c_t[@]}")"
        printf '%-7s %-5s ratio strata/containerd: %.2f (with sync %.2f)\n' "$v" "$m" \
            "$(echo "$sm / $cm" | bc -l)" "$(echo "$sms / $cms" | bc -l)"
    done
done
