//! A temp dir holding a root and sentinels beside it that a test asserts unchanged.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::tree::Snapshot;

/// A temp dir holding `root` (where layers go) and sentinels beside it: `outside/`
/// (a directory with a file, a subdirectory and a symlink) whose state must never
/// change.
#[derive(Debug)]
pub struct Sandbox {
    /// The temp dir.
    pub tmp: tempfile::TempDir,
    /// Where layers go.
    pub root: PathBuf,
    /// The sentinel directory.
    pub outside: PathBuf,
    before: Snapshot,
}

impl Sandbox {
    /// A fresh sandbox in /tmp.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("strata-sentinel")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        fs::write(outside.join("keep"), b"sentinel").unwrap();
        fs::write(outside.join("sub/keep"), b"sentinel").unwrap();
        std::os::unix::fs::symlink("keep", outside.join("link")).unwrap();
        fs::set_permissions(outside.join("keep"), fs::Permissions::from_mode(0o640)).unwrap();
        // Old times, so that a touch would show.
        for p in [
            outside.join("keep"),
            outside.join("sub/keep"),
            outside.join("sub"),
            outside.clone(),
        ] {
            set_mtime(&p, 1_000_000_000);
        }
        let before = Snapshot::of_outside(tmp.path());
        Sandbox {
            tmp,
            root,
            outside,
            before,
        }
    }

    /// Asserts that nothing outside `root` changed: the temp dir's other entries,
    /// `outside/` in full, and /etc/passwd.
    pub fn assert_outside_untouched(&self) {
        let after = Snapshot::of_outside(self.tmp.path());
        let keys: std::collections::BTreeSet<_> =
            self.before.0.keys().chain(after.0.keys()).collect();
        let changed: Vec<_> = keys
            .into_iter()
            .filter(|k| self.before.0.get(*k) != after.0.get(*k))
            .map(|k| {
                format!(
                    "{}: {:?} -> {:?}",
                    k.display(),
                    self.before.0.get(k),
                    after.0.get(k)
                )
            })
            .collect();
        assert!(
            changed.is_empty(),
            "changed outside the root:\n{}",
            changed.join("\n")
        );
    }

    /// A name no host path has, for entries that must land in the root when written
    /// through a symlink to `/`: were the applier to escape, it would make `/<name>`,
    /// which [`Sandbox::assert_no_escape`] catches and removes.
    pub fn escape_name(&self) -> String {
        let tmp = self.tmp.path().file_name().unwrap().to_str().unwrap();
        format!("strata-escape-test-{tmp}")
    }

    /// Asserts that `/<escape_name>` does not exist (removing it if it does).
    pub fn assert_no_escape(&self) {
        let host = Path::new("/").join(self.escape_name());
        if host.symlink_metadata().is_ok() {
            let _ = fs::remove_file(&host);
            panic!("{} was created outside the root", host.display());
        }
    }

    /// The absolute path of `outside`, as a symlink target.
    pub fn outside_abs(&self) -> String {
        self.outside.to_str().unwrap().to_owned()
    }
}

/// Sets the access and modification times of `p` (not following a symlink).
pub fn set_mtime(p: &Path, sec: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: 0,
        },
    ];
    // SAFETY: `c` is a NUL-terminated path and `ts` two timespecs, both valid for the
    // call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}
