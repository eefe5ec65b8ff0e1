//! `strata serve`: binds the socket, opens the stores, serves gRPC until SIGTERM/SIGINT.
//!
//! Order matters for containerd, which must never find the socket missing: the root is
//! locked (a second daemon on the same root fails here), the socket is bound, and only
//! then are the stores opened; requests that arrive meanwhile wait for them.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use strata_content::service::{ContentService, LeasesService, StoreCell};
use strata_content::{LocalStore, SharingPolicy, StoreOptions};
use strata_proto::strata::v1 as spb;
use strata_puller::RegistryBlobs;
use strata_puller::service::{ImagesService, RegistrySettings};
use strata_snapshotter::lazy::{LazyOptions, LazySnapshotter};
use strata_snapshotter::observe::{SnapshotEvent, SnapshotEvents};
use strata_snapshotter::overlay::kernel_supports_index;
use strata_snapshotter::service::{Backends, BackendsCell, SnapshotsService};
use strata_snapshotter::{
    Backend, BtrfsSnapshotter, NativeSnapshotter, OverlayOptions, OverlaySnapshotter, Whiteouts,
};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use strata_proto::strata::v1::envelope as pb_event;
use strata_shim_runner::events::Events;
use strata_shim_runner::lifecycle::{Lifecycle, LifecycleOptions};
use strata_shim_runner::service::{ContainersService, EventsService, TasksService};
use strata_shim_runner::{ImageResolver, ResolvedImage};

use crate::config::Config;

/// Everything `serve` needs, after merging the config file and flags.
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    /// Root directory.
    pub(crate) root: PathBuf,
    /// Socket path.
    pub(crate) address: PathBuf,
    /// Content store options.
    pub(crate) store: StoreOptions,
    /// Time between garbage collections (`None`: never).
    pub(crate) gc_interval: Option<Duration>,
    /// Snapshotter settings.
    pub(crate) snapshots: SnapshotOptions,
    /// Registry settings for pulls.
    pub(crate) registry: RegistrySettings,
    /// The runc binary.
    pub(crate) runc: PathBuf,
    /// The strata-shim binary.
    pub(crate) shim: PathBuf,
}

/// Which snapshotter backends to open.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotOptions {
    /// Backend for unknown or empty names.
    pub(crate) default: String,
    /// Explicit btrfs root.
    pub(crate) btrfs_root: Option<PathBuf>,
    /// Delay of a lazy layer's background fetch (`None`: never).
    pub(crate) lazy_background_fetch: Option<Duration>,
}

/// Names of the backends strata serves.
const BACKENDS: [&str; 4] = ["overlayfs", "native", "btrfs", "lazy"];

impl ServeOptions {
    /// Merges the config file with flags (flags win).
    pub(crate) fn from_config(
        cfg: Config,
        root: Option<PathBuf>,
        address: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let sharing = match cfg.content.sharing_policy.as_str() {
            "shared" => SharingPolicy::Shared,
            "isolated" => SharingPolicy::Isolated,
            other => bail!("content.sharing_policy {other:?} is not \"shared\" or \"isolated\""),
        };
        let store = StoreOptions {
            sharing,
            ingest_expiry: Duration::from_secs(cfg.content.ingest_expiry_secs),
            failpoint: std::env::var("STRATA_FAILPOINT").ok(),
            ..StoreOptions::default()
        };
        Ok(ServeOptions {
            root: root
                .or(cfg.root)
                .unwrap_or_else(|| crate::config::DEFAULT_ROOT.into()),
            address: address
                .or(cfg.address)
                .unwrap_or_else(|| crate::config::DEFAULT_ADDRESS.into()),
            store,
            gc_interval: (cfg.content.gc_interval_secs > 0)
                .then(|| Duration::from_secs(cfg.content.gc_interval_secs)),
            snapshots: {
                let default = cfg.snapshots.default;
                if !BACKENDS.contains(&default.as_str()) {
                    bail!("snapshots.default {default:?} is not one of {BACKENDS:?}");
                }
                if default == "btrfs" && cfg.snapshots.btrfs_root.is_none() {
                    bail!("snapshots.default is \"btrfs\" but snapshots.btrfs_root is not set");
                }
                let background = cfg.snapshots.lazy_background_fetch_secs.unwrap_or(5);
                SnapshotOptions {
                    default,
                    btrfs_root: cfg.snapshots.btrfs_root,
                    lazy_background_fetch: (background > 0)
                        .then(|| Duration::from_secs(background)),
                }
            },
            registry: {
                let mut r = RegistrySettings::default();
                if let Some(dir) = cfg.registry.hosts_dir {
                    r.hosts_dir = dir;
                }
                r.docker_config = cfg.registry.docker_config;
                r
            },
            runc: cfg.runtime.runc.unwrap_or_else(|| "runc".into()),
            shim: cfg
                .runtime
                .shim
                .unwrap_or_else(strata_shim_runner::shim::default_shim_binary),
        })
    }
}

