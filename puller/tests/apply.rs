//! Well-formed layers: extracted as GNU tar extracts them, whiteouts converted or
//! applied, the diff_id right, and the same tree whatever the compression.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_puller::{Limits, WhiteoutMode, apply_layer, open_layer};
use strata_testkit::{Node, Snapshot, Tar, require_root};

/// `security.capability` v2 granting CAP_DAC_OVERRIDE | CAP_FOWNER | CAP_NET_BIND_SERVICE
/// (effective): its permitted word holds 0x0a, a newline.
const CAPS: [u8; 20] = [
    1, 0, 0, 2, 0x0a, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A layer with every entry type and the metadata a layer carries.
fn full_layer() -> Vec<u8> {
    let mut t = Tar::new();
    let big: Vec<u8> = (0..(1 << 20) + 123)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    // Depth-first, as layer writers emit: GNU tar resets a directory's times only
    // when the archive leaves it for good (ours end right in any order; see
    // `dir_times_survive_later_children`).
    t.dir("bin");
    t.entry(b'0', b"bin/su", b"", b"#!/bin/true\n", 0o4755);
    t.gid = 42;
    t.entry(b'0', b"bin/wall", b"", b"wall", 0o2755);
    t.gid = 0;
    t.hardlink("bin/su2", "bin/su");
    t.symlink("bin/sh", "/bin/busybox");
    t.dir("dev");
    let mut h = Tar::header(b'3', b"dev/null", b"", 0, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    t.raw(h, b"");
    let mut h = Tar::header(b'4', b"dev/loop0", b"", 0, 0o660);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    t.gid = 6;
    t.raw(h, b"");
    t.gid = 0;
    t.dir("etc");
    t.file("etc/hello", b"hello world\n");
    t.pax(&[
        ("mtime", b"1700000000.123456789"),
        ("atime", b"1700000001.5"),
    ])
    .file("etc/nanos", b"ns");
    t.uid = 1234;
    t.gid = 5678;
    t.dir("home");
    t.pax(&[
        ("SCHILY.xattr.user.dir", b"d"),
        ("mtime", b"1650000000.000000001"),
    ])
    .entry(b'5', b"home/user", b"", b"", 0o700);
    t.file("home/user/owned", b"mine");
    t.uid = 0;
    t.gid = 0;
    t.symlink("lib", "usr/lib");
    t.symlink("dangling", "../../nowhere");
    t.dir("run");
    t.entry(b'6', b"run/fifo", b"", b"", 0o600);
    t.entry(b'5', b"tmp", b"", b"", 0o1777);
    t.dir("usr").dir("usr/lib");
    t.file("usr/lib/big", &big);
    t.file("usr/lib/empty", b"");
    t.pax(&[
        ("SCHILY.xattr.user.x", b"hello"),
        ("SCHILY.xattr.security.capability", &CAPS),
        ("SCHILY.xattr.trusted.note", b"t"),
    ])
    .entry(b'0', b"usr/lib/ping", b"", b"ping", 0o755);
    let long = format!("usr/lib/{}/{}", "x".repeat(120), "y".repeat(150));
    t.pax(&[("path", format!("usr/lib/{}", "x".repeat(120)).as_bytes())])
        .dir("placeholder-dir");
    t.pax(&[("path", long.as_bytes())])
        .file("placeholder", b"long name");
    t.finish()
}

/// A tree without inode numbers and atimes, for comparing two extractions.
fn comparable(snap: Snapshot) -> BTreeMap<PathBuf, Node> {
    snap.0
        .into_iter()
        .map(|(p, mut n)| {
            n.ino = 0;
            (p, n)
        })
        .collect()
}

fn diff(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let short = |n: Option<&Node>| {
                n.map(|n| {
                    let mut n = n.clone();
                    n.content = n.content.map(|c| format!("{} bytes", c.len()).into_bytes());
                    format!("{n:?}")
                })
            };
            format!(
                "{}:\n  ours {:?}\n  tar  {:?}",
                k.display(),
                short(a.get(k)),
                short(b.get(k))
            )
        })
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn extracts_like_gnu_tar() {
    require_root!();
    let layer = full_layer();
    let tmp = tempdir();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&ours).unwrap();
    std::fs::create_dir(&theirs).unwrap();
    let tar_path = tmp.path().join("layer.tar");
    std::fs::write(&tar_path, &layer).unwrap();

    let stats = apply_layer(&layer[..], &ours, WhiteoutMode::Overlay, &Limits::default()).unwrap();
    // atime from PAX (checked before anything reads the file and relatime bumps it).
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(ours.join("etc/nanos")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_700_000_001, 500_000_000));
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GNU tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let a = comparable(Snapshot::of(&ours));
    let b = comparable(Snapshot::of(&theirs));
    let d = diff(&a, &b);
    assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));

    // Spot checks, so the comparison cannot pass on two equally wrong trees.
    let node = |p: &str| strata_testkit::node(&ours.join(p));
    assert_eq!(node("bin/su").mode, 0o4755);
    assert_eq!((node("bin/wall").mode, node("bin/wall").gid), (0o2755, 42));
    assert_eq!(node("tmp").mode, 0o1777);
    assert_eq!(node("bin/su").ino, node("bin/su2").ino);
    assert_eq!(node("bin/su").nlink, 2);
    assert_eq!(node("dev/null").kind, "char");
    assert_eq!(node("dev/null").rdev, nix::sys::stat::makedev(1, 3));
    assert_eq!(
        (node("dev/loop0").kind, node("dev/loop0").gid),
        ("block", 6)
    );
    assert_eq!(node("run/fifo").kind, "fifo");
    assert_eq!(node("bin/sh").link.unwrap(), Path::new("/bin/busybox"));
    assert_eq!(node("etc/nanos").mtime, (1_700_000_000, 123_456_789));
    assert_eq!(node("home/user").mtime, (1_650_000_000, 1));
    assert_eq!(
        (node("home/user/owned").uid, node("home/user/owned").gid),
        (1234, 5678)
    );
    let ping = node("usr/lib/ping").xattrs;
    assert_eq!(ping.get(&b"security.capability"[..]).unwrap(), &CAPS);
    assert_eq!(ping.get(&b"user.x"[..]).unwrap(), b"hello");
    assert_eq!(
        node("home/user").xattrs.get(&b"user.dir"[..]).unwrap(),
        b"d"
    );
    assert!(
        a.keys()
            .any(|k| k.to_str().unwrap().ends_with(&"y".repeat(150)))
    );

    assert_eq!(stats.entries, 26);
    assert_eq!(
        stats.file_bytes,
        std::fs::metadata(ours.join("usr/lib/big")).unwrap().len() + 12 + 2 + 12 + 4 + 4 + 4 + 9
    );
    assert_eq!(stats.tar_bytes, layer.len() as u64);
}

