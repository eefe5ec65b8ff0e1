//! The `strata.v1` Containers, Tasks and Events gRPC services over a [`Lifecycle`].
//!
//! Requests are scoped by the `containerd-namespace` header (`default` without one).
//! Everything that touches the filesystem, a snapshotter or a shim runs on tokio's
//! blocking pool.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use strata_proto::filter::{Adaptor, Filter, label_field};
use strata_proto::ident::Namespace;
use strata_proto::serve::blocking;
use strata_proto::strata::v1 as pb;
use strata_proto::time::{from_nanos, to_timestamp};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::events;
use crate::lifecycle::{ContainerRecord, CreateContainer, ExecProcess, Lifecycle, TaskState};
use crate::shim::Exit;
use crate::shim::log::FrameReader;
use crate::{Error, ErrorKind};

/// How often a followed log is read again while its process runs.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(20);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn namespace<T>(req: &Request<T>) -> Result<Namespace, Status> {
    Ok(
        strata_proto::ident::namespace_from_metadata(req.metadata())?
            .unwrap_or_else(|| Namespace::new("default").expect("a valid namespace")),
    )
}

fn status(e: &Error) -> Status {
    strata_proto::status_from_error(e)
}

fn exit_out(e: Exit) -> pb::ExitStatus {
    pb::ExitStatus {
        exit_status: e.exit_status,
        exited_at: Some(to_timestamp(from_nanos(e.exited_at_unix_nanos))),
    }
}

fn task_out(s: &TaskState) -> pb::Task {
    pb::Task {
        container_id: s.id.clone(),
        exec_id: String::new(),
        pid: s.pid,
        status: s.status.clone(),
        exit_status: s.exit.map(|e| e.exit_status).unwrap_or(0),
        exited_at: s
            .exit
            .map(|e| to_timestamp(from_nanos(e.exited_at_unix_nanos))),
        terminal: s.terminal,
    }
}

fn parse_filters(filters: &[String]) -> Result<Filter, Status> {
    Filter::parse_all(filters).map_err(|e| Status::invalid_argument(format!("invalid filter: {e}")))
}

struct ContainerFields<'a>(&'a ContainerRecord);

impl Adaptor for ContainerFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let r = self.0;
        match path.first().map(String::as_str)? {
            "id" if path.len() == 1 => Some(r.id.clone()),
            "image" if path.len() == 1 => Some(r.image.clone()),
            "snapshotter" if path.len() == 1 => Some(r.snapshotter.clone()),
            "labels" => label_field(&path[1..], r.labels.iter()),
            _ => None,
        }
    }
}

struct TaskFields<'a>(&'a TaskState);

impl Adaptor for TaskFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "container_id" | "id" if path.len() == 1 => Some(self.0.id.clone()),
            "status" if path.len() == 1 => Some(self.0.status.clone()),
            _ => None,
        }
    }
}

/// The Containers service.
#[derive(Clone, Debug)]
pub struct ContainersService {
    lc: Arc<Lifecycle>,
}

