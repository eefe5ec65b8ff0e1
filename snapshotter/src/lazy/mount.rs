//! Mounting a lazy layer: its [`LazyFs`] served by worker threads of this process at a
//! directory, unmounted when the [`LazyMount`] is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use super::fs::LazyFs;
use super::reader::LayerReader;
use crate::{Error, Result};

/// Worker threads per mount: reads wait on the network, so a few run at once.
const THREADS: usize = 4;

/// A mounted lazy layer.
pub struct LazyMount {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    reader: Arc<LayerReader>,
}

impl std::fmt::Debug for LazyMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyMount")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LazyMount {
    /// Mounts `reader`'s layer read-only at `at` (an existing directory). Every user may
    /// read it, with the modes in the TOC checked by the kernel (`default_permissions`),
    /// as a container's processes need.
    pub fn mount(reader: Arc<LayerReader>, at: &Path) -> Result<Self> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName(format!("strata-lazy:{}", reader.blob().digest)),
            MountOption::Subtype("strata".into()),
            MountOption::DefaultPermissions,
            MountOption::Dev,
            MountOption::Suid,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        let session = Session::new(LazyFs::new(reader.clone()), at, &config)
            .map_err(|e| Error::io("mount lazy layer at", at, e))?
            .spawn()
            .map_err(|e| Error::io_op("start lazy layer's FUSE threads", e))?;
        Ok(LazyMount {
            session: Some(session),
            path: at.to_path_buf(),
            reader,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layer's reader (its counters, its prefetch).
    pub fn reader(&self) -> &Arc<LayerReader> {
        &self.reader
    }

    /// Unmounts and waits for the FUSE threads to end.
    pub fn unmount(mut self) -> Result<()> {
        self.stop()
    }

    /// Serves until someone else unmounts it (a lazy layer's own server process).
    pub fn wait(mut self) -> Result<()> {
        let r = match self.session.take() {
            Some(s) => s
                .join()
                .map_err(|e| Error::io("serve lazy layer at", &self.path, e)),
            None => Ok(()),
        };
        self.reader.stop();
        r
    }

    fn stop(&mut self) -> Result<()> {
        self.reader.stop();
        match self.session.take() {
            Some(s) => s
                .umount_and_join()
                .map_err(|e| Error::io("unmount lazy layer at", &self.path, e)),
            None => Ok(()),
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount lazy layer");
        }
    }
}