#[test]
fn diff_id_is_the_sha256_of_the_tar() {
    require_root!();
    let mut layer = full_layer();
    // Bytes after the end-of-archive marker belong to the blob, and so to the hash.
    layer.extend_from_slice(&[0u8; 4096]);
    let tmp = tempdir();
    let tar_path = tmp.path().join("layer.tar");
    std::fs::write(&tar_path, &layer).unwrap();
    let out = Command::new("sha256sum").arg(&tar_path).output().unwrap();
    let expected = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let gz = strata_testkit::gzip(&layer);
    let stats = apply_layer(
        open_layer(
            Some("application/vnd.oci.image.layer.v1.tar+gzip"),
            &gz[..],
            &Limits::default(),
        )
        .unwrap(),
        &root,
        WhiteoutMode::Overlay,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(stats.diff_id.to_string(), format!("sha256:{expected}"));
    assert_eq!(stats.tar_bytes, layer.len() as u64);
}

#[test]
fn compressions_give_the_same_tree() {
    require_root!();
    let layer = full_layer();
    let tmp = tempdir();
    let mut trees = Vec::new();
    let mut ids = Vec::new();
    let gz = strata_testkit::gzip(&layer);
    let zst = strata_testkit::zstd(&layer);
    let cases: [(&str, Option<&str>, &[u8]); 5] = [
        (
            "plain",
            Some("application/vnd.oci.image.layer.v1.tar"),
            &layer,
        ),
        (
            "gzip",
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            &gz,
        ),
        (
            "zstd",
            Some("application/vnd.oci.image.layer.v1.tar+zstd"),
            &zst,
        ),
        ("gzip-detected", None, &gz),
        ("zstd-detected", Some(""), &zst),
    ];
    for (name, media_type, blob) in cases {
        let root = tmp.path().join(name);
        std::fs::create_dir(&root).unwrap();
        let reader = open_layer(media_type, blob, &Limits::default()).unwrap();
        let stats = apply_layer(reader, &root, WhiteoutMode::Overlay, &Limits::default()).unwrap();
        trees.push(comparable(Snapshot::of(&root)));
        ids.push(stats.diff_id);
    }
    for (t, id) in trees.iter().zip(&ids).skip(1) {
        let d = diff(&trees[0], t);
        assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
        assert_eq!(id, &ids[0]);
    }
}

fn is_whiteout(p: &Path) -> bool {
    let n = strata_testkit::node(p);
    n.kind == "char" && n.rdev == 0
}

#[test]
fn overlay_whiteouts_and_opaque_dirs() {
    require_root!();
    let tmp = tempdir();
    let (lower, upper, work, merged) = (
        tmp.path().join("lower"),
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    for f in ["gone", "d/old", "e/x", "e/y", "w/lower"] {
        let p = lower.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"lower").unwrap();
    }
    let layer = Tar::new()
        .file(".wh.gone", b"")
        .dir("d")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new")
        .file("e/.wh.x", b"")
        // A whiteout of a directory this layer wrote hides only the lower one.
        .dir("w")
        .file("w/mine", b"mine")
        .file(".wh.w", b"")
        .finish();
    let stats = apply_layer(
        &layer[..],
        &upper,
        WhiteoutMode::Overlay,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 4);
    assert!(is_whiteout(&upper.join("gone")));
    assert!(is_whiteout(&upper.join("e/x")));
    assert_eq!(
        strata_testkit::xattr(&upper.join("d"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(
        strata_testkit::xattr(&upper.join("w"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(std::fs::read(upper.join("w/mine")).unwrap(), b"mine");
    assert!(strata_testkit::xattr(&upper.join("e"), "trusted.overlay.opaque").is_none());

    // What overlayfs makes of it.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if let Err(e) = nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    ) {
        eprintln!("overlay mount unavailable ({e}); on-disk format checked only");
        return;
    }
    let names = |rel: &str| {
        let mut v: Vec<String> = std::fs::read_dir(merged.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let top = names("");
    let d = names("d");
    let e = names("e");
    let w = names("w");
    nix::mount::umount(&merged).unwrap();
    assert_eq!(top, ["d", "e", "w"]);
    assert_eq!(d, ["new"]);
    assert_eq!(e, ["y"]);
    assert_eq!(w, ["mine"]);
}

#[test]
fn delete_whiteouts_and_opaque_dirs() {
    require_root!();
    let tmp = tempdir();
    let root = tmp.path().join("root");
    // The parent's tree, as a native snapshot holds it.
    for f in [
        "gone/sub/file",
        "d/old",
        "d/sub/old2",
        "d/kept-dir/old3",
        "e/old",
        "f",
        "keep",
    ] {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"lower").unwrap();
    }
    let layer = Tar::new()
        .file(".wh.gone", b"")
        .dir("d")
        .file("d/new", b"new")
        // d/kept-dir exists below; this layer only writes into it.
        .file("d/kept-dir/new3", b"new")
        .file("d/.wh..wh..opq", b"")
        // Opaque first, then the layer's own content.
        .file("e/.wh..wh..opq", b"")
        .file("e/new", b"new")
        // A whiteout never removes what this same layer wrote.
        .file("f", b"mine")
        .file(".wh.f", b"")
        .file(".wh.missing", b"")
        .file("nodir/.wh.x", b"")
        .finish();
    let stats = apply_layer(&layer[..], &root, WhiteoutMode::Delete, &Limits::default()).unwrap();
    assert_eq!(stats.whiteouts, 6);
    let mut files: Vec<String> = Snapshot::of(&root)
        .0
        .keys()
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "d",
            "d/kept-dir",
            "d/kept-dir/new3",
            "d/new",
            "e",
            "e/new",
            "f",
            "keep"
        ]
    );
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"mine");
    assert!(strata_testkit::xattrs(&root.join("d")).is_empty());
}

#[test]
fn entries_replace_what_is_there() {
    require_root!();
    let tmp = tempdir();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("dir/sub/f"), b"old").unwrap();
    std::fs::create_dir_all(root.join("keepdir")).unwrap();
    std::fs::write(root.join("keepdir/f"), b"old").unwrap();
    std::fs::write(root.join("file"), b"old").unwrap();
    std::fs::write(root.join("target"), b"target").unwrap();
    std::os::unix::fs::symlink("target", root.join("link")).unwrap();
    let layer = Tar::new()
        .file("dir", b"now a file")
        .entry(b'5', b"keepdir", b"", b"", 0o711)
        .dir("file")
        .file("link", b"not through the link")
        .file("twice", b"first")
        .file("twice", b"second")
        .finish();
    apply_layer(&layer[..], &root, WhiteoutMode::Delete, &Limits::default()).unwrap();
    assert_eq!(std::fs::read(root.join("dir")).unwrap(), b"now a file");
    assert_eq!(std::fs::read(root.join("keepdir/f")).unwrap(), b"old");
    assert_eq!(strata_testkit::node(&root.join("keepdir")).mode, 0o711);
    assert_eq!(strata_testkit::node(&root.join("file")).kind, "dir");
    assert_eq!(strata_testkit::node(&root.join("link")).kind, "file");
    assert_eq!(std::fs::read(root.join("target")).unwrap(), b"target");
    assert_eq!(std::fs::read(root.join("twice")).unwrap(), b"second");
}

#[test]
fn dir_times_survive_later_children() {
    require_root!();
    let tmp = tempdir();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut t = Tar::new();
    t.dir("a").dir("b");
    t.mtime = 1_700_000_000;
    t.file("a/late", b"x")
        .file("b/c/implicit", b"x")
        .file("b/.wh.c", b"")
        .file("a/.wh..wh..opq", b"");
    let layer = t.finish();
    apply_layer(&layer[..], &root, WhiteoutMode::Delete, &Limits::default()).unwrap();
    assert_eq!(
        strata_testkit::node(&root.join("a")).mtime,
        (1_600_000_000, 0)
    );
    assert_eq!(
        strata_testkit::node(&root.join("b")).mtime,
        (1_600_000_000, 0)
    );
    assert_eq!(
        strata_testkit::node(&root.join("a/late")).mtime,
        (1_700_000_000, 0)
    );
}
