# shellcheck shell=bash
# tests/harness/lib.sh — real-component test harness for strata.
#
# Drives Debian's docker-registry, skopeo, containerd 1.6 and ctr over loopback
# only. Every file goes under the caller-given WORKDIR; the registry binds
# 127.0.0.1 on a kernel-chosen free port; containerd uses unix sockets in WORKDIR.
#
# Usage from Rust (or a shell):
#   bash -c 'source tests/harness/lib.sh; start_registry "$0"' /tmp/wd
#   bash -c 'source tests/harness/lib.sh; "$@"' _ start_containerd /tmp/wd /tmp/wd/strata.sock
# Every public function runs in a subshell with `set -euo pipefail`, prints its
# result on stdout, diagnostics on stderr, and returns non-zero on failure.
# Background daemons are detached (setsid, stdio redirected to files), so a
# caller that captures stdout never hangs on them.
#
# Environment knobs:
#   STRATA_BUILTIN_CONTENT=1   start_containerd keeps containerd's own content store
#                              (no proxy plugin) — for baseline comparisons.
#   STRATA_CONTAINERD_LOG_LEVEL  containerd --log-level (default: debug).
#   STRATA_SNAPSHOTTER         snapshotter for ctr_pull (default: overlayfs if loaded, else native).
#   STRATA_NAMESPACE           containerd namespace for ctr_* (default: default).
#   STRATA_IMAGE_EXTRA_KIB     build_push_test_image adds /extra.bin of N KiB of
#                              random bytes (for multi-chunk blob tests).
#   STRATA_PULL_TIMEOUT        seconds before ctr_pull gives up (default 60).
#   STRATA_WAIT_SECS           max seconds for every wait loop (default 30).

# Directory holding this file (so helpers can find siblings).
export STRATA_HARNESS_DIR
STRATA_HARNESS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Print an error to stderr and exit the current (sub)shell with status 1.
_h_die() { echo "harness: error: $*" >&2; exit 1; }

# Print a diagnostic line to stderr.
_h_log() { echo "harness: $*" >&2; }

# Validate and absolutize a work dir argument (creates it); prints the path.
_h_workdir() {
    [[ -n "${1:-}" ]] || _h_die "WORKDIR argument is required"
    mkdir -p -- "$1" || _h_die "cannot create WORKDIR $1"
    (cd -- "$1" && pwd -P)
}

# Max seconds for wait loops (capped at 30).
_h_wait_secs() {
    local s="${STRATA_WAIT_SECS:-30}"
    [[ "$s" =~ ^[0-9]+$ ]] || s=30
    (( s > 30 )) && s=30
    echo "$s"
}

# True if PID (a number) is a live, non-zombie process.
_h_alive() {
    [[ "${1:-}" =~ ^[0-9]+$ ]] || return 1
    [[ -d "/proc/$1" ]] || return 1
    local state
    state="$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# Stop the process whose pid is stored in PIDFILE: TERM, wait up to 10 s, then KILL.
_h_stop_pidfile() {
    local pidfile="$1" what="$2" pid i
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat -- "$pidfile")"
    if _h_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            _h_alive "$pid" || break
            sleep 0.1
        done
        if _h_alive "$pid"; then
            _h_log "$what (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do _h_alive "$pid" || break; sleep 0.1; done
        fi
    fi
    rm -f -- "$pidfile"
}

