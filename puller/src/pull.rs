//! Pulling an image: resolve, fetch into the content store, unpack into a snapshotter,
//! record the image.

use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use strata_content::{
    Image, Labels, LeaseManager, LocalStore, Manager, Namespace, Scope, Target as ImageTarget,
};
use strata_proto::Digest;
use strata_snapshotter::{Rebase, Snapshotter};
use tokio::runtime::Handle;

use crate::fetch::{Blob, BlobSource, Fetched, Follow, fetch_blob};
use crate::registry::{self, Descriptor, Platform, Reference, RegistryClient};
use crate::unpack::{Layer, LayerSource, UnpackEvent, Unpacker};
use crate::{Error, ErrorKind, Limits, Result, ResultExt, WhiteoutMode};

/// Image label naming the top chainID unpacked into a snapshotter
/// (`strata.io/snapshot.<snapshotter>`): what keeps strata's snapshots from its GC.
pub const SNAPSHOT_LABEL_PREFIX: &str = "strata.io/snapshot.";

/// Applies a change to the pull's progress and reports it.
type Report<'a> = dyn Fn(&dyn Fn(&mut Progress)) + Sync + 'a;

/// Where a pull unpacks to.
pub struct UnpackTo<'a> {
    /// The snapshotter's name (for the config's gc.ref.snapshot label).
    pub name: String,
    /// The snapshotter.
    pub snapshotter: &'a dyn Snapshotter,
    /// Its Rebase capability, when it has one.
    pub rebase: Option<&'a (dyn Rebase + Send + Sync)>,
    /// Whiteouts for directories reached without a mount.
    pub whiteouts: WhiteoutMode,
}

/// One layer's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerState {
    /// The compressed blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Bytes in the content store.
    pub fetched: u64,
    /// Uncompressed bytes extracted.
    pub unpacked: u64,
    /// waiting | downloading | downloaded | exists | unpacking | unpacked | skipped
    pub state: &'static str,
    /// The snapshot the layer was committed as, once unpacked (not when skipped).
    pub committed: Option<Digest>,
}

/// A pull's progress, reported after every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// resolving | fetching | unpacking | done
    pub stage: &'static str,
    /// The image name recorded.
    pub name: String,
    /// The top-level digest, once resolved.
    pub digest: Option<Digest>,
    /// Layers, bottom first.
    pub layers: Vec<LayerState>,
    /// The top chainID, once unpacked.
    pub chain_id: Option<Digest>,
}

/// A pull request.
pub struct PullRequest<'a> {
    /// The image reference.
    pub reference: &'a str,
    /// The platform to pick from an index.
    pub platform: Platform,
    /// Layers fetched at once.
    pub concurrency: usize,
    /// Where to unpack, or nothing (`--no-unpack`).
    pub unpack: Option<UnpackTo<'a>>,
}

/// Reads a registry blob stream synchronously, for the content store's writer.
struct StreamReader {
    rt: Handle,
    stream: registry::BlobStream,
    chunk: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// A registry repository as a [`BlobSource`].
struct RegistrySource<'a> {
    rt: Handle,
    client: &'a RegistryClient,
    reference: &'a Reference,
}

impl BlobSource for RegistrySource<'_> {
    fn open(&self, blob: &Blob, offset: u64) -> Result<(Box<dyn Read + Send>, u64)> {
        let range = (offset > 0 && offset < blob.size).then_some(offset..blob.size);
        let stream = self.stream(blob, range)?;
        let start = stream.offset();
        Ok((
            Box::new(StreamReader {
                rt: self.rt.clone(),
                stream,
                chunk: Bytes::new(),
            }),
            start,
        ))
    }

    fn open_range(
        &self,
        blob: &Blob,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        let stream = self.stream(blob, Some(range))?;
        // A server that ignores ranges would send the prefix again for every chunk.
        if !stream.range_honoured() {
            return Ok(None);
        }
        Ok(Some(Box::new(StreamReader {
            rt: self.rt.clone(),
            stream,
            chunk: Bytes::new(),
        })))
    }
}

impl RegistrySource<'_> {
    fn stream(
        &self,
        blob: &Blob,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<registry::BlobStream> {
        let desc = Descriptor::new(blob.media_type.clone(), blob.digest.clone(), blob.size);
        self.rt
            .block_on(self.client.fetch_blob(self.reference, &desc, range))
    }
}

/// In-memory bytes as a [`BlobSource`] (documents already fetched and verified).
struct BytesSource(Bytes);

