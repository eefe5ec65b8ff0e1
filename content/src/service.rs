//! gRPC services: `containerd.services.content.v1.Content` and
//! `containerd.services.leases.v1.Leases` over a [`LocalStore`].
//!
//! Requests carry their namespace in the `containerd-namespace` header and their lease in
//! `containerd-lease`; both are optional (a proxying containerd sends neither). Store work
//! is blocking I/O and runs on tokio's blocking pool; errors map to gRPC codes once, in
//! [`strata_proto::status_from_error`].

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;

use futures::Stream;
use prost::Message;
use strata_proto::containerd::services::content::v1 as pb;
use strata_proto::containerd::services::leases::v1 as lpb;
use strata_proto::serve::{ReadyCell, blocking};
use strata_proto::time::to_timestamp;
use strata_proto::{Digest, LEASE_HEADER, status_from_error};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};
use tracing::debug;

use crate::api::{
    Info, IngestManager, Ingester, Labels, Lease, LeaseManager, Manager, Provider, Resource, Scope,
    Status, Writer, WriterOptions,
};
use crate::store::LocalStore;
use crate::{Error, Result};

/// Largest chunk a Read response carries, and the batch size target of List responses.
const CHUNK: usize = 1 << 20;

/// The store a service serves, possibly still opening: the daemon binds its socket first
/// and requests wait here until the store is ready.
pub type StoreCell = ReadyCell<LocalStore>;

fn status(e: &Error) -> GrpcStatus {
    status_from_error(e)
}

/// The request's scope from its headers.
pub fn scope_from_metadata(md: &tonic::metadata::MetadataMap) -> Result<Scope, GrpcStatus> {
    Ok(Scope {
        namespace: strata_proto::ident::namespace_from_metadata(md)?,
        lease: strata_proto::ident::header(md, LEASE_HEADER)?,
    })
}

fn parse_digest(s: &str) -> Result<Digest, GrpcStatus> {
    Digest::parse(s).map_err(|e| {
        status(&Error::invalid(format!("digest {:?}", crate::api::truncate(s))).with_source(e))
    })
}

