//! `strata.v1.Images`: pulls with a progress stream, and the image records, over gRPC.
//! Requests are scoped by the `containerd-namespace` header (`default` without one).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use strata_content::service::{StoreCell, scope_from_metadata};
use strata_content::{Image, Namespace};
use strata_proto::serve::blocking;
use strata_proto::status_from_error;
use strata_proto::strata::v1 as pb;
use strata_proto::time::to_timestamp;
use strata_snapshotter::Rebase;
use strata_snapshotter::observe::{Discard, SnapshotEvents};
use strata_snapshotter::service::BackendsCell;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::pull::{Progress, PullRequest, UnpackTo, pull};
use crate::registry::{
    ClientOptions, Credentials, DockerConfig, HostOptions, Platform, RegistryClient,
};
use crate::{Result, WhiteoutMode};

/// Where containerd keeps per-registry `hosts.toml` files; strata reads the same.
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// Where the daemon finds registry settings.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// containerd-style `hosts.toml` directory; skipped when it does not exist.
    pub hosts_dir: PathBuf,
    /// A Docker `config.json` with credentials; `None` = `$DOCKER_CONFIG` or
    /// `~/.docker/config.json` of the daemon.
    pub docker_config: Option<PathBuf>,
}

impl RegistrySettings {
    /// A registry client with these settings: the hosts directory (if it exists) and the
    /// docker config as they are now, `plain_http` for hosts without a `hosts.toml`, and
    /// `user`'s credentials over the config's.
    pub fn client(&self, plain_http: bool, user: Option<Credentials>) -> Result<RegistryClient> {
        let docker_config = match &self.docker_config {
            Some(path) => DockerConfig::load(path)?,
            None => DockerConfig::load_default().unwrap_or_default(),
        };
        Ok(RegistryClient::new(ClientOptions {
            hosts: HostOptions {
                hosts_dir: self.hosts_dir.is_dir().then(|| self.hosts_dir.clone()),
                plain_http,
            },
            user,
            docker_config,
            ..ClientOptions::default()
        }))
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            hosts_dir: PathBuf::from(DEFAULT_HOSTS_DIR),
            docker_config: None,
        }
    }
}

/// Called after each successful pull with the namespace, the snapshotter unpacked into
/// (empty for a fetch only) and the final progress: the image's name and digest, and the
/// snapshots each layer was committed as (the daemon publishes events with them).
pub type PulledHook = Arc<dyn Fn(&str, &str, &Progress) + Send + Sync>;

/// The Images service.
#[derive(Clone)]
pub struct ImagesService {
    store: StoreCell,
    backends: BackendsCell,
    registry: RegistrySettings,
    on_pulled: Option<PulledHook>,
    events: Arc<dyn SnapshotEvents>,
}

impl ImagesService {
    /// Serves images of `store`, unpacking into `backends`.
    pub fn new(store: StoreCell, backends: BackendsCell, registry: RegistrySettings) -> Self {
        ImagesService {
            store,
            backends,
            registry,
            on_pulled: None,
            events: Arc::new(Discard),
        }
    }

    /// Reports the commits of every unpack to `events`, with the pull's namespace (the
    /// unpacker commits through an [`Observed`](strata_snapshotter::Observed) wrapper, as the snapshots service does).
    pub fn with_snapshot_events(mut self, events: Arc<dyn SnapshotEvents>) -> Self {
        self.events = events;
        self
    }

