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

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::Result;
use crate::api::{Kind, Mount, Usage};
use crate::driver::{DiffDriver, Driver, MetaSnapshotter};
pub use crate::fsutil::disk_usage;
use crate::fsutil::{SnapshotDirs, io};
use crate::meta::Snapshot;

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

/// The overlayfs snapshotter: the overlay [`Driver`] under the shared metadata.
pub type OverlaySnapshotter = MetaSnapshotter<OverlayDriver>;

impl OverlaySnapshotter {
    /// Opens (creating) an overlay snapshotter rooted at `root`.
    pub fn new(root: &Path, opts: OverlayOptions) -> Result<Self> {
        MetaSnapshotter::open(&root.join("metadata"), OverlayDriver::open(root, opts)?)
    }
}

/// The storage of the overlayfs backend: an upper and a work dir per snapshot.
pub struct OverlayDriver {
    dirs: SnapshotDirs,
    opts: OverlayOptions,
}

impl OverlayDriver {
    /// The driver of snapshots under `<root>/snapshots`.
    pub fn open(root: &Path, opts: OverlayOptions) -> Result<Self> {
        Ok(OverlayDriver {
            dirs: SnapshotDirs::open(root)?,
            opts,
        })
    }

    fn upper(&self, id: u64) -> PathBuf {
        self.dirs.of(id).join("fs")
    }
}

impl Driver for OverlayDriver {
    fn create(&self, tmp: &str, _parent: Option<u64>, _kind: Kind) -> Result<()> {
        let tmp = self.dirs.temp(tmp);
        let mk = |p: &Path, mode: u32| {
            fs::DirBuilder::new()
                .mode(mode)
                .create(p)
                .map_err(|e| io("create", p, e))
        };
        mk(&tmp, 0o700)?;
        let made = mk(&tmp.join("fs"), 0o755)
            .and_then(|()| mk(&tmp.join("work"), 0o700))
            .and_then(|()| {
                // The umask may have narrowed the mode; the root of a snapshot is always
                // 0755.
                fs::set_permissions(
                    tmp.join("fs"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .map_err(|e| io("chmod", &tmp, e))
            });
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
                    options.push(format!("workdir={}", path(self.dirs.of(s.id).join("work"))));
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

    fn usage(&self, s: &Snapshot) -> Result<Usage> {
        disk_usage(&self.upper(s.id))
    }

    fn remove(&self, id: u64) {
        self.dirs.remove(id);
    }

    fn cleanup(&self, live: &HashMap<u64, String>) -> Result<()> {
        self.dirs.cleanup(live)
    }
}

/// An upper dir is a diff: layers can be prepared without a parent and chained at commit.
impl DiffDriver for OverlayDriver {}
