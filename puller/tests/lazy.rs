//! A lazy layer through a real FUSE mount: the tree it shows is the full unpack of the
//! same blob (content, modes, owners, xattrs, links, devices, whiteouts), a read fetches
//! only the chunks it touches, a chunk that fails verification is EIO on that read alone
//! and is fetched again next time, and unmounting leaves nothing mounted.

mod blobs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use blobs::MemSource;
use strata_proto::ErrorKind;
use strata_puller::{Limits, WhiteoutMode, apply_layer};
use strata_snapshotter::estargz::{
    FOOTER_SIZE, TOC_DIGEST_ANNOTATION, TocLimits, WriteOptions, Written, fetch_tree, write_estargz,
};
use strata_snapshotter::lazy::ahead::CRI_IMAGE_LAYERS_LABEL;
use strata_snapshotter::lazy::backend::{
    CRI_IMAGE_REF_LABEL, CRI_LAYER_DIGEST_LABEL, REMOTE_LABEL, STARGZ_DIGEST_LABEL,
    STARGZ_REFERENCE_LABEL,
};
use strata_snapshotter::lazy::{LayerReader, LazyMount, LazyOptions, LazySnapshotter};
use strata_snapshotter::mount::{mount_all, unmount_all};
use strata_snapshotter::overlay::kernel_supports_index;
use strata_snapshotter::{
    BlobSource, Cleanup, Kind, Labels, OverlayOptions, RemoteBlob, Snapshotter,
};
use strata_testkit::{NOISE_SEED, Snapshot, Tar, noise, require_root};

/// `security.capability` v2 granting CAP_NET_BIND_SERVICE.
const CAPS: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn layer() -> Vec<u8> {
    let mut t = Tar::new();
    let big: Vec<u8> = (0..(600u32 << 10))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    t.dir("bin")
        .file_mode("bin/su", b"#!/bin/true\n", 0o4755)
        .hardlink("bin/su2", "bin/su")
        .symlink("bin/sh", "/bin/busybox")
        .pax(&[("SCHILY.xattr.security.capability", &CAPS)])
        .file_mode("bin/ping", b"ping", 0o755)
        .dir("dev")
        .device(b'3', "dev/null", 1, 3)
        .device(b'4', "dev/loop0", 7, 0)
        .fifo("dev/initctl", 0o600)
        .owner(1234, 5678)
        .mtime(1_650_000_000)
        .dir_mode("home", 0o751)
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir_mode("home/user", 0o700)
        .file("home/user/owned", b"mine")
        .owner(0, 0)
        .mtime(1_600_000_000)
        .file_mode("usr/lib/big.so", &big, 0o644)
        .file("usr/share/empty", b"")
        .file(&format!("usr/share/{}", "n".repeat(150)), b"long")
        .file(".wh.gone", b"")
        .dir("opaque")
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/new", b"new")
        .file("zz/noise.bin", &noise(2 << 20, NOISE_SEED));
    t.finish()
}

fn without_ino(s: Snapshot) -> BTreeMap<PathBuf, strata_testkit::Node> {
    s.0.into_iter()
        .map(|(p, mut n)| {
            n.ino = 0;
            (p, n)
        })
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    let want = p.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want))
}

struct Lazy {
    _tmp: tempfile::TempDir,
    src: Arc<MemSource>,
    mount: Option<LazyMount>,
    blob_size: u64,
}

