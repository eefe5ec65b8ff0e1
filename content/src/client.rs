//! The content contract over gRPC: a client of `containerd.services.content.v1` and
//! `leases.v1` (strata's daemon, or any containerd-compatible endpoint) that implements
//! the same traits as [`crate::LocalStore`].
//!
//! The traits are synchronous; this adapter drives its async client on a runtime handle
//! the caller passes in, so it must be used from outside that runtime's worker threads
//! (a plain thread or `spawn_blocking`).

use std::collections::HashMap;

use strata_proto::containerd::services::content::v1 as pb;
use strata_proto::containerd::services::content::v1::content_client::ContentClient;
use strata_proto::containerd::services::leases::v1 as lpb;
use strata_proto::containerd::services::leases::v1::leases_client::LeasesClient;
use strata_proto::time::from_timestamp;
use strata_proto::{Digest, LEASE_HEADER, NAMESPACE_HEADER};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Streaming};

use crate::api::{
    Info, IngestManager, Ingester, Labels, Lease, LeaseManager, Manager, Provider, Resource, Scope,
    Status, Writer, WriterOptions,
};
use crate::{Error, ErrorKind, Result};

/// A content store reached over gRPC.
#[derive(Clone)]
pub struct GrpcStore {
    rt: Handle,
    content: ContentClient<Channel>,
    leases: LeasesClient<Channel>,
}

impl GrpcStore {
    /// A store over `channel`, driven on `rt`.
    pub fn new(channel: Channel, rt: Handle) -> Self {
        GrpcStore {
            rt,
            content: ContentClient::new(channel.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
            leases: LeasesClient::new(channel),
        }
    }
}

/// Wraps a message with the scope's headers.
pub(crate) fn request<T>(scope: &Scope, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    let md = req.metadata_mut();
    if let Some(ns) = &scope.namespace
        && let Ok(v) = ns.as_str().parse()
    {
        md.insert(NAMESPACE_HEADER, v);
    }
    if let Some(l) = &scope.lease
        && let Ok(v) = l.parse()
    {
        md.insert(LEASE_HEADER, v);
    }
    req
}

fn info_from(i: pb::Info) -> Result<Info> {
    Ok(Info {
        digest: parse_digest(&i.digest)?,
        size: u64::try_from(i.size).unwrap_or(0),
        created_at: i
            .created_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or(std::time::UNIX_EPOCH),
        updated_at: i
            .updated_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or(std::time::UNIX_EPOCH),
        labels: i.labels.into_iter().collect(),
    })
}

fn status_from(s: pb::Status) -> Result<Status> {
    Ok(Status {
        r#ref: s.r#ref,
        offset: u64::try_from(s.offset).unwrap_or(0),
        total: u64::try_from(s.total).unwrap_or(0),
        expected: match s.expected.as_str() {
            "" => None,
            d => Some(parse_digest(d)?),
        },
        started_at: s
            .started_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or(std::time::UNIX_EPOCH),
        updated_at: s
            .updated_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or(std::time::UNIX_EPOCH),
    })
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| {
        Error::new(ErrorKind::DataLoss, "server sent an invalid digest").with_source(e)
    })
}

fn labels_out(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn lease_from(l: lpb::Lease) -> Lease {
    Lease {
        id: l.id,
        created_at: l
            .created_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or(std::time::UNIX_EPOCH),
        labels: l.labels.into_iter().collect(),
    }
}

impl Provider for GrpcStore {
    fn info(&self, scope: &Scope, digest: &Digest) -> Result<Info> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::InfoRequest {
                digest: digest.to_string(),
            },
        );
        let resp = self.rt.block_on(c.info(req))?.into_inner();
        info_from(
            resp.info
                .ok_or_else(|| Error::new(ErrorKind::DataLoss, "info response is empty"))?,
        )
    }

    fn read_at(
        &self,
        scope: &Scope,
        digest: &Digest,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::ReadContentRequest {
                digest: digest.to_string(),
                offset: i64::try_from(offset)
                    .map_err(|_| Error::new(ErrorKind::OutOfRange, "offset"))?,
                size: i64::try_from(buf.len()).unwrap_or(i64::MAX),
            },
        );
        self.rt.block_on(async {
            let mut stream = c.read(req).await?.into_inner();
            let mut n = 0;
            while let Some(m) = stream.message().await? {
                let take = m.data.len().min(buf.len() - n);
                buf[n..n + take].copy_from_slice(&m.data[..take]);
                n += take;
                if n == buf.len() {
                    break;
                }
            }
            Ok(n)
        })
    }

    fn reader(&self, scope: &Scope, digest: &Digest) -> Result<Box<dyn crate::api::ReadAt>> {
        Provider::info(self, scope, digest)?;
        Ok(Box::new(GrpcReader {
            store: self.clone(),
            scope: scope.clone(),
            digest: digest.clone(),
        }))
    }
}

/// A blob read over gRPC, one Read call per `read_at`.
struct GrpcReader {
    store: GrpcStore,
    scope: Scope,
    digest: Digest,
}