/// Holds the root's lock file for the daemon's lifetime.
struct RootLock(#[allow(dead_code)] fs::File);

fn lock_root(root: &Path) -> anyhow::Result<RootLock> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("create root {}", root.display()))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod root {}", root.display()))?;
    let path = root.join("strata.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open lock file {}", path.display()))?;
    // SAFETY: flock on a valid, owned fd; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "root {} is in use by another strata daemon (pid {})",
            root.display(),
            holder.trim()
        );
    }
    f.set_len(0)?;
    fs::write(&path, format!("{}\n", std::process::id()))?;
    Ok(RootLock(f))
}

fn bind_socket(address: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create socket directory {}", dir.display()))?;
    }
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            bail!("another daemon is already serving {}", address.display());
        }
        fs::remove_file(address)
            .with_context(|| format!("remove stale socket {}", address.display()))?;
    }
    let l = UnixListener::bind(address).with_context(|| format!("bind {}", address.display()))?;
    fs::set_permissions(address, fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

struct Admin {
    store: StoreCell,
    snapshots: BackendsCell,
    root: PathBuf,
}

#[tonic::async_trait]
impl spb::admin_server::Admin for Admin {
    async fn version(&self, _: Request<()>) -> Result<Response<spb::VersionResponse>, Status> {
        let mut services: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
        let b = self.snapshots.get("snapshotters").await?;
        let mut snapshotters = Vec::new();
        for (n, be) in b.iter() {
            let default = n == b.default_name();
            let mark = if default { " (default)" } else { "" };
            services.push(format!("snapshotter {n}{mark}"));
            snapshotters.push(spb::SnapshotterInfo {
                name: n.to_owned(),
                default,
                capabilities: be
                    .capabilities()
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect(),
                whiteouts: be.whiteouts().as_str().to_owned(),
                root: be
                    .root()
                    .map(|r| r.display().to_string())
                    .unwrap_or_default(),
            });
        }
        Ok(Response::new(spb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            root: self.root.display().to_string(),
            services,
            snapshotters,
        }))
    }

    async fn garbage_collect(
        &self,
        _: Request<()>,
    ) -> Result<Response<spb::GarbageCollectResponse>, Status> {
        let store = self.store.get("content store").await?;
        let backends = self.snapshots.get("snapshotters").await?;
        let (r, snapshots) =
            strata_proto::serve::blocking(move || collect(&store, &backends)).await?;
        Ok(Response::new(spb::GarbageCollectResponse {
            records: r.records as u64,
            blobs: r.blobs as u64,
            ingests: r.ingests as u64,
            leases: r.leases as u64,
            snapshots: snapshots as u64,
        }))
    }
}

const SERVICES: &[&str] = &[
    "containerd.services.content.v1.Content",
    "containerd.services.snapshots.v1.Snapshots",
    "containerd.services.leases.v1.Leases",
    "strata.v1.Admin",
    "strata.v1.Images",
];

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
    }
}