fn labels_in(m: HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

fn labels_out(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Converts an [`Info`] to its wire form.
pub fn info_to_proto(i: &Info) -> pb::Info {
    pb::Info {
        digest: i.digest.to_string(),
        size: i64::try_from(i.size).unwrap_or(i64::MAX),
        created_at: Some(to_timestamp(i.created_at)),
        updated_at: Some(to_timestamp(i.updated_at)),
        labels: labels_out(&i.labels),
    }
}

/// Converts a [`Status`] to its wire form.
pub fn status_to_proto(s: &Status) -> pb::Status {
    pb::Status {
        started_at: Some(to_timestamp(s.started_at)),
        updated_at: Some(to_timestamp(s.updated_at)),
        r#ref: s.r#ref.clone(),
        offset: i64::try_from(s.offset).unwrap_or(i64::MAX),
        total: i64::try_from(s.total).unwrap_or(i64::MAX),
        expected: s
            .expected
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// Converts a [`Lease`] to its wire form.
pub fn lease_to_proto(l: &Lease) -> lpb::Lease {
    lpb::Lease {
        id: l.id.clone(),
        created_at: Some(to_timestamp(l.created_at)),
        labels: labels_out(&l.labels),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send>>;

/// `containerd.services.content.v1.Content` over a [`LocalStore`].
#[derive(Clone)]
pub struct ContentService {
    store: StoreCell,
}

impl ContentService {
    /// Serves `store`.
    pub fn new(store: StoreCell) -> Self {
        ContentService { store }
    }

    /// The tonic server for this service, with containerd's 16 MiB message limits.
    pub fn into_server(self) -> pb::content_server::ContentServer<Self> {
        pb::content_server::ContentServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }
}

#[tonic::async_trait]
impl pb::content_server::Content for ContentService {
    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let digest = parse_digest(&req.get_ref().digest)?;
        let store = self.store.get("content store").await?;
        let info = blocking(move || store.info(&scope, &digest)).await?;
        Ok(Response::new(pb::InfoResponse {
            info: Some(info_to_proto(&info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let req = req.into_inner();
        let info = req
            .info
            .ok_or_else(|| GrpcStatus::invalid_argument("update request has no info"))?;
        let digest = parse_digest(&info.digest)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = labels_in(info.labels);
        let store = self.store.get("content store").await?;
        let info = blocking(move || store.update(&scope, &digest, labels, &paths)).await?;
        Ok(Response::new(pb::UpdateResponse {
            info: Some(info_to_proto(&info)),
        }))
    }

    type ListStream = BoxStream<pb::ListContentResponse>;

    async fn list(
        &self,
        req: Request<pb::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let filters = req.into_inner().filters;
        let store = self.store.get("content store").await?;
        let infos = blocking(move || {
            let mut v = Vec::new();
            store.walk(&scope, &filters, &mut |i| {
                v.push(info_to_proto(&i));
                Ok(())
            })?;
            Ok::<_, Error>(v)
        })
        .await?;
        let mut batches = Vec::new();
        let mut cur = Vec::new();
        let mut size = 0;
        for i in infos {
            size += i.encoded_len();
            cur.push(i);
            if size >= CHUNK {
                batches.push(Ok(pb::ListContentResponse {
                    info: std::mem::take(&mut cur),
                }));
                size = 0;
            }
        }
        if !cur.is_empty() {
            batches.push(Ok(pb::ListContentResponse { info: cur }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<()>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let digest = parse_digest(&req.get_ref().digest)?;
        let store = self.store.get("content store").await?;
        blocking(move || store.delete(&scope, &digest)).await?;
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<pb::ReadContentResponse>;

    async fn read(
        &self,
        req: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner();
        let digest = parse_digest(&r.digest)?;
        if r.offset < 0 || r.size < 0 {
            return Err(GrpcStatus::invalid_argument(
                "read offset and size must not be negative",
            ));
        }
        let store = self.store.get("content store").await?;
        let (s2, d2) = (store.clone(), digest.clone());
        let sc2 = scope.clone();
        let info = blocking(move || s2.info(&sc2, &d2)).await?;
        let offset = r.offset as u64;
        if offset > info.size {
            return Err(GrpcStatus::out_of_range(format!(
                "read past object length {} at {offset}",
                info.size
            )));
        }
        let end = if r.size == 0 {
            info.size
        } else {
            info.size.min(offset.saturating_add(r.size as u64))
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut off = offset;
            while off < end {
                let len = usize::try_from((end - off).min(CHUNK as u64)).unwrap_or(CHUNK);
                let (s, d, sc) = (store.clone(), digest.clone(), scope.clone());
                let res = blocking(move || {
                    let mut buf = vec![0u8; len];
                    let n = s.read_at(&sc, &d, off, &mut buf)?;
                    buf.truncate(n);
                    Ok::<_, Error>(buf)
                })
                .await;
                let msg = match res {
                    Ok(buf) if buf.is_empty() => Err(GrpcStatus::data_loss("blob ended early")),
                    Ok(buf) => {
                        let m = pb::ReadContentResponse {
                            offset: off as i64,
                            data: buf.into(),
                        };
                        off += m.data.len() as u64;
                        Ok(m)
                    }
                    Err(e) => Err(e),
                };
                let stop = msg.is_err();
                if tx.send(msg).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner().r#ref;
        let store = self.store.get("content store").await?;
        let st = blocking(move || store.status(&scope, &r)).await?;
        Ok(Response::new(pb::StatusResponse {
            status: Some(status_to_proto(&st)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<pb::ListStatusesRequest>,
    ) -> Result<Response<pb::ListStatusesResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let filters = req.into_inner().filters;
        let store = self.store.get("content store").await?;
        let sts = blocking(move || store.list_statuses(&scope, &filters)).await?;
        Ok(Response::new(pb::ListStatusesResponse {
            statuses: sts.iter().map(status_to_proto).collect(),
        }))
    }

    type WriteStream = BoxStream<pb::WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<pb::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let store = self.store.get("content store").await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(2);
        // The network side reads ahead of the writer: the next messages are received and
        // decoded while the current one is hashed and written.
        let (req_tx, req_rx) = mpsc::channel(WRITE_READ_AHEAD);
        tokio::spawn(async move {
            loop {
                let next = inbound.message().await;
                let end = !matches!(next, Ok(Some(_)));
                let item = match next {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                if req_tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        tokio::task::spawn_blocking(move || {
            if let Err(s) = write_session(&store, &scope, req_rx, &tx) {
                debug!(code = ?s.code(), message = s.message(), "write session failed");
                let _ = tx.blocking_send(Err(s));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<pb::AbortRequest>) -> Result<Response<()>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner().r#ref;
        let store = self.store.get("content store").await?;
        blocking(move || store.abort(&scope, &r)).await?;
        Ok(Response::new(()))
    }
}

fn non_negative(v: i64, what: &str) -> Result<u64, GrpcStatus> {
    u64::try_from(v)
        .map_err(|_| GrpcStatus::invalid_argument(format!("{what} must not be negative")))
}

/// Write messages received ahead of the one being written (1 MiB each from containerd).
const WRITE_READ_AHEAD: usize = 4;

/// One Write stream, as containerd's content service runs it: the first message names the
/// ref and opens (and locks) the writer for the whole session; every message is answered
/// with the current offset and digest; the writer is closed when the client ends the
/// stream, before the response stream ends. Runs on one blocking thread for the session.
fn write_session(
    store: &LocalStore,
    scope: &Scope,
    mut inbound: mpsc::Receiver<Result<pb::WriteContentRequest, GrpcStatus>>,
    tx: &mpsc::Sender<Result<pb::WriteContentResponse, GrpcStatus>>,
) -> Result<(), GrpcStatus> {
    let Some(first) = inbound.blocking_recv() else {
        return Ok(());
    };
    let req = first?;
    if req.r#ref.is_empty() {
        return Err(GrpcStatus::invalid_argument(
            "first message must have a reference",
        ));
    }
    let total = non_negative(req.total, "total")?;
    let expected = match req.expected.as_str() {
        "" => None,
        s => Some(parse_digest(s)?),
    };
    let opts = WriterOptions {
        r#ref: req.r#ref.clone(),
        total,
        expected: expected.clone(),
    };
    let mut wr = store.writer(scope, opts).map_err(|e| status(&e))?;
    let served = serve_writes(&mut *wr, req, total, expected, &mut inbound, tx);
    if let Err(e) = wr.close() {
        debug!(error = %e, "closing writer");
    }
    served
}

/// Answers `req` and every message after it until the client ends the stream.
fn serve_writes(
    wr: &mut dyn Writer,
    mut req: pb::WriteContentRequest,
    mut total: u64,
    mut expected: Option<Digest>,
    inbound: &mut mpsc::Receiver<Result<pb::WriteContentRequest, GrpcStatus>>,
    tx: &mpsc::Sender<Result<pb::WriteContentResponse, GrpcStatus>>,
) -> Result<(), GrpcStatus> {
    loop {
        let ws = wr.status().map_err(|e| status(&e))?;
        let mut msg = pb::WriteContentResponse {
            action: req.action,
            offset: i64::try_from(ws.offset).unwrap_or(i64::MAX),
            ..Default::default()
        };
        if !req.expected.is_empty() {
            expected = Some(parse_digest(&req.expected)?);
        }
        if req.total > 0 {
            total = non_negative(req.total, "total")?;
        }
        let action = pb::WriteAction::try_from(req.action).map_err(|_| {
            GrpcStatus::invalid_argument(format!("unknown write action {}", req.action))
        })?;
        match action {
            pb::WriteAction::Stat => {
                msg.digest = wr.digest().to_string();
                msg.started_at = Some(to_timestamp(ws.started_at));
                msg.updated_at = Some(to_timestamp(ws.updated_at));
                msg.total = i64::try_from(total).unwrap_or(i64::MAX);
            }
            pb::WriteAction::Write | pb::WriteAction::Commit => {
                if req.offset < 0 || (req.offset > 0 && req.offset as u64 != ws.offset) {
                    return Err(GrpcStatus::out_of_range(format!(
                        "write @{} must occur at current offset {}",
                        req.offset, ws.offset
                    )));
                }
                if req.offset == 0 && ws.offset > 0 {
                    wr.truncate(0).map_err(|e| status(&e))?;
                }
                wr.write(&req.data).map_err(|e| status(&e))?;
                let off = wr.status().map_err(|e| status(&e))?.offset;
                if action == pb::WriteAction::Commit {
                    let labels = labels_in(std::mem::take(&mut req.labels));
                    wr.commit(total, expected.as_ref(), labels)
                        .map_err(|e| status(&e))?;
                }
                msg.offset = i64::try_from(off).unwrap_or(i64::MAX);
                msg.digest = wr.digest().to_string();
            }
        }
        if tx.blocking_send(Ok(msg)).is_err() {
            return Ok(());
        }
        match inbound.blocking_recv() {
            Some(next) => req = next?,
            None => return Ok(()),
        }
    }
}

/// `containerd.services.leases.v1.Leases` over a [`LocalStore`].
#[derive(Clone)]
pub struct LeasesService {
    store: StoreCell,
}

impl LeasesService {
    /// Serves `store`.
    pub fn new(store: StoreCell) -> Self {
        LeasesService { store }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> lpb::leases_server::LeasesServer<Self> {
        lpb::leases_server::LeasesServer::new(self)
    }
}

fn resource_in(r: Option<lpb::Resource>) -> Result<Resource, GrpcStatus> {
    let r = r.ok_or_else(|| GrpcStatus::invalid_argument("request has no resource"))?;
    Ok(Resource {
        id: r.id,
        r#type: r.r#type,
    })
}

#[tonic::async_trait]
impl lpb::leases_server::Leases for LeasesService {
    async fn create(
        &self,
        req: Request<lpb::CreateRequest>,
    ) -> Result<Response<lpb::CreateResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner();
        let labels: Labels = r.labels.into_iter().collect::<BTreeMap<_, _>>();
        let store = self.store.get("content store").await?;
        let lease = blocking(move || store.create_lease(&scope, &r.id, labels)).await?;
        Ok(Response::new(lpb::CreateResponse {
            lease: Some(lease_to_proto(&lease)),
        }))
    }

    async fn delete(&self, req: Request<lpb::DeleteRequest>) -> Result<Response<()>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner();
        let store = self.store.get("content store").await?;
        blocking(move || store.delete_lease(&scope, &r.id, r.sync)).await?;
        Ok(Response::new(()))
    }

    async fn list(
        &self,
        req: Request<lpb::ListRequest>,
    ) -> Result<Response<lpb::ListResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let filters = req.into_inner().filters;
        let store = self.store.get("content store").await?;
        let leases = blocking(move || store.list_leases(&scope, &filters)).await?;
        Ok(Response::new(lpb::ListResponse {
            leases: leases.iter().map(lease_to_proto).collect(),
        }))
    }

    async fn add_resource(
        &self,
        req: Request<lpb::AddResourceRequest>,
    ) -> Result<Response<()>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner();
        let res = resource_in(r.resource)?;
        let store = self.store.get("content store").await?;
        blocking(move || store.add_resource(&scope, &r.id, res)).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<lpb::DeleteResourceRequest>,
    ) -> Result<Response<()>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let r = req.into_inner();
        let res = resource_in(r.resource)?;
        let store = self.store.get("content store").await?;
        blocking(move || store.delete_resource(&scope, &r.id, res)).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<lpb::ListResourcesRequest>,
    ) -> Result<Response<lpb::ListResourcesResponse>, GrpcStatus> {
        let scope = scope_from_metadata(req.metadata())?;
        let id = req.into_inner().id;
        let store = self.store.get("content store").await?;
        let res = blocking(move || store.list_resources(&scope, &id)).await?;
        Ok(Response::new(lpb::ListResourcesResponse {
            resources: res
                .into_iter()
                .map(|r| lpb::Resource {
                    id: r.id,
                    r#type: r.r#type,
                })
                .collect(),
        }))
    }
}