impl BlobSource for BytesSource {
    fn open(&self, _: &Blob, offset: u64) -> Result<(Box<dyn Read + Send>, u64)> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        Ok((
            Box::new(std::io::Cursor::new(self.0.slice(start..))),
            start as u64,
        ))
    }
}

fn blob_of(d: &Descriptor) -> Blob {
    Blob {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
    }
}

/// Adds `labels` to a blob (created with them, or updated if it existed).
fn label_blob(store: &LocalStore, scope: &Scope, d: &Digest, labels: &Labels) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    store
        .update(scope, d, labels.clone(), &paths)
        .with_context(|| format!("label {d}"))?;
    Ok(())
}

/// Media types of layers strata can unpack.
fn check_layer_media_type(mt: &str) -> Result<()> {
    crate::decompress::Compression::from_media_type(mt)
        .map(|_| ())
        .map_err(|e| Error::caused_by("layer", e))
}

/// Pulls an image into `store` (namespace `ns`) and, if asked, a snapshotter; records it
/// and returns the final progress. Blocking: call from a thread outside `rt`'s workers.
pub fn pull(
    rt: &Handle,
    client: &RegistryClient,
    store: &LocalStore,
    ns: &Namespace,
    req: &PullRequest<'_>,
    on: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress> {
    let reference = Reference::parse(req.reference)?;
    let progress = Mutex::new(Progress {
        stage: "resolving",
        name: reference.to_string(),
        ..Default::default()
    });
    let report = |f: &dyn Fn(&mut Progress)| {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        on(&p);
    };
    report(&|_| {});
    let resolved = rt.block_on(client.resolve_image(&reference, &req.platform))?;
    let m = &resolved.manifest;
    if m.layers.len() != resolved.config.rootfs.diff_ids.len() {
        return Err(Error::invalid(format!(
            "{reference}: {} layers but {} diff_ids in the config",
            m.layers.len(),
            resolved.config.rootfs.diff_ids.len()
        )));
    }
    for l in &m.layers {
        check_layer_media_type(&l.media_type)?;
    }
    report(&|p| {
        p.stage = "fetching";
        p.digest = Some(resolved.root.descriptor.digest.clone());
        p.layers = m
            .layers
            .iter()
            .map(|l| LayerState {
                digest: l.digest.clone(),
                size: l.size,
                fetched: 0,
                unpacked: 0,
                state: "waiting",
                committed: None,
            })
            .collect();
    });

    // Everything fetched is held by a lease until the image record holds it.
    let lease = format!("pull-{}-{}", std::process::id(), unique_suffix());
    let plain = Scope::ns(ns.as_str());
    let mut lease_labels = Labels::new();
    lease_labels.insert(
        strata_content::GC_EXPIRE.into(),
        crate::pull::rfc3339_in(std::time::Duration::from_secs(24 * 3600)),
    );
    store
        .create_lease(&plain, &lease, lease_labels)
        .context("create pull lease")?;
    let scope = plain.clone().with_lease(lease.clone());
    let result = pull_leased(
        rt, client, store, &scope, ns, &reference, &resolved, req, &report,
    );
    if let Err(e) = store.delete_lease(&plain, &lease, false) {
        tracing::warn!(error = ?e, "delete pull lease");
    }
    result?;
    report(&|p| p.stage = "done");
    Ok(progress.into_inner().unwrap_or_else(|e| e.into_inner()))
}

fn unique_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    t ^ (N.fetch_add(1, Ordering::Relaxed) as u64)
}

/// RFC 3339 UTC time `d` from now.
pub(crate) fn rfc3339_in(d: std::time::Duration) -> String {
    let secs = (std::time::SystemTime::now() + d)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Layer blobs read as they download.
struct FollowSource<'a> {
    follows: &'a [Follow],
}

impl LayerSource for FollowSource<'_> {
    fn open(&self, i: usize, _: &Layer) -> Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self.follows[i].reader()))
    }

    fn verified(&self, i: usize, layer: &Layer) -> Result<()> {
        self.follows[i].wait_verified().map_err(|why| {
            Error::new(
                ErrorKind::Unavailable,
                format!("layer {i} ({}): {why}", layer.digest),
            )
        })
    }
}

