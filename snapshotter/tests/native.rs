//! The native backend and its tree copy, on real files and mounts (needs root).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use strata_snapshotter::{
    Cleanup, ErrorKind, Kind, Labels, Mount, NativeSnapshotter, Snapshotter, copy_tree,
};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(p: &Path, key: &str, value: &[u8]) {
    let (p, k) = (cpath(p), CString::new(key).unwrap());
    // SAFETY: the NUL-terminated strings and the value outlive the call.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "set {key}: {}", std::io::Error::last_os_error());
}

fn get_xattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    let (p, k) = (cpath(p), CString::new(key).unwrap());
    let mut buf = vec![0u8; 4096];
    // SAFETY: the NUL-terminated strings outlive the call; `buf` has `buf.len()` writable
    // bytes.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = TimeSpec::new(sec, nsec);
    utimensat(AT_FDCWD, p, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run(cmd: &mut Command) {
    assert!(cmd.status().unwrap().success(), "{cmd:?}");
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn bind_mount(m: &[Mount], target: &Path) -> Mounted {
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    fs::create_dir_all(target).unwrap();
    run(Command::new("mount")
        .args(["--bind", &m[0].source])
        .arg(target));
    let guard = Mounted(target.to_owned());
    if m[0].options.iter().any(|o| o == "ro") {
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(target));
    }
    guard
}

/// A file capability set granting CAP_NET_RAW (vfs_cap_data revision 2, effective).
fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}