# Install the Debian packages this harness needs (idempotent; for .ci/run on a fresh machine).
harness_install_deps() (
    set -euo pipefail
    local pkgs=() p
    for p in containerd docker-registry skopeo runc busybox-static curl jq; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
    done
    if ((${#pkgs[@]})); then
        _h_log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        # policy-rc.d 101 = "do not start services from maintainer scripts".
        local had_policy=0
        [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
        if ((had_policy == 0)); then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 || { ((had_policy)) || rm -f /usr/sbin/policy-rc.d; _h_die "apt-get install failed"; }
        ((had_policy)) || rm -f /usr/sbin/policy-rc.d
    fi
    # The Debian docker-registry/containerd services are never needed; make sure
    # they are not running (harmless without systemd/init scripts).
    if command -v service >/dev/null 2>&1; then
        service docker-registry stop >/dev/null 2>&1 || true
        service containerd stop >/dev/null 2>&1 || true
    fi
)

# start_registry WORKDIR — start docker-registry on 127.0.0.1:<free port>; print HOST:PORT.
start_registry() (
    set -euo pipefail
    local wd; wd="$(_h_workdir "${1:-}")"
    local bin=/usr/bin/docker-registry
    [[ -x "$bin" ]] || _h_die "$bin not found (apt-get install docker-registry)"
    if [[ -f "$wd/registry.pid" ]] && _h_alive "$(cat "$wd/registry.pid")"; then
        _h_die "a registry is already running for $wd (pid $(cat "$wd/registry.pid"))"
    fi
    mkdir -p "$wd/registry-data"
    local cfg="$wd/registry.yml" log="$wd/registry.log"
    # addr 127.0.0.1:0 lets the kernel pick a free port (no race); the registry
    # logs the real "listening on 127.0.0.1:NNNN" line, which we parse.
    cat >"$cfg" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $wd/registry-data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: strata-test-harness-secret
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
    : >"$log"
    rm -f "$wd/registry.port"
    setsid "$bin" serve "$cfg" </dev/null >>"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$wd/registry.pid"
    local deadline=$((SECONDS + $(_h_wait_secs))) port=""
    while :; do
        _h_alive "$pid" || { tail -n 20 "$log" >&2; _h_die "docker-registry exited during startup (log: $log)"; }
        port="$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$log" | head -n1 | sed 's/.*://')" || true
        [[ -n "$port" ]] && break
        ((SECONDS < deadline)) || { kill -KILL "$pid" 2>/dev/null || true; _h_die "docker-registry did not report its port within timeout (log: $log)"; }
        sleep 0.1
    done
    echo "$port" >"$wd/registry.port"
    while :; do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/" || true)" == 200 ]]; then
            break
        fi
        _h_alive "$pid" || _h_die "docker-registry died (log: $log)"
        ((SECONDS < deadline)) || { kill -KILL "$pid" 2>/dev/null || true; _h_die "http://127.0.0.1:$port/v2/ did not answer 200 within timeout"; }
        sleep 0.1
    done
    echo "127.0.0.1:$port"
)

# build_push_test_image WORKDIR HOSTPORT REPO:TAG [TEXT] — hand-build an OCI image, push it with skopeo, print the manifest digest.
build_push_test_image() (
    set -euo pipefail
    local wd; wd="$(_h_workdir "${1:-}")"
    local hostport="${2:-}" ref="${3:-}" text="${4:-hello from the strata test image}"
    [[ -n "$hostport" ]] || _h_die "usage: build_push_test_image WORKDIR HOSTPORT REPO:TAG [TEXT]"
    [[ "$ref" == *:* ]] || _h_die "REPO:TAG required (got '$ref')"
    command -v skopeo >/dev/null || _h_die "skopeo not installed"
    local repo="${ref%:*}" tag="${ref##*:}"
    local safe; safe="$(printf '%s' "$ref" | tr -c 'A-Za-z0-9._-' '_')"
    local dir="$wd/images/$safe"
    rm -rf -- "$dir"
    mkdir -p "$dir/rootfs/bin" "$dir/oci/blobs/sha256"
    local blobs="$dir/oci/blobs/sha256"

    # --- rootfs -> layer tar (reproducible: fixed owner, mtime, order) ---
    printf '%s\n' "$text" >"$dir/rootfs/hello.txt"
    printf 'strata harness test image %s\n' "$ref" >"$dir/rootfs/README"
    mkdir -p "$dir/rootfs/etc"
    printf 'root:x:0:0:root:/:/bin/sh\n' >"$dir/rootfs/etc/passwd"
    local cmd_json='["/bin/sh","-c","cat /hello.txt"]'
    if [[ -x /bin/busybox ]] && file_is_static /bin/busybox; then
        cp /bin/busybox "$dir/rootfs/bin/busybox"
        local a
        for a in sh cat ls echo true sleep; do ln -s busybox "$dir/rootfs/bin/$a"; done
    else
        _h_log "no static /bin/busybox (apt-get install busybox-static); image will not be runnable"
        cmd_json='["/hello.txt"]'
    fi
    if [[ -n "${STRATA_IMAGE_EXTRA_KIB:-}" ]]; then
        head -c "$((STRATA_IMAGE_EXTRA_KIB * 1024))" /dev/urandom >"$dir/rootfs/extra.bin"
    fi
    local members=()
    mapfile -t members < <(find "$dir/rootfs" -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
        -C "$dir/rootfs" -cf "$dir/layer.tar" -- "${members[@]}"
    local diffid; diffid="sha256:$(sha256sum "$dir/layer.tar" | cut -d' ' -f1)"
    gzip -n -c "$dir/layer.tar" >"$dir/layer.tar.gz"
    local layer_hex layer_size
    layer_hex="$(sha256sum "$dir/layer.tar.gz" | cut -d' ' -f1)"
    layer_size="$(stat -c %s "$dir/layer.tar.gz")"
    mv "$dir/layer.tar.gz" "$blobs/$layer_hex"

    # --- config ---
    local arch; arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
    case "$arch" in i386) arch=386 ;; armhf | armel) arch=arm ;; ppc64el) arch=ppc64le ;; esac
    printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created_by":"strata tests/harness/lib.sh"}]}' \
        "$arch" "$cmd_json" "$diffid" >"$dir/config.json"
    local cfg_hex cfg_size
    cfg_hex="$(sha256sum "$dir/config.json" | cut -d' ' -f1)"
    cfg_size="$(stat -c %s "$dir/config.json")"
    cp "$dir/config.json" "$blobs/$cfg_hex"

    # --- manifest ---
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "$cfg_hex" "$cfg_size" "$layer_hex" "$layer_size" >"$dir/manifest.json"
    local man_hex man_size
    man_hex="$(sha256sum "$dir/manifest.json" | cut -d' ' -f1)"
    man_size="$(stat -c %s "$dir/manifest.json")"
    cp "$dir/manifest.json" "$blobs/$man_hex"

    # --- layout ---
    printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci/oci-layout"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$man_hex" "$man_size" "$tag" >"$dir/oci/index.json"

    # --- push ---
    local tries=0
    until skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
            "oci:$dir/oci:$tag" "docker://$hostport/$repo:$tag" >"$dir/skopeo.log" 2>&1; do
        tries=$((tries + 1))
        ((tries < 3)) || { cat "$dir/skopeo.log" >&2; _h_die "skopeo copy to $hostport/$repo:$tag failed"; }
        sleep 1
    done
    # The registry must serve exactly the manifest we built (skopeo must not convert it).
    local got
    got="$(curl -sS --max-time 10 -o /dev/null -w '%header{docker-content-digest}' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$hostport/v2/$repo/manifests/$tag" 2>/dev/null || true)"
    if [[ -z "$got" ]]; then
        got="$(curl -sS --max-time 10 -D - -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
            "http://$hostport/v2/$repo/manifests/$tag" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')"
    fi
    [[ "$got" == "sha256:$man_hex" ]] || _h_die "registry serves manifest '$got', expected sha256:$man_hex"

    local f
    for f in "$dir" "$wd"; do
        echo "sha256:$man_hex" >"$f/manifest.digest"
        echo "sha256:$cfg_hex" >"$f/config.digest"
        echo "sha256:$layer_hex" >"$f/layer.digest"
        echo "$diffid" >"$f/diffid"
        printf 'manifest %s\nconfig %s\nlayer %s\n' "$man_size" "$cfg_size" "$layer_size" >"$f/sizes"
        echo "$hostport/$repo:$tag" >"$f/image.ref"
    done
    rm -f "$dir/layer.tar"
    echo "sha256:$man_hex"
)