/// Runs the daemon until a termination signal or a fatal error.
pub(crate) async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let _lock = lock_root(&opts.root)?;
    let listener = bind_socket(&opts.address)?;
    info!(address = %opts.address.display(), root = %opts.root.display(), "listening");

    let (setter, cell) = StoreCell::pending();
    let (snap_setter, snap_cell) = BackendsCell::pending();
    let (root, store_opts, snap_opts, registry) = (
        opts.root.clone(),
        opts.store.clone(),
        opts.snapshots.clone(),
        opts.registry.clone(),
    );
    let fatal: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let failed = Arc::new(Notify::new());
    let gc_interval = opts.gc_interval;
    let (fatal2, failed2) = (fatal.clone(), failed.clone());
    let gc_backends = snap_cell.clone();
    tokio::spawn(async move {
        // Snapshotters open first and are served at once: containerd's CRI plugin Stats
        // and Lists its snapshotter at start-up, and the content store's recovery (pending
        // commits, ingest scan) may take longer.
        let opened = tokio::task::spawn_blocking(move || {
            let backends = open_backends(&root, &snap_opts, &registry)?;
            snap_setter.set(backends);
            info!("snapshotters ready");
            LocalStore::open(&root, store_opts).context("open content store")
        })
        .await
        .map_err(|e| anyhow::anyhow!("open stores: {e}"))
        .and_then(|r| r);
        match opened {
            Ok(store) => {
                info!("content store ready");
                setter.set(store.clone());
                if let Some(every) = gc_interval {
                    run_gc_loop(store, gc_backends, every).await;
                }
            }
            Err(e) => {
                *fatal2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                failed2.notify_one();
            }
        }
    });

    let events = Events::new();
    let lifecycle = Arc::new(Lifecycle::new(
        LifecycleOptions {
            root: opts.root.clone(),
            own_address: opts.address.clone(),
            default_snapshotter: opts.snapshots.default.clone(),
            shim_binary: opts.shim.clone(),
            runc_binary: opts.runc.clone(),
        },
        Arc::new(StoreImages {
            store: cell.clone(),
            rt: tokio::runtime::Handle::current(),
        }),
        events.clone(),
        tokio::runtime::Handle::current(),
    ));
    {
        // Tasks of an earlier daemon: their shims ran on without it.
        let lc = lifecycle.clone();
        tokio::task::spawn_blocking(move || match lc.recover() {
            Ok(0) => {}
            Ok(n) => info!(tasks = n, "tasks recovered"),
            Err(e) => warn!(error = ?e, "recovering tasks"),
        });
    }
    let pulled = {
        let events = events.clone();
        Arc::new(
            // The layers' commits are published by the snapshot events wrapper.
            move |ns: &str, _snapshotter: &str, p: &strata_puller::Progress| {
                events.publish(
                    ns,
                    strata_shim_runner::events::IMAGE_PULL,
                    pb_event::Event::Image(spb::ImageEvent {
                        name: p.name.clone(),
                        digest: p
                            .digest
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    }),
                );
            },
        )
    };
    let snapshot_events: Arc<dyn SnapshotEvents> = Arc::new(BusSnapshotEvents(events.clone()));

    let admin = Admin {
        store: cell.clone(),
        snapshots: snap_cell.clone(),
        root: opts.root.clone(),
    };
    let served = strata_proto::transport::server()
        .add_service(ContentService::new(cell.clone()).into_server())
        .add_service(LeasesService::new(cell.clone()).into_server())
        .add_service(
            SnapshotsService::new(snap_cell.clone())
                .with_events(snapshot_events.clone())
                .into_server(),
        )
        .add_service(
            ImagesService::new(cell.clone(), snap_cell, opts.registry.clone())
                .with_pulled_hook(pulled)
                .with_snapshot_events(snapshot_events)
                .into_server(),
        )
        .add_service(ContainersService::new(lifecycle.clone()).into_server())
        .add_service(TasksService::new(lifecycle).into_server())
        .add_service(EventsService::new(events).into_server())
        .add_service(spb::admin_server::AdminServer::new(admin))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = failed.notified() => {}
            }
        })
        .await;
    if let Err(e) = fs::remove_file(&opts.address) {
        warn!(error = %e, "remove socket");
    }
    served.context("serve gRPC")?;
    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    info!("stopped");
    Ok(())
}