/// Fetches the manifest's layers, `req.concurrency` at once; the first error stops the
/// others from starting.
fn fetch_layers(
    store: &LocalStore,
    scope: &Scope,
    resolved: &registry::ResolvedImage,
    src: &dyn BlobSource,
    req: &PullRequest<'_>,
    report: &Report<'_>,
    follows: &[Follow],
) -> Result<()> {
    let m = &resolved.manifest;
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..req.concurrency.clamp(1, m.layers.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= m.layers.len() {
                        break;
                    }
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    let l = &m.layers[i];
                    let mut labels = Labels::new();
                    labels.insert(
                        "containerd.io/uncompressed".into(),
                        resolved.config.rootfs.diff_ids[i].to_string(),
                    );
                    report(&|p| {
                        if p.layers[i].state == "waiting" {
                            p.layers[i].state = "downloading";
                        }
                    });
                    let r = fetch_blob(
                        store,
                        scope,
                        &blob_of(l),
                        src,
                        &labels,
                        &|n| report(&|p| p.layers[i].fetched = n),
                        Some(&follows[i]),
                    );
                    match r {
                        Ok(f) => report(&|p| {
                            p.layers[i].fetched = l.size;
                            // An extraction running behind the download keeps its state.
                            if p.layers[i].state == "downloading" {
                                p.layers[i].state = if f == Fetched::Exists {
                                    "exists"
                                } else {
                                    "downloaded"
                                };
                            }
                        }),
                        Err(e) => {
                            let e = e.context(format!("fetch layer {i} ({})", l.digest));
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn pull_leased(
    rt: &Handle,
    client: &RegistryClient,
    store: &LocalStore,
    scope: &Scope,
    ns: &Namespace,
    reference: &Reference,
    resolved: &registry::ResolvedImage,
    req: &PullRequest<'_>,
    report: &Report<'_>,
) -> Result<()> {
    let m = &resolved.manifest;
    let src = RegistrySource {
        rt: rt.clone(),
        client,
        reference: &resolved.reference,
    };
    let layers: Vec<Layer> = m
        .layers
        .iter()
        .zip(&resolved.config.rootfs.diff_ids)
        .map(|(l, d)| Layer {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            diff_id: d.clone(),
        })
        .collect();
    let unpacker = req.unpack.as_ref().map(|to| Unpacker {
        store,
        scope,
        snapshotter: to.snapshotter,
        rebase: to.rebase,
        whiteouts: to.whiteouts,
        limits: Limits::default(),
        concurrency: req.concurrency.max(1),
        labels: Labels::new(),
        owner: ns.as_str().to_owned(),
    });
    // Each layer extracts while it downloads (from the ingest file, see `Follow`) and is
    // committed only once its blob is verified.
    let follows: Vec<Follow> = m.layers.iter().map(|_| Follow::default()).collect();
    let source = FollowSource { follows: &follows };
    let (fetched, unpacked) = std::thread::scope(|s| {
        let unpacking = unpacker.as_ref().map(|u| {
            let (source, layers) = (&source, &layers);
            s.spawn(move || {
                u.unpack_from(source, layers, &|e| match e {
                    UnpackEvent::Started { index } => {
                        report(&|p| p.layers[index].state = "unpacking");
                    }
                    UnpackEvent::Done {
                        index,
                        bytes,
                        skipped,
                        chain_id,
                    } => report(&|p| {
                        p.layers[index].unpacked = bytes;
                        p.layers[index].state = if skipped { "skipped" } else { "unpacked" };
                        if !skipped {
                            p.layers[index].committed = Some(chain_id.clone());
                        }
                    }),
                })
            })
        });
        let fetched = fetch_layers(store, scope, resolved, &src, req, report, &follows);
        if fetched.is_ok() && unpacking.is_some() {
            report(&|p| p.stage = "unpacking");
        }
        for f in &follows {
            f.abandon("not fetched: another layer failed");
        }
        let unpacked = unpacking.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(Error::internal(
                    "unpack",
                    std::io::Error::other("the unpack thread panicked"),
                ))
            })
        });
        (fetched, unpacked)
    });
    // A failed download is the root cause of any extraction error that followed it.
    fetched?;
    let top_chain = unpacked.transpose()?.flatten();

    // The config, then the documents that reference it and the layers.
    let config_desc = &m.config;
    fetch_blob(
        store,
        scope,
        &blob_of(config_desc),
        &BytesSource(resolved.config_body.clone()),
        &Labels::new(),
        &|_| {},
        None,
    )?;
    if let Some(to) = &req.unpack {
        if let Some(c) = &top_chain {
            let mut l = Labels::new();
            l.insert(
                format!("containerd.io/gc.ref.snapshot.{}", to.name),
                c.to_string(),
            );
            label_blob(store, scope, &config_desc.digest, &l)?;
        }
        let chain = top_chain.clone();
        report(&|p| p.chain_id = chain.clone());
    }

    // The manifest references its config and layers; an index its manifest.
    let mut ml = Labels::new();
    ml.insert(
        "containerd.io/gc.ref.content.config".into(),
        config_desc.digest.to_string(),
    );
    for (i, l) in m.layers.iter().enumerate() {
        ml.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.to_string(),
        );
    }
    fetch_blob(
        store,
        scope,
        &blob_of(&resolved.manifest_descriptor),
        &BytesSource(resolved.manifest_body.clone()),
        &ml,
        &|_| {},
        None,
    )?;
    label_blob(store, scope, &resolved.manifest_descriptor.digest, &ml)?;
    let root = &resolved.root.descriptor;
    if root.digest != resolved.manifest_descriptor.digest {
        let mut il = Labels::new();
        il.insert(
            "containerd.io/gc.ref.content.m.0".into(),
            resolved.manifest_descriptor.digest.to_string(),
        );
        fetch_blob(
            store,
            scope,
            &blob_of(root),
            &BytesSource(resolved.root.body.clone()),
            &il,
            &|_| {},
            None,
        )?;
        label_blob(store, scope, &root.digest, &il)?;
    }
    // Labels of an earlier pull (say, into another snapshotter) are kept.
    let mut labels = store
        .get_image(ns, &reference.to_string())
        .map(|i| i.labels)
        .unwrap_or_default();
    if let (Some(to), Some(chain)) = (&req.unpack, top_chain) {
        labels.insert(
            format!("{SNAPSHOT_LABEL_PREFIX}{}", to.name),
            chain.to_string(),
        );
    }
    let image = Image {
        name: reference.to_string(),
        target: ImageTarget {
            media_type: root.media_type.clone(),
            digest: root.digest.clone(),
            size: root.size,
        },
        labels,
        created_at: std::time::SystemTime::now(),
        updated_at: std::time::SystemTime::now(),
    };
    store.put_image(ns, &image).context("record image")?;
    Ok(())
}

