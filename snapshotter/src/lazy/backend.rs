//! The `lazy` backend: overlayfs snapshots whose committed layers may be lazy, each a
//! read-only FUSE mount of an eStargz layer in place of an unpacked upper dir.
//!
//! A layer becomes lazy through containerd's remote-snapshot handshake: a Prepare of
//! `extract-… <chainID>` carrying `containerd.io/snapshot.ref=<chainID>`, the layer's
//! `containerd.io/snapshot/stargz/toc.digest` and where the blob is — containerd's
//! `containerd.io/snapshot/cri.{image-ref,layer-digest}` or stargz's
//! `containerd.io/snapshot/remote/stargz.{reference,digest}` (both accepted, as
//! stargz-snapshotter does). The backend fetches and verifies the TOC, makes the
//! snapshot's storage, mounts the layer on its `fs` dir, commits it as the chainID and
//! answers `AlreadyExists`: the caller skips downloading and unpacking that layer. A layer
//! it cannot serve lazily (no TOC digest, not eStargz, a TOC refused) gets the ordinary
//! Prepare, so an image of mixed layers works.
//!
//! Layout, beside the overlay one:
//!
//! ```text
//! <root>/snapshots/<id>/fs            the FUSE mount of a lazy layer
//! <root>/snapshots/<id>/lazy/toc.json the verified TOC (to mount it again on restart)
//! <root>/snapshots/<id>/lazy/cache/   verified chunks, by digest
//! ```
//!
//! Active snapshots and views are overlay mounts whose lower dirs are those `fs` dirs,
//! so a container's writes land in its own upper dir and never reach FUSE.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_proto::Digest;

use super::ahead::{Fetched, TocsAhead};
use super::mounter::{InProcess, LayerMounter, MountSpec, MountedLayer};
use super::reader::LayerReader;
use crate::api::{Cleanup, Info, Kind, Labels, Mount, Rebase, Remote, Snapshotter, Usage};
use crate::driver::{DiffDriver, Driver, MetaSnapshotter};
use crate::estargz::{TOC_DIGEST_ANNOTATION, TocLimits, check_toc_digest, fetch_toc_json};
use crate::meta::Snapshot;
use crate::overlay::{OverlayDriver, OverlayOptions};
use crate::remote::{BlobSource, RemoteBlob, SNAPSHOT_REF_LABEL};
use crate::{Error, ErrorKind, Result};

/// Label containerd's CRI (and `ctr-remote --use-containerd-labels`) puts on a layer's
/// Prepare: the image reference.
pub const CRI_IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer's blob digest, in containerd's labels.
pub const CRI_LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// The image reference, in stargz's labels (`ctr-remote images rpull`).
pub const STARGZ_REFERENCE_LABEL: &str = "containerd.io/snapshot/remote/stargz.reference";
/// The layer's blob digest, in stargz's labels.
pub const STARGZ_DIGEST_LABEL: &str = "containerd.io/snapshot/remote/stargz.digest";
/// Marks a snapshot a remote snapshotter committed itself (stargz's label and value).
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";
/// The blob size of a lazy layer, recorded so a restart mounts it again without asking.
pub const LAZY_SIZE_LABEL: &str = "strata.io/lazy.blob-size";
/// Where a lazy layer's TOC starts, recorded for the same reason.
pub const LAZY_TOC_OFFSET_LABEL: &str = "strata.io/lazy.toc-offset";

/// A layer a Prepare's labels name for lazy serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LazyLayer {
    /// The chainID it is committed as.
    pub target: String,
    /// The image reference (its registry and repository).
    pub reference: String,
    /// The blob.
    pub digest: Digest,
    /// The TOC's digest, from the layer's descriptor.
    pub toc_digest: Digest,
}

impl LazyLayer {
    /// The layer named by `labels`, if they name one completely; an error for labels that
    /// name one with a malformed digest.
    pub fn from_labels(labels: &Labels) -> Result<Option<LazyLayer>> {
        let (Some(target), Some(toc)) = (
            labels.get(SNAPSHOT_REF_LABEL),
            labels.get(TOC_DIGEST_ANNOTATION),
        ) else {
            return Ok(None);
        };
        let pair = |r: &str, d: &str| Some((labels.get(r)?, labels.get(d)?));
        let Some((reference, digest)) = pair(CRI_IMAGE_REF_LABEL, CRI_LAYER_DIGEST_LABEL)
            .or_else(|| pair(STARGZ_REFERENCE_LABEL, STARGZ_DIGEST_LABEL))
        else {
            return Ok(None);
        };
        let parse = |what: &str, s: &str| {
            Digest::parse(s).map_err(|e| Error::invalid(format!("label {what}={s:?}: {e}")))
        };
        Ok(Some(LazyLayer {
            target: target.clone(),
            reference: reference.clone(),
            digest: parse("layer digest", digest)?,
            toc_digest: parse(TOC_DIGEST_ANNOTATION, toc)?,
        }))
    }
}

