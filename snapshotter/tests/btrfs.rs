//! The btrfs backend on a real btrfs filesystem (needs root, loop devices and btrfs-progs'
//! `mkfs.btrfs`; `btrfs` only to make stray subvolumes for Cleanup).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_snapshotter::testsuite::LoopBtrfs;
use strata_snapshotter::{BtrfsSnapshotter, Cleanup, ErrorKind, Kind, Labels, Snapshotter};

const EROFS: i32 = 30;

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd} (install btrfs-progs and util-linux to run these tests): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh 512 MiB btrfs on a loop device.
struct BtrfsFs(LoopBtrfs);

impl BtrfsFs {
    fn new() -> Self {
        BtrfsFs(LoopBtrfs::new(512 << 20))
    }

    fn root(&self) -> PathBuf {
        self.0.path().join("root")
    }
}

/// A bind mount of a returned mount, unmounted on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(m: &[strata_snapshotter::Mount], target: &Path) -> Self {
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].r#type, "bind");
        fs::create_dir_all(target).unwrap();
        run("mount", &["--bind", &m[0].source, target.to_str().unwrap()]);
        let b = BindMount(target.to_owned());
        if m[0].options.iter().any(|o| o == "ro") {
            run(
                "mount",
                &["-o", "remount,bind,ro", target.to_str().unwrap()],
            );
        }
        b
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn names(sn: &BtrfsSnapshotter) -> Vec<String> {
    let mut v = Vec::new();
    sn.walk(&[], &mut |i| {
        v.push(i.name);
        Ok(())
    })
    .unwrap();
    v
}

fn source(m: &[strata_snapshotter::Mount]) -> PathBuf {
    PathBuf::from(&m[0].source)
}

fn write_file(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    fs::write(path, data).unwrap();
    fs::File::open(path).unwrap().sync_all().unwrap();
}

fn assert_erofs(r: std::io::Result<()>, what: &str) {
    let err = r.expect_err(what);
    assert_eq!(err.raw_os_error(), Some(EROFS), "{what}: {err}");
}

#[test]
fn new_rejects_a_root_not_on_btrfs() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = dir.path().join("root");
    let err = BtrfsSnapshotter::new(&root)
        .err()
        .expect("a root on ext4/overlay is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.to_string().contains("not on a btrfs filesystem"),
        "{err}"
    );
    assert!(!root.exists(), "nothing is created on a refused root");
}

#[test]
fn parentless_snapshots_are_0755_subvolumes() {
    let fs = BtrfsFs::new();
    // SAFETY: umask only changes this test process's creation mask.
    let old = unsafe { libc::umask(0o077) };
    let sn = BtrfsSnapshotter::new(&fs.root()).unwrap();
    let m = sn.prepare("a", None, Labels::new()).unwrap();
    let v = sn.view("v", None, Labels::new()).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(old) };

    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    assert_eq!(v[0].options, ["ro", "rbind"]);
    assert_eq!(source(&m).parent().unwrap(), fs.root().join("snapshots"));
    for m in [&m, &v] {
        let md = fs::metadata(source(m)).unwrap();
        assert_eq!(md.ino(), 256, "{} is a subvolume root", m[0].source);
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    }
    fs::write(source(&m).join("f"), "x").unwrap();
    assert_erofs(
        fs::write(source(&v).join("f"), "x"),
        "an empty view is read-only",
    );
    assert_eq!(sn.mounts("a").unwrap(), m);
    assert_eq!(sn.mounts("v").unwrap(), v);
}