# True if FILE is a statically linked ELF (best effort without `file`).
file_is_static() {
    if command -v file >/dev/null 2>&1; then
        file -L "$1" | grep -q 'statically linked'
    else
        if grep -q 'ld-linux' "$1" 2>/dev/null; then return 1; fi
        return 0
    fi
}

# start_containerd WORKDIR [STRATA_SOCK] — start containerd 1.6 with strata as its content store (proxy plugin "strata-content") and as the snapshotter "strata" (proxy plugin, type snapshot); print its socket path. With STRATA_BUILTIN_CONTENT=1 containerd keeps its own content store (and, without STRATA_SOCK, has no strata plugin at all). STRATA_PROXY_NAME names the proxy snapshotter (default strata; the lazy benchmark points one named stargz at stargz-snapshotter). With STRATA_CRI=1 its CRI plugin runs too, on snapshotter "strata" with the snapshot annotations on (what a remote snapshotter needs), sandbox image $STRATA_CRI_SANDBOX_IMAGE, registries configured from WORKDIR/certs.d (hosts.toml), runc state under WORKDIR/cri-runc.
start_containerd() (
    set -euo pipefail
    local wd; wd="$(_h_workdir "${1:-}")"
    local strata_sock="${2:-}" name="${STRATA_PROXY_NAME:-strata}"
    local builtin="${STRATA_BUILTIN_CONTENT:-0}"
    if [[ "$builtin" != 1 ]]; then
        [[ -n "$strata_sock" ]] || _h_die "usage: start_containerd WORKDIR STRATA_SOCK (or STRATA_BUILTIN_CONTENT=1)"
    fi
    if [[ -n "$strata_sock" && "$strata_sock" != /* ]]; then strata_sock="$(pwd -P)/$strata_sock"; fi
    command -v containerd >/dev/null || _h_die "containerd not installed"
    if [[ -f "$wd/containerd.pid" ]] && _h_alive "$(cat "$wd/containerd.pid")"; then
        _h_die "a containerd is already running for $wd (pid $(cat "$wd/containerd.pid"))"
    fi
    local sock="$wd/containerd.sock"
    # sun_path is 108 bytes; containerd also creates "$sock.ttrpc".
    ((${#sock} + 6 < 108)) || _h_die "WORKDIR too long for a unix socket path: $sock"
    local root="$wd/containerd/root" state="$wd/containerd/state"
    mkdir -p "$root" "$state" "$wd/containerd/opt" "$wd/containerd/tmp"
    chmod 0711 "$root" "$state"
    local cfg="$wd/containerd.toml" log="$wd/containerd.log"
    local disabled='"io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"'
    local proxy="" cri=""
    if [[ "${STRATA_CRI:-0}" == 1 ]]; then
        disabled="${disabled/\"io.containerd.grpc.v1.cri\", /}"
        mkdir -p "$wd/certs.d" "$wd/cni/bin" "$wd/cni/net.d" "$wd/cri-runc"
        cri="  [plugins.\"io.containerd.grpc.v1.cri\"]
    sandbox_image = \"${STRATA_CRI_SANDBOX_IMAGE:?STRATA_CRI_SANDBOX_IMAGE names the pod sandbox image}\"
    stream_server_address = \"127.0.0.1\"
    stream_server_port = \"0\"
    enable_selinux = false
    disable_apparmor = true
    # No lower OOM score than containerd's own (lowering it needs CAP_SYS_RESOURCE,
    # which a CI sandbox may not grant).
    restrict_oom_score_adj = true
    [plugins.\"io.containerd.grpc.v1.cri\".containerd]
      snapshotter = \"$name\"
      disable_snapshot_annotations = false
      default_runtime_name = \"runc\"
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
        runtime_type = \"io.containerd.runc.v2\"
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]
          Root = \"$wd/cri-runc\"
    [plugins.\"io.containerd.grpc.v1.cri\".cni]
      bin_dir = \"$wd/cni/bin\"
      conf_dir = \"$wd/cni/net.d\"
    [plugins.\"io.containerd.grpc.v1.cri\".registry]
      config_path = \"$wd/certs.d\""
    fi
    if [[ -n "$strata_sock" ]]; then
        proxy="[proxy_plugins]
  [proxy_plugins.$name]
    type = \"snapshot\"
    address = \"$strata_sock\""
    fi
    if [[ "$builtin" != 1 ]]; then
        disabled="\"io.containerd.content.v1.content\", $disabled"
        proxy="$proxy
  [proxy_plugins.strata-content]
    type = \"content\"
    address = \"$strata_sock\""
    fi
    cat >"$cfg" <<EOF
# generated by tests/harness/lib.sh (builtin content: $builtin)
version = 2
root = "$root"
state = "$state"
temp = "$wd/containerd/tmp"
plugin_dir = ""
imports = []
disabled_plugins = [$disabled]
required_plugins = []
oom_score = 0

[grpc]
  address = "$sock"
  uid = 0
  gid = 0

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""
  level = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$wd/containerd/opt"
$cri

$proxy
EOF
    : >"$log"
    rm -f "$sock" "$sock.ttrpc"
    setsid containerd --config "$cfg" --log-level "${STRATA_CONTAINERD_LOG_LEVEL:-debug}" \
        </dev/null >>"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$wd/containerd.pid"
    local deadline=$((SECONDS + $(_h_wait_secs)))
    until ctr --address "$sock" --timeout 2s version >/dev/null 2>&1; do
        _h_alive "$pid" || { tail -n 30 "$log" >&2; _h_die "containerd exited during startup (log: $log)"; }
        ((SECONDS < deadline)) || { tail -n 30 "$log" >&2; kill -KILL "$pid" 2>/dev/null || true; _h_die "containerd did not answer on $sock within timeout (log: $log)"; }
        sleep 0.1
    done
    # The content plugin the image service uses must be present.
    local got
    got="$(ctr --address "$sock" plugins ls 2>/dev/null | awk '$1=="io.containerd.content.v1"{print $2" "$NF}')"
    if [[ "$builtin" == 1 ]]; then
        grep -q '^content ok$' <<<"$got" || _h_die "builtin content plugin not ok: '$got'"
    else
        grep -q '^strata-content ok$' <<<"$got" || _h_die "proxy content plugin 'strata-content' not ok: '$got' (log: $log)"
        ! grep -q '^content ' <<<"$got" || _h_die "builtin content plugin unexpectedly loaded"
    fi
    if [[ -n "$strata_sock" ]]; then
        ctr --address "$sock" plugins ls 2>/dev/null \
            | awk -v n="$name" '$1=="io.containerd.snapshotter.v1" && $2==n && $NF=="ok"{f=1} END{exit !f}' \
            || _h_die "proxy snapshotter '$name' not ok (log: $log)"
    fi
    echo "$sock"
)

# Snapshotter to use: $STRATA_SNAPSHOTTER, else overlayfs if it loaded (it does as root on ext4), else native.
_h_snapshotter() {
    if [[ -n "${STRATA_SNAPSHOTTER:-}" ]]; then echo "$STRATA_SNAPSHOTTER"; return 0; fi
    if ctr --address "$1/containerd.sock" plugins ls 2>/dev/null \
        | awk '$1=="io.containerd.snapshotter.v1" && $2=="overlayfs" && $NF=="ok"{f=1} END{exit !f}'; then
        echo overlayfs
    else
        echo native
    fi
}

# ctr_cmd WORKDIR ARGS... — run ctr against this WORKDIR's containerd (namespace $STRATA_NAMESPACE or default).
ctr_cmd() {
    local wd="${1:?WORKDIR}"; shift
    ctr --address "$wd/containerd.sock" -n "${STRATA_NAMESPACE:-default}" "$@"
}

# ctr_pull WORKDIR HOSTPORT/REPO:TAG [EXTRA CTR PULL ARGS...] — pull+unpack over plain HTTP via this WORKDIR's containerd; print the image's manifest digest.
ctr_pull() (
    set -euo pipefail
    local wd; wd="$(_h_workdir "${1:-}")"
    local ref="${2:-}"
    [[ -n "$ref" ]] || _h_die "usage: ctr_pull WORKDIR HOSTPORT/REPO:TAG [extra args]"
    shift 2
    [[ -S "$wd/containerd.sock" ]] || _h_die "no containerd socket at $wd/containerd.sock (start_containerd first)"
    local ns="${STRATA_NAMESPACE:-default}" log="$wd/ctr-pull.log" rc=0
    local snap; snap="$(_h_snapshotter "$wd")"
    # ctr redraws a progress table every 100 ms (even without a tty) and retries
    # Unavailable content-store errors forever, so: output to a log, hard timeout.
    timeout --kill-after=5 "${STRATA_PULL_TIMEOUT:-60}" \
        ctr --address "$wd/containerd.sock" -n "$ns" images pull --plain-http \
        --snapshotter "$snap" "$@" "$ref" </dev/null >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        grep -vE '^(elapsed:|[^ ]+: +(resolved|waiting|downloading|done|exists|resolving) )' "$log" | tail -n 20 >&2 || true
        ((rc == 124)) && _h_die "ctr pull of $ref timed out after ${STRATA_PULL_TIMEOUT:-60}s (content store unreachable? see $log and $wd/containerd.log)"
        _h_die "ctr pull of $ref failed (exit $rc; log: $log)"
    fi
    local digest
    digest="$(ctr --address "$wd/containerd.sock" -n "$ns" images ls | awk -v r="$ref" '$1==r{print $3}')"
    [[ "$digest" == sha256:* ]] || _h_die "image $ref not listed after pull"
    echo "$digest"
)

# ctr_run WORKDIR IMAGE_REF CONTAINER_ID [CMD ARGS...] — run a container to completion (--rm) with runc state and FIFOs kept inside WORKDIR; prints its stdout.
ctr_run() (
    set -euo pipefail
    local wd; wd="$(_h_workdir "${1:-}")"
    local ref="${2:-}" id="${3:-}"
    [[ -n "$ref" && -n "$id" ]] || _h_die "usage: ctr_run WORKDIR IMAGE_REF CONTAINER_ID [cmd args...]"
    shift 3
    [[ -S "$wd/containerd.sock" ]] || _h_die "no containerd socket at $wd/containerd.sock (start_containerd first)"
    mkdir -p "$wd/runc" "$wd/fifo"
    local snap; snap="$(_h_snapshotter "$wd")"
    # Default runc root (/run/containerd/runc/<ns>) and fifo dir are global: two
    # containerds running the same ns/id would collide, so keep both in WORKDIR.
    timeout --kill-after=5 "${STRATA_PULL_TIMEOUT:-60}" \
        ctr --address "$wd/containerd.sock" -n "${STRATA_NAMESPACE:-default}" run --rm \
        --runc-root "$wd/runc" --fifo-dir "$wd/fifo" --snapshotter "$snap" "$ref" "$id" "$@" </dev/null
)

# stop_containerd WORKDIR — stop this WORKDIR's containerd, its tasks and shims, and unmount everything under WORKDIR.
stop_containerd() (
    set -uo pipefail
    [[ -n "${1:-}" && -d "$1" ]] || { echo "harness: stop_containerd: no such WORKDIR '${1:-}'" >&2; return 0; }
    local wd; wd="$(cd -- "$1" && pwd -P)"
    local sock="$wd/containerd.sock" p ns t
    # Politely kill running tasks first (bounded; containerd may already be gone).
    if [[ -S "$sock" && -f "$wd/containerd.pid" ]] && _h_alive "$(cat "$wd/containerd.pid")"; then
        for ns in $(timeout 5 ctr --address "$sock" namespaces ls -q 2>/dev/null); do
            for t in $(timeout 5 ctr --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
                timeout 5 ctr --address "$sock" -n "$ns" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
                timeout 5 ctr --address "$sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
            done
        done
    fi
    # Kill leftover shims for this containerd (identified by their exact -address
    # argument) and their direct children (container init processes).
    for p in /proc/[0-9]*; do
        [[ -r "$p/cmdline" ]] || continue
        if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$sock"; then
            local pid="${p#/proc/}"
            [[ "$pid" == "$$" || "$pid" == "${BASHPID:-}" ]] && continue
            [[ -f "$wd/containerd.pid" && "$pid" == "$(cat "$wd/containerd.pid")" ]] && continue
            # only shims: their comm starts with containerd-shim
            if [[ "$(cat "$p/comm" 2>/dev/null)" == containerd-shim* ]]; then
                local c
                # shellcheck disable=SC2013 # children files are space-separated pids
                for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do kill -KILL "$c" 2>/dev/null || true; done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    done
    _h_stop_pidfile "$wd/containerd.pid" containerd
    # Unmount anything under WORKDIR, deepest first (overlay snapshots, shm, rootfs).
    local i mp
    for ((i = 0; i < 5; i++)); do
        mapfile -t mps < <(awk -v wd="$wd" '{ mp=$2; gsub(/\\040/," ",mp); if (mp==wd || index(mp, wd"/")==1) print mp }' /proc/self/mounts | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-)
        ((${#mps[@]})) || break
        for mp in "${mps[@]}"; do
            umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || echo "harness: could not unmount $mp" >&2
        done
    done
    rm -f "$sock" "$sock.ttrpc"
    return 0
)

# stop_registry WORKDIR — stop this WORKDIR's docker-registry (its data stays in WORKDIR/registry-data).
stop_registry() (
    set -uo pipefail
    [[ -n "${1:-}" && -d "$1" ]] || { echo "harness: stop_registry: no such WORKDIR '${1:-}'" >&2; return 0; }
    local wd; wd="$(cd -- "$1" && pwd -P)"
    _h_stop_pidfile "$wd/registry.pid" docker-registry
    rm -f "$wd/registry.port"
    return 0
)

# stop_all WORKDIR — stop everything started for WORKDIR (containerd+shims, registry) and unmount all under WORKDIR; idempotent.
stop_all() {
    stop_containerd "$@"
    stop_registry "$@"
}