/// The overlay driver, with lazy layers mounted on some snapshots' `fs` dirs.
pub struct LazyDriver {
    overlay: OverlayDriver,
    snapshots: PathBuf,
    mounts: Mutex<HashMap<u64, Box<dyn MountedLayer>>>,
    /// Usage of lazy snapshots being committed (measured from the TOC, not the mount).
    usage: Mutex<HashMap<u64, Usage>>,
}

impl LazyDriver {
    fn lazy_dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string()).join("lazy")
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string()).join("fs")
    }

    fn attach(&self, id: u64, m: Box<dyn MountedLayer>) {
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, m);
    }

    fn detach(&self, id: u64) {
        let m = self
            .mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(m) = m
            && let Err(e) = m.unmount()
        {
            tracing::warn!(id, error = %e, "unmount lazy layer");
        }
    }

    /// The reader of lazy snapshot `id`, if it is mounted and served in this process.
    pub fn reader(&self, id: u64) -> Option<Arc<LayerReader>> {
        let m = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id).and_then(|m| m.reader())
    }

    /// Compressed bytes lazy snapshot `id` fetched, and whether it is all local.
    pub fn fetch_state(&self, id: u64) -> Option<(u64, bool)> {
        let m = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id).map(|m| (m.fetched_bytes(), m.is_complete()))
    }

    /// Usage of lazy snapshots being committed, from their TOCs.
    fn toc_usage(&self, id: u64) -> Option<Usage> {
        let m = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id).copied()
    }

    /// How many lazy layers are mounted.
    pub fn mounted(&self) -> usize {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Driver for LazyDriver {
    fn create(&self, tmp: &str, parent: Option<u64>, kind: Kind) -> Result<()> {
        self.overlay.create(tmp, parent, kind)
    }

    fn install(&self, tmp: &str, id: u64) -> Result<()> {
        self.overlay.install(tmp, id)
    }

    fn discard(&self, tmp: &str) {
        self.overlay.discard(tmp);
    }

    fn mounts(&self, s: &Snapshot) -> Vec<Mount> {
        self.overlay.mounts(s)
    }

    fn usage(&self, s: &Snapshot) -> Result<Usage> {
        // A lazy layer's size is its TOC's, not a walk of the FUSE mount.
        if let Some(u) = self.toc_usage(s.id) {
            return Ok(u);
        }
        self.overlay.usage(s)
    }

    fn remove(&self, id: u64) {
        // Unmounted first: the directory is then deleted without descending into FUSE.
        self.detach(id);
        self.overlay.remove(id);
    }

    fn cleanup(&self, live: &HashMap<u64, String>) -> Result<()> {
        self.overlay.cleanup(live)
    }
}

impl DiffDriver for LazyDriver {}

/// Options of a [`LazySnapshotter`].
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// The overlay mounts' options.
    pub overlay: OverlayOptions,
    /// When to start bringing a mounted layer's whole blob local, after its prefetch;
    /// `None`: never (every read stays on demand).
    pub background_fetch: Option<Duration>,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            overlay: OverlayOptions::default(),
            // Late enough that a container's start reads come first.
            background_fetch: Some(Duration::from_secs(5)),
        }
    }
}

/// The lazy snapshotter: [`MetaSnapshotter`] over a [`LazyDriver`], with lazy layers
/// made in the remote-snapshot handshake (see the module docs).
pub struct LazySnapshotter {
    inner: Arc<MetaSnapshotter<LazyDriver>>,
    blobs: Arc<dyn BlobSource>,
    mounter: Arc<dyn LayerMounter>,
    limits: TocLimits,
    background_fetch: Option<Duration>,
    ahead: TocsAhead,
}

