//! Storage split from metadata, as containerd's snapshotters are: a backend is a small
//! [`Driver`] that manages the directories (or subvolumes) of snapshots named by id, and
//! [`MetaSnapshotter`] implements [`Snapshotter`], [`Cleanup`], [`Remote`] (from the
//! MetaStore's target index) and, for drivers whose layers are diffs, [`Rebase`] once,
//! over the shared [`MetaStore`].
//!
//! One creation, whatever the backend:
//!
//! ```text
//! prepare(key, parent)
//!   -> MetaStore::get(parent)            the parent's id (must be committed)
//!   -> Driver::create(tmp, parent id)    storage under a temp name (a copy, a subvolume,
//!                                        an empty upper dir)
//!   -> MetaStore::create(key, parent)    the id, in one atomic batch
//!   -> Driver::install(tmp, id)          rename into place
//!   -> Driver::mounts(snapshot)
//! ```
//!
//! A failure at any step undoes the steps before it, so storage never outlives a failed
//! creation for longer than a crash (which [`Cleanup`] then sweeps: temp names carry the
//! pid of the process that made them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::api::{Cleanup, Info, Kind, Labels, Mount, Rebase, Remote, Snapshotter, Usage};
use crate::meta::{MetaStore, Snapshot};
use crate::{Error, ErrorKind, Result};

/// The storage half of a backend. Every method works on storage named by a snapshot id
/// or a temp name; none touches metadata.
///
/// # Contract
/// - `create` leaves either complete storage under `tmp` or nothing.
/// - `install` is atomic (a rename); on error `tmp` is still there for `discard`.
/// - `remove` and `cleanup` never follow a path inside a snapshot (a container may have
///   changed it); they remove only direct children of the backend's own directory.
pub trait Driver: Send + Sync + 'static {
    /// Makes a new snapshot's storage under the temp name `tmp`; a driver that copies
    /// (native, btrfs) starts it from the committed snapshot `parent`.
    fn create(&self, tmp: &str, parent: Option<u64>, kind: Kind) -> Result<()>;

    /// Moves storage made by [`Driver::create`] from `tmp` to snapshot `id`.
    fn install(&self, tmp: &str, id: u64) -> Result<()>;

    /// Drops storage made by [`Driver::create`] that was never installed.
    fn discard(&self, tmp: &str);

    /// The mounts of an active snapshot or view.
    fn mounts(&self, s: &Snapshot) -> Vec<Mount>;

    /// The disk usage of an active snapshot's own layer (committed usage is measured
    /// once at commit and read from metadata after).
    fn usage(&self, s: &Snapshot) -> Result<Usage>;

    /// Whether commits need [`Driver::seal`]: the generic snapshotter then serialises
    /// them and checks, under that lock, that the snapshot is still the one sealed.
    fn seals_on_commit(&self) -> bool {
        false
    }

    /// Makes the storage of active snapshot `s` immutable, just before its metadata
    /// commits (btrfs flips the subvolume read-only).
    fn seal(&self, _s: &Snapshot) -> Result<()> {
        Ok(())
    }

    /// Undoes [`Driver::seal`] after a failed metadata commit.
    fn unseal(&self, _s: &Snapshot) {}

    /// Removes the storage of snapshot `id`, whose metadata is already gone.
    fn remove(&self, id: u64);

    /// Removes storage no snapshot refers to; `live` holds the ids that exist.
    fn cleanup(&self, live: &HashMap<u64, String>) -> Result<()>;
}

/// Drivers whose layers do not depend on their parent's contents (an overlay upper dir
/// is a diff): a snapshot prepared without a parent can be committed onto one, which is
/// the [`Rebase`] capability.
pub trait DiffDriver: Driver {}

/// A [`Snapshotter`] made of the shared [`MetaStore`] and a backend's [`Driver`].
pub struct MetaSnapshotter<D> {
    meta: MetaStore,
    driver: D,
    commit: Mutex<()>,
}