#[test]
fn layers_chain_and_stay_isolated() {
    let fs = BtrfsFs::new();
    let sn = BtrfsSnapshotter::new(&fs.root()).unwrap();
    let l = Labels::new();
    let mnt = fs.0.path().join("mnt");

    let m = sn.prepare("a", None, l.clone()).unwrap();
    {
        let _b = BindMount::new(&m, &mnt);
        fs::write(mnt.join("a.txt"), "from a").unwrap();
        fs::create_dir(mnt.join("d")).unwrap();
        fs::write(mnt.join("d/keep"), "keep").unwrap();
    }
    sn.commit("base", "a", l.clone()).unwrap();
    let base = source(&m);
    assert_eq!(sn.stat("base").unwrap().kind, Kind::Committed);
    assert_erofs(
        fs::write(base.join("new"), "x"),
        "a committed snapshot is read-only",
    );
    assert_erofs(
        fs::write(base.join("a.txt"), "x"),
        "a committed snapshot's files are read-only",
    );
    assert_eq!(
        sn.mounts("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );

    let m = sn.prepare("b", Some("base"), l.clone()).unwrap();
    assert_eq!(m[0].options, ["rw", "rbind"]);
    {
        let _b = BindMount::new(&m, &mnt);
        assert_eq!(fs::read_to_string(mnt.join("a.txt")).unwrap(), "from a");
        fs::write(mnt.join("b.txt"), "from b").unwrap();
        fs::write(mnt.join("a.txt"), "changed by b").unwrap();
        fs::remove_file(mnt.join("d/keep")).unwrap();
    }
    let child = source(&m);
    assert_eq!(fs::metadata(&child).unwrap().ino(), 256);
    assert_eq!(fs::read_to_string(base.join("a.txt")).unwrap(), "from a");
    assert!(!base.join("b.txt").exists(), "the child's files stay in it");
    assert!(
        base.join("d/keep").exists(),
        "the child's removals stay in it"
    );
    sn.commit("top", "b", l.clone()).unwrap();
    assert_eq!(sn.stat("top").unwrap().parent.as_deref(), Some("base"));

    let v = sn.view("v", Some("top"), l.clone()).unwrap();
    assert_eq!(v[0].options, ["ro", "rbind"]);
    let view = source(&v);
    assert_eq!(fs::read_to_string(view.join("b.txt")).unwrap(), "from b");
    assert_eq!(
        fs::read_to_string(view.join("a.txt")).unwrap(),
        "changed by b"
    );
    assert!(!view.join("d/keep").exists());
    assert_erofs(fs::write(view.join("c.txt"), "x"), "a view is read-only");
    {
        let _b = BindMount::new(&v, &mnt);
        assert_erofs(
            fs::write(mnt.join("c.txt"), "x"),
            "a mounted view is read-only",
        );
    }
    assert_eq!(
        sn.commit("c", "v", l.clone()).unwrap_err().kind(),
        ErrorKind::FailedPrecondition,
        "views cannot be committed"
    );
    assert_erofs(
        fs::write(view.join("c.txt"), "x"),
        "a failed commit of a view leaves it read-only",
    );
}

#[test]
fn usage_counts_only_the_snapshots_own_layer() {
    let fs = BtrfsFs::new();
    let sn = BtrfsSnapshotter::new(&fs.root()).unwrap();
    let l = Labels::new();
    let m = sn.prepare("a", None, l.clone()).unwrap();
    fs::create_dir(source(&m).join("dir")).unwrap();
    for i in 0..4 {
        write_file(&source(&m).join(format!("dir/f{i}")), 1 << 20);
    }
    let live = sn.usage("a").unwrap();
    sn.commit("base", "a", l.clone()).unwrap();
    let base = sn.usage("base").unwrap();
    assert_eq!(
        base, live,
        "the committed usage is the one measured at commit"
    );
    assert!(base.size >= 4 << 20, "{base:?}");
    assert_eq!(base.inodes, 5, "{base:?}");

    let m = sn.prepare("b", Some("base"), l.clone()).unwrap();
    assert_eq!(
        sn.usage("b").unwrap().inodes,
        0,
        "a fresh snapshot shares everything"
    );
    write_file(&source(&m).join("dir/new"), 1 << 20);
    let check = |u: strata_snapshotter::Usage| {
        assert!(
            (1 << 20..(1 << 20) + (64 << 10)).contains(&u.size),
            "about 1 MiB, not the parent's size: {u:?}"
        );
        assert!((1..=2).contains(&u.inodes), "the file (and its dir): {u:?}");
    };
    check(sn.usage("b").unwrap());
    sn.commit("top", "b", l.clone()).unwrap();
    check(sn.usage("top").unwrap());

    let v = sn.view("v", Some("top"), l.clone()).unwrap();
    assert_eq!(sn.usage("v").unwrap().inodes, 0);
    assert!(source(&v).join("dir/new").exists());

    // Rewriting a parent's file counts it again.
    let m = sn.prepare("c", Some("top"), l.clone()).unwrap();
    write_file(&source(&m).join("dir/f0"), 1 << 20);
    let u = sn.usage("c").unwrap();
    assert!(u.size >= 1 << 20 && u.inodes >= 1, "{u:?}");
}

#[test]
fn remove_is_ordered_and_frees_the_subvolume() {
    let fs = BtrfsFs::new();
    let sn = BtrfsSnapshotter::new(&fs.root()).unwrap();
    let l = Labels::new();
    let base = source(&sn.prepare("a", None, l.clone()).unwrap());
    fs::write(base.join("f"), "x").unwrap();
    sn.commit("base", "a", l.clone()).unwrap();
    let child = source(&sn.prepare("child", Some("base"), l.clone()).unwrap());

    assert_eq!(
        sn.remove("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(sn.stat("base").unwrap().kind, Kind::Committed);
    assert_eq!(fs::read_to_string(base.join("f")).unwrap(), "x");
    assert_erofs(
        fs::write(base.join("g"), "x"),
        "a refused remove leaves the parent read-only",
    );

    sn.remove("child").unwrap();
    assert!(!child.exists());
    sn.remove("base").unwrap();
    assert!(!base.exists());
    assert!(entries(&fs.root().join("snapshots")).is_empty());
    assert!(names(&sn).is_empty());
    assert_eq!(sn.remove("base").unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn cleanup_removes_stray_subvolumes_and_dirs_and_keeps_live_ones() {
    let fs = BtrfsFs::new();
    let root = fs.root();
    let sn = BtrfsSnapshotter::new(&root).unwrap();
    let l = Labels::new();
    let base = source(&sn.prepare("a", None, l.clone()).unwrap());
    sn.commit("base", "a", l.clone()).unwrap();
    let active = source(&sn.prepare("k", Some("base"), l.clone()).unwrap());
    let view = source(&sn.view("v", Some("base"), l.clone()).unwrap());

    let snaps = root.join("snapshots");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    run(
        "btrfs",
        &["-q", "subvolume", "create", &s(&snaps.join("999"))],
    );
    fs::write(snaps.join("999/file"), "x").unwrap();
    run(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "snapshot",
            "-r",
            &s(&base),
            &s(&snaps.join("new-1-0")),
        ],
    );
    fs::create_dir_all(snaps.join("rm-5/sub")).unwrap();
    std::os::unix::fs::symlink(&base, snaps.join("rm-5/sub/link")).unwrap();

    sn.cleanup().unwrap();
    let mut live: Vec<String> = [&base, &active, &view]
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    live.sort();
    assert_eq!(entries(&snaps), live, "only live snapshots remain");
    assert!(
        base.join("f").exists() || base.exists(),
        "a symlink to a live one is not followed"
    );
    let out = run("btrfs", &["subvolume", "list", "-o", &s(&snaps)]);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().count(), 3, "strays are destroyed: {listed}");
    assert_eq!(names(&sn), ["base", "k", "v"]);
}

#[test]
fn failed_operations_leave_no_subvolume_and_no_metadata() {
    let fs = BtrfsFs::new();
    let sn = BtrfsSnapshotter::new(&fs.root()).unwrap();
    let l = Labels::new();
    sn.prepare("a", None, l.clone()).unwrap();
    sn.commit("base", "a", l.clone()).unwrap();
    let act = source(&sn.prepare("act", None, l.clone()).unwrap());
    let snaps = fs.root().join("snapshots");
    let before = entries(&snaps);

    let kind = |r: strata_snapshotter::Result<Vec<strata_snapshotter::Mount>>| {
        r.expect_err("must fail").kind()
    };
    for key in ["", "nul\0key"] {
        assert_eq!(
            kind(sn.prepare(key, None, l.clone())),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(sn.prepare(key, Some("base"), l.clone())),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(sn.view(key, Some("base"), l.clone())),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(sn.view(key, None, l.clone())),
            ErrorKind::InvalidArgument
        );
    }
    assert_eq!(
        kind(sn.prepare("act", Some("base"), l.clone())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(sn.prepare("x", Some("missing"), l.clone())),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(sn.prepare("x", Some("act"), l.clone())),
        ErrorKind::InvalidArgument
    );
    let big = Labels::from([("k".to_owned(), "v".repeat(8192))]);
    assert_eq!(
        kind(sn.view("x", Some("base"), big.clone())),
        ErrorKind::InvalidArgument
    );

    // A refused commit leaves the snapshot active and writable.
    assert_eq!(
        sn.commit("base", "act", l.clone()).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        sn.commit("c", "act", big).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(sn.stat("act").unwrap().kind, Kind::Active);
    fs::write(act.join("still-writable"), "x").unwrap();

    assert_eq!(entries(&snaps), before, "no subvolume is left behind");
    assert_eq!(names(&sn), ["act", "base"], "no metadata is left behind");
}

#[test]
fn concurrent_prepares_on_one_parent_get_distinct_subvolumes() {
    let fs = BtrfsFs::new();
    let sn = std::sync::Arc::new(BtrfsSnapshotter::new(&fs.root()).unwrap());
    let m = sn.prepare("a", None, Labels::new()).unwrap();
    fs::write(source(&m).join("f"), "base").unwrap();
    sn.commit("base", "a", Labels::new()).unwrap();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let sn = sn.clone();
            std::thread::spawn(move || {
                source(
                    &sn.prepare(&format!("k{i}"), Some("base"), Labels::new())
                        .unwrap(),
                )
            })
        })
        .collect();
    let mut dirs: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs.len(), 6);
    for d in &dirs {
        assert_eq!(fs::read_to_string(d.join("f")).unwrap(), "base");
    }
    assert_eq!(
        entries(&fs.root().join("snapshots")).len(),
        7,
        "no temp subvolume is left behind"
    );
}
