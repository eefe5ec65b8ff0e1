# Shared by the benchmarks that pull the python-like image (sourced, not run):
#   build_layers   the three layers, built once under $cache/layers
#   make_layout V  an OCI layout of them compressed as V (gzip, zstd)
#   fresh_fs       a new loop-mounted ext4 at $mnt; drop_fs removes it
#   median         the median of numbers on stdin
# Callers define log() first and source tests/harness/lib.sh.

cache="${STRATA_BENCH_CACHE:-/var/tmp/strata-bench}"
mkdir -p "$cache"
now() { date +%s.%N; }
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# ---- the image ------------------------------------------------------------------------

build_layers() {
    local l="$cache/layers"
    [[ -f "$l/done" ]] && return 0
    rm -rf "$l" && mkdir -p "$l"
    if [[ ! -x "$cache/minbase/bin/sh" ]]; then
        log "debootstrap --variant=minbase bookworm (once)"
        rm -rf "$cache/minbase"
        debootstrap --variant=minbase bookworm "$cache/minbase" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1
    fi
    local py
    py="$(du -s /root/.pyenv/versions/* 2>/dev/null | sort -rn | head -n1 | cut -f2)"
    [[ -n "$py" ]] || { log "no Python under /root/.pyenv/versions"; exit 1; }
    log "layer 2: $py ($(du -sh "$py" | cut -f1), $(find "$py" | wc -l) entries)"
    echo "$py" >"$l/python"
    local members=()
    mapfile -t members < <(find "$cache/minbase" -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
    tar --sort=name --numeric-owner --xattrs --xattrs-include='*' -C "$cache/minbase" -cf "$l/1.tar" -- "${members[@]}"
    local rel="${py#/}"
    tar --sort=name --numeric-owner --xattrs --xattrs-include='*' -C / -cf "$l/2.tar" \
        --no-recursion root root/.pyenv root/.pyenv/versions --recursion "$rel"
    local t="$l/top"
    mkdir -p "$t/etc" "$t/usr/local/bin" "$t/usr/share/doc/apt"
    echo "strata pull-bench" >"$t/etc/strata-bench"
    printf '#!/bin/sh\necho hello from pull-bench\n' >"$t/usr/local/bin/hello" && chmod 755 "$t/usr/local/bin/hello"
    : >"$t/etc/.wh.motd"
    : >"$t/usr/share/doc/apt/.wh..wh..opq"
    echo "replaced" >"$t/usr/share/doc/apt/README"
    tar --sort=name --numeric-owner --owner=0 --group=0 -C "$t" -cf "$l/3.tar" etc usr
    local i
    for i in 1 2 3; do
        sha256sum "$l/$i.tar" | cut -d' ' -f1 >"$l/$i.diffid"
        gzip -n -6 -c "$l/$i.tar" >"$l/$i.tar.gz"
        zstd -q -3 -T2 -c "$l/$i.tar" >"$l/$i.tar.zst"
        rm -f "$l/$i.tar"
    done
    touch "$l/done"
}

# make_layout VARIANT — an OCI layout with the layers compressed as VARIANT.
make_layout() {
    local v="$1" l="$cache/layers" dir="$cache/oci-$1"
    [[ -f "$dir/done" ]] && return 0
    rm -rf "$dir" && mkdir -p "$dir/blobs/sha256"
    local ext mt
    case "$v" in
        gzip) ext=tar.gz mt=application/vnd.oci.image.layer.v1.tar+gzip ;;
        zstd) ext=tar.zst mt=application/vnd.oci.image.layer.v1.tar+zstd ;;
        *) log "unknown variant $v"; exit 2 ;;
    esac
    local layers="" diffids="" i hex size
    for i in 1 2 3; do
        hex="$(sha256sum "$l/$i.$ext" | cut -d' ' -f1)"
        size="$(stat -c %s "$l/$i.$ext")"
        ln -f "$l/$i.$ext" "$dir/blobs/sha256/$hex"
        layers+="${layers:+,}{\"mediaType\":\"$mt\",\"digest\":\"sha256:$hex\",\"size\":$size}"
        diffids+="${diffids:+,}\"sha256:$(cat "$l/$i.diffid")\""
    done
    local arch; arch="$(dpkg --print-architecture)"
    printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/root/.pyenv/shims:/usr/local/bin:/usr/bin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
        "$arch" "$diffids" >"$dir/config.json"
    local chex csize
    chex="$(sha256sum "$dir/config.json" | cut -d' ' -f1)" csize="$(stat -c %s "$dir/config.json")"
    mv "$dir/config.json" "$dir/blobs/sha256/$chex"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$chex" "$csize" "$layers" >"$dir/manifest.json"
    local mhex msize
    mhex="$(sha256sum "$dir/manifest.json" | cut -d' ' -f1)" msize="$(stat -c %s "$dir/manifest.json")"
    mv "$dir/manifest.json" "$dir/blobs/sha256/$mhex"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$mhex" "$msize" "$v" >"$dir/index.json"
    touch "$dir/done"
}

# ---- fresh filesystems ----------------------------------------------------------------

fs_img="$cache/fs.img" mnt="$cache/mnt"
fresh_fs() {
    drop_fs
    rm -f "$fs_img"
    truncate -s 16G "$fs_img"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$fs_img"
    mkdir -p "$mnt"
    mount -o loop "$fs_img" "$mnt"
}
drop_fs() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        stop_containerd "$mnt/ctr" >/dev/null 2>&1 || true
        umount -R "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    rm -f "$fs_img"
}