/// Removes committed snapshots strata's puller made ([`crate::unpack::OWNER_LABEL`]) in
/// `name`'s backend that no image references (through its `strata.io/snapshot.<name>`
/// label, and the chain below it), leaf first, and extraction snapshots an earlier
/// daemon left behind. Snapshots containerd or other clients
/// made are never touched. Returns how many were removed.
pub fn collect_snapshots(store: &LocalStore, name: &str, sn: &dyn Snapshotter) -> Result<usize> {
    use std::collections::{HashMap, HashSet};
    let key = format!("{SNAPSHOT_LABEL_PREFIX}{name}");
    let mut keep: HashSet<String> = HashSet::new();
    let mut owned: HashMap<String, Option<String>> = HashMap::new();
    let mut parents: HashMap<String, Option<String>> = HashMap::new();
    // Extraction snapshots of an earlier daemon (killed mid-unpack): their key carries
    // the pid of the process that made them.
    let mut stale_extractions = Vec::new();
    sn.walk(&[], &mut |i| {
        if i.kind == strata_snapshotter::Kind::Active
            && i.labels.contains_key(crate::unpack::OWNER_LABEL)
            && crate::unpack::extraction_pid(&i.name).is_some_and(|p| p != std::process::id())
        {
            stale_extractions.push(i.name.clone());
        }
        parents.insert(i.name.clone(), i.parent.clone());
        if i.kind == strata_snapshotter::Kind::Committed
            && i.labels.contains_key(crate::unpack::OWNER_LABEL)
        {
            owned.insert(i.name, i.parent);
        }
        Ok(())
    })
    .context("list snapshots")?;
    let images = store.all_images().context("list images")?;
    for (_, image) in images {
        let mut next = image.labels.get(&key).cloned();
        while let Some(n) = next {
            if !keep.insert(n.clone()) {
                break;
            }
            next = parents.get(&n).cloned().flatten();
        }
    }
    // Anything else uses a snapshot as parent: keep the chain below it too.
    for (child, parent) in &parents {
        if owned.contains_key(child) {
            continue;
        }
        let mut next = parent.clone();
        while let Some(n) = next {
            if !keep.insert(n.clone()) {
                break;
            }
            next = parents.get(&n).cloned().flatten();
        }
    }
    let mut doomed: Vec<String> = owned
        .keys()
        .filter(|n| !keep.contains(*n))
        .cloned()
        .collect();
    doomed.extend(stale_extractions);
    let mut removed = 0;
    // Leaf first: a snapshot with children is retried after they are gone.
    loop {
        let before = doomed.len();
        doomed.retain(|n| match sn.remove(n) {
            Ok(()) => {
                removed += 1;
                false
            }
            Err(_) => true,
        });
        if doomed.is_empty() || doomed.len() == before {
            break;
        }
    }
    Ok(removed)
}