impl LazySnapshotter {
    /// Opens (creating) a lazy snapshotter rooted at `root` that reads remote blobs
    /// through `blobs` and serves its mounts from this process ([`InProcess`]), and
    /// mounts every lazy layer it committed before.
    pub fn open(root: &Path, opts: LazyOptions, blobs: Arc<dyn BlobSource>) -> Result<Self> {
        let mounter = Arc::new(InProcess::new(blobs.clone()));
        Self::open_with(root, opts, blobs, mounter)
    }

    /// [`LazySnapshotter::open`] with the mounts served by `mounter`; mounts it left
    /// that are still served are adopted, not mounted again.
    pub fn open_with(
        root: &Path,
        opts: LazyOptions,
        blobs: Arc<dyn BlobSource>,
        mounter: Arc<dyn LayerMounter>,
    ) -> Result<Self> {
        let snapshots = root.join("snapshots");
        unmount_stale(&snapshots);
        let driver = LazyDriver {
            overlay: OverlayDriver::open(root, opts.overlay)?,
            snapshots,
            mounts: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        };
        let inner = Arc::new(MetaSnapshotter::open(&root.join("metadata"), driver)?);
        let s = LazySnapshotter {
            inner,
            mounter,
            limits: TocLimits::default(),
            background_fetch: opts.background_fetch,
            ahead: TocsAhead::new(blobs.clone(), TocLimits::default()),
            blobs,
        };
        s.remount();
        Ok(s)
    }

    /// The metadata snapshotter underneath (for the [`Cleanup`], [`Rebase`] and
    /// [`Remote`] capabilities, and the driver's counters).
    pub fn inner(&self) -> &Arc<MetaSnapshotter<LazyDriver>> {
        &self.inner
    }

    /// Mounts again every committed lazy layer, from its saved TOC.
    fn remount(&self) {
        let mut lazy = Vec::new();
        let walked = self.inner.walk(&["kind==committed".to_owned()], &mut |i| {
            if i.labels.contains_key(LAZY_SIZE_LABEL) {
                lazy.push(i);
            }
            Ok(())
        });
        if let Err(e) = walked {
            tracing::error!(error = %e, "list lazy layers to mount");
        }
        for info in lazy {
            if let Err(e) = self.remount_one(&info) {
                tracing::error!(snapshot = %info.name, error = %e, "lazy layer not mounted again");
            }
        }
    }

    fn remount_one(&self, info: &Info) -> Result<()> {
        let mut labels = info.labels.clone();
        labels.insert(SNAPSHOT_REF_LABEL.into(), info.name.clone());
        let layer = LazyLayer::from_labels(&labels)?
            .ok_or_else(|| Error::invalid("labels no longer name the layer"))?;
        let number = |k: &str| -> Result<u64> {
            labels
                .get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::invalid(format!("label {k} missing or not a number")))
        };
        let size = number(LAZY_SIZE_LABEL)?;
        let toc_offset = number(LAZY_TOC_OFFSET_LABEL)?;
        let s = self.inner.meta().get(&info.name)?;
        let spec = self.spec(s.id, &layer, size, toc_offset);
        if let Some(m) = self.mounter.adopt(&spec) {
            tracing::info!(snapshot = %info.name, "lazy layer still served");
            self.inner.driver().attach(s.id, m);
            return Ok(());
        }
        let m = self.mounter.mount(&spec)?;
        self.inner.driver().attach(s.id, m);
        Ok(())
    }

    fn spec(&self, id: u64, layer: &LazyLayer, size: u64, toc_offset: u64) -> MountSpec {
        let d = self.inner.driver();
        MountSpec {
            mountpoint: d.fs_dir(id),
            lazy_dir: d.lazy_dir(id),
            reference: layer.reference.clone(),
            digest: layer.digest.to_string(),
            size,
            toc_digest: layer.toc_digest.to_string(),
            toc_offset,
            background_fetch_ms: self.background_fetch.map(|d| d.as_millis() as u64),
        }
    }

    /// Serves `layer` lazily as a committed snapshot on `parent`; the caller answers
    /// `AlreadyExists`.
    fn make_lazy(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
        layer: &LazyLayer,
    ) -> Result<()> {
        let t = std::time::Instant::now();
        self.ahead.start(&layer.reference, &layer.digest, labels);
        let fetched = match self.ahead.take(&layer.digest) {
            Some(Ok(f)) => f,
            // Fetched again here: a failure ahead may have been passing.
            _ => {
                let size = self.blobs.blob_size(&layer.reference, &layer.digest)?;
                let blob = RemoteBlob {
                    reference: layer.reference.clone(),
                    digest: layer.digest.clone(),
                    size,
                };
                let (json, toc_offset) = fetch_toc_json(&*self.blobs, &blob, &self.limits)?;
                Fetched {
                    size,
                    json,
                    toc_offset,
                }
            }
        };
        let Fetched {
            size,
            json,
            toc_offset,
        } = fetched;
        let blob = RemoteBlob {
            reference: layer.reference.clone(),
            digest: layer.digest.clone(),
            size,
        };
        check_toc_digest(&json, &blob, &layer.toc_digest)?;
        // The TOC's structure is checked by the layer's server as it parses it; a TOC
        // it refuses fails the mount, and the layer is unpacked in full.
        self.inner.prepare(key, parent, labels.clone())?;
        let made = (|| {
            let id = self.inner.meta().get(key)?.id;
            let dir = self.inner.driver().lazy_dir(id);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
            let toc = dir.join("toc.json");
            std::fs::write(&toc, &json).map_err(|e| Error::io("write", &toc, e))?;
            drop(json);
            let spec = self.spec(id, layer, size, toc_offset);
            let wrote = t.elapsed();
            let m = self.mounter.mount(&spec)?;
            tracing::debug!(layer = %layer.digest, ?wrote, took = ?t.elapsed(), "lazy layer mounted");
            let usage = m.usage();
            let d = self.inner.driver();
            d.attach(id, m);
            d.usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, usage);
            let mut committed = labels.clone();
            committed.insert(REMOTE_LABEL.into(), "remote snapshot".into());
            committed.insert(LAZY_SIZE_LABEL.into(), size.to_string());
            committed.insert(LAZY_TOC_OFFSET_LABEL.into(), toc_offset.to_string());
            let r = self.inner.commit(&layer.target, key, committed);
            d.usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            r
        })();
        if let Err(e) = made {
            // Removing the active snapshot unmounts it too: nothing half-made stays.
            let _ = self.inner.remove(key);
            return Err(e);
        }
        Ok(())
    }
}