impl ContainersService {
    /// The service over `lc`.
    pub fn new(lc: Arc<Lifecycle>) -> Self {
        ContainersService { lc }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::containers_server::ContainersServer<Self> {
        pb::containers_server::ContainersServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::containers_server::Containers for ContainersService {
    async fn create(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let id = if r.id.is_empty() { generate_id() } else { r.id };
        let create = CreateContainer {
            id,
            image: r.image,
            snapshotter: r.snapshotter,
            snapshots_address: r.snapshots_address,
            labels: r.labels.into_iter().collect(),
            args: r.args,
            env: r.env,
            user: r.user,
            cwd: r.cwd,
            terminal: r.terminal,
            readonly_rootfs: r.readonly_rootfs,
            mounts: r.mounts,
            host_network: r.host_network,
            platform: r.platform,
        };
        let lc = self.lc.clone();
        let rec = blocking(move || lc.create_container(&ns, create)).await?;
        Ok(Response::new(rec.to_proto()))
    }

    async fn get(
        &self,
        req: Request<pb::GetContainerRequest>,
    ) -> Result<Response<pb::Container>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let lc = self.lc.clone();
        let rec = blocking(move || lc.get_container(&ns, &id)).await?;
        Ok(Response::new(rec.to_proto()))
    }

    async fn list(
        &self,
        req: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let lc = self.lc.clone();
        let all = blocking(move || lc.list_containers(&ns)).await?;
        Ok(Response::new(pb::ListContainersResponse {
            containers: all
                .iter()
                .filter(|r| filter.matches(&ContainerFields(r)))
                .map(ContainerRecord::to_proto)
                .collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteContainerRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().id;
        let lc = self.lc.clone();
        blocking(move || lc.delete_container(&ns, &id)).await?;
        Ok(Response::new(()))
    }
}

/// A container id nobody chose: 16 random hex digits.
fn generate_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// The Tasks service.
#[derive(Clone, Debug)]
pub struct TasksService {
    lc: Arc<Lifecycle>,
}

impl TasksService {
    /// The service over `lc`.
    pub fn new(lc: Arc<Lifecycle>) -> Self {
        TasksService { lc }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::tasks_server::TasksServer<Self> {
        pb::tasks_server::TasksServer::new(self)
    }
}

fn size(width: u32, height: u32) -> Option<(u16, u16)> {
    (width > 0 && height > 0).then(|| {
        (
            u16::try_from(width).unwrap_or(u16::MAX),
            u16::try_from(height).unwrap_or(u16::MAX),
        )
    })
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksService {
    async fn create(
        &self,
        req: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        let state = blocking(move || {
            let t = lc.create_task(&ns, &r.container_id, size(r.width, r.height))?;
            Ok::<_, Error>(lc.task_state(&t))
        })
        .await?;
        Ok(Response::new(task_out(&state)))
    }

    async fn start(&self, req: Request<pb::TaskRequest>) -> Result<Response<pb::Task>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        let state = blocking(move || {
            let t = lc.start(ns.as_str(), &r.container_id)?;
            Ok::<_, Error>(lc.task_state(&t))
        })
        .await?;
        Ok(Response::new(task_out(&state)))
    }

    async fn get(&self, req: Request<pb::TaskRequest>) -> Result<Response<pb::Task>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        let out = blocking(move || {
            let t = lc.task(ns.as_str(), &r.container_id)?;
            if r.exec_id.is_empty() {
                return Ok::<_, Error>(task_out(&lc.task_state(&t)));
            }
            let p = t.process(&r.exec_id)?;
            let exit = p.exit();
            Ok(pb::Task {
                container_id: r.container_id,
                exec_id: r.exec_id,
                pid: p.pid,
                status: if exit.is_some() { "stopped" } else { "running" }.into(),
                exit_status: exit.map(|e| e.exit_status).unwrap_or(0),
                exited_at: exit.map(|e| to_timestamp(from_nanos(e.exited_at_unix_nanos))),
                terminal: p.terminal,
            })
        })
        .await?;
        Ok(Response::new(out))
    }

    async fn list(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let lc = self.lc.clone();
        let states = blocking(move || {
            Ok::<_, Error>(
                lc.tasks(ns.as_str())
                    .iter()
                    .map(|t| lc.task_state(t))
                    .collect::<Vec<_>>(),
            )
        })
        .await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: states
                .iter()
                .filter(|s| filter.matches(&TaskFields(s)))
                .map(task_out)
                .collect(),
        }))
    }

    async fn kill(&self, req: Request<pb::KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        blocking(move || lc.kill(ns.as_str(), &r.container_id, &r.exec_id, r.signal, r.all))
            .await?;
        Ok(Response::new(()))
    }

    async fn wait(
        &self,
        req: Request<pb::TaskRequest>,
    ) -> Result<Response<pb::ExitStatus>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let p = self
            .lc
            .task(ns.as_str(), &r.container_id)
            .and_then(|t| t.process(&r.exec_id));
        let p = match p {
            Ok(p) => p,
            // A deleted task's last exit still answers a wait on its init.
            Err(e) if r.exec_id.is_empty() && e.kind() == ErrorKind::NotFound => {
                return match self.lc.last_exit(ns.as_str(), &r.container_id) {
                    Some(exit) => Ok(Response::new(exit_out(exit))),
                    None => Err(status(&e)),
                };
            }
            Err(e) => return Err(status(&e)),
        };
        Ok(Response::new(exit_out(p.wait().await)))
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Result<Response<pb::Task>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        let terminal = r
            .terminal
            .then(|| size(r.width, r.height).unwrap_or((80, 24)));
        let (cid, eid) = (r.container_id.clone(), r.exec_id.clone());
        let p = blocking(move || {
            lc.exec(
                &ns,
                &r.container_id,
                &ExecProcess {
                    exec_id: r.exec_id,
                    args: r.args,
                    env: r.env,
                    cwd: r.cwd,
                    user: r.user,
                    terminal,
                },
            )
        })
        .await?;
        Ok(Response::new(pb::Task {
            container_id: cid,
            exec_id: eid,
            pid: p.pid,
            status: "running".into(),
            terminal: p.terminal,
            ..Default::default()
        }))
    }

    async fn pause(&self, req: Request<pb::TaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        blocking(move || lc.pause(ns.as_str(), &r.container_id, true)).await?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<pb::TaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        blocking(move || lc.pause(ns.as_str(), &r.container_id, false)).await?;
        Ok(Response::new(()))
    }

    async fn pids(
        &self,
        req: Request<pb::TaskRequest>,
    ) -> Result<Response<pb::PidsResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        let pids = blocking(move || lc.task(ns.as_str(), &r.container_id)?.client.pids()).await?;
        Ok(Response::new(pb::PidsResponse { pids }))
    }

