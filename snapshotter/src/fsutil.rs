//! Filesystem helpers the directory-based backends share: error mapping, disk usage, and
//! the temp-dir naming that lets Cleanup tell creations in flight from leftovers.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::Usage;
use crate::error::{Error, ErrorKind, Result};

/// An I/O error on `path` during `op`; a missing file is `NotFound`, anything else
/// `Internal`.
pub(crate) fn io(op: &str, path: &Path, e: std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::NotFound {
        ErrorKind::NotFound
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, format!("{op} {}", path.display())).with_source(e)
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
