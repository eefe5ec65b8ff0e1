//! `containerd.services.snapshots.v1.Snapshots` over any [`Snapshotter`]s.
//!
//! Each request names its snapshotter; an unknown or empty name goes to the default
//! backend, so a containerd proxy plugin of any name works. Backends may still be opening
//! when the socket is bound: requests wait for them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use strata_proto::containerd::services::snapshots::v1 as pb;
use strata_proto::containerd::types::Mount as PbMount;
use strata_proto::serve::{ReadyCell, blocking};
use strata_proto::time::{from_timestamp, to_timestamp};
use tonic::{Request, Response, Status};

use crate::Result;
use crate::api::{Cleanup, Info, Kind, Labels, Mount, Rebase, Snapshotter};

/// The backends a service routes to, by name, plus the default.
#[derive(Clone)]
pub struct Backends {
    /// Backends by snapshotter name.
    pub by_name: HashMap<String, Arc<dyn Snapshotter>>,
    /// Name of the backend for unknown or empty names.
    pub default: String,
    /// Backends with the [`Cleanup`] capability, by the same names.
    pub cleaners: HashMap<String, Arc<dyn Cleanup + Send + Sync>>,
    /// Backends with the [`Rebase`] capability, by the same names.
    pub rebasers: HashMap<String, Arc<dyn Rebase + Send + Sync>>,
}

/// The backends, possibly still opening.
pub type BackendsCell = ReadyCell<Backends>;

impl Backends {
    /// The backend `name` routes to: itself if configured, else the default.
    pub fn route_name(&self, name: &str) -> String {
        self.route(name)
    }

    fn route(&self, name: &str) -> String {
        if self.by_name.contains_key(name) {
            name.to_owned()
        } else {
            self.default.clone()
        }
    }
}

/// The backend a request for `name` goes to, waiting for the backends to open.
async fn backend(cell: &BackendsCell, name: &str) -> Result<Arc<dyn Snapshotter>, Status> {
    let b = cell.get("snapshotters").await?;
    b.by_name
        .get(&b.route(name))
        .cloned()
        .ok_or_else(|| Status::failed_precondition("no snapshotter is configured"))
}