impl crate::api::ReadAt for GrpcReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        Provider::read_at(&self.store, &self.scope, &self.digest, offset, buf)
            .map_err(std::io::Error::other)
    }
}

/// A Write stream held open as one writer.
struct GrpcWriter {
    rt: Handle,
    tx: Option<mpsc::Sender<pb::WriteContentRequest>>,
    rx: Streaming<pb::WriteContentResponse>,
    status: Status,
    digest: Digest,
}

impl GrpcWriter {
    fn round_trip(&mut self, msg: pb::WriteContentRequest) -> Result<pb::WriteContentResponse> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::precondition("writer is closed"))?
            .clone();
        let rx = &mut self.rx;
        let resp = self.rt.block_on(async move {
            // A failed send means the server ended the stream: its error is on `rx`.
            let _ = tx.send(msg).await;
            rx.message().await
        });
        match resp {
            Ok(Some(r)) => {
                self.status.offset = u64::try_from(r.offset).unwrap_or(0);
                if !r.digest.is_empty() {
                    self.digest = parse_digest(&r.digest)?;
                }
                Ok(r)
            }
            Ok(None) => {
                self.tx = None;
                Err(Error::new(ErrorKind::Unavailable, "write stream ended"))
            }
            Err(s) => {
                self.tx = None;
                Err(s.into())
            }
        }
    }
}

impl Writer for GrpcWriter {
    fn status(&self) -> Result<Status> {
        Ok(self.status.clone())
    }

    fn digest(&self) -> Digest {
        self.digest.clone()
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(1 << 20) {
            let offset = i64::try_from(self.status.offset).unwrap_or(i64::MAX);
            self.round_trip(pb::WriteContentRequest {
                action: pb::WriteAction::Write as i32,
                offset,
                data: chunk.to_vec().into(),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        if size != 0 {
            return Err(Error::invalid("only truncation to 0 is supported"));
        }
        self.round_trip(pb::WriteContentRequest {
            action: pb::WriteAction::Write as i32,
            offset: 0,
            ..Default::default()
        })?;
        Ok(())
    }

    fn commit(&mut self, size: u64, expected: Option<&Digest>, labels: Labels) -> Result<Digest> {
        let r = self.round_trip(pb::WriteContentRequest {
            action: pb::WriteAction::Commit as i32,
            offset: i64::try_from(self.status.offset).unwrap_or(i64::MAX),
            total: i64::try_from(size).unwrap_or(i64::MAX),
            expected: expected.map(ToString::to_string).unwrap_or_default(),
            labels: labels_out(&labels),
            ..Default::default()
        })?;
        parse_digest(&r.digest)
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        // Ending our half of the stream makes the server close its writer; its response
        // stream ends only after that, so waiting for the end means the ref is free.
        self.tx = None;
        let rx = &mut self.rx;
        self.rt
            .block_on(async move { while let Ok(Some(_)) = rx.message().await {} });
        Ok(())
    }
}

impl Ingester for GrpcStore {
    fn ingest_reader(&self, _: &Scope, r: &str) -> Result<Box<dyn crate::api::ReadAt>> {
        Err(Error::new(
            ErrorKind::Unimplemented,
            format!("ingest {r:?}: content.v1 cannot read an ingest while it is written"),
        ))
    }

    fn writer(&self, scope: &Scope, opts: WriterOptions) -> Result<Box<dyn Writer>> {
        let mut c = self.content.clone();
        let (tx, rx) = mpsc::channel(2);
        let stat = pb::WriteContentRequest {
            action: pb::WriteAction::Stat as i32,
            r#ref: opts.r#ref.clone(),
            total: i64::try_from(opts.total).unwrap_or(i64::MAX),
            expected: opts
                .expected
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            ..Default::default()
        };
        let req = request(scope, ReceiverStream::new(rx));
        let (resp_stream, first) = self.rt.block_on(async {
            tx.send(stat)
                .await
                .map_err(|_| Error::new(ErrorKind::Unavailable, "write stream closed"))?;
            let mut s = c.write(req).await?.into_inner();
            let first = s.message().await?;
            Ok::<_, Error>((s, first))
        })?;
        let first =
            first.ok_or_else(|| Error::new(ErrorKind::Unavailable, "write stream ended"))?;
        let status = Status {
            r#ref: opts.r#ref,
            offset: u64::try_from(first.offset).unwrap_or(0),
            total: u64::try_from(first.total).unwrap_or(0),
            expected: opts.expected,
            started_at: first
                .started_at
                .as_ref()
                .map(from_timestamp)
                .unwrap_or(std::time::UNIX_EPOCH),
            updated_at: first
                .updated_at
                .as_ref()
                .map(from_timestamp)
                .unwrap_or(std::time::UNIX_EPOCH),
        };
        Ok(Box::new(GrpcWriter {
            rt: self.rt.clone(),
            tx: Some(tx),
            rx: resp_stream,
            status,
            digest: parse_digest(&first.digest)?,
        }))
    }
}

impl IngestManager for GrpcStore {
    fn status(&self, scope: &Scope, r: &str) -> Result<Status> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::StatusRequest {
                r#ref: r.to_owned(),
            },
        );
        let resp = self.rt.block_on(c.status(req))?.into_inner();
        status_from(
            resp.status
                .ok_or_else(|| Error::new(ErrorKind::DataLoss, "status response is empty"))?,
        )
    }

    fn list_statuses(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Status>> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::ListStatusesRequest {
                filters: filters.to_vec(),
            },
        );
        let resp = self.rt.block_on(c.list_statuses(req))?.into_inner();
        resp.statuses.into_iter().map(status_from).collect()
    }