impl<D: Driver> MetaSnapshotter<D> {
    /// A snapshotter over `driver`, with its metadata in RocksDB at `meta_dir`.
    pub fn open(meta_dir: &Path, driver: D) -> Result<Self> {
        Ok(MetaSnapshotter {
            meta: MetaStore::open(meta_dir)?,
            driver,
            commit: Mutex::new(()),
        })
    }

    /// The backend's driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The metadata store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: &Labels,
    ) -> Result<Vec<Mount>> {
        // Cheap checks before possibly costly storage work (a full copy); MetaStore::create
        // stays the authority and repeats them atomically.
        if self.meta.get(key).is_ok() {
            return Err(Error::already_exists(format!(
                "snapshot {key:?} already exists"
            )));
        }
        let parent = parent.filter(|p| !p.is_empty());
        let parent_id = match parent {
            None => None,
            Some(p) => {
                let s = self.meta.get(p).map_err(|e| {
                    if e.is(ErrorKind::NotFound) {
                        Error::not_found(format!("parent snapshot {p:?} does not exist"))
                    } else {
                        e
                    }
                })?;
                if s.kind != Kind::Committed {
                    return Err(Error::invalid(format!(
                        "parent {p:?} is not a committed snapshot"
                    )));
                }
                Some(s.id)
            }
        };
        let tmp = crate::fsutil::temp_name();
        self.driver.create(&tmp, parent_id, kind)?;
        let undo_storage = |e: Error| {
            self.driver.discard(&tmp);
            e
        };
        let s = self
            .meta
            .create(key, parent, kind, labels)
            .map_err(undo_storage)?;
        let undo_all = |e: Error| {
            let _ = self.meta.remove(key);
            undo_storage(e)
        };
        // The parent may have been removed and its name reused while storage was made.
        if s.parent_ids.first().copied() != parent_id {
            return Err(undo_all(Error::new(
                ErrorKind::Aborted,
                format!(
                    "parent {:?} was replaced while {key:?} was created; retry",
                    parent.unwrap_or_default()
                ),
            )));
        }
        self.driver.install(&tmp, s.id).map_err(undo_all)?;
        Ok(self.driver.mounts(&s))
    }

    fn commit_to(
        &self,
        name: &str,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<()> {
        let s = self.meta.get(key)?;
        if s.kind != Kind::Active {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        // Measured once here (outside any lock: it walks the whole layer), so usage of a
        // committed snapshot is a metadata read.
        let usage = self.driver.usage(&s)?;
        let commit = || match parent {
            None => self.meta.commit(key, name, labels, usage),
            Some(p) => self.meta.commit_onto(key, name, Some(p), labels, usage),
        };
        if !self.driver.seals_on_commit() {
            commit()?;
            return Ok(());
        }
        let _c = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock, `key` still active with the same id means the storage is ours
        // to seal (and to unseal if the metadata commit fails).
        let now = self.meta.get(key)?;
        if now.kind != Kind::Active || now.id != s.id {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        self.driver.seal(&s)?;
        if let Err(e) = commit() {
            self.driver.unseal(&s);
            return Err(e);
        }
        Ok(())
    }
}

impl<D: Driver> Snapshotter for MetaSnapshotter<D> {
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
            _ => self.driver.usage(&s),
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let s = self.meta.get(key)?;
        if s.kind == Kind::Committed {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is committed: mount a view of it"
            )));
        }
        Ok(self.driver.mounts(&s))
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active, &labels)
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, &labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.commit_to(name, key, None, &labels)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let (id, _) = self.meta.remove(key)?;
        self.driver.remove(id);
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        self.meta.walk(filters, f)
    }
}

impl<D: DiffDriver> Rebase for MetaSnapshotter<D> {
    fn commit_onto(&self, name: &str, key: &str, parent: &str, labels: Labels) -> Result<()> {
        self.commit_to(name, key, Some(parent), &labels)
    }
}

impl<D: Driver> Cleanup for MetaSnapshotter<D> {
    fn cleanup(&self) -> Result<()> {
        self.driver.cleanup(&self.meta.ids()?)
    }
}

impl<D: Driver> Remote for MetaSnapshotter<D> {
    fn targets(&self, target: &str) -> Result<Vec<Info>> {
        self.meta.targets(target)
    }
}
