//! Who serves a lazy layer's FUSE mount. [`InProcess`] serves it from threads of the
//! calling process (tests, tools); the daemon uses a mounter that runs each layer's
//! server as a process of its own, so mounts outlive a restart or a `kill -9` of the
//! daemon (see the daemon's `lazy_server`). Either way the server is [`serve`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_proto::Digest;

use super::mount::LazyMount;
use super::reader::LayerReader;
use crate::estargz::{TocLimits, Tree, read};
use crate::remote::{BlobSource, RemoteBlob};
use crate::{Error, Result, Usage};

/// Everything a server needs to mount one lazy layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountSpec {
    /// The snapshot's `fs` dir, where the layer is mounted.
    pub mountpoint: PathBuf,
    /// The snapshot's `lazy` dir: `toc.json`, `cache/`, `stats.json`.
    pub lazy_dir: PathBuf,
    /// The image reference the blob is read through.
    pub reference: String,
    /// The blob.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// The verified TOC's digest (the saved TOC is checked against it again).
    pub toc_digest: String,
    /// Where the TOC starts in the blob.
    pub toc_offset: u64,
    /// When to start the background fetch after mounting (`None`: never), in ms.
    pub background_fetch_ms: Option<u64>,
}

impl MountSpec {
    /// The blob, as the [`BlobSource`] names it.
    pub fn blob(&self) -> Result<RemoteBlob> {
        Ok(RemoteBlob {
            reference: self.reference.clone(),
            digest: Digest::parse(&self.digest)
                .map_err(|e| Error::invalid(format!("mount spec digest: {e}")))?,
            size: self.size,
        })
    }

    /// The saved TOC, checked against its digest and parsed.
    pub fn tree(&self) -> Result<Tree> {
        let toc = self.lazy_dir.join("toc.json");
        let json = std::fs::read(&toc).map_err(|e| Error::io("read", &toc, e))?;
        if read::sha256(&json).to_string() != self.toc_digest {
            return Err(Error::data_loss(format!(
                "{} does not match its digest",
                toc.display()
            )));
        }
        Tree::from_json(&json, self.toc_offset, &TocLimits::default())
    }
}

/// A mounted lazy layer, however it is served.
pub trait MountedLayer: Send + Sync {
    /// Compressed bytes fetched from the registry so far.
    fn fetched_bytes(&self) -> u64;
    /// Whether every chunk is local.
    fn is_complete(&self) -> bool;
    /// What the layer holds (from its TOC), as its snapshot's usage.
    fn usage(&self) -> Usage;
    /// The reader, when served in this process.
    fn reader(&self) -> Option<Arc<LayerReader>> {
        None
    }
    /// Unmounts it (the layer is removed).
    fn unmount(self: Box<Self>) -> Result<()>;
    /// Lets go of it as the snapshotter closes: a mount served by this process has to
    /// go with it, one served by a process of its own stays.
    fn release(self: Box<Self>);
}

/// What a layer of tree `t` holds, as a snapshot's usage.
pub fn tree_usage(t: &Tree) -> Usage {
    Usage {
        size: t.content_bytes() as i64,
        inodes: t.nodes.len() as i64,
    }
}

/// Mounts lazy layers.
pub trait LayerMounter: Send + Sync {
    /// Mounts the layer `spec` names; its saved TOC is checked and parsed by whoever
    /// serves it (once: a TOC of a big layer takes a while to parse).
    fn mount(&self, spec: &MountSpec) -> Result<Box<dyn MountedLayer>>;
    /// The mount an earlier process left at `spec.mountpoint`, if it is still served.
    fn adopt(&self, _spec: &MountSpec) -> Option<Box<dyn MountedLayer>> {
        None
    }
}

/// Mounts `spec`'s layer from this process and starts its prefetch and, later, its
/// background fetch: the whole of a lazy layer's server.
pub fn serve(spec: &MountSpec, tree: Tree, blobs: Arc<dyn BlobSource>) -> Result<LazyMount> {
    let reader = Arc::new(LayerReader::new(
        tree,
        blobs,
        spec.blob()?,
        &spec.lazy_dir.join("cache"),
    )?);
    let m = LazyMount::mount(reader.clone(), &spec.mountpoint)?;
    // The prioritized files, off the mount: a read that comes first fetches its own
    // chunks, the prefetch skips what is cached by then. Then, later and below on-demand
    // reads, the rest of the blob.
    let background = spec.background_fetch_ms.map(Duration::from_millis);
    let spawned = std::thread::Builder::new()
        .name("lazy-fetch".into())
        .spawn(move || {
            match reader.prefetch() {
                Ok(n) if n > 0 => tracing::debug!(bytes = n, "prefetched"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "prefetch failed; reads fetch on demand"),
            }
            let Some(delay) = background else { return };
            std::thread::sleep(delay);
            match reader.fetch_all() {
                Ok(()) => tracing::info!(blob = %reader.blob().digest, "lazy layer is local"),
                Err(e) => tracing::debug!(error = %e, "background fetch ended"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no fetch thread: reads fetch on demand");
    }
    Ok(m)
}

/// Serves lazy layers from threads of this process, reading through `blobs`.
pub struct InProcess {
    blobs: Arc<dyn BlobSource>,
}

impl InProcess {
    /// A mounter reading through `blobs`.
    pub fn new(blobs: Arc<dyn BlobSource>) -> Self {
        InProcess { blobs }
    }
}

impl LayerMounter for InProcess {
    fn mount(&self, spec: &MountSpec) -> Result<Box<dyn MountedLayer>> {
        Ok(Box::new(serve(spec, spec.tree()?, self.blobs.clone())?))
    }
}

impl MountedLayer for LazyMount {
    fn fetched_bytes(&self) -> u64 {
        LazyMount::reader(self).fetched_bytes()
    }

    fn is_complete(&self) -> bool {
        LazyMount::reader(self).is_complete()
    }

    fn usage(&self) -> Usage {
        tree_usage(LazyMount::reader(self).tree())
    }

    fn reader(&self) -> Option<Arc<LayerReader>> {
        Some(LazyMount::reader(self).clone())
    }

    fn unmount(self: Box<Self>) -> Result<()> {
        LazyMount::unmount(*self)
    }

    fn release(self: Box<Self>) {
        if let Err(e) = LazyMount::unmount(*self) {
            tracing::warn!(error = %e, "unmount lazy layer");
        }
    }
}