    fn abort(&self, scope: &Scope, r: &str) -> Result<()> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::AbortRequest {
                r#ref: r.to_owned(),
            },
        );
        self.rt.block_on(c.abort(req))?;
        Ok(())
    }
}

impl Manager for GrpcStore {
    fn update(
        &self,
        scope: &Scope,
        digest: &Digest,
        labels: Labels,
        fieldpaths: &[String],
    ) -> Result<Info> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::UpdateRequest {
                info: Some(pb::Info {
                    digest: digest.to_string(),
                    labels: labels_out(&labels),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: fieldpaths.to_vec(),
                }),
            },
        );
        let resp = self.rt.block_on(c.update(req))?.into_inner();
        info_from(
            resp.info
                .ok_or_else(|| Error::new(ErrorKind::DataLoss, "update response is empty"))?,
        )
    }

    fn walk(
        &self,
        scope: &Scope,
        filters: &[String],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::ListContentRequest {
                filters: filters.to_vec(),
            },
        );
        let infos = self.rt.block_on(async {
            let mut s = c.list(req).await?.into_inner();
            let mut all = Vec::new();
            while let Some(m) = s.message().await? {
                all.extend(m.info);
            }
            Ok::<_, Error>(all)
        })?;
        for i in infos {
            f(info_from(i)?)?;
        }
        Ok(())
    }

    fn delete(&self, scope: &Scope, digest: &Digest) -> Result<()> {
        let mut c = self.content.clone();
        let req = request(
            scope,
            pb::DeleteContentRequest {
                digest: digest.to_string(),
            },
        );
        self.rt.block_on(c.delete(req))?;
        Ok(())
    }
}

impl LeaseManager for GrpcStore {
    fn create_lease(&self, scope: &Scope, id: &str, labels: Labels) -> Result<Lease> {
        let mut c = self.leases.clone();
        let req = request(
            scope,
            lpb::CreateRequest {
                id: id.to_owned(),
                labels: labels_out(&labels),
            },
        );
        let resp = self.rt.block_on(c.create(req))?.into_inner();
        Ok(lease_from(resp.lease.ok_or_else(|| {
            Error::new(ErrorKind::DataLoss, "create response is empty")
        })?))
    }

    fn delete_lease(&self, scope: &Scope, id: &str, sync: bool) -> Result<()> {
        let mut c = self.leases.clone();
        let req = request(
            scope,
            lpb::DeleteRequest {
                id: id.to_owned(),
                sync,
            },
        );
        self.rt.block_on(c.delete(req))?;
        Ok(())
    }

    fn list_leases(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Lease>> {
        let mut c = self.leases.clone();
        let req = request(
            scope,
            lpb::ListRequest {
                filters: filters.to_vec(),
            },
        );
        let resp = self.rt.block_on(c.list(req))?.into_inner();
        Ok(resp.leases.into_iter().map(lease_from).collect())
    }

    fn add_resource(&self, scope: &Scope, id: &str, r: Resource) -> Result<()> {
        let mut c = self.leases.clone();
        let req = request(
            scope,
            lpb::AddResourceRequest {
                id: id.to_owned(),
                resource: Some(lpb::Resource {
                    id: r.id,
                    r#type: r.r#type,
                }),
            },
        );
        self.rt.block_on(c.add_resource(req))?;
        Ok(())
    }

    fn delete_resource(&self, scope: &Scope, id: &str, r: Resource) -> Result<()> {
        let mut c = self.leases.clone();
        let req = request(
            scope,
            lpb::DeleteResourceRequest {
                id: id.to_owned(),
                resource: Some(lpb::Resource {
                    id: r.id,
                    r#type: r.r#type,
                }),
            },
        );
        self.rt.block_on(c.delete_resource(req))?;
        Ok(())
    }

    fn list_resources(&self, scope: &Scope, id: &str) -> Result<Vec<Resource>> {
        let mut c = self.leases.clone();
        let req = request(scope, lpb::ListResourcesRequest { id: id.to_owned() });
        let resp = self.rt.block_on(c.list_resources(req))?.into_inner();
        Ok(resp
            .resources
            .into_iter()
            .map(|r| Resource {
                id: r.id,
                r#type: r.r#type,
            })
            .collect())
    }
}