    /// Calls `hook` after every successful pull.
    pub fn with_pulled_hook(mut self, hook: PulledHook) -> Self {
        self.on_pulled = Some(hook);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::images_server::ImagesServer<Self> {
        pb::images_server::ImagesServer::new(self)
    }
}

fn namespace<T>(req: &Request<T>) -> Result<Namespace, Status> {
    let scope = scope_from_metadata(req.metadata())?;
    Ok(scope
        .namespace
        .unwrap_or_else(|| Namespace::new("default").expect("a valid namespace")))
}

fn image_out(i: &Image) -> pb::Image {
    pb::Image {
        name: i.name.clone(),
        labels: i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        target: Some(strata_proto::containerd::types::Descriptor {
            media_type: i.target.media_type.clone(),
            digest: i.target.digest.to_string(),
            size: i64::try_from(i.target.size).unwrap_or(i64::MAX),
            annotations: Default::default(),
        }),
        created_at: Some(to_timestamp(i.created_at)),
        updated_at: Some(to_timestamp(i.updated_at)),
    }
}

fn progress_out(p: &Progress) -> pb::PullProgress {
    pb::PullProgress {
        stage: p.stage.into(),
        name: p.name.clone(),
        digest: p
            .digest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        layers: p
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| pb::LayerProgress {
                index: i as u32,
                digest: l.digest.to_string(),
                size: l.size as i64,
                fetched: l.fetched as i64,
                unpacked: l.unpacked as i64,
                state: l.state.into(),
            })
            .collect(),
        chain_id: p
            .chain_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    type PullStream = BoxStream<pb::PullProgress>;

    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let platform = if r.platform.is_empty() {
            Platform::host()
        } else {
            Platform::parse(&r.platform).map_err(|e| status_from_error(&e))?
        };
        let user = if r.user.is_empty() {
            None
        } else {
            Some(Credentials::parse_user_pass(&r.user).map_err(|e| status_from_error(&e))?)
        };
        let store = self.store.get("content store").await?;
        let backends = self.backends.get("snapshotters").await?;
        let settings = &self.registry;
        // Read per pull, so `docker login` and hosts.toml edits apply without a restart.
        let client = settings
            .client(r.plain_http, user)
            .map_err(|e| status_from_error(&e))?;
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::channel(64);
        let on_pulled = self.on_pulled.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let name = backends.route_name(&r.snapshotter);
            let backend = backends.get(&name).cloned();
            let observed = backend
                .as_ref()
                .map(|b| b.observed(events, ns.as_str(), &name));
            let unpack = match (&backend, &observed, r.no_unpack) {
                (Some(b), Some(o), false) => Some(UnpackTo {
                    name: name.clone(),
                    snapshotter: o,
                    rebase: o.can_rebase().then_some(o as &(dyn Rebase + Send + Sync)),
                    whiteouts: WhiteoutMode::of(b.whiteouts()),
                }),
                _ => None,
            };
            let preq = PullRequest {
                reference: &r.reference,
                platform,
                concurrency: if r.max_concurrent_downloads == 0 {
                    3
                } else {
                    r.max_concurrent_downloads as usize
                },
                unpack,
            };
            let last = std::sync::Mutex::new(None::<SystemTime>);
            let on = |p: &Progress| {
                // At most ~20 updates a second, but every stage change and the end.
                let now = SystemTime::now();
                let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
                let due =
                    l.is_none_or(|t| now.duration_since(t).unwrap_or_default().as_millis() >= 50);
                if due || p.stage != "fetching" {
                    *l = Some(now);
                    let _ = tx.blocking_send(Ok(progress_out(p)));
                }
            };
            match pull(&rt, &client, &store, &ns, &preq, &on) {
                Ok(p) => {
                    if let Some(hook) = &on_pulled {
                        let unpacked_into = if r.no_unpack { "" } else { name.as_str() };
                        hook(ns.as_str(), unpacked_into, &p);
                    }
                    let _ = tx.blocking_send(Ok(progress_out(&p)));
                }
                Err(e) => {
                    tracing::warn!(reference = %r.reference, error = ?e, "pull failed");
                    let _ = tx.blocking_send(Err(status_from_error(&e)));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let ns = namespace(&req)?;
        let filters = req.into_inner().filters;
        let store = self.store.get("content store").await?;
        let images = blocking(move || store.list_images(&ns, &filters)).await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.iter().map(image_out).collect(),
        }))
    }

    async fn get(&self, req: Request<pb::GetImageRequest>) -> Result<Response<pb::Image>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let store = self.store.get("content store").await?;
        let image = blocking(move || store.get_image(&ns, &name)).await?;
        Ok(Response::new(image_out(&image)))
    }

    async fn delete(&self, req: Request<pb::DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        let store = self.store.get("content store").await?;
        blocking(move || store.delete_image(&ns, &name)).await?;
        Ok(Response::new(()))
    }
}
