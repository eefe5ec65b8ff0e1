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
use crate::api::{Info, Kind, Labels, Mount, Rebase, Snapshotter};
pub use crate::backends::Backends;
use crate::observe::SnapshotEvents;
use crate::remote::check_target;

/// The backends, possibly still opening.
pub type BackendsCell = ReadyCell<Backends>;

/// The backend a request for `name` goes to, waiting for the backends to open.
async fn backend(cell: &BackendsCell, name: &str) -> Result<Arc<dyn Snapshotter>, Status> {
    let b = cell.get("snapshotters").await?;
    b.route(name)
        .map(|b| b.snapshotter().clone())
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

pub use crate::remote::{OWNER_LABEL, SNAPSHOT_REF_LABEL};

/// Whether the request comes from a namespaced (strata) client.
fn namespaced<T>(req: &Request<T>) -> bool {
    req.metadata().get(strata_proto::NAMESPACE_HEADER).is_some()
}

/// The snapshots.v1 service.
#[derive(Clone)]
pub struct SnapshotsService {
    backends: BackendsCell,
    events: Option<Arc<dyn SnapshotEvents>>,
}

impl SnapshotsService {
    /// Serves `backends`.
    pub fn new(backends: BackendsCell) -> Self {
        SnapshotsService {
            backends,
            events: None,
        }
    }

    /// Reports every commit to `events` (through an [`Observed`](crate::Observed) wrapper around the
    /// backend, with the request's namespace header; empty without one).
    pub fn with_events(mut self, events: Arc<dyn SnapshotEvents>) -> Self {
        self.events = Some(events);
        self
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
        let b = self.backends.get("snapshotters").await?;
        let be = b
            .route(&r.snapshotter)
            .cloned()
            .ok_or_else(|| Status::failed_precondition("no snapshotter is configured"))?;
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        let mounts = blocking(move || {
            let parent = parent(&r.parent);
            if let Some(target) = r.labels.get(SNAPSHOT_REF_LABEL) {
                check_target(&be.targets(), target, parent.as_deref(), see_owned)?;
            }
            be.snapshotter()
                .prepare(&r.key, parent.as_deref(), labels_in(r.labels))
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
        let b = self.backends.get("snapshotters").await?;
        let be = b
            .route(&r.snapshotter)
            .cloned()
            .ok_or_else(|| Status::failed_precondition("no snapshotter is configured"))?;
        if !r.parent.is_empty() && be.rebase().is_none() {
            return Err(Status::unimplemented(
                "this snapshotter cannot rebase on commit",
            ));
        }
        let events = self.events.clone();
        blocking(move || {
            let sn = match events {
                Some(ev) => be.observed(ev, &ns, &r.snapshotter),
                None => be.observed(Arc::new(crate::observe::Discard), &ns, &r.snapshotter),
            };
            if r.parent.is_empty() {
                sn.commit(&r.name, &r.key, labels_in(r.labels))
            } else {
                sn.commit_onto(&r.name, &r.key, &r.parent, labels_in(r.labels))
            }
        })
        .await?;
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
            .route(&req.get_ref().snapshotter)
            .and_then(|b| b.cleanup().cloned())
            .ok_or_else(|| Status::unimplemented("cleanup"))?;
        blocking(move || c.cleanup()).await?;
        Ok(Response::new(()))
    }
}
