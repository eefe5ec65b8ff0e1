//! Unpacking an image's layers from the content store into a snapshotter, committed under
//! their chainIDs.
//!
//! With a [`Rebase`]-capable backend (overlayfs) every missing layer is prepared without a
//! parent and extracted at the same time as the others (an upper dir does not depend on
//! its parents' contents), then committed in chain order onto its parent. Otherwise layers
//! go one after the other, each prepared on the previous chainID. A layer whose chainID is
//! already committed is skipped. Each extraction is verified against the config's
//! diff_id and synced once (`syncfs`) before its commit; a failed layer's active snapshot
//! is removed, so nothing half-extracted is ever committed.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};
use strata_content::{Provider, ReadAt, Scope};
use strata_proto::Digest;
use strata_snapshotter::mount::{mount_all, unmount_all};
use strata_snapshotter::{Labels, Mount, Rebase, Snapshotter};

use crate::apply::apply_layer_unhashed;
use crate::{Error, Result, ResultExt};
use crate::{Limits, WhiteoutMode, open_layer};

pub use strata_snapshotter::service::{OWNER_LABEL, SNAPSHOT_REF_LABEL};

/// The chainIDs of a stack of diff_ids: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])` (OCI image spec).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = Sha256::digest(format!("{prev} {d}").as_bytes());
                Digest::parse(&format!("sha256:{}", hex::encode(h)))
                    .expect("a sha256 digest is valid")
            }
        };
        out.push(next);
    }
    out
}

/// One layer: its blob in the content store and the diff_id it must extract to.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Media type of the blob (selects the decompressor).
    pub media_type: String,
    /// The blob.
    pub digest: Digest,
    /// The uncompressed tar's digest, from the image config.
    pub diff_id: Digest,
}

/// What happened to one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnpackEvent {
    /// Extraction of layer `index` started.
    Started {
        /// Layer index (bottom is 0).
        index: usize,
    },
    /// Layer `index` is committed (or was already) as `chain_id`.
    Done {
        /// Layer index.
        index: usize,
        /// Its chainID.
        chain_id: Digest,
        /// Uncompressed bytes extracted (0 when skipped).
        bytes: u64,
        /// Whether the chainID was already there.
        skipped: bool,
    },
}

/// Where and how to unpack.
pub struct Unpacker<'a> {
    /// The content store holding the layer blobs.
    pub store: &'a dyn Provider,
    /// The scope the blobs are visible in.
    pub scope: &'a Scope,
    /// The target snapshotter.
    pub snapshotter: &'a dyn Snapshotter,
    /// Its Rebase capability, when it has one (enables parallel extraction).
    pub rebase: Option<&'a (dyn Rebase + Send + Sync)>,
    /// How whiteouts are written into a directory reached without a mount: overlay upper
    /// dirs take overlay whiteouts, full-copy snapshots take deletions. Through a mount
    /// (an overlay with lower layers), deletions are always used.
    pub whiteouts: WhiteoutMode,
    /// Bounds for hostile layers.
    pub limits: Limits,
    /// Layers extracted at once (with Rebase).
    pub concurrency: usize,
    /// Labels put on every committed layer besides strata's own.
    pub labels: Labels,
    /// The strata namespace the snapshots belong to ([`OWNER_LABEL`]).
    pub owner: String,
}

/// Where extraction reads a layer's compressed bytes.
pub trait LayerSource: Sync {
    /// Opens layer `i`'s blob from its first byte.
    fn open(&self, i: usize, layer: &Layer) -> Result<Box<dyn Read + Send + '_>>;

    /// Waits until layer `i`'s blob is committed and verified: a layer read while it
    /// downloads is committed only after that.
    fn verified(&self, i: usize, layer: &Layer) -> Result<()>;
}

/// A [`ReadAt`] read from start to end.
struct ReadAtReader {
    r: Box<dyn ReadAt>,
    pos: u64,
}

impl Read for ReadAtReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Layer blobs already in the content store.
struct StoreSource<'a> {
    store: &'a dyn Provider,
    scope: &'a Scope,
}

impl LayerSource for StoreSource<'_> {
    fn open(&self, i: usize, layer: &Layer) -> Result<Box<dyn Read + Send + '_>> {
        self.store
            .info(self.scope, &layer.digest)
            .with_context(|| format!("layer {i} blob"))?;
        let blob = self
            .store
            .reader(self.scope, &layer.digest)
            .with_context(|| format!("open layer {i} blob"))?;
        Ok(Box::new(ReadAtReader { r: blob, pos: 0 }))
    }

    fn verified(&self, _: usize, _: &Layer) -> Result<()> {
        Ok(())
    }
}

