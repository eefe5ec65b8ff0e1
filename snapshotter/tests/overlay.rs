//! The overlay backend with real kernel mounts (needs root).

use std::path::Path;
use std::process::Command;

use strata_snapshotter::{
    Cleanup, ErrorKind, Kind, Labels, Mount, OverlayOptions, OverlaySnapshotter, Snapshotter,
    overlay::kernel_supports_index,
};

fn mount(m: &[Mount], target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    assert_eq!(m.len(), 1);
    let m = &m[0];
    let ok = if m.r#type == "bind" {
        let ro = m.options.iter().any(|o| o == "ro");
        let mut ok = Command::new("mount")
            .args(["--bind", &m.source])
            .arg(target)
            .status()
            .unwrap()
            .success();
        if ok && ro {
            ok = Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(target)
                .status()
                .unwrap()
                .success();
        }
        ok
    } else {
        Command::new("mount")
            .args(["-t", &m.r#type, &m.source, "-o", &m.options.join(",")])
            .arg(target)
            .status()
            .unwrap()
            .success()
    };
    assert!(ok, "mount {m:?}");
}

fn umount(target: &Path) {
    assert!(
        Command::new("umount")
            .arg(target)
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn layers_chain_views_are_read_only_and_removal_is_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let sn = OverlaySnapshotter::new(
        &dir.path().join("root"),
        OverlayOptions {
            index_off: kernel_supports_index(),
            ..Default::default()
        },
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    let l = Labels::new();

    let m = sn.prepare("a", None, l.clone()).unwrap();
    assert_eq!(
        m[0].r#type, "bind",
        "a parentless active snapshot is a bind mount"
    );
    mount(&m, &mnt);
    std::fs::write(mnt.join("a.txt"), "from a").unwrap();
    std::fs::create_dir(mnt.join("gone")).unwrap();
    umount(&mnt);
    sn.commit("base", "a", l.clone()).unwrap();
    assert_eq!(sn.stat("base").unwrap().kind, Kind::Committed);
    assert!(sn.usage("base").unwrap().inodes >= 2);

    let m = sn.prepare("b", Some("base"), l.clone()).unwrap();
    assert_eq!(m[0].r#type, "overlay");
    mount(&m, &mnt);
    assert_eq!(
        std::fs::read_to_string(mnt.join("a.txt")).unwrap(),
        "from a"
    );
    std::fs::write(mnt.join("b.txt"), "from b").unwrap();
    std::fs::remove_dir(mnt.join("gone")).unwrap();
    umount(&mnt);
    sn.commit("top", "b", l.clone()).unwrap();

    let m = sn.view("v", Some("top"), l.clone()).unwrap();
    assert!(
        m[0].options
            .iter()
            .any(|o| o.starts_with("lowerdir=") && o.contains(':'))
    );
    assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    mount(&m, &mnt);
    assert_eq!(
        std::fs::read_to_string(mnt.join("b.txt")).unwrap(),
        "from b"
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("a.txt")).unwrap(),
        "from a"
    );
    assert!(
        !mnt.join("gone").exists(),
        "a directory removed in an upper layer stays gone"
    );
    let err = std::fs::write(mnt.join("c.txt"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc_erofs()),
        "views are read-only"
    );
    umount(&mnt);

    let single = sn.view("v1", Some("base"), l.clone()).unwrap();
    assert_eq!(single[0].r#type, "bind");
    assert!(single[0].options.contains(&"ro".to_owned()));

    assert_eq!(
        sn.remove("base").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        sn.remove("top").unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    for k in ["v", "v1", "top", "base"] {
        sn.remove(k).unwrap();
    }
    // Directories are deleted in the background; Cleanup waits for that.
    sn.cleanup().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root/snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "every snapshot directory is gone");
}

fn libc_erofs() -> i32 {
    30
}

#[test]
fn root_is_0755_and_cleanup_removes_strays() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sn = OverlaySnapshotter::new(&root, OverlayOptions::default()).unwrap();
    let m = sn.prepare("k", None, Labels::new()).unwrap();
    let mode = std::fs::metadata(&m[0].source)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    std::fs::create_dir_all(root.join("snapshots/999/fs")).unwrap();
    std::fs::create_dir_all(root.join("snapshots/rm-5")).unwrap();
    sn.cleanup().unwrap();
    let mut left: Vec<_> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left.len(), 1, "only the live snapshot remains: {left:?}");
    assert!(Path::new(&m[0].source).exists());
    assert_eq!(sn.mounts("k").unwrap(), m);
}

#[test]
fn concurrent_prepares_get_distinct_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sn =
        std::sync::Arc::new(OverlaySnapshotter::new(&root, OverlayOptions::default()).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let sn = sn.clone();
            std::thread::spawn(move || sn.prepare(&format!("k{i}"), None, Labels::new()).unwrap())
        })
        .collect();
    let mut sources: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().unwrap()[0].source.clone())
        .collect();
    sources.sort();
    sources.dedup();
    assert_eq!(sources.len(), 8);
    for s in &sources {
        assert!(Path::new(s).is_dir(), "{s}");
    }
    let dirs = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    assert_eq!(dirs, 8, "no temp dir is left behind");
}
