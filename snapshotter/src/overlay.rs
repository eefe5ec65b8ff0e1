//! The overlayfs backend, with the directory layout and mounts of containerd's overlay
//! snapshotter.
//!
//! ```text
//! <root>/metadata/        MetaStore (RocksDB)
//! <root>/snapshots/<id>/fs     the snapshot's upper dir (its layer), mode 0755
//! <root>/snapshots/<id>/work   overlay's work dir
//! ```
//!
//! Mounts: an active snapshot without parents is a `bind` rw of its `fs`; a view with one
//! parent (or none) is a `bind` ro; anything else is `overlay` with `lowerdir` = the parents'
//! `fs` dirs nearest first, plus `upperdir`/`workdir` for active snapshots.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::api::{Cleanup, Info, Kind, Labels, Mount, Rebase, Snapshotter, Usage};
use crate::error::{Error, ErrorKind, Result};
pub use crate::fsutil::disk_usage;
use crate::fsutil::{Reaper, io, temp_name};
use crate::meta::{MetaStore, Snapshot};

/// Whether the running kernel's overlay module supports `index=off`.
pub fn kernel_supports_index() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// Options of an [`OverlaySnapshotter`].
#[derive(Clone, Debug, Default)]
pub struct OverlayOptions {
    /// Add `index=off` to overlay mounts (set when the kernel has the `index` feature, so
    /// layers can be shared between mounts without inode-index conflicts).
    pub index_off: bool,
    /// Extra mount options appended to every overlay mount.
    pub mount_options: Vec<String>,
}

/// The overlayfs snapshotter.
pub struct OverlaySnapshotter {
    root: PathBuf,
    meta: MetaStore,
    reaper: Reaper,
    opts: OverlayOptions,
}

impl OverlaySnapshotter {
    /// Opens (creating) an overlay snapshotter rooted at `root`.
    pub fn new(root: &Path, opts: OverlayOptions) -> Result<Self> {
        let snaps = root.join("snapshots");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snaps)
            .map_err(|e| io("create", &snaps, e))?;
        let meta = MetaStore::open(&root.join("metadata"))?;
        Ok(OverlaySnapshotter {
            reaper: Reaper::new(),
            root: root.to_owned(),
            meta,
            opts,
        })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn upper(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    fn mounts_of(&self, s: &Snapshot) -> Vec<Mount> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let bind = |src: PathBuf, ro: bool| Mount {
            r#type: "bind".into(),
            source: path(src),
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        match (s.kind, s.parent_ids.as_slice()) {
            (Kind::View, []) => vec![bind(self.upper(s.id), true)],
            (_, []) => vec![bind(self.upper(s.id), false)],
            (Kind::View, [p]) => vec![bind(self.upper(*p), true)],
            (kind, parents) => {
                let mut options = Vec::new();
                if self.opts.index_off {
                    options.push("index=off".to_owned());
                }
                if kind == Kind::Active {
                    options.push(format!("workdir={}", path(self.dir(s.id).join("work"))));
                    options.push(format!("upperdir={}", path(self.upper(s.id))));
                }
                let lower: Vec<String> = parents.iter().map(|p| path(self.upper(*p))).collect();
                options.push(format!("lowerdir={}", lower.join(":")));
                options.extend(self.opts.mount_options.iter().cloned());
                vec![Mount {
                    r#type: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options,
                }]
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
        // The directory is made first under a temp name and renamed into place once the
        // metadata exists, so neither can exist without the other for long; Cleanup
        // removes a temp dir a crash leaves behind.
        let tmp = self.root.join("snapshots").join(temp_name());
        let mk = |p: &Path, mode: u32| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(p)
                .map_err(|e| io("create", p, e))
        };
        mk(&tmp, 0o700)?;
        mk(&tmp.join("fs"), 0o755)?;
        mk(&tmp.join("work"), 0o700)?;
        // The umask may have narrowed the mode; the root of a snapshot is always 0755.
        fs::set_permissions(
            tmp.join("fs"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| io("chmod", &tmp, e))?;
        let s = match self.meta.create(key, parent, kind, labels) {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, self.dir(s.id)) {
            let _ = self.meta.remove(key);
            let _ = fs::remove_dir_all(&tmp);
            return Err(io("rename snapshot into place", &self.dir(s.id), e));
        }
        Ok(self.mounts_of(&s))
    }
}

impl Snapshotter for OverlaySnapshotter {
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
            _ => disk_usage(&self.upper(s.id)),
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
        // Usage is measured once here, so it is cheap for committed snapshots later.
        let usage = disk_usage(&self.upper(s.id))?;
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

impl Rebase for OverlaySnapshotter {
    fn commit_onto(&self, name: &str, key: &str, parent: &str, labels: Labels) -> Result<()> {
        let s = self.meta.get(key)?;
        let usage = disk_usage(&self.upper(s.id))?;
        self.meta
            .commit_onto(key, name, Some(parent), &labels, usage)?;
        Ok(())
    }
}

impl Cleanup for OverlaySnapshotter {
    fn cleanup(&self) -> Result<()> {
        self.reaper
            .cleanup(&self.root.join("snapshots"), &self.meta.ids()?)
    }
}