/// An active snapshot being extracted, removed on drop unless committed.
struct Active<'a> {
    sn: &'a dyn Snapshotter,
    key: String,
    committed: bool,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = self.sn.remove(&self.key)
        {
            tracing::warn!(key = %self.key, error = ?e, "remove failed extraction snapshot");
        }
    }
}

/// An extracted, not yet committed layer and its uncompressed size.
/// `None`: a detached extraction met an entry that needs the layers below (see
/// [`WhiteoutMode::OverlayDetached`]); the layer must be extracted again over them.
type Extracted<'a> = Result<Option<(Active<'a>, u64)>>;

/// Prefix of the keys of extraction snapshots: `strata/extract/<pid>-<time>-<n>/<chainID>`.
pub const EXTRACT_PREFIX: &str = "strata/extract/";

/// The pid of the process that made the extraction snapshot `key`, if it is one.
pub fn extraction_pid(key: &str) -> Option<u32> {
    key.strip_prefix(EXTRACT_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

pub(crate) fn unique() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory the mounts can be written through: the source of a lone bind mount, or a
/// temporary mount point holding them.
struct Target {
    dir: PathBuf,
    mounted: Option<tempfile::TempDir>,
}

impl Target {
    fn new(mounts: &[Mount]) -> Result<Target> {
        if let [m] = mounts
            && (m.r#type == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind"))
            && !m.options.iter().any(|o| o == "ro")
        {
            return Ok(Target {
                dir: PathBuf::from(&m.source),
                mounted: None,
            });
        }
        let tmp = tempfile::Builder::new()
            .prefix("strata-unpack-")
            .tempdir()
            .map_err(|e| Error::internal("create a mount point for unpacking", e))?;
        mount_all(mounts, tmp.path()).context("mount layer")?;
        Ok(Target {
            dir: tmp.path().to_owned(),
            mounted: Some(tmp),
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(t) = &self.mounted
            && let Err(e) = unmount_all(t.path())
        {
            tracing::warn!(error = ?e, "unmount unpack target");
        }
    }
}

/// Tar bytes between background `syncfs` calls while a layer extracts.
const FLUSH_EVERY: u64 = 64 << 20;

/// Counts the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    written: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Runs `extract` with a thread that syncs the filesystem of `dir` behind it, every
/// [`FLUSH_EVERY`] bytes it reports. The kernel starts writeback only at a tenth or so
/// of memory, so without this a layer's whole data waits for its final `syncfs`; with
/// it, the disk writes while the CPU extracts, and the final `syncfs` is short.
fn with_flusher<T>(dir: &Path, extract: impl FnOnce(&AtomicU64) -> T) -> T {
    let written = AtomicU64::new(0);
    let done = Mutex::new(false);
    let wake = std::sync::Condvar::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut flushed = 0;
            let mut stop = done.lock().unwrap_or_else(|e| e.into_inner());
            while !*stop {
                stop = wake
                    .wait_timeout(stop, std::time::Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                let w = written.load(Ordering::Relaxed);
                if !*stop && w - flushed >= FLUSH_EVERY {
                    drop(stop);
                    // Best effort: the final syncfs reports errors.
                    let _ = syncfs(dir);
                    flushed = w;
                    stop = done.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
        });
        let r = extract(&written);
        *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        r
    })
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::internal("open layer dir to sync", e))?;
    // SAFETY: syncfs takes a valid open descriptor, which `f` owns for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::internal("syncfs", std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Unpacker<'_> {
    fn commit_labels(&self, chain: &Digest) -> Labels {
        let mut l = self.labels.clone();
        l.insert(SNAPSHOT_REF_LABEL.into(), chain.to_string());
        l.insert(OWNER_LABEL.into(), self.owner.clone());
        l
    }

    fn is_committed(&self, chain: &Digest) -> bool {
        self.snapshotter
            .stat(&chain.to_string())
            .is_ok_and(|i| i.kind == strata_snapshotter::Kind::Committed)
    }

    /// Prepares `key` on `parent` and extracts layer `i` into it; returns the active
    /// snapshot (not yet committed) and the uncompressed size.
    fn extract(
        &self,
        src: &dyn LayerSource,
        i: usize,
        layer: &Layer,
        chain: &Digest,
        parent: Option<&str>,
        detached: bool,
    ) -> Extracted<'_> {
        let key = format!("{EXTRACT_PREFIX}{}/{chain}", unique());
        let mut labels = Labels::new();
        labels.insert(OWNER_LABEL.into(), self.owner.clone());
        let mounts = self
            .snapshotter
            .prepare(&key, parent, labels)
            .with_context(|| format!("prepare layer {i}"))?;
        let active = Active {
            sn: self.snapshotter,
            key,
            committed: false,
        };
        let started = std::time::Instant::now();
        let cpu = crate::readahead::thread_cpu();
        let blob = src.open(i, layer)?;
        let target = Target::new(&mounts)?;
        let tar = open_layer(
            Some(&layer.media_type),
            BufReader::with_capacity(1 << 20, blob),
            &self.limits,
        )
        .map_err(|e| Error::caused_by(format!("unpack layer {i}"), e))?;
        // Through a mount the filesystem makes its own whiteouts from deletions.
        let mode = if target.mounted.is_some() {
            WhiteoutMode::Delete
        } else if detached && self.whiteouts == WhiteoutMode::Overlay {
            WhiteoutMode::OverlayDetached
        } else {
            self.whiteouts
        };
        // The diff_id is hashed on the inflating thread, off the one creating files.
        let (applied, diff_id) = with_flusher(&target.dir, |written| {
            crate::readahead::read_ahead_hashed(tar, |r| {
                let counted = Counted { inner: r, written };
                apply_layer_unhashed(counted, &target.dir, mode, &self.limits)
            })
        });
        let applied = applied.map(|mut stats| {
            stats.diff_id = diff_id;
            stats
        });
        // A failed download explains a failed extraction better than the read error does.
        src.verified(i, layer)?;
        if let Err(crate::ApplyError::NeedsLowerLayers { path, reason }) = &applied {
            tracing::debug!(layer = i, entry = %path, reason, "layer needs its parents; applying it again over them");
            return Ok(None);
        }
        let stats = applied.map_err(|e| Error::caused_by(format!("unpack layer {i}"), e))?;
        if stats.diff_id != layer.diff_id {
            return Err(Error::invalid(format!(
                "layer {i} ({}) extracts to {}, but the image config says {}",
                layer.digest, stats.diff_id, layer.diff_id
            )));
        }
        let applied_at = started.elapsed();
        let (cpu_user, cpu_sys) = crate::readahead::thread_cpu();
        syncfs(&target.dir)?;
        tracing::debug!(
            layer = i,
            digest = %layer.digest,
            bytes = stats.tar_bytes,
            apply_ms = applied_at.as_millis() as u64,
            syncfs_ms = (started.elapsed() - applied_at).as_millis() as u64,
            apply_user_ms = cpu_user - cpu.0,
            apply_sys_ms = cpu_sys - cpu.1,
            "layer extracted"
        );
        drop(target);
        Ok(Some((active, stats.tar_bytes)))
    }

    /// [`extract`](Self::extract) over the committed `parent`, seeing the layers below.
    fn extract_over(
        &self,
        src: &dyn LayerSource,
        i: usize,
        layer: &Layer,
        chain: &Digest,
        parent: Option<&str>,
    ) -> Result<(Active<'_>, u64)> {
        self.extract(src, i, layer, chain, parent, false)?
            .ok_or_else(|| {
                Error::internal(
                    "unpack",
                    std::io::Error::other("an attached extraction asked for its parents"),
                )
            })
    }

    /// Unpacks `layers` (bottom first) from the content store; returns the top chainID.
    pub fn unpack(
        &self,
        layers: &[Layer],
        on: &(dyn Fn(UnpackEvent) + Sync),
    ) -> Result<Option<Digest>> {
        let src = StoreSource {
            store: self.store,
            scope: self.scope,
        };
        self.unpack_from(&src, layers, on)
    }

    /// Unpacks `layers` (bottom first) reading their blobs from `src`; returns the top
    /// chainID.
    pub fn unpack_from(
        &self,
        src: &dyn LayerSource,
        layers: &[Layer],
        on: &(dyn Fn(UnpackEvent) + Sync),
    ) -> Result<Option<Digest>> {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let chains = chain_ids(&diff_ids);
        match self.rebase {
            Some(rebase) => self.unpack_parallel(src, layers, &chains, rebase, on)?,
            None => self.unpack_in_order(src, layers, &chains, on)?,
        }
        Ok(chains.last().cloned())
    }

    fn unpack_in_order(
        &self,
        src: &dyn LayerSource,
        layers: &[Layer],
        chains: &[Digest],
        on: &(dyn Fn(UnpackEvent) + Sync),
    ) -> Result<()> {
        for (i, layer) in layers.iter().enumerate() {
            let chain = &chains[i];
            if self.is_committed(chain) {
                on(UnpackEvent::Done {
                    index: i,
                    chain_id: chain.clone(),
                    bytes: 0,
                    skipped: true,
                });
                continue;
            }
            on(UnpackEvent::Started { index: i });
            let parent = i.checked_sub(1).map(|p| chains[p].to_string());
            let (mut active, bytes) = self.extract_over(src, i, layer, chain, parent.as_deref())?;
            self.commit(i, chain, &mut active, None)?;
            on(UnpackEvent::Done {
                index: i,
                chain_id: chain.clone(),
                bytes,
                skipped: false,
            });
        }
        Ok(())
    }

    /// Commits `active` as `chain`; a chainID committed meanwhile by a concurrent pull is
    /// not an error (our copy is dropped).
    fn commit(
        &self,
        i: usize,
        chain: &Digest,
        active: &mut Active<'_>,
        rebase: Option<(&(dyn Rebase + Send + Sync), Option<&str>)>,
    ) -> Result<()> {
        let labels = self.commit_labels(chain);
        let name = chain.to_string();
        let r = match rebase {
            Some((r, Some(parent))) => r.commit_onto(&name, &active.key, parent, labels),
            _ => self.snapshotter.commit(&name, &active.key, labels),
        };
        match r {
            Ok(()) => {
                active.committed = true;
                Ok(())
            }
            Err(e) if e.kind() == strata_snapshotter::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.context(format!("commit layer {i}"))),
        }
    }

    fn unpack_parallel(
        &self,
        src: &dyn LayerSource,
        layers: &[Layer],
        chains: &[Digest],
        rebase: &(dyn Rebase + Send + Sync),
        on: &(dyn Fn(UnpackEvent) + Sync),
    ) -> Result<()> {
        // Layers already committed (and everything below them) need no work; find the
        // lowest missing one.
        let first_missing = (0..layers.len())
            .rev()
            .find(|&i| self.is_committed(&chains[i]))
            .map_or(0, |i| i + 1);
        for (i, chain) in chains.iter().enumerate().take(first_missing) {
            on(UnpackEvent::Done {
                index: i,
                chain_id: chain.clone(),
                bytes: 0,
                skipped: true,
            });
        }
        let todo: Vec<usize> = (first_missing..layers.len()).collect();
        let results: Vec<Mutex<Option<Extracted<'_>>>> =
            todo.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..self.concurrency.clamp(1, todo.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= todo.len() || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = todo[n];
                        on(UnpackEvent::Started { index: i });
                        // Every layer but the bottom one extracts detached from its parents.
                        let r = self.extract(src, i, &layers[i], &chains[i], None, i > 0);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        *results[n].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    }
                });
            }
        });
        // In chain order, so each layer's parent is committed before it.
        let mut extracted = Vec::new();
        for (n, slot) in results.into_iter().enumerate() {
            match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(r) => extracted.push((todo[n], r?)),
                None => {
                    return Err(Error::internal(
                        "unpack",
                        std::io::Error::other("a layer was not extracted after another failed"),
                    ));
                }
            }
        }
        for (i, done) in extracted {
            let parent = i.checked_sub(1).map(|p| chains[p].to_string());
            let (mut active, bytes, onto) = match done {
                Some((active, bytes)) => (active, bytes, Some((rebase, parent.as_deref()))),
                None => {
                    // Its parent is committed by now: extract again through a mount of it.
                    on(UnpackEvent::Started { index: i });
                    let (active, bytes) =
                        self.extract_over(src, i, &layers[i], &chains[i], parent.as_deref())?;
                    (active, bytes, None)
                }
            };
            self.commit(i, &chains[i], &mut active, onto)?;
            on(UnpackEvent::Done {
                index: i,
                chain_id: chains[i].clone(),
                bytes,
                skipped: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_keys_carry_their_pid() {
        let k = format!("{EXTRACT_PREFIX}{}/sha256:x", unique());
        assert_eq!(extraction_pid(&k), Some(std::process::id()));
        assert_eq!(extraction_pid("default/1/extract-1 sha256:x"), None);
        assert_eq!(extraction_pid("strata/extract/x-1/y"), None);
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = |h: &str| Digest::parse(&format!("sha256:{}", h.repeat(64))).unwrap();
        let (a, b) = (d("a"), d("b"));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(c[1].to_string(), format!("sha256:{want}"));
        assert!(chain_ids(&[]).is_empty());
    }
}
