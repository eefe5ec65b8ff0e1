//! Pulling an image: resolve, fetch into the content store, unpack into a snapshotter,
//! record the image.

use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use strata_content::{Image, ImageContentStore, Labels, Namespace, Scope, Target as ImageTarget};
use strata_proto::Digest;
use strata_snapshotter::{Rebase, Snapshotter};
use tokio::runtime::Handle;

use crate::fetch::{FetchSource, Fetched, Follow, fetch_blob};
use crate::registry::{self, Platform, Reference, RegistryClient};
use crate::source::{BytesSource, RegistrySource, blob_of};
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
    /// waiting | downloading | downloaded | exists | unpacking | unpacked | skipped | lazy
    /// (mounted by a lazy backend: neither downloaded nor unpacked)
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

/// Adds `labels` to a blob (created with them, or updated if it existed).
fn label_blob(
    store: &dyn ImageContentStore,
    scope: &Scope,
    d: &Digest,
    labels: &Labels,
) -> Result<()> {
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
    store: &dyn ImageContentStore,
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
        rfc3339_in(std::time::Duration::from_secs(24 * 3600)),
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
    strata_proto::time::format_rfc3339(std::time::SystemTime::now() + d)
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

/// Fetches the manifest's layers but the `lazy` ones, `req.concurrency` at once; the
/// first error stops the others from starting.
#[allow(clippy::too_many_arguments)]
fn fetch_layers(
    store: &dyn ImageContentStore,
    scope: &Scope,
    resolved: &registry::ResolvedImage,
    src: &dyn FetchSource,
    req: &PullRequest<'_>,
    report: &Report<'_>,
    follows: &[Follow],
    lazy: &[bool],
) -> Result<()> {
    let m = &resolved.manifest;
    let next = AtomicUsize::new(0);
    let wanted = lazy.iter().filter(|l| !**l).count();
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..req.concurrency.clamp(1, wanted.max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= m.layers.len() {
                        break;
                    }
                    if lazy[i] {
                        continue;
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
    store: &dyn ImageContentStore,
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
    // Layers a lazy backend takes are committed now, without a download.
    let lazy = match &req.unpack {
        Some(to) => {
            let chains = crate::unpack::chain_ids(&resolved.config.rootfs.diff_ids);
            let lazy = crate::lazy::mount_lazy(
                to,
                &resolved.reference.to_string(),
                &m.layers,
                &chains,
                ns.as_str(),
            )?;
            report(&|p| {
                for (i, l) in p.layers.iter_mut().enumerate() {
                    if lazy[i] {
                        l.state = "lazy";
                        l.committed = Some(chains[i].clone());
                    }
                }
            });
            lazy
        }
        None => vec![false; m.layers.len()],
    };
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
                        if p.layers[index].state == "lazy" {
                            return;
                        }
                        p.layers[index].state = if skipped { "skipped" } else { "unpacked" };
                        if !skipped {
                            p.layers[index].committed = Some(chain_id.clone());
                        }
                    }),
                })
            })
        });
        let fetched = fetch_layers(store, scope, resolved, &src, req, report, &follows, &lazy);
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