impl Lazy {
    fn new(tar: &[u8], chunk_size: u64) -> (Lazy, Vec<u8>) {
        let mut blob = Vec::new();
        let w = write_estargz(
            tar,
            &mut blob,
            &WriteOptions {
                chunk_size,
                ..Default::default()
            },
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(MemSource::new(blob.clone()));
        let tree = fetch_tree(&*src, &src.remote(), &w.toc_digest, &TocLimits::default()).unwrap();
        let reader =
            LayerReader::new(tree, src.clone(), src.remote(), &tmp.path().join("cache")).unwrap();
        let at = tmp.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let mount = LazyMount::mount(Arc::new(reader), &at).unwrap();
        let size = blob.len() as u64;
        (
            Lazy {
                _tmp: tmp,
                src,
                mount: Some(mount),
                blob_size: size,
            },
            blob,
        )
    }

    fn path(&self) -> PathBuf {
        self.mount.as_ref().unwrap().path().to_path_buf()
    }

    fn fetched(&self) -> u64 {
        self.mount.as_ref().unwrap().reader().fetched_bytes()
    }
}

#[test]
fn the_lazy_tree_is_the_full_unpack() {
    require_root!();
    let tar = layer();
    let (lazy, blob) = Lazy::new(&tar, 64 << 10);
    let at = lazy.path();

    // One small read fetches a small part of the blob (its chunk and the small files
    // next to it, not the large ones).
    assert_eq!(std::fs::read(at.join("home/user/owned")).unwrap(), b"mine");
    assert!(
        lazy.fetched() < lazy.blob_size / 10,
        "{} of {} bytes fetched for one 4-byte file",
        lazy.fetched(),
        lazy.blob_size
    );

    let full = tempfile::tempdir().unwrap();
    let dec = flate2::read::MultiGzDecoder::new(&blob[..]);
    apply_layer(dec, full.path(), WhiteoutMode::Overlay, &Limits::default()).unwrap();
    let mut want = without_ino(Snapshot::of(full.path()));
    // The eStargz metadata a plain unpack extracts, which a lazy mount hides.
    for meta in ["stargz.index.json", ".no.prefetch.landmark"] {
        assert!(
            want.remove(Path::new(meta)).is_some(),
            "{meta} not unpacked"
        );
    }
    // A whiteout's time, and that of a directory the layer has no entry for, is when the
    // unpack made it; the lazy tree has no such moment.
    for made in ["gone", "usr", "usr/lib", "usr/share", "zz"] {
        want.get_mut(Path::new(made)).unwrap().mtime = (0, 0);
    }
    let got = without_ino(Snapshot::of(&at));
    let keys: std::collections::BTreeSet<_> = want.keys().chain(got.keys()).collect();
    for k in keys {
        assert_eq!(want.get(k), got.get(k), "{}", k.display());
    }
    let gone = got.get(Path::new("gone")).unwrap();
    assert_eq!((gone.kind, gone.rdev), ("char", 0));
    assert_eq!(
        got[Path::new("opaque")]
            .xattrs
            .get(&b"trusted.overlay.opaque"[..]),
        Some(&b"y".to_vec())
    );
    // Everything read by now: the whole of the data, not more.
    assert!(lazy.fetched() <= lazy.blob_size);

    // Writes are refused: the container's writes go to an overlayfs upper.
    let err = std::fs::write(at.join("bin/ping"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    let mut lazy = lazy;
    lazy.mount.take().unwrap().unmount().unwrap();
    assert!(!is_mounted(&at));
}

#[test]
fn a_chunk_that_fails_verification_is_eio_and_fetched_again() {
    require_root!();
    let (lazy, _) = Lazy::new(&layer(), 64 << 10);
    let at = lazy.path();
    // Every answer flipped: inflates to garbage or not at all, never verifies.
    *lazy.src.tamper.lock().unwrap() = Some(Box::new(|_, b| b.iter().map(|x| x ^ 0xff).collect()));
    let err = std::fs::read(at.join("usr/lib/big.so")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The registry going away: EIO too, and the mount stays up.
    *lazy.src.tamper.lock().unwrap() = None;
    lazy.src.down.store(true, Ordering::SeqCst);
    let err = std::fs::read(at.join("bin/su")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read_link(at.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    // Honest again: the same reads now succeed, nothing bad was cached.
    lazy.src.down.store(false, Ordering::SeqCst);
    let big = std::fs::read(at.join("usr/lib/big.so")).unwrap();
    assert_eq!(big.len(), 600 << 10);
    assert_eq!(
        big[12345],
        (12345u32.wrapping_mul(2_654_435_761) >> 24) as u8
    );
    assert_eq!(std::fs::read(at.join("bin/su")).unwrap(), b"#!/bin/true\n");
}

#[test]
fn a_cached_chunk_is_not_fetched_twice() {
    require_root!();
    let (lazy, _) = Lazy::new(&layer(), 64 << 10);
    let at = lazy.path();
    let before = lazy.src.reads.lock().unwrap().len();
    let first = std::fs::read(at.join("usr/lib/big.so")).unwrap();
    let fetched = lazy.fetched();
    let reads = lazy.src.reads.lock().unwrap().len() - before;
    // Neighbouring chunks came in few requests (600 KiB in 64 KiB chunks: 10 chunks).
    assert!(reads < 10, "{reads} range requests");
    // Drop the page cache so the kernel asks again: the disk cache answers.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(std::fs::read(at.join("usr/lib/big.so")).unwrap(), first);
    assert_eq!(lazy.fetched(), fetched);
}

/// Whether the kernel has FUSE passthrough (Linux 6.9 and later).
fn kernel_has_passthrough() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (6, 9)
}

#[test]
fn local_whole_files_are_read_through_passthrough() {
    require_root!();
    if !kernel_has_passthrough() {
        eprintln!("skipped: no FUSE passthrough before Linux 6.9");
        return;
    }
    use std::io::Read as _;
    let (lazy, _) = Lazy::new(&layer(), 64 << 10);
    let at = lazy.path();
    let reader = lazy.mount.as_ref().unwrap().reader().clone();
    // Opened before it is local, a file is read through this process...
    let held = std::fs::File::open(at.join("bin/ping")).unwrap();
    let mut got = Vec::new();
    (&held).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ping");
    // ...and so while that open is held, though it is local now: the kernel refuses to
    // mix passthrough and cached opens of one inode (EIO).
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let before = reader.reads();
    assert_eq!(std::fs::read(at.join("bin/ping")).unwrap(), b"ping");
    assert!(reader.reads() > before, "read through the reader");
    drop(held);
    // Opened afresh, local and one chunk: the kernel reads its cache file itself.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let before = reader.reads();
    assert_eq!(std::fs::read(at.join("bin/ping")).unwrap(), b"ping");
    assert_eq!(
        reader.reads(),
        before,
        "passthrough: no read reached the reader"
    );
    // A file of several chunks has no single cache file: read through the reader.
    let big = std::fs::read(at.join("usr/lib/big.so")).unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let before = reader.reads();
    assert_eq!(std::fs::read(at.join("usr/lib/big.so")).unwrap(), big);
    assert!(reader.reads() > before);
}

/// `layer()` written as eStargz with `opts`, served from memory.
fn estargz_source(opts: &WriteOptions) -> (Arc<MemSource>, Written) {
    let mut blob = Vec::new();
    let w = write_estargz(&layer()[..], &mut blob, opts).unwrap();
    (Arc::new(MemSource::new(blob)), w)
}

/// The labels containerd's unpacker sends for layer `blob` (CRI family, or stargz's).
fn handshake_labels(chain: &str, src: &MemSource, toc: &str, stargz: bool) -> Labels {
    let mut l = Labels::new();
    l.insert("containerd.io/snapshot.ref".into(), chain.into());
    l.insert(TOC_DIGEST_ANNOTATION.into(), toc.into());
    let (r, d) = if stargz {
        (STARGZ_REFERENCE_LABEL, STARGZ_DIGEST_LABEL)
    } else {
        (CRI_IMAGE_REF_LABEL, CRI_LAYER_DIGEST_LABEL)
    };
    l.insert(r.into(), src.remote().reference);
    l.insert(d.into(), src.remote().digest.to_string());
    l
}

/// Several blobs behind one source, each served by its digest.
struct Blobs(Vec<Arc<MemSource>>);

impl Blobs {
    fn of(&self, digest: &strata_proto::Digest) -> Result<&MemSource, strata_proto::Error> {
        self.0
            .iter()
            .find(|s| &s.remote().digest == digest)
            .map(|s| &**s)
            .ok_or_else(|| strata_proto::Error::not_found(format!("blob {digest}")))
    }
}

impl BlobSource for Blobs {
    fn read_range(
        &self,
        blob: &RemoteBlob,
        range: std::ops::Range<u64>,
    ) -> strata_snapshotter::Result<Vec<u8>> {
        self.of(&blob.digest)?.read_range(blob, range)
    }

    fn blob_size(
        &self,
        reference: &str,
        digest: &strata_proto::Digest,
    ) -> strata_snapshotter::Result<u64> {
        self.of(digest)?.blob_size(reference, digest)
    }
}

#[test]
fn the_tocs_of_upper_layers_are_fetched_ahead() {
    require_root!();
    let (lower, w1) = estargz_source(&WriteOptions::default());
    let mut t = Tar::new();
    t.dir("upper").file("upper/file", b"from above");
    let mut blob = Vec::new();
    let w2 = write_estargz(&t.finish()[..], &mut blob, &WriteOptions::default()).unwrap();
    let upper = Arc::new(MemSource::new(blob));
    let src = Arc::new(Blobs(vec![lower.clone(), upper.clone()]));
    let tmp = tempfile::tempdir().unwrap();
    let opts = LazyOptions {
        overlay: OverlayOptions {
            index_off: kernel_supports_index(),
            ..Default::default()
        },
        background_fetch: None,
    };
    let sn = LazySnapshotter::open(&tmp.path().join("lazy"), opts, src).unwrap();
    let (d1, d2) = (lower.remote().digest, upper.remote().digest);

    // The bottom layer's Prepare names both layers, as containerd's CRI does.
    let chain1 = w1.diff_id.to_string();
    let mut l1 = handshake_labels(&chain1, &lower, &w1.toc_digest.to_string(), false);
    l1.insert(CRI_IMAGE_LAYERS_LABEL.into(), format!("{d1},{d2}"));
    let err = sn.prepare("extract-1", None, l1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");

    // The upper layer's TOC member is read without waiting for its own Prepare.
    let toc_end = upper.blob.len() as u64 - FOOTER_SIZE;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !upper.reads.lock().unwrap().iter().any(|r| r.end == toc_end) {
        assert!(
            std::time::Instant::now() < deadline,
            "upper TOC never fetched ahead"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // So its Prepare needs the registry no more: it mounts from the TOC fetched ahead.
    upper.down.store(true, Ordering::SeqCst);
    let mut l2 = handshake_labels("chain-2", &upper, &w2.toc_digest.to_string(), false);
    l2.insert(CRI_IMAGE_LAYERS_LABEL.into(), d2.to_string());
    let err = sn.prepare("extract-2", Some(&chain1), l2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    assert!(
        sn.stat("chain-2")
            .unwrap()
            .labels
            .contains_key(REMOTE_LABEL)
    );
    upper.down.store(false, Ordering::SeqCst);

    let mounts = sn.prepare("c1", Some("chain-2"), Labels::new()).unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    mount_all(&mounts, &rootfs).unwrap();
    let read = std::fs::read(rootfs.join("upper/file"));
    let ping = std::fs::read(rootfs.join("bin/ping"));
    unmount_all(&rootfs).unwrap();
    assert_eq!(read.unwrap(), b"from above");
    assert_eq!(ping.unwrap(), b"ping");
}

#[test]
fn the_lazy_backend_commits_layers_in_the_handshake() {
    require_root!();
    let (src, w) = estargz_source(&WriteOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lazy");
    let opts = LazyOptions {
        overlay: OverlayOptions {
            index_off: kernel_supports_index(),
            ..Default::default()
        },
        background_fetch: None,
    };
    let sn = LazySnapshotter::open(&root, opts.clone(), src.clone()).unwrap();
    let chain = w.diff_id.to_string();
    let toc = w.toc_digest.to_string();

    // The handshake: mounted, committed as the chainID, AlreadyExists.
    let err = sn
        .prepare(
            &format!("extract-1 {chain}"),
            None,
            handshake_labels(&chain, &src, &toc, false),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    let info = sn.stat(&chain).unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.labels[REMOTE_LABEL], "remote snapshot");
    assert!(
        sn.stat(&format!("extract-1 {chain}")).is_err(),
        "the extract key stays"
    );
    let fetched = sn.inner().driver().reader(1).unwrap().fetched_bytes();
    assert!(
        fetched < src.blob.len() as u64 / 4,
        "{fetched} bytes fetched to mount"
    );

    // A container on it: reads come through FUSE, writes land in its upper dir.
    let mounts = sn.prepare("c1", Some(&chain), Labels::new()).unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    mount_all(&mounts, &rootfs).unwrap();
    assert_eq!(
        std::fs::read(rootfs.join("home/user/owned")).unwrap(),
        b"mine"
    );
    std::fs::write(rootfs.join("bin/ping"), b"changed").unwrap();
    std::fs::write(rootfs.join("new"), b"new").unwrap();
    assert_eq!(std::fs::read(rootfs.join("bin/ping")).unwrap(), b"changed");
    assert!(
        !rootfs.join("gone").exists(),
        "a whiteout hides nothing below, shows nothing"
    );
    let big = std::fs::read(rootfs.join("usr/lib/big.so")).unwrap();
    assert_eq!(big.len(), 600 << 10);
    unmount_all(&rootfs).unwrap();
    let lower = root.join("snapshots/1/fs");
    assert!(is_mounted(&lower));
    assert_eq!(std::fs::read(lower.join("bin/ping")).unwrap(), b"ping");

    // The same layer in the stargz label family: already there, so AlreadyExists.
    let err = sn
        .prepare(
            &format!("extract-2 {chain}"),
            None,
            handshake_labels(&chain, &src, &toc, true),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");

    // A TOC digest that does not match: an ordinary Prepare, to be unpacked in full.
    let other = "sha256:".to_owned() + &"0".repeat(64);
    let m = sn
        .prepare(
            "extract-3 x",
            None,
            handshake_labels("x", &src, &other, false),
        )
        .unwrap();
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(sn.stat("extract-3 x").unwrap().kind, Kind::Active);
    sn.remove("extract-3 x").unwrap();

    // A restart mounts the lazy layer again, from its saved TOC, and serves it.
    drop(sn);
    assert!(!is_mounted(&lower));
    let sn = LazySnapshotter::open(&root, opts, src.clone()).unwrap();
    assert!(is_mounted(&lower));
    assert_eq!(
        std::fs::read(lower.join("home/user/owned")).unwrap(),
        b"mine"
    );
    mount_all(&sn.mounts("c1").unwrap(), &rootfs).unwrap();
    assert_eq!(std::fs::read(rootfs.join("bin/ping")).unwrap(), b"changed");
    unmount_all(&rootfs).unwrap();

    // Removing the snapshot unmounts it and frees its cache.
    sn.remove("c1").unwrap();
    sn.remove(&chain).unwrap();
    assert!(!is_mounted(&lower));
    assert_eq!(sn.inner().driver().mounted(), 0);
    sn.cleanup().unwrap();
    assert!(!root.join("snapshots/1").exists());
}

#[test]
fn prioritized_files_are_fetched_at_mount() {
    require_root!();
    let (src, w) = estargz_source(&WriteOptions {
        chunk_size: 64 << 10,
        prefetch: vec!["usr/lib/big.so".into(), "bin/su".into()],
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lazy");
    let opts = LazyOptions {
        background_fetch: None,
        ..Default::default()
    };
    let sn = LazySnapshotter::open(&root, opts, src.clone()).unwrap();
    let chain = w.diff_id.to_string();
    let labels = handshake_labels(&chain, &src, &w.toc_digest.to_string(), true);
    let err = sn.prepare("extract-1 x", None, labels).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    let reader = sn.inner().driver().reader(1).unwrap();
    let tree = reader.tree();
    let node = |p: &str| tree.node(u64::from(tree.resolve(p).unwrap())).unwrap();
    // The prefetch runs beside the mount; wait for it (bounded), then cut the registry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(reader.is_local(node("usr/lib/big.so")) && reader.is_local(node("bin/su"))) {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !reader.is_local(node("home/user/owned")),
        "only prioritized files"
    );
    src.down.store(true, Ordering::SeqCst);
    let lower = root.join("snapshots/1/fs");
    assert_eq!(
        std::fs::read(lower.join("usr/lib/big.so")).unwrap().len(),
        600 << 10
    );
    assert_eq!(
        std::fs::read(lower.join("bin/su")).unwrap(),
        b"#!/bin/true\n"
    );
    let err = std::fs::read(lower.join("home/user/owned")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn after_the_background_fetch_the_registry_is_not_needed() {
    require_root!();
    let (src, w) = estargz_source(&WriteOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lazy");
    let opts = LazyOptions {
        background_fetch: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    let sn = LazySnapshotter::open(&root, opts, src.clone()).unwrap();
    let chain = w.diff_id.to_string();
    let labels = handshake_labels(&chain, &src, &w.toc_digest.to_string(), false);
    let err = sn.prepare("extract-1 x", None, labels).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    let reader = sn.inner().driver().reader(1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reader.is_complete() {
        assert!(
            std::time::Instant::now() < deadline,
            "background fetch did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(reader.fetched_bytes() <= src.blob.len() as u64);
    // The registry gone, every file reads (the tree snapshot reads all content).
    src.down.store(true, Ordering::SeqCst);
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let lower = root.join("snapshots/1/fs");
    let tree = Snapshot::of(&lower);
    let big = &tree.0[Path::new("usr/lib/big.so")];
    assert_eq!(big.content.as_ref().unwrap().len(), 600 << 10);
    assert_eq!(
        tree.0[Path::new("home/user/owned")].content.as_deref(),
        Some(&b"mine"[..])
    );
}

#[test]
fn identical_files_side_by_side_are_read_concurrently() {
    require_root!();
    // Same content, so same chunk digests, next to each other in the blob: one read
    // fetches several of them in one run.
    let mut t = Tar::new();
    for i in 0..40 {
        t.file(&format!("pkg/m{i:02}.py"), b"# the same module\n");
        t.file(
            &format!("pkg/u{i:02}.py"),
            format!("unique {i}\n").as_bytes(),
        );
    }
    let (lazy, _) = Lazy::new(&t.finish(), 64 << 10);
    let at = lazy.path();
    let (tx, rx) = std::sync::mpsc::channel();
    for k in 0..8 {
        let (at, tx) = (at.clone(), tx.clone());
        std::thread::spawn(move || {
            for i in (0..40).map(|i| (i + k * 5) % 40) {
                let m = std::fs::read(at.join(format!("pkg/m{i:02}.py"))).unwrap();
                let u = std::fs::read(at.join(format!("pkg/u{i:02}.py"))).unwrap();
                assert_eq!(m, b"# the same module\n");
                assert_eq!(u, format!("unique {i}\n").as_bytes());
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..8 {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("a reader is stuck (or failed)");
    }
}
