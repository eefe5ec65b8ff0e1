//! The native backend, laid out and mounted as containerd's native snapshotter: every
//! snapshot is a full copy of its parent's tree, so it works on any filesystem (no overlay,
//! no reflinks) at the cost of a copy per prepare and view.
//!
//! ```text
//! <root>/metadata/         MetaStore (RocksDB)
//! <root>/snapshots/<id>/   the snapshot's whole tree; a parentless snapshot's is mode 0755
//! ```
//!
//! Mounts: one `bind` of `<id>/`, `rbind,rw` for active snapshots and `rbind,ro` for views.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::Result;
use crate::api::{Kind, Mount, Usage};
use crate::copy::copy_tree;
use crate::driver::{Driver, MetaSnapshotter};
use crate::fsutil::{SnapshotDirs, disk_usage, io};
use crate::meta::Snapshot;

/// The native (copying) snapshotter: the native [`Driver`] under the shared metadata.
pub type NativeSnapshotter = MetaSnapshotter<NativeDriver>;

impl NativeSnapshotter {
    /// Opens (creating) a native snapshotter rooted at `root`.
    pub fn new(root: &Path) -> Result<Self> {
        let driver = NativeDriver {
            dirs: SnapshotDirs::open(root)?,
        };
        MetaSnapshotter::open(&root.join("metadata"), driver)
    }
}

/// The storage of the native backend: a full tree per snapshot.
pub struct NativeDriver {
    dirs: SnapshotDirs,
}

impl Driver for NativeDriver {
    /// Fills `tmp` with the parent's tree (or an empty 0755 root).
    fn create(&self, tmp: &str, parent: Option<u64>, _kind: Kind) -> Result<()> {
        let tmp = self.dirs.temp(tmp);
        let made = match parent {
            Some(id) => copy_tree(&self.dirs.of(id), &tmp),
            None => fs::create_dir(&tmp)
                .map_err(|e| io("create", &tmp, e))
                .and_then(|()| {
                    // The umask may have narrowed the mode; the root of a snapshot is
                    // always 0755.
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
                        .map_err(|e| io("chmod", &tmp, e))
                }),
        };
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        made
    }

    fn install(&self, tmp: &str, id: u64) -> Result<()> {
        self.dirs.install(tmp, id)
    }

    fn discard(&self, tmp: &str) {
        self.dirs.discard(tmp);
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        let mode = if s.kind == Kind::View { "ro" } else { "rw" };
        vec![Mount {
            r#type: "bind".into(),
            source: self.dirs.of(s.id).to_string_lossy().into_owned(),
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        }]
    }

    fn usage(&self, s: &Snapshot) -> Result<Usage> {
        disk_usage(&self.dirs.of(s.id))
    }

    fn remove(&self, id: u64) {
        self.dirs.remove(id);
    }

    fn cleanup(&self, live: &HashMap<u64, String>) -> Result<()> {
        self.dirs.cleanup(live)
    }
}