impl Snapshotter for LazySnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.inner.stat(key)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.inner.update(info, fieldpaths)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.inner.usage(key)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.inner.mounts(key)
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let layer = match LazyLayer::from_labels(&labels) {
            Ok(Some(l)) => l,
            Ok(None) => return self.inner.prepare(key, parent, labels),
            Err(e) => {
                tracing::warn!(key, error = %e, "layer unpacked in full");
                return self.inner.prepare(key, parent, labels);
            }
        };
        match self.make_lazy(key, parent, &labels, &layer) {
            Ok(()) => Err(Error::already_exists(format!(
                "target snapshot {:?} is a lazy layer",
                layer.target
            ))),
            Err(e) if e.is(ErrorKind::AlreadyExists) => Err(e),
            Err(e) => {
                tracing::warn!(
                    layer = %layer.digest,
                    error = %e,
                    "layer cannot be served lazily; unpacked in full"
                );
                self.inner.prepare(key, parent, labels)
            }
        }
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.inner.view(key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.inner.commit(name, key, labels)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.inner.remove(key)
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        self.inner.walk(filters, f)
    }
}

impl Rebase for LazySnapshotter {
    fn commit_onto(&self, name: &str, key: &str, parent: &str, labels: Labels) -> Result<()> {
        self.inner.commit_onto(name, key, parent, labels)
    }
}

impl Cleanup for LazySnapshotter {
    fn cleanup(&self) -> Result<()> {
        self.inner.cleanup()
    }
}

impl Remote for LazySnapshotter {
    fn targets(&self, target: &str) -> Result<Vec<Info>> {
        self.inner.targets(target)
    }
}

impl Drop for LazySnapshotter {
    fn drop(&mut self) {
        let mounts = std::mem::take(
            &mut *self
                .inner
                .driver()
                .mounts
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (_, m) in mounts {
            m.release();
        }
    }
}

/// Detaches FUSE mounts under `snapshots` whose server is gone (every access fails with
/// ENOTCONN), so cleanup and remounting find plain dirs. Mounts still served stay.
fn unmount_stale(snapshots: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(prefix) = snapshots.to_str() else {
        return;
    };
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        if fstype.starts_with("fuse") && point.starts_with(prefix) {
            let point = point.replace("\\040", " ");
            if std::fs::metadata(&point).is_ok() {
                continue;
            }
            if let Err(e) = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %point, error = %e, "detach stale lazy mount");
            }
        }
    }
}
