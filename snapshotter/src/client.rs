//! The snapshotter contract over gRPC: a client of `containerd.services.snapshots.v1`
//! (strata's daemon, or containerd's own socket) that implements [`Snapshotter`], so the
//! conformance suite, the CLI and the lifecycle layer work against any endpoint.
//!
//! The trait is synchronous; the adapter drives its async client on a runtime handle the
//! caller passes in, so it must be used from outside that runtime's worker threads.

use std::collections::HashMap;
use std::future::Future;
use std::time::UNIX_EPOCH;

use strata_proto::NAMESPACE_HEADER;
use strata_proto::containerd::services::snapshots::v1 as pb;
use strata_proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use strata_proto::time::from_timestamp;
use tokio::runtime::Handle;
use tonic::Request;
use tonic::transport::Channel;

use crate::api::{Cleanup, Info, Kind, Labels, Mount, Rebase, Snapshotter, Usage};
use crate::{Error, ErrorKind, Result};

/// A snapshotter reached over gRPC.
#[derive(Clone)]
pub struct GrpcSnapshotter {
    rt: Handle,
    client: SnapshotsClient<Channel>,
    snapshotter: String,
    namespace: Option<String>,
}

impl GrpcSnapshotter {
    /// The snapshotter `name` behind `channel`, driven on `rt`.
    pub fn new(channel: Channel, rt: Handle, name: &str) -> Self {
        GrpcSnapshotter {
            rt,
            client: SnapshotsClient::new(channel),
            snapshotter: name.to_owned(),
            namespace: None,
        }
    }

    /// Sends `namespace` as containerd's namespace header (containerd's own socket
    /// requires one; strata's ignores it for snapshots).
    pub fn with_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(ns) = &self.namespace
            && let Ok(v) = ns.parse()
        {
            req.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        req
    }

    fn call<F, T>(&self, op: &str, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt
            .block_on(f)
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(op, &s))
    }
}

fn status_error(op: &str, s: &tonic::Status) -> Error {
    Error::new(
        strata_proto::kind_from_status(s),
        format!("{op}: {}", s.message()),
    )
}

fn labels_out(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn mounts_in(m: Vec<strata_proto::containerd::types::Mount>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

fn info_in(i: pb::Info) -> Result<Info> {
    let kind = match pb::Kind::try_from(i.kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Active) => Kind::Active,
        Ok(pb::Kind::Committed) => Kind::Committed,
        _ => {
            return Err(Error::new(
                ErrorKind::DataLoss,
                format!(
                    "server sent snapshot {:?} of unknown kind {}",
                    i.name, i.kind
                ),
            ));
        }
    };
    Ok(Info {
        name: i.name,
        parent: (!i.parent.is_empty()).then_some(i.parent),
        kind,
        created_at: i.created_at.as_ref().map_or(UNIX_EPOCH, from_timestamp),
        updated_at: i.updated_at.as_ref().map_or(UNIX_EPOCH, from_timestamp),
        labels: i.labels.into_iter().collect(),
    })
}

impl Snapshotter for GrpcSnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        let req = self.request(pb::StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        });
        let r = self.call("stat", self.client.clone().stat(req))?;
        info_in(
            r.info
                .ok_or_else(|| Error::new(ErrorKind::DataLoss, "stat without info"))?,
        )
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let req = self.request(pb::UpdateSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            info: Some(pb::Info {
                name: info.name,
                parent: info.parent.unwrap_or_default(),
                kind: 0,
                created_at: None,
                updated_at: None,
                labels: labels_out(&info.labels),
            }),
            update_mask: (!fieldpaths.is_empty()).then(|| prost_types::FieldMask {
                paths: fieldpaths.to_vec(),
            }),
        });
        let r = self.call("update", self.client.clone().update(req))?;
        info_in(
            r.info
                .ok_or_else(|| Error::new(ErrorKind::DataLoss, "update without info"))?,
        )
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let req = self.request(pb::UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        });
        let r = self.call("usage", self.client.clone().usage(req))?;
        Ok(Usage {
            size: r.size,
            inodes: r.inodes,
        })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let req = self.request(pb::MountsRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        });
        Ok(mounts_in(
            self.call("mounts", self.client.clone().mounts(req))?.mounts,
        ))
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let req = self.request(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
            parent: parent.unwrap_or_default().to_owned(),
            labels: labels_out(&labels),
        });
        Ok(mounts_in(
            self.call("prepare", self.client.clone().prepare(req))?
                .mounts,
        ))
    }

    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let req = self.request(pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
            parent: parent.unwrap_or_default().to_owned(),
            labels: labels_out(&labels),
        });
        Ok(mounts_in(
            self.call("view", self.client.clone().view(req))?.mounts,
        ))
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let req = self.request(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels: labels_out(&labels),
            parent: String::new(),
        });
        self.call("commit", self.client.clone().commit(req))
    }

    fn remove(&self, key: &str) -> Result<()> {
        let req = self.request(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_owned(),
        });
        self.call("remove", self.client.clone().remove(req))
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        let req = self.request(pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: filters.to_vec(),
        });
        let mut client = self.client.clone();
        // The whole list is gathered before the first callback, so a callback may call
        // back into this client (containerd's StatInWalk case).
        let infos = self.rt.block_on(async move {
            let mut stream = client.list(req).await?.into_inner();
            let mut all = Vec::new();
            while let Some(batch) = stream.message().await? {
                all.extend(batch.info);
            }
            Ok::<_, tonic::Status>(all)
        });
        for i in infos.map_err(|s| status_error("list", &s))? {
            f(info_in(i)?)?;
        }
        Ok(())
    }
}

impl Rebase for GrpcSnapshotter {
    fn commit_onto(&self, name: &str, key: &str, parent: &str, labels: Labels) -> Result<()> {
        let req = self.request(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels: labels_out(&labels),
            parent: parent.to_owned(),
        });
        self.call("commit", self.client.clone().commit(req))
    }
}

impl Cleanup for GrpcSnapshotter {
    fn cleanup(&self) -> Result<()> {
        let req = self.request(pb::CleanupRequest {
            snapshotter: self.snapshotter.clone(),
        });
        self.call("cleanup", self.client.clone().cleanup(req))
    }
}
