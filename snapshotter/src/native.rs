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

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::api::{Cleanup, Info, Kind, Labels, Mount, Snapshotter, Usage};
use crate::copy::copy_tree;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{Reaper, disk_usage, io, temp_name};
use crate::meta::{MetaStore, Snapshot};

/// The native (copying) snapshotter.
pub struct NativeSnapshotter {
    root: PathBuf,
    meta: MetaStore,
    reaper: Reaper,
}

impl NativeSnapshotter {
    /// Opens (creating) a native snapshotter rooted at `root`.
    pub fn new(root: &Path) -> Result<Self> {
        let snaps = root.join("snapshots");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snaps)
            .map_err(|e| io("create", &snaps, e))?;
        let meta = MetaStore::open(&root.join("metadata"))?;
        Ok(NativeSnapshotter {
            reaper: Reaper::new(),
            root: root.to_owned(),
            meta,
        })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn mounts_of(&self, s: &Snapshot) -> Vec<Mount> {
        let mode = if s.kind == Kind::View { "ro" } else { "rw" };
        vec![Mount {
            r#type: "bind".into(),
            source: self.dir(s.id).to_string_lossy().into_owned(),
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        }]
    }

    /// Fills `tmp` with the parent's tree (or an empty 0755 root).
    fn populate(&self, tmp: &Path, parent: Option<u64>) -> Result<()> {
        match parent {
            Some(id) => copy_tree(&self.dir(id), tmp),
            None => {
                fs::create_dir(tmp).map_err(|e| io("create", tmp, e))?;
                // The umask may have narrowed the mode; the root of a snapshot is always 0755.
                fs::set_permissions(tmp, fs::Permissions::from_mode(0o755))
                    .map_err(|e| io("chmod", tmp, e))
            }
        }
    }

    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: &Labels,
    ) -> Result<Vec<Mount>> {
        // Cheap checks before a possibly large copy; MetaStore::create stays the authority.
        if self.meta.get(key).is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("snapshot {key:?} already exists"),
            ));
        }
        let parent = parent.filter(|p| !p.is_empty());
        let from = match parent {
            Some(p) => Some(self.meta.get(p)?).filter(|s| s.kind == Kind::Committed),
            None => None,
        };
        // As overlay: the tree is made under a temp name and renamed into place once the
        // metadata exists; Cleanup removes a temp dir a crash leaves behind.
        let tmp = self.root.join("snapshots").join(temp_name());
        let undo = |e: Error| {
            let _ = fs::remove_dir_all(&tmp);
            e
        };
        self.populate(&tmp, from.as_ref().map(|s| s.id))
            .map_err(undo)?;
        let s = self.meta.create(key, parent, kind, labels).map_err(undo)?;
        // The parent may have been removed and its name reused while it was being copied.
        if s.parent_ids.first() != from.as_ref().map(|p| &p.id) {
            let _ = self.meta.remove(key);
            return Err(undo(Error::new(
                ErrorKind::Aborted,
                format!("parent of {key:?} changed while being copied"),
            )));
        }
        if let Err(e) = fs::rename(&tmp, self.dir(s.id)) {
            let _ = self.meta.remove(key);
            return Err(undo(io("rename snapshot into place", &self.dir(s.id), e)));
        }
        Ok(self.mounts_of(&s))
    }
}

impl Snapshotter for NativeSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.meta.stat(key)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.meta.update(&info, fieldpaths)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let s = self.meta.get(key)?;
        match s.kind {
            Kind::Committed => self.meta.usage(key),
            _ => disk_usage(&self.dir(s.id)),
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let s = self.meta.get(key)?;
        if s.kind == Kind::Committed {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("snapshot {key:?} is committed: mount a view of it"),
            ));
        }
        Ok(self.mounts_of(&s))
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active, &labels)
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, &labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let s = self.meta.get(key)?;
        // Measured once here, so usage of committed snapshots is a metadata read.
        let usage = disk_usage(&self.dir(s.id))?;
        self.meta.commit(key, name, &labels, usage)?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let (id, _) = self.meta.remove(key)?;
        self.reaper.retire(&self.root.join("snapshots"), id);
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        self.meta.walk(filters, f)
    }
}

impl Cleanup for NativeSnapshotter {
    fn cleanup(&self) -> Result<()> {
        self.reaper
            .cleanup(&self.root.join("snapshots"), &self.meta.ids()?)
    }
}