fn mounts_out(m: Vec<Mount>) -> Vec<PbMount> {
    m.into_iter()
        .map(|m| PbMount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

fn info_out(i: &Info) -> pb::Info {
    pb::Info {
        name: i.name.clone(),
        parent: i.parent.clone().unwrap_or_default(),
        kind: match i.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(to_timestamp(i.created_at)),
        updated_at: Some(to_timestamp(i.updated_at)),
        labels: i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn labels_in(m: HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

fn parent(p: &str) -> Option<String> {
    (!p.is_empty()).then(|| p.to_owned())
}

/// Label on snapshots strata itself made (its puller): the strata namespace owning them.
/// Requests without a namespace header (a proxying containerd, whose garbage collector
/// removes every backend snapshot it did not record) never see them in List, nor adopt
/// them through the remote-snapshot handshake.
pub const OWNER_LABEL: &str = "strata.io/owner";

/// Whether the request comes from a namespaced (strata) client.
fn namespaced<T>(req: &Request<T>) -> bool {
    req.metadata().get(strata_proto::NAMESPACE_HEADER).is_some()
}

/// The label containerd's unpacker puts on a layer's Prepare (and Commit): the chainID
/// the layer will be committed as.
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";

/// containerd's remote-snapshot handshake: when a committed snapshot labelled with the
/// same target and parent already exists, Prepare answers `AlreadyExists` and containerd
/// adopts that snapshot (it Lists with the label and parent) instead of unpacking the
/// layer again. Layers are so shared between containerd namespaces, and a lazily fetched
/// backend plugs in by committing the target itself.
fn target_exists(
    sn: &dyn Snapshotter,
    target: &str,
    parent: Option<&str>,
    see_owned: bool,
) -> crate::Result<()> {
    let mut found = None;
    sn.walk(&["kind==committed".to_owned()], &mut |i| {
        if found.is_none()
            && (see_owned || !i.labels.contains_key(OWNER_LABEL))
            && i.labels.get(SNAPSHOT_REF_LABEL).map(String::as_str) == Some(target)
            && i.parent.as_deref() == parent
        {
            found = Some(i.name);
        }
        Ok(())
    })?;
    match found {
        Some(name) => Err(crate::Error::new(
            crate::ErrorKind::AlreadyExists,
            format!("target snapshot {target:?} already exists as {name:?}"),
        )),
        None => Ok(()),
    }
}

/// The snapshots.v1 service.
#[derive(Clone)]
pub struct SnapshotsService {
    backends: BackendsCell,
    on_commit: Option<CommitHook>,
}

/// Called after each commit through the service with the namespace header's value (empty
/// without one), the snapshotter's name, the active key and the committed name.
pub type CommitHook = Arc<dyn Fn(&str, &str, &str, &str) + Send + Sync>;

impl SnapshotsService {
    /// Serves `backends`.
    pub fn new(backends: BackendsCell) -> Self {
        SnapshotsService {
            backends,
            on_commit: None,
        }
    }

    /// Calls `hook` after every successful commit.
    pub fn with_commit_hook(mut self, hook: CommitHook) -> Self {
        self.on_commit = Some(hook);
        self
    }

    fn committed(&self, req_ns: &str, snapshotter: &str, key: &str, name: &str) {
        if let Some(hook) = &self.on_commit {
            hook(req_ns, snapshotter, key, name);
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::snapshots_server::SnapshotsServer<Self> {
        pb::snapshots_server::SnapshotsServer::new(self)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let see_owned = namespaced(&req);
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        let mounts = blocking(move || {
            let parent = parent(&r.parent);
            if let Some(target) = r.labels.get(SNAPSHOT_REF_LABEL) {
                target_exists(&*sn, target, parent.as_deref(), see_owned)?;
            }
            sn.prepare(&r.key, parent.as_deref(), labels_in(r.labels))
        })
        .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_out(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        let mounts =
            blocking(move || sn.view(&r.key, parent(&r.parent).as_deref(), labels_in(r.labels)))
                .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_out(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        let mounts = blocking(move || sn.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_out(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = req
            .metadata()
            .get(strata_proto::NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let r = req.into_inner();
        tracing::debug!(key = %r.key, name = %r.name, parent = %r.parent, labels = ?r.labels, "commit");
        let (snapshotter, key, name) = (r.snapshotter.clone(), r.key.clone(), r.name.clone());
        if !r.parent.is_empty() {
            let b = self.backends.get("snapshotters").await?;
            let sn = b
                .rebasers
                .get(&b.route(&r.snapshotter))
                .cloned()
                .ok_or_else(|| Status::unimplemented("this snapshotter cannot rebase on commit"))?;
            blocking(move || sn.commit_onto(&r.name, &r.key, &r.parent, labels_in(r.labels)))
                .await?;
        } else {
            let sn = backend(&self.backends, &r.snapshotter).await?;
            blocking(move || sn.commit(&r.name, &r.key, labels_in(r.labels))).await?;
        }
        self.committed(&ns, &snapshotter, &key, &name);
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        blocking(move || sn.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        let info = blocking(move || sn.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_out(&info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("update request has no info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        let now = std::time::SystemTime::now();
        let info = Info {
            name: i.name,
            parent: parent(&i.parent),
            kind: Kind::Active,
            created_at: i.created_at.as_ref().map_or(now, from_timestamp),
            updated_at: now,
            labels: labels_in(i.labels),
        };
        let info = blocking(move || sn.update(info, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_out(&info)),
        }))
    }

    type ListStream = BoxStream<pb::ListSnapshotsResponse>;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let see_owned = namespaced(&req);
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        let infos = blocking(move || {
            let mut v = Vec::new();
            sn.walk(&r.filters, &mut |i| {
                if see_owned || !i.labels.contains_key(OWNER_LABEL) {
                    v.push(info_out(&i));
                }
                Ok(())
            })?;
            Ok::<_, crate::Error>(v)
        })
        .await?;
        let batches: Vec<_> = infos
            .chunks(100)
            .map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let sn = backend(&self.backends, &r.snapshotter).await?;
        let u = blocking(move || sn.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let b = self.backends.get("snapshotters").await?;
        // A backend without the capability answers Unimplemented, which containerd ignores.
        let c = b
            .cleaners
            .get(&b.route(&req.get_ref().snapshotter))
            .cloned()
            .ok_or_else(|| Status::unimplemented("cleanup"))?;
        blocking(move || c.cleanup()).await?;
        Ok(Response::new(()))
    }
}
