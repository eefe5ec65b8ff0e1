//! TOCs of an image's upper layers, fetched while its lower layers are being mounted.
//!
//! containerd's CRI (and `ctr-remote`) hands a snapshotter an image's layers one Prepare
//! at a time, bottom first, each after the one below is committed. Each Prepare also
//! names the layers from it to the top (`containerd.io/snapshot/cri.image-layers`,
//! `containerd.io/snapshot/remote/stargz.layers`), so the TOCs of the layers above are
//! fetched in parallel as soon as the first Prepare arrives, as stargz-snapshotter does.
//! A TOC fetched ahead is only bytes: it is verified against its digest, and parsed,
//! when its own Prepare brings the descriptor's TOC digest.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use strata_proto::Digest;

use crate::estargz::{TocLimits, fetch_toc_json};
use crate::remote::{BlobSource, RemoteBlob};
use crate::{Labels, Result};

/// The layers from this one to the top, as containerd's CRI names them (comma-separated).
pub const CRI_IMAGE_LAYERS_LABEL: &str = "containerd.io/snapshot/cri.image-layers";
/// The same, as stargz's `ctr-remote images rpull` names them.
pub const STARGZ_LAYERS_LABEL: &str = "containerd.io/snapshot/remote/stargz.layers";

/// At most this many TOCs are held or in flight: their bytes wait in memory.
const MAX_AHEAD: usize = 8;
/// A TOC nobody asked for in this long is dropped (its layer was not served lazily).
const STALE: Duration = Duration::from_secs(60);

/// A TOC fetched ahead: the blob's size, the unverified JSON, where the TOC starts.
pub(crate) struct Fetched {
    pub(crate) size: u64,
    pub(crate) json: Vec<u8>,
    pub(crate) toc_offset: u64,
}

struct Slot {
    started: Instant,
    done: Mutex<Option<Result<Fetched>>>,
    ready: Condvar,
}

/// TOCs being fetched ahead of their layers' Prepares, by blob digest.
pub(crate) struct TocsAhead {
    blobs: Arc<dyn BlobSource>,
    limits: TocLimits,
    slots: Mutex<HashMap<Digest, Arc<Slot>>>,
}

impl TocsAhead {
    pub(crate) fn new(blobs: Arc<dyn BlobSource>, limits: TocLimits) -> Self {
        TocsAhead {
            blobs,
            limits,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Starts fetching the TOCs of the layers `labels` names above `current`, read
    /// through `reference`.
    pub(crate) fn start(&self, reference: &str, current: &Digest, labels: &Labels) {
        let Some(list) = labels
            .get(CRI_IMAGE_LAYERS_LABEL)
            .or_else(|| labels.get(STARGZ_LAYERS_LABEL))
        else {
            return;
        };
        let above: Vec<Digest> = list
            .split(',')
            .filter_map(|d| Digest::parse(d.trim()).ok())
            .skip_while(|d| d != current)
            .skip(1)
            .collect();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, s| s.started.elapsed() < STALE);
        for digest in above {
            if slots.len() >= MAX_AHEAD {
                break;
            }
            if slots.contains_key(&digest) {
                continue;
            }
            let slot = Arc::new(Slot {
                started: Instant::now(),
                done: Mutex::new(None),
                ready: Condvar::new(),
            });
            let (blobs, limits, reference) =
                (self.blobs.clone(), self.limits, reference.to_owned());
            let (s, d) = (slot.clone(), digest.clone());
            let spawned = std::thread::Builder::new()
                .name("toc-ahead".into())
                .spawn(move || {
                    let got = (|| {
                        let size = blobs.blob_size(&reference, &d)?;
                        let blob = RemoteBlob {
                            reference,
                            digest: d,
                            size,
                        };
                        let (json, toc_offset) = fetch_toc_json(&*blobs, &blob, &limits)?;
                        Ok(Fetched {
                            size,
                            json,
                            toc_offset,
                        })
                    })();
                    *s.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
                    s.ready.notify_all();
                });
            if spawned.is_ok() {
                slots.insert(digest, slot);
            }
        }
    }

    /// The TOC of `digest` fetched ahead (waiting for it if it is on its way); `None`
    /// when it was not fetched ahead.
    pub(crate) fn take(&self, digest: &Digest) -> Option<Result<Fetched>> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest)?;
        let mut done = slot.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(got) = done.take() {
                return Some(got);
            }
            done = slot.ready.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}