#[test]
fn copy_tree_preserves_every_kind_of_node_and_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::create_dir(src.join("opaque")).unwrap();

    fs::write(src.join("a"), "hello").unwrap();
    fs::hard_link(src.join("a"), src.join("sub/a2")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    std::os::unix::fs::symlink("nowhere/x", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("sub", src.join("linkdir")).unwrap();
    set_xattr(&src.join("abs"), "trusted.t", b"on a link");

    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"x", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"y", 8 << 20).unwrap();
    drop(sparse);

    let rw = Mode::from_bits_truncate(0o640);
    mknod(&src.join("chr"), SFlag::S_IFCHR, rw, makedev(1, 3)).unwrap();
    mknod(&src.join("blk"), SFlag::S_IFBLK, rw, makedev(7, 0)).unwrap();
    mknod(&src.join("whiteout"), SFlag::S_IFCHR, rw, makedev(0, 0)).unwrap();
    mknod(&src.join("fifo"), SFlag::S_IFIFO, rw, 0).unwrap();
    drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());

    fs::write(src.join("owned"), "o").unwrap();
    std::os::unix::fs::lchown(src.join("owned"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(src.join("dangling"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(src.join("chr"), Some(1234), Some(5678)).unwrap();
    fs::write(src.join("suid"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::lchown(src.join("suid"), Some(1234), Some(5678)).unwrap();
    set_xattr(&src.join("suid"), "security.capability", &capability());
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("opaque"), fs::Permissions::from_mode(0o1777)).unwrap();
    set_xattr(&src.join("opaque"), "trusted.overlay.opaque", b"y");
    set_xattr(&src.join("a"), "user.x", b"1");

    // Times last: creating entries changes their directory's mtime.
    set_times(&src.join("a"), 1_600_000_000, 123_456_789);
    set_times(&src.join("abs"), 1_500_000_000, 987_654_321);
    set_times(&src.join("fifo"), 1_400_000_000, 5);
    set_times(&src.join("sub"), 1_300_000_000, 111_111_111);
    set_times(&src, 1_200_000_000, 222_222_222);

    copy_tree(&src, &dst).unwrap();

    // Before anything reads the copy (which would move its atimes).
    for (name, sec, nsec) in [
        ("a", 1_600_000_000, 123_456_789),
        ("abs", 1_500_000_000, 987_654_321),
        ("fifo", 1_400_000_000, 5),
        ("sub", 1_300_000_000, 111_111_111),
        ("", 1_200_000_000, 222_222_222),
    ] {
        let m = lstat(&dst.join(name));
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (sec, nsec),
            "mtime of {name:?}"
        );
        assert_eq!(
            (m.atime(), m.atime_nsec()),
            (sec, nsec),
            "atime of {name:?}"
        );
    }

    let (a, a2) = (lstat(&dst.join("a")), lstat(&dst.join("sub/a2")));
    assert_eq!(a.ino(), a2.ino(), "hard links stay one inode");
    assert_ne!(a.ino(), lstat(&src.join("a")).ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(fs::read_to_string(dst.join("sub/a2")).unwrap(), "hello");

    for (name, target) in [
        ("abs", "/etc/passwd"),
        ("dangling", "nowhere/x"),
        ("linkdir", "sub"),
    ] {
        assert!(lstat(&dst.join(name)).file_type().is_symlink(), "{name}");
        assert_eq!(fs::read_link(dst.join(name)).unwrap(), Path::new(target));
    }
    assert_eq!(
        get_xattr(&dst.join("abs"), "trusted.t").unwrap(),
        b"on a link"
    );
    assert_eq!(lstat(&dst.join("dangling")).uid(), 1234);

    let sp = lstat(&dst.join("sparse"));
    assert_eq!(sp.len(), 16 << 20);
    assert!(
        sp.blocks() * 512 < 1 << 20,
        "holes stay holes: {} blocks",
        sp.blocks()
    );
    assert_eq!(
        fs::read(dst.join("sparse")).unwrap(),
        fs::read(src.join("sparse")).unwrap()
    );

    use std::os::unix::fs::FileTypeExt;
    let chr = lstat(&dst.join("chr"));
    assert!(chr.file_type().is_char_device());
    assert_eq!(chr.rdev(), makedev(1, 3));
    assert_eq!(
        (chr.uid(), chr.gid(), chr.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
    let blk = lstat(&dst.join("blk"));
    assert!(blk.file_type().is_block_device());
    assert_eq!(blk.rdev(), makedev(7, 0));
    let wh = lstat(&dst.join("whiteout"));
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "overlay whiteout"
    );
    assert!(lstat(&dst.join("fifo")).file_type().is_fifo());
    assert!(lstat(&dst.join("sock")).file_type().is_socket());

    let owned = lstat(&dst.join("owned"));
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    let suid = lstat(&dst.join("suid"));
    assert_eq!((suid.uid(), suid.gid()), (1234, 5678));
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid survives the chown");
    assert_eq!(
        get_xattr(&dst.join("suid"), "security.capability").unwrap(),
        capability(),
        "file capabilities survive the chown"
    );
    assert_eq!(lstat(&dst.join("opaque")).mode() & 0o7777, 0o1777);
    assert_eq!(
        get_xattr(&dst.join("opaque"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert_eq!(get_xattr(&dst.join("a"), "user.x").unwrap(), b"1");

    assert!(copy_tree(&src, &dst).is_err(), "dst must not exist");
}

#[test]
fn copy_tree_handles_trees_deeper_than_its_open_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let depth = 100;
    let mut p = src.clone();
    let mut levels = Vec::new();
    for _ in 0..depth {
        p.push("d");
        levels.push(p.clone());
    }
    fs::create_dir_all(&p).unwrap();
    // Files after the subdirectory in each level, so copying them needs a reopened dir.
    for (i, l) in levels.iter().enumerate() {
        fs::write(l.join("z"), i.to_string()).unwrap();
    }
    fs::hard_link(levels[depth - 1].join("z"), src.join("top")).unwrap();
    fs::hard_link(levels[depth - 1].join("z"), levels[40].join("mid")).unwrap();
    for (i, l) in levels.iter().enumerate() {
        set_times(l, 1_000_000 + i as i64, 7);
    }

    copy_tree(&src, &dst).unwrap();

    for (i, l) in levels.iter().enumerate() {
        let c = dst.join(l.strip_prefix(&src).unwrap());
        assert_eq!(fs::read_to_string(c.join("z")).unwrap(), i.to_string());
        let m = lstat(&c);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000 + i as i64, 7));
    }
    let deep = dst
        .join(levels[depth - 1].strip_prefix(&src).unwrap())
        .join("z");
    let mid = dst.join(levels[40].strip_prefix(&src).unwrap()).join("mid");
    assert_eq!(lstat(&dst.join("top")).ino(), lstat(&deep).ino());
    assert_eq!(lstat(&mid).ino(), lstat(&deep).ino());
}

#[test]
fn copy_tree_copies_between_filesystems() {
    // tmpfs to the test's filesystem: copy_file_range refuses (EXDEV), read/write copies.
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir(&src).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&src));
    let _m = Mounted(src.clone());
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let f = fs::File::create(src.join("big")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 40 << 20).unwrap();
    drop(f);

    copy_tree(&src, &dst).unwrap();

    let m = lstat(&dst.join("big"));
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 16 << 20,
        "holes stay holes: {} blocks",
        m.blocks()
    );
    assert!(fs::read(dst.join("big")).unwrap() == fs::read(src.join("big")).unwrap());
}

#[test]
fn copy_tree_does_not_cross_mount_points() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir_all(src.join("tmpfs")).unwrap();
    fs::create_dir_all(src.join("bind")).unwrap();
    fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    fs::write(dir.path().join("elsewhere/secret"), "outside").unwrap();
    fs::write(src.join("kept"), "in").unwrap();

    run(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(src.join("tmpfs")));
    let _t = Mounted(src.join("tmpfs"));
    fs::write(src.join("tmpfs/other"), "other fs").unwrap();
    // Same filesystem, other mount: st_dev alone cannot tell.
    run(Command::new("mount")
        .arg("--bind")
        .arg(dir.path().join("elsewhere"))
        .arg(src.join("bind")));
    let _b = Mounted(src.join("bind"));

    copy_tree(&src, &dst).unwrap();

    assert_eq!(fs::read_to_string(dst.join("kept")).unwrap(), "in");
    assert!(
        !dst.join("tmpfs").exists(),
        "a tmpfs mount point is skipped"
    );
    assert!(!dst.join("bind").exists(), "a bind mount point is skipped");
}

#[test]
fn layers_chain_views_are_read_only_and_removal_is_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let sn = NativeSnapshotter::new(&dir.path().join("root")).unwrap();
    let l = Labels::new();

    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
    let m = sn.prepare("a", None, l.clone());
    nix::sys::stat::umask(old);
    let m = m.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rbind", "rw"]);
    let a = PathBuf::from(&m[0].source);
    assert_eq!(
        lstat(&a).mode() & 0o7777,
        0o755,
        "the root is 0755 whatever the umask"
    );
    fs::write(a.join("a.txt"), "from a").unwrap();
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), "f").unwrap();
    std::os::unix::fs::symlink("/etc", a.join("etc")).unwrap();
    assert_eq!(sn.mounts("a").unwrap(), m);
    assert!(sn.usage("a").unwrap().inodes >= 4);
    sn.commit("base", "a", l.clone()).unwrap();
    assert_eq!(sn.stat("base").unwrap().kind, Kind::Committed);
    assert!(sn.usage("base").unwrap().inodes >= 4);
    assert_eq!(
        sn.mounts("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );

    let m = sn.prepare("b", Some("base"), l.clone()).unwrap();
    assert_eq!(m[0].options, ["rbind", "rw"]);
    let b = PathBuf::from(&m[0].source);
    assert_ne!(a, b);
    assert_eq!(fs::read_to_string(b.join("a.txt")).unwrap(), "from a");
    assert_eq!(fs::read_to_string(b.join("d/f")).unwrap(), "f");
    assert_eq!(fs::read_link(b.join("etc")).unwrap(), Path::new("/etc"));
    fs::write(b.join("a.txt"), "changed in b").unwrap();
    fs::write(b.join("b.txt"), "from b").unwrap();
    fs::remove_dir_all(b.join("d")).unwrap();

    let m = sn.view("v", Some("base"), l.clone()).unwrap();
    assert_eq!(m[0].options, ["rbind", "ro"]);
    let v = PathBuf::from(&m[0].source);
    assert_eq!(
        fs::read_to_string(v.join("a.txt")).unwrap(),
        "from a",
        "the parent is untouched by its child"
    );
    assert!(!v.join("b.txt").exists());
    assert!(v.join("d/f").exists());
    let mnt = dir.path().join("mnt");
    let guard = bind_mount(&m, &mnt);
    assert_eq!(fs::read_to_string(mnt.join("a.txt")).unwrap(), "from a");
    let err = fs::write(mnt.join("c.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "views are read-only");
    drop(guard);

    sn.commit("top", "b", l.clone()).unwrap();
    let m = sn.view("v2", Some("top"), l.clone()).unwrap();
    let v2 = PathBuf::from(&m[0].source);
    assert_eq!(
        fs::read_to_string(v2.join("a.txt")).unwrap(),
        "changed in b"
    );
    assert!(!v2.join("d").exists());

    assert_eq!(
        sn.remove("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        sn.remove("top").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    for k in ["v", "v2", "top", "base"] {
        sn.remove(k).unwrap();
    }
    // Directories are deleted in the background; Cleanup waits for that.
    sn.cleanup().unwrap();
    let left = fs::read_dir(dir.path().join("root/snapshots"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "every snapshot directory is gone");
}

/// Snapshot directories and the number of snapshots in the metadata.
fn state(sn: &NativeSnapshotter, root: &Path) -> (Vec<String>, usize) {
    let mut dirs: Vec<String> = fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    let mut n = 0;
    sn.walk(&[], &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    (dirs, n)
}

#[test]
fn failed_creations_leave_no_directory_and_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sn = NativeSnapshotter::new(&root).unwrap();
    let l = Labels::new();
    let m = sn.prepare("k", None, l.clone()).unwrap();
    fs::write(Path::new(&m[0].source).join("f"), "data").unwrap();
    sn.commit("p", "k", l.clone()).unwrap();
    sn.prepare("active", None, l.clone()).unwrap();
    let before = state(&sn, &root);
    assert_eq!(before.1, 2);

    for (key, parent, want) in [
        ("", None, ErrorKind::InvalidArgument),
        ("a\0b", None, ErrorKind::InvalidArgument),
        ("", Some("p"), ErrorKind::InvalidArgument),
        ("x\0", Some("p"), ErrorKind::InvalidArgument),
        ("c", Some("missing"), ErrorKind::NotFound),
        ("c", Some("active"), ErrorKind::InvalidArgument),
        ("p", Some("p"), ErrorKind::AlreadyExists),
        ("active", None, ErrorKind::AlreadyExists),
    ] {
        for view in [false, true] {
            let r = if view {
                sn.view(key, parent, l.clone())
            } else {
                sn.prepare(key, parent, l.clone())
            };
            assert_eq!(r.unwrap_err().kind(), want, "{key:?} on {parent:?}");
            assert_eq!(
                state(&sn, &root),
                before,
                "{key:?} on {parent:?} left traces"
            );
        }
    }
}

#[test]
fn cleanup_removes_strays_and_keeps_live_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sn = NativeSnapshotter::new(&root).unwrap();
    let m = sn.prepare("k", None, Labels::new()).unwrap();
    fs::create_dir_all(root.join("snapshots/999/x")).unwrap();
    fs::create_dir_all(root.join("snapshots/rm-5")).unwrap();
    fs::create_dir_all(root.join("snapshots/new-1-0")).unwrap();
    sn.cleanup().unwrap();
    let (dirs, n) = state(&sn, &root);
    assert_eq!(dirs.len(), 1, "only the live snapshot remains: {dirs:?}");
    assert_eq!(n, 1);
    assert!(Path::new(&m[0].source).is_dir());
    assert_eq!(sn.mounts("k").unwrap(), m);
}
