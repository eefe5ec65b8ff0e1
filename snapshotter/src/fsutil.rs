//! Filesystem helpers the directory-based backends share: error mapping, disk usage, and
//! the temp-dir naming that lets Cleanup tell creations in flight from leftovers.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use crate::api::Usage;
use crate::{Error, Result};

/// An I/O error on `path` during `op`, with the kind of strata's one I/O table.
pub(crate) fn io(op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(op, path, e)
}

/// Prefix of this process's temp dirs for snapshots being created.
pub(crate) fn temp_prefix() -> String {
    format!("new-{}-", std::process::id())
}

/// A fresh temp name (`new-<pid>-<n>`) for a snapshot being created; unique within the
/// process, and recognisably this process's so Cleanup leaves it alone.
pub(crate) fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}{}", temp_prefix(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Whether a directory entry named `name` under a backend's snapshot dir is live: a
/// known id, or a temp dir of this process.
pub(crate) fn is_live(name: &str, ids: &std::collections::HashMap<u64, String>) -> bool {
    name.parse::<u64>().is_ok_and(|id| ids.contains_key(&id)) || name.starts_with(&temp_prefix())
}

/// Bytes (by allocated blocks) and inodes under `dir`, not following symlinks or crossing
/// into other filesystems; hard links count once.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    let top = fs::symlink_metadata(dir).map_err(|e| io("stat", dir, e))?;
    let mut usage = Usage::default();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|e| io("read directory", &d, e))? {
            let entry = entry.map_err(|e| io("read directory", &d, e))?;
            let md = entry.metadata().map_err(|e| io("stat", &entry.path(), e))?;
            if md.dev() != top.dev() || !seen.insert(md.ino()) {
                continue;
            }
            usage.inodes += 1;
            usage.size += i64::try_from(md.blocks() * 512).unwrap_or(i64::MAX);
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Deletes removed snapshots' directories on a background thread, so Remove answers after
/// its metadata write and a rename (containerd's Remove likewise leaves the deletion to
/// its garbage collector). Directories still queued when the process stops are
/// `rm-<id>` leftovers that Cleanup removes.
pub(crate) struct Reaper {
    tx: Mutex<Option<mpsc::Sender<PathBuf>>>,
    pending: Arc<(Mutex<usize>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Reaper {
    pub(crate) fn new() -> Reaper {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let pending: Arc<(Mutex<usize>, Condvar)> = Arc::default();
        let p = pending.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-reaper".into())
            .spawn(move || {
                for dir in rx {
                    if let Err(e) = fs::remove_dir_all(&dir)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(dir = %dir.display(), error = %e, "snapshot directory left for cleanup");
                    }
                    let (n, cv) = &*p;
                    *n.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    cv.notify_all();
                }
            })
            .ok();
        Reaper {
            tx: Mutex::new(thread.as_ref().map(|_| tx)),
            pending,
            thread: Mutex::new(thread),
        }
    }

    /// Queues `dir` (already renamed out of the live namespace) for deletion; deletes it
    /// in place if the thread could not start.
    pub(crate) fn reap(&self, dir: PathBuf) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            *self.pending.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            if let Err(mpsc::SendError(dir)) = tx.send(dir) {
                *self.pending.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                let _ = fs::remove_dir_all(dir);
            }
        } else {
            let _ = fs::remove_dir_all(dir);
        }
    }

    /// Takes snapshot `id`'s directory out of `snaps` for deletion: renamed to `rm-<id>`
    /// first, so a half-removed tree is never taken for a live snapshot, then deleted off
    /// the request.
    pub(crate) fn retire(&self, snaps: &Path, id: u64) {
        let doomed = snaps.join(format!("rm-{id}"));
        match fs::rename(snaps.join(id.to_string()), &doomed) {
            Ok(()) => self.reap(doomed),
            Err(e) => tracing::warn!(error = %e, id, "snapshot directory left for cleanup"),
        }
    }

    /// Cleanup of a directory-per-snapshot backend: after the queue drains, removes every
    /// directory under `snaps` that is not live (see [`is_live`]). Only direct children
    /// are removed, by their own path (`remove_dir_all` does not follow symlinks), so
    /// nothing a container can change inside a snapshot is followed.
    pub(crate) fn cleanup(
        &self,
        snaps: &Path,
        ids: &std::collections::HashMap<u64, String>,
    ) -> Result<()> {
        self.drain();
        for entry in fs::read_dir(snaps).map_err(|e| io("read directory", snaps, e))? {
            let entry = entry.map_err(|e| io("read directory", snaps, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_live(&name, ids) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                match fs::remove_dir_all(entry.path()) {
                    // A concurrent Remove's reaper may get there first.
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("remove", &entry.path(), e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Waits until every queued directory is gone (Cleanup must not race the thread).
    pub(crate) fn drain(&self) {
        let (n, cv) = &*self.pending;
        let mut g = n.lock().unwrap_or_else(|e| e.into_inner());
        while *g > 0 {
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the queue is done.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The `<root>/snapshots/` directory of a directory-per-snapshot driver (overlayfs,
/// native): storage is made under a temp name, renamed to the snapshot's id, and retired
/// through a [`Reaper`]. What [`Driver`](crate::Driver) asks of such a backend, once.
pub(crate) struct SnapshotDirs {
    dir: PathBuf,
    reaper: Reaper,
}

impl SnapshotDirs {
    /// Opens (creating, mode 0700) `<root>/snapshots`.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = root.join("snapshots");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("create", &dir, e))?;
        Ok(SnapshotDirs {
            dir,
            reaper: Reaper::new(),
        })
    }

    /// The directory of snapshot `id`.
    pub(crate) fn of(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The path of temp storage `tmp`.
    pub(crate) fn temp(&self, tmp: &str) -> PathBuf {
        self.dir.join(tmp)
    }

    /// Renames temp storage into place as snapshot `id`.
    pub(crate) fn install(&self, tmp: &str, id: u64) -> Result<()> {
        fs::rename(self.temp(tmp), self.of(id))
            .map_err(|e| io("rename snapshot into place", &self.of(id), e))
    }

    /// Deletes temp storage that never got installed.
    pub(crate) fn discard(&self, tmp: &str) {
        let _ = fs::remove_dir_all(self.temp(tmp));
    }

    /// Retires snapshot `id`'s directory (see [`Reaper::retire`]).
    pub(crate) fn remove(&self, id: u64) {
        self.reaper.retire(&self.dir, id);
    }

    /// Removes directories no live snapshot owns (see [`Reaper::cleanup`]).
    pub(crate) fn cleanup(&self, live: &std::collections::HashMap<u64, String>) -> Result<()> {
        self.reaper.cleanup(&self.dir, live)
    }
}