    async fn delete(
        &self,
        req: Request<pb::TaskRequest>,
    ) -> Result<Response<pb::ExitStatus>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let lc = self.lc.clone();
        let exit =
            blocking(move || lc.delete_task(ns.as_str(), &r.container_id, &r.exec_id)).await?;
        Ok(Response::new(exit_out(exit)))
    }

    async fn resize(&self, req: Request<pb::ResizeRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let (w, h) = size(r.width, r.height)
            .ok_or_else(|| Status::invalid_argument("terminal size must not be 0"))?;
        let lc = self.lc.clone();
        blocking(move || {
            lc.task(ns.as_str(), &r.container_id)?
                .client
                .resize(&r.exec_id, w, h)
        })
        .await?;
        Ok(Response::new(()))
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        // Validates the id, and tells a missing container from one without output.
        let lc = self.lc.clone();
        let (cid, ns2) = (r.container_id.clone(), ns.clone());
        blocking(move || lc.get_container(&ns2, &cid)).await?;
        if !r.exec_id.is_empty() {
            strata_proto::ident::validate_identifier("exec id", &r.exec_id)
                .map_err(|e| Status::invalid_argument(format!("invalid exec id: {e}")))?;
        }
        let dir = self.lc.container_dir(ns.as_str(), &r.container_id);
        let path = crate::lifecycle::log_path(&dir, &r.exec_id);
        // Followed only while the process runs.
        let exit = if r.follow {
            self.lc
                .task(ns.as_str(), &r.container_id)
                .and_then(|t| t.process(&r.exec_id))
                .ok()
                .map(|p| p.subscribe())
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(16);
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = stream_log(&rt, &path, exit, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachChunk>>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let mut input = req.into_inner();
        let Some(first) = input.next().await.transpose()? else {
            return Ok(Response::new(()));
        };
        let lc = self.lc.clone();
        let (cid, eid) = (first.container_id.clone(), first.exec_id.clone());
        let conn = blocking(move || lc.task(ns.as_str(), &cid)?.client.attach(&eid)).await?;
        conn.set_nonblocking(true)
            .map_err(|e| Status::internal(format!("attach: {e}")))?;
        let mut conn = tokio::net::UnixStream::from_std(conn)
            .map_err(|e| Status::internal(format!("attach: {e}")))?;
        let mut chunk = first;
        loop {
            if !chunk.data.is_empty() && conn.write_all(&chunk.data).await.is_err() {
                // The process's terminal is gone: it has exited.
                break;
            }
            match input.next().await.transpose()? {
                Some(c) => chunk = c,
                None => break,
            }
        }
        Ok(Response::new(()))
    }
}

/// Sends the frames of the log at `path`; with `exit`, keeps reading until the process
/// has exited (the shim has drained its output by then) and the file is read to its end.
/// Blocking; waits on `rt`.
fn stream_log(
    rt: &tokio::runtime::Handle,
    path: &std::path::Path,
    mut exit: Option<tokio::sync::watch::Receiver<Option<Exit>>>,
    tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
) -> Result<(), Status> {
    let mut reader: Option<FrameReader<std::fs::File>> = None;
    loop {
        let exited = exit.as_ref().is_none_or(|rx| rx.borrow().is_some());
        if reader.is_none() {
            reader = match std::fs::File::open(path) {
                Ok(f) => Some(FrameReader::new(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Status::internal(format!("open log: {e}"))),
            };
        }
        if let Some(r) = reader.as_mut() {
            while let Some((stream, data)) = r
                .next_frame()
                .map_err(|e| Status::internal(format!("read log: {e}")))?
            {
                let chunk = pb::LogChunk {
                    stream: u32::from(stream),
                    data,
                };
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return Ok(());
                }
            }
        }
        if exited {
            return Ok(());
        }
        let rx = exit.as_mut().expect("not exited means followed");
        let _ = rt.block_on(tokio::time::timeout(FOLLOW_INTERVAL, rx.changed()));
    }
}

/// The Events service.
#[derive(Clone, Debug)]
pub struct EventsService {
    events: events::Events,
}

impl EventsService {
    /// The service over the bus `events`.
    pub fn new(events: events::Events) -> Self {
        EventsService { events }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::events_server::EventsServer<Self> {
        pb::events_server::EventsServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = BoxStream<pb::Envelope>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = parse_filters(&req.into_inner().filters)?;
        let mut rx = self.events.subscribe();
        let (tx, out) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(e) if events::matches(&filter, &e) => Ok(e),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Err(
                        Status::resource_exhausted(format!("subscriber fell {n} events behind")),
                    ),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}