/// Opens the snapshotter backends: overlayfs, native and lazy always, btrfs when
/// configured or when its directory is on btrfs. Runs on a blocking thread of the
/// runtime, which drives the lazy backend's registry reads.
fn open_backends(
    root: &Path,
    snaps: &SnapshotOptions,
    registry: &RegistrySettings,
) -> anyhow::Result<Backends> {
    let dir = root.join("snapshots");
    let mut backends = Backends::new(snaps.default.clone());
    let overlay_root = dir.join("overlayfs");
    let overlay = OverlaySnapshotter::new(
        &overlay_root,
        OverlayOptions {
            index_off: kernel_supports_index(),
            ..OverlayOptions::default()
        },
    )
    .context("open overlayfs snapshotter")?;
    backends.insert(
        "overlayfs",
        Backend::of_diffs(Arc::new(overlay)).with_root(&overlay_root),
    );
    // Lazy layers read their registry with the pulls' hosts.toml and docker config.
    let client = registry
        .client(false, None)
        .context("lazy backend's registry client")?;
    let blobs = Arc::new(RegistryBlobs::new(
        client,
        tokio::runtime::Handle::current(),
    ));
    let lazy_root = dir.join("lazy");
    // Each lazy layer is served by a process of its own, which outlives the daemon.
    let mounter = Arc::new(crate::lazy_server::ServerMounter::new(registry.clone())?);
    let lazy = Arc::new(
        LazySnapshotter::open_with(
            &lazy_root,
            LazyOptions {
                overlay: OverlayOptions {
                    index_off: kernel_supports_index(),
                    ..OverlayOptions::default()
                },
                background_fetch: snaps.lazy_background_fetch,
            },
            blobs,
            mounter,
        )
        .context("open lazy snapshotter")?,
    );
    backends.insert(
        "lazy",
        Backend::new(lazy.clone(), Whiteouts::Overlay)
            .with_cleanup(lazy.clone())
            .with_remote(lazy.clone())
            .with_rebase(lazy)
            .with_root(&lazy_root),
    );
    let native_root = dir.join("native");
    let native = NativeSnapshotter::new(&native_root).context("open native snapshotter")?;
    backends.insert(
        "native",
        Backend::of(Arc::new(native)).with_root(&native_root),
    );
    let btrfs_root = snaps
        .btrfs_root
        .clone()
        .unwrap_or_else(|| dir.join("btrfs"));
    let btrfs = match &snaps.btrfs_root {
        Some(r) => Some(BtrfsSnapshotter::new(r).context("open btrfs snapshotter")?),
        // Without configuration btrfs is served only if strata's own root is on btrfs.
        None => match BtrfsSnapshotter::new(&btrfs_root) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == strata_snapshotter::ErrorKind::InvalidArgument => {
                info!("btrfs snapshotter not served: {e}");
                None
            }
            Err(e) => return Err(anyhow::Error::new(e).context("open btrfs snapshotter")),
        },
    };
    if let Some(b) = btrfs {
        backends.insert("btrfs", Backend::of(Arc::new(b)).with_root(&btrfs_root));
    }
    Ok(backends)
}

/// Snapshot events onto the daemon's event bus: every commit, through the snapshots
/// service or a pull's unpacker, is published once.
struct BusSnapshotEvents(Events);

impl SnapshotEvents for BusSnapshotEvents {
    fn publish(&self, ns: &str, snapshotter: &str, event: SnapshotEvent) {
        match event {
            SnapshotEvent::Commit { key, name } => self.0.publish(
                ns,
                strata_shim_runner::events::SNAPSHOT_COMMIT,
                pb_event::Event::Snapshot(spb::SnapshotEvent {
                    snapshotter: snapshotter.to_owned(),
                    key,
                    name,
                }),
            ),
        }
    }
}

/// The lifecycle's images: resolved from the content store (once it is open) by the
/// puller's local resolution, so the runtime crate links no store.
struct StoreImages {
    store: StoreCell,
    rt: tokio::runtime::Handle,
}

impl ImageResolver for StoreImages {
    fn resolve(
        &self,
        ns: &strata_proto::ident::Namespace,
        name: &str,
        platform: &strata_proto::Platform,
    ) -> strata_proto::Result<ResolvedImage> {
        let store = self
            .rt
            .block_on(self.store.get("content store"))
            .map_err(|s| {
                strata_proto::Error::new(
                    strata_proto::ErrorKind::Unavailable,
                    s.message().to_owned(),
                )
            })?;
        let image = strata_puller::local::resolve(&store, ns, name, platform)?;
        Ok(ResolvedImage {
            name: image.name,
            manifest: image.manifest,
            config: image.config,
            chain_id: image.chain_id,
        })
    }
}

/// One garbage collection: content first, then the snapshots strata's puller made that
/// no image references.
fn collect(
    store: &LocalStore,
    backends: &Backends,
) -> strata_proto::Result<(strata_content::GcReport, usize)> {
    let r = store
        .garbage_collect()
        .map_err(|e| e.context("collect content"))?;
    let mut snapshots = 0;
    for (name, b) in backends.iter() {
        snapshots += strata_puller::gc::collect_snapshots(store, name, &**b.snapshotter())?;
    }
    Ok((r, snapshots))
}

async fn run_gc_loop(store: LocalStore, backends: BackendsCell, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = store.clone();
        let Ok(b) = backends.get("snapshotters").await else {
            continue;
        };
        match tokio::task::spawn_blocking(move || collect(&s, &b)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = ?e, "garbage collection failed"),
            Err(e) => warn!(error = %e, "garbage collection task failed"),
        }
    }
}
