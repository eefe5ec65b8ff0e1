//! Containers and tasks: the daemon's side of the lifecycle layer, below the gRPC
//! services in [`crate::service`].
//!
//! ```text
//! <root>/containers/<hash>/       one directory per container, hash = sha256(ns "/" id)
//!     container.json              the record (id, namespace, image, snapshot, spec)
//!     config.json, rootfs/        the OCI bundle runc runs
//!     shim.sock, shim.pid, init.* while a task exists: the shim's (see crate::shim)
//!     init.log, init.exit         kept after the task is deleted: `strata logs`, `ps`
//! <root>/runc/<ns>/               runc's state (--root)
//! ```
//!
//! The directory name is a hash so that every socket path in it stays well under the
//! 108 bytes a unix socket path may have, whatever the id and namespace.
//!
//! A container's rootfs is a snapshot prepared through a snapshots.v1 client on the
//! image's top chainID, from this daemon's own socket or any other endpoint (containerd's
//! socket works), and mounted into the bundle only while a task exists. Nothing an image
//! carries (labels included) decides anything on the host: the spec comes from
//! [`crate::spec::generate`], which reads only the image's run config.
//!
//! Every task has one shim process; the daemon holds no state about it that the shim
//! and the directory do not also hold, so a restarted daemon finds its tasks again with
//! [`Lifecycle::recover`].

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use strata_proto::Platform;
use strata_proto::ident::Namespace;
use strata_proto::strata::v1 as pb;
use strata_snapshotter::api::{Labels, Snapshotter};
use strata_snapshotter::client::GrpcSnapshotter;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::ContainerConfig;
use crate::events::{self, Events};
use crate::images::ImageResolver;
use crate::runc::Runc;
use crate::shim::{self, Exit, ShimClient, SpawnOptions};
use crate::spec::{BindMount, ContainerId, Network, RunOptions};
use crate::{Error, ErrorKind, Result, ResultExt};

/// The label every container snapshot carries: which container owns it.
pub const CONTAINER_LABEL: &str = "strata.io/container";

/// Where the lifecycle layer keeps its state and finds its tools.
#[derive(Clone, Debug)]
pub struct LifecycleOptions {
    /// The daemon's root (`--root`).
    pub root: PathBuf,
    /// The daemon's own socket: the default snapshots.v1 endpoint.
    pub own_address: PathBuf,
    /// The snapshotter used when a request names none.
    pub default_snapshotter: String,
    /// The `strata-shim` binary.
    pub shim_binary: PathBuf,
    /// The `runc` binary.
    pub runc_binary: PathBuf,
}

/// A container record, as kept in `container.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The id.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// The image name.
    pub image: String,
    /// The image's manifest digest.
    pub image_digest: String,
    /// The snapshotter the rootfs lives in.
    pub snapshotter: String,
    /// The active snapshot's key.
    pub snapshot_key: String,
    /// The snapshots.v1 endpoint; empty = the daemon's own.
    pub snapshots_address: String,
    /// The OCI runtime spec.
    pub spec: serde_json::Value,
    /// Labels (never read by strata).
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at_unix_nanos: u64,
}

impl ContainerRecord {
    /// The wire form.
    pub fn to_proto(&self) -> pb::Container {
        pb::Container {
            id: self.id.clone(),
            image: self.image.clone(),
            image_digest: self.image_digest.clone(),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: self.snapshot_key.clone(),
            snapshots_address: self.snapshots_address.clone(),
            spec: serde_json::to_vec(&self.spec).unwrap_or_default(),
            labels: self.labels.clone().into_iter().collect(),
            created_at: Some(strata_proto::time::to_timestamp(
                strata_proto::time::from_nanos(self.created_at_unix_nanos),
            )),
        }
    }

    fn terminal(&self) -> bool {
        self.spec
            .pointer("/process/terminal")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// One process of a task (the init, or an exec): its pid and, once known, its exit.
#[derive(Debug)]
pub struct Process {
    /// Its pid on the host.
    pub pid: u32,
    /// Whether it has a terminal.
    pub terminal: bool,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    fn new(pid: u32, terminal: bool) -> Arc<Process> {
        Arc::new(Process {
            pid,
            terminal,
            exit: watch::channel(None).0,
        })
    }

    /// Its exit, if it has exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits until it has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`.
                unreachable!("process exit channel closed while borrowed");
            }
        }
    }

    /// Watches its exit.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }
}

/// A task: a container's shim and its processes.
#[derive(Debug)]
pub struct Task {
    /// The namespace.
    pub namespace: String,
    /// The container id.
    pub id: String,
    /// The container's directory (the bundle and the shim's state).
    pub dir: PathBuf,
    /// The shim.
    pub client: ShimClient,
    /// The container's init.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Held while the init starts, so that its exit is never published before its start.
    starting: Mutex<()>,
}

impl Task {
    /// The process `exec_id` names (empty = the init).
    ///
    /// # Errors
    /// `NotFound` for an unknown exec id.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("container {}: no process {exec_id:?}", self.id),
            )
        })
    }

    /// The log file of process `exec_id`.
    pub fn log_path(&self, exec_id: &str) -> PathBuf {
        log_path(&self.dir, exec_id)
    }
}

/// The output log of a process in a container directory (empty exec id = the init).
pub fn log_path(dir: &Path, exec_id: &str) -> PathBuf {
    shim::log_path(dir, exec_id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Key = (String, String);

/// Containers and tasks of every namespace.
pub struct Lifecycle {
    opts: LifecycleOptions,
    images: Arc<dyn ImageResolver>,
    events: Events,
    rt: Handle,
    tasks: Mutex<HashMap<Key, Arc<Task>>>,
    /// Containers with a create or delete (of the container or its task) under way.
    busy: Mutex<std::collections::HashSet<Key>>,
    channels: Mutex<HashMap<PathBuf, Channel>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Marks a container busy for the life of the guard.
struct Busy<'a> {
    set: &'a Mutex<std::collections::HashSet<Key>>,
    key: Key,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.key);
    }
}

/// A request to create a container.
#[derive(Clone, Debug, Default)]
pub struct CreateContainer {
    /// Its id (validated).
    pub id: String,
    /// The image name.
    pub image: String,
    /// The snapshotter; empty = the default.
    pub snapshotter: String,
    /// Another snapshots.v1 endpoint; empty = the daemon's own.
    pub snapshots_address: String,
    /// Record labels.
    pub labels: BTreeMap<String, String>,
    /// Options of the spec.
    pub args: Vec<String>,
    /// `KEY=value` overrides.
    pub env: Vec<String>,
    /// USER override.
    pub user: String,
    /// Working directory override.
    pub cwd: String,
    /// Give the process a terminal.
    pub terminal: bool,
    /// Read-only rootfs.
    pub readonly_rootfs: bool,
    /// `src:dst[:ro|rw]` bind mounts.
    pub mounts: Vec<String>,
    /// The host's network namespace.
    pub host_network: bool,
    /// The platform to pick; empty = the host's.
    pub platform: String,
}

/// A process to exec into a task.
#[derive(Clone, Debug, Default)]
pub struct ExecProcess {
    /// Its id within the task.
    pub exec_id: String,
    /// Its command line.
    pub args: Vec<String>,
    /// `KEY=value` entries added to the container's.
    pub env: Vec<String>,
    /// Working directory; empty = the container's.
    pub cwd: String,
    /// USER; empty = the container's.
    pub user: String,
    /// Terminal size, for a process with a terminal.
    pub terminal: Option<(u16, u16)>,
}

/// A task's state as listed.
#[derive(Clone, Debug)]
pub struct TaskState {
    /// The container id.
    pub id: String,
    /// The init's pid.
    pub pid: u32,
    /// created | running | paused | stopped | unknown.
    pub status: String,
    /// The exit, once stopped.
    pub exit: Option<Exit>,
    /// Whether the init has a terminal.
    pub terminal: bool,
}

impl Lifecycle {
    /// The lifecycle layer over `opts.root`. Call [`recover`](Self::recover) once the
    /// daemon serves, to find the tasks of an earlier daemon.
    pub fn new(
        opts: LifecycleOptions,
        images: Arc<dyn ImageResolver>,
        events: Events,
        rt: Handle,
    ) -> Self {
        Lifecycle {
            opts,
            images,
            events,
            rt,
            tasks: Mutex::default(),
            busy: Mutex::default(),
            channels: Mutex::default(),
        }
    }

    /// The event bus.
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn containers_dir(&self) -> PathBuf {
        self.opts.root.join("containers")
    }

    /// The directory of container `id` in `ns`.
    pub fn container_dir(&self, ns: &str, id: &str) -> PathBuf {
        let h = Sha256::digest(format!("{ns}/{id}").as_bytes());
        self.containers_dir().join(&hex::encode(h)[..24])
    }

    fn runc(&self, ns: &str) -> Runc {
        Runc {
            binary: self.opts.runc_binary.clone(),
            root: self.opts.root.join("runc").join(ns),
            log: None,
        }
    }

    fn mark_busy(&self, ns: &str, id: &str) -> Result<Busy<'_>> {
        let key = (ns.to_owned(), id.to_owned());
        if !lock(&self.busy).insert(key.clone()) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("container {id}: another create or delete is under way"),
            ));
        }
        Ok(Busy {
            set: &self.busy,
            key,
        })
    }

    /// A snapshots.v1 client of `snapshotter` at `address` (empty = the daemon's own),
    /// speaking for namespace `ns`. Blocking.
    fn snapshotter(&self, address: &str, snapshotter: &str, ns: &str) -> Result<GrpcSnapshotter> {
        let path = if address.is_empty() {
            self.opts.own_address.clone()
        } else {
            PathBuf::from(address)
        };
        let cached = lock(&self.channels).get(&path).cloned();
        let channel = match cached {
            Some(c) => c,
            None => {
                let c = self
                    .rt
                    .block_on(strata_proto::transport::connect_unix(&path))
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Unavailable,
                            format!("connect to snapshots endpoint {}", path.display()),
                        )
                        .with_source(e)
                    })?;
                lock(&self.channels).insert(path, c.clone());
                c
            }
        };
        Ok(GrpcSnapshotter::new(channel, self.rt.clone(), snapshotter).with_namespace(ns))
    }

    /// Creates a container: resolves its image, prepares its snapshot, generates its
    /// spec (the rootfs is mounted meanwhile, to read its `/etc/passwd`) and records it.
    /// Blocking. Nothing is left behind when it fails.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad id, option or image config; `NotFound` if the image
    /// was not pulled (or not unpacked into the snapshotter); `AlreadyExists` for a
    /// taken id; the snapshotter's and the spec's errors.
    pub fn create_container(
        &self,
        ns: &Namespace,
        req: CreateContainer,
    ) -> Result<ContainerRecord> {
        let id = ContainerId::new(&req.id)?;
        let _busy = self.mark_busy(ns.as_str(), id.as_str())?;
        let dir = self.container_dir(ns.as_str(), id.as_str());
        if dir.join("container.json").exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container {id} already exists"),
            ));
        }
        strata_proto::ident::validate_labels(&req.labels.clone().into_iter().collect())
            .map_err(|e| Error::invalid("container labels").with_source(e))?;
        let mut opts = RunOptions::new(id.clone(), ns.clone());
        opts.args = req.args;
        opts.env = req.env;
        opts.user = (!req.user.is_empty()).then_some(req.user);
        opts.cwd = (!req.cwd.is_empty()).then_some(req.cwd);
        opts.terminal = req.terminal;
        opts.readonly_rootfs = req.readonly_rootfs;
        opts.network = if req.host_network {
            Network::Host
        } else {
            Network::Private
        };
        opts.mounts = req
            .mounts
            .iter()
            .map(|m| m.parse::<BindMount>())
            .collect::<Result<_>>()?;
        let platform = if req.platform.is_empty() {
            Platform::host()
        } else {
            Platform::parse(&req.platform).map_err(|e| {
                Error::invalid(format!("platform {:?}", req.platform)).with_source(e)
            })?
        };
        let image = self
            .images
            .resolve(ns, &req.image, &platform)
            .with_context(|| format!("image {}", req.image))?;
        let config = ContainerConfig::from_image_config_json(&image.config)?;

        let snapshotter = if req.snapshotter.is_empty() {
            self.opts.default_snapshotter.clone()
        } else {
            req.snapshotter.clone()
        };
        let sn = self.snapshotter(&req.snapshots_address, &snapshotter, ns.as_str())?;
        let key = format!("strata-container/{ns}/{id}");
        let chain = image.chain_id.to_string();
        match sn.stat(&chain) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "image {} is not unpacked into snapshotter {snapshotter} (no snapshot {chain})",
                        image.name
                    ),
                ));
            }
            Err(e) => return Err(e.context(format!("stat snapshot {chain}"))),
        }
        let mut labels = Labels::new();
        labels.insert(CONTAINER_LABEL.into(), format!("{ns}/{id}"));
        // containerd collects an active snapshot no record of its own references.
        labels.insert(
            "containerd.io/gc.root".into(),
            strata_proto::time::to_nanos(SystemTime::now()).to_string(),
        );
        let mounts = match sn.prepare(&key, Some(&chain), labels.clone()) {
            // Left by a daemon that died between the prepare and the record: ours (the
            // label says so, and there is no record), so it is replaced.
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && sn.stat(&key).is_ok_and(|i| {
                        i.labels.get(CONTAINER_LABEL).map(String::as_str)
                            == Some(format!("{ns}/{id}").as_str())
                    }) =>
            {
                warn!(key, "replacing the snapshot of an unrecorded container");
                let _ = strata_snapshotter::mount::unmount_all(&dir.join("rootfs"));
                sn.remove(&key)
                    .with_context(|| format!("remove stale snapshot {key}"))?;
                sn.prepare(&key, Some(&chain), labels)
            }
            other => other,
        }
        .with_context(|| format!("prepare snapshot {key}"))?;
        let made = (|| {
            let rootfs = dir.join("rootfs");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&rootfs)
                .map_err(|e| io_error(format!("create {}", rootfs.display()), e))?;
            strata_snapshotter::mount::mount_all(&mounts, &rootfs)
                .map_err(|e| e.context("mount rootfs"))?;
            let spec = crate::spec::generate(&config, &rootfs, &opts);
            if let Err(e) = strata_snapshotter::mount::unmount_all(&rootfs) {
                warn!(error = %e, "unmount rootfs after spec generation");
            }
            let spec = spec?;
            let record = ContainerRecord {
                id: id.to_string(),
                namespace: ns.to_string(),
                image: image.name.clone(),
                image_digest: image.manifest.to_string(),
                snapshotter: snapshotter.clone(),
                snapshot_key: key.clone(),
                snapshots_address: req.snapshots_address.clone(),
                spec: serde_json::to_value(&spec).map_err(|e| {
                    Error::new(ErrorKind::Internal, "serialise spec").with_source(e)
                })?,
                labels: req.labels.clone(),
                created_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
            };
            write_atomic(
                &dir.join("container.json"),
                &serde_json::to_vec_pretty(&record).map_err(|e| {
                    Error::new(ErrorKind::Internal, "serialise record").with_source(e)
                })?,
            )?;
            Ok(record)
        })();
        match made {
            Ok(record) => {
                info!(namespace = %ns, id = %id, image = %record.image, "container created");
                self.events.publish(
                    ns.as_str(),
                    events::CONTAINER_CREATE,
                    pb::envelope::Event::Container(pb::ContainerEvent {
                        id: record.id.clone(),
                        image: record.image.clone(),
                    }),
                );
                Ok(record)
            }
            Err(e) => {
                let _ = strata_snapshotter::mount::unmount_all(&dir.join("rootfs"));
                let _ = fs::remove_dir_all(&dir);
                if let Err(r) = sn.remove(&key) {
                    warn!(error = %r, key, "remove snapshot of a failed container create");
                }
                Err(e)
            }
        }
    }

    /// The record of container `id`.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a bad id.
    pub fn get_container(&self, ns: &Namespace, id: &str) -> Result<ContainerRecord> {
        let id = ContainerId::new(id)?;
        read_record(
            &self
                .container_dir(ns.as_str(), id.as_str())
                .join("container.json"),
        )?
        .filter(|r| r.namespace == ns.as_str() && r.id == id.as_str())
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("container {id} not found")))
    }

    /// Every container of `ns`, by id.
    ///
    /// # Errors
    /// `Internal` if the directory cannot be read.
    pub fn list_containers(&self, ns: &Namespace) -> Result<Vec<ContainerRecord>> {
        let mut out: Vec<ContainerRecord> = self
            .all_records()?
            .into_iter()
            .filter(|r| r.namespace == ns.as_str())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn all_records(&self) -> Result<Vec<ContainerRecord>> {
        let dir = self.containers_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format!("read {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            match read_record(&e.path().join("container.json")) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(err) => {
                    warn!(error = %err, dir = %e.path().display(), "unreadable container record")
                }
            }
        }
        Ok(out)
    }

    /// Deletes container `id`: its snapshot and its directory (logs included). Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` while it has a task.
    pub fn delete_container(&self, ns: &Namespace, id: &str) -> Result<()> {
        let record = self.get_container(ns, id)?;
        let _busy = self.mark_busy(ns.as_str(), id)?;
        if self.task(ns.as_str(), id).is_ok() {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("container {id} has a task: delete it first"),
            ));
        }
        let dir = self.container_dir(ns.as_str(), id);
        let rootfs = dir.join("rootfs");
        strata_snapshotter::mount::unmount_all(&rootfs).map_err(|e| e.context("unmount rootfs"))?;
        let sn = self.snapshotter(&record.snapshots_address, &record.snapshotter, ns.as_str())?;
        match sn.remove(&record.snapshot_key) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e.context(format!("remove snapshot {}", record.snapshot_key)));
            }
        }
        // The record goes first: a crash after it leaves an orphan directory, not a
        // container whose snapshot is gone.
        fs::remove_file(dir.join("container.json"))
            .map_err(|e| io_error("remove container record".into(), e))?;
        fs::remove_dir_all(&dir).map_err(|e| io_error(format!("remove {}", dir.display()), e))?;
        info!(namespace = %ns, id, "container deleted");
        self.events.publish(
            ns.as_str(),
            events::CONTAINER_DELETE,
            pb::envelope::Event::Container(pb::ContainerEvent {
                id: id.to_owned(),
                image: record.image,
            }),
        );
        Ok(())
    }

    /// The task of container `id`.
    ///
    /// # Errors
    /// `NotFound` if it has none.
    pub fn task(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        lock(&self.tasks)
            .get(&(ns.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("container {id} has no task")))
    }

    /// Every task of `ns`.
    pub fn tasks(&self, ns: &str) -> Vec<Arc<Task>> {
        let mut out: Vec<Arc<Task>> = lock(&self.tasks)
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, t)| t.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The state of a task (asks its shim unless the init has exited). Blocking.
    pub fn task_state(&self, t: &Task) -> TaskState {
        let exit = t.init.exit();
        let status = match exit {
            Some(_) => "stopped".to_owned(),
            None => match t.client.state("") {
                Ok(s) => s.status,
                Err(_) => "unknown".to_owned(),
            },
        };
        TaskState {
            id: t.id.clone(),
            pid: t.init.pid,
            status,
            exit,
            terminal: t.init.terminal,
        }
    }

    /// Creates container `id`'s task: mounts its rootfs, writes its bundle and starts a
    /// shim, which creates the container with runc. The process does not run until
    /// [`start`](Self::start). Blocking.
    ///
    /// # Errors
    /// `NotFound` for no such container; `AlreadyExists` if it has a task; the
    /// snapshotter's, the mount's and runc's errors (nothing stays mounted).
    pub fn create_task(
        self: &Arc<Self>,
        ns: &Namespace,
        id: &str,
        size: Option<(u16, u16)>,
    ) -> Result<Arc<Task>> {
        let record = self.get_container(ns, id)?;
        let _busy = self.mark_busy(ns.as_str(), id)?;
        if self.task(ns.as_str(), id).is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container {id} already has a task"),
            ));
        }
        let dir = self.container_dir(ns.as_str(), id);
        // The last run's output and status give way to this one's.
        for name in ["init.log", "init.exit", "init.pid", "shim.log", "runc.log"] {
            let _ = fs::remove_file(dir.join(name));
        }
        remove_exec_files(&dir);
        let rootfs = dir.join("rootfs");
        let sn = self.snapshotter(&record.snapshots_address, &record.snapshotter, ns.as_str())?;
        let mounts = sn
            .mounts(&record.snapshot_key)
            .with_context(|| format!("mounts of snapshot {}", record.snapshot_key))?;
        // A daemon that died mid-delete may have left the rootfs mounted: never stack.
        strata_snapshotter::mount::unmount_all(&rootfs)
            .map_err(|e| e.context("unmount a stale rootfs"))?;
        strata_snapshotter::mount::mount_all(&mounts, &rootfs)
            .map_err(|e| e.context("mount rootfs"))?;
        let spawned = (|| {
            write_atomic(
                &dir.join("config.json"),
                &serde_json::to_vec(&record.spec).map_err(|e| {
                    Error::new(ErrorKind::Internal, "serialise spec").with_source(e)
                })?,
            )?;
            let terminal = record.terminal().then(|| size.unwrap_or((80, 24)));
            shim::spawn(&SpawnOptions {
                shim_binary: self.opts.shim_binary.clone(),
                id: ContainerId::new(id)?,
                namespace: ns.to_string(),
                state_dir: dir.clone(),
                runc_binary: self.opts.runc_binary.clone(),
                runc_root: self.runc(ns.as_str()).root,
                terminal,
            })
        })();
        let (client, pid) = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let Err(u) = strata_snapshotter::mount::unmount_all(&rootfs) {
                    warn!(error = %u, "unmount rootfs of a failed task create");
                }
                return Err(e);
            }
        };
        let task = Arc::new(Task {
            namespace: ns.to_string(),
            id: id.to_owned(),
            dir,
            client,
            init: Process::new(pid.as_raw() as u32, record.terminal()),
            execs: Mutex::default(),
            starting: Mutex::default(),
        });
        lock(&self.tasks).insert((ns.to_string(), id.to_owned()), task.clone());
        self.watch_exit(&task, "");
        self.publish_task(&task, "", events::TASK_CREATE, None);
        info!(namespace = %ns, id, pid = task.init.pid, "task created");
        Ok(task)
    }

    fn publish_task(&self, t: &Task, exec_id: &str, topic: &str, exit: Option<Exit>) {
        let pid = t.process(exec_id).map(|p| p.pid).unwrap_or(0);
        self.events.publish(
            &t.namespace,
            topic,
            pb::envelope::Event::Task(pb::TaskEvent {
                container_id: t.id.clone(),
                exec_id: exec_id.to_owned(),
                pid,
                exit_status: exit.map(|e| e.exit_status).unwrap_or(0),
                exited_at: exit.map(|e| {
                    strata_proto::time::to_timestamp(strata_proto::time::from_nanos(
                        e.exited_at_unix_nanos,
                    ))
                }),
            }),
        );
    }

    /// Has a thread wait for process `exec_id` of `t` to exit and record it. When the
    /// shim is gone, the exit it saved on disk is used, or 255 (containerd's "unknown").
    fn watch_exit(self: &Arc<Self>, t: &Arc<Task>, exec_id: &str) {
        let (me, t, exec_id) = (self.clone(), t.clone(), exec_id.to_owned());
        std::thread::Builder::new()
            .name("task-wait".into())
            .spawn(move || {
                let exit = match t.client.wait(&exec_id) {
                    Ok(e) => e,
                    Err(err) => {
                        let saved = shim::exit_path(&t.dir, &exec_id);
                        match shim::read_exit(&saved) {
                            Ok(Some(e)) => e,
                            _ => {
                                warn!(id = %t.id, exec_id, error = %err, "shim gone without an exit status: reporting 255");
                                let e = Exit {
                                    exit_status: 255,
                                    exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                                };
                                if let Ok(b) = serde_json::to_vec(&e) {
                                    let _ = write_atomic(&saved, &b);
                                }
                                e
                            }
                        }
                    }
                };
                let _started = exec_id.is_empty().then(|| lock(&t.starting));
                if let Ok(p) = t.process(&exec_id) {
                    p.exit.send_replace(Some(exit));
                }
                me.publish_task(&t, &exec_id, events::TASK_EXIT, Some(exit));
            })
            .expect("spawn a thread");
    }

    /// Starts the task's init. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if it is not `created`.
    pub fn start(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        let t = self.task(ns, id)?;
        let _starting = lock(&t.starting);
        t.client.start()?;
        self.publish_task(&t, "", events::TASK_START, None);
        drop(_starting);
        Ok(t)
    }

    /// Sends `signal` to process `exec_id` (or, with `all`, every process). Blocking.
    ///
    /// # Errors
    /// `NotFound` (also for a process that has exited); `InvalidArgument` for signal 0
    /// or over 64.
    pub fn kill(&self, ns: &str, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        if signal == 0 || signal > 64 {
            return Err(Error::invalid(format!("signal {signal} is not 1..=64")));
        }
        let t = self.task(ns, id)?;
        let p = t.process(exec_id)?;
        if p.exit().is_some() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("container {id}: process already finished"),
            ));
        }
        t.client.kill(exec_id, signal as i32, all)
    }

    /// Pauses or resumes the task. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` in the wrong state.
    pub fn pause(&self, ns: &str, id: &str, pause: bool) -> Result<()> {
        let t = self.task(ns, id)?;
        if pause {
            t.client.pause()?;
            self.publish_task(&t, "", events::TASK_PAUSED, None);
        } else {
            t.client.resume()?;
            self.publish_task(&t, "", events::TASK_RESUMED, None);
        }
        Ok(())
    }

    /// Execs a process into the running task. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a bad exec id, empty args or a bad user;
    /// `AlreadyExists` for a taken exec id; `FailedPrecondition` if it does not run.
    pub fn exec(
        self: &Arc<Self>,
        ns: &Namespace,
        id: &str,
        p: &ExecProcess,
    ) -> Result<Arc<Process>> {
        strata_proto::ident::validate_identifier("exec id", &p.exec_id)
            .map_err(|e| Error::invalid("invalid exec id").with_source(e))?;
        if p.args.is_empty() {
            return Err(Error::invalid("exec: empty command line"));
        }
        let record = self.get_container(ns, id)?;
        let t = self.task(ns.as_str(), id)?;
        if lock(&t.execs).contains_key(&p.exec_id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container {id}: exec id {} is taken", p.exec_id),
            ));
        }
        let mut process = record
            .spec
            .get("process")
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "container spec has no process"))?;
        process["args"] = serde_json::json!(p.args);
        if !p.env.is_empty() {
            let mut env: Vec<String> = process["env"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for kv in &p.env {
                let Some((k, _)) = kv.split_once('=') else {
                    return Err(Error::invalid(format!("env entry {kv:?} is not KEY=value")));
                };
                env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
                env.push(kv.clone());
            }
            process["env"] = serde_json::json!(env);
        }
        if !p.cwd.is_empty() {
            if !p.cwd.starts_with('/') {
                return Err(Error::invalid(format!(
                    "working directory {:?} is not absolute",
                    p.cwd
                )));
            }
            process["cwd"] = serde_json::json!(p.cwd);
        }
        if !p.user.is_empty() {
            let u = crate::user::resolve(&t.dir.join("rootfs"), &p.user)?;
            process["user"] = serde_json::json!({
                "uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids,
            });
        }
        process["terminal"] = serde_json::json!(p.terminal.is_some());
        match p.terminal {
            Some((w, h)) => {
                process["consoleSize"] = serde_json::json!({"width": w, "height": h});
            }
            None => {
                if let Some(o) = process.as_object_mut() {
                    o.remove("consoleSize");
                }
            }
        }
        let pid = t.client.exec(&p.exec_id, &process, p.terminal.is_some())?;
        let proc = Process::new(pid, p.terminal.is_some());
        lock(&t.execs).insert(p.exec_id.clone(), proc.clone());
        self.watch_exit(&t, &p.exec_id);
        self.publish_task(&t, &p.exec_id, events::TASK_EXEC_ADDED, None);
        Ok(proc)
    }

    /// Deletes process `exec_id` once it has exited; for the init, the whole task: the
    /// shim deletes runc's container and exits, and the rootfs is unmounted. The init's
    /// log and exit status stay until the container is deleted. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` while it runs.
    pub fn delete_task(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let t = self.task(ns, id)?;
        if !exec_id.is_empty() {
            let p = t.process(exec_id)?;
            let exit = p.exit().ok_or_else(|| {
                Error::new(
                    ErrorKind::FailedPrecondition,
                    format!("container {id}: process {exec_id} is still running"),
                )
            })?;
            let _ = t.client.delete(exec_id);
            lock(&t.execs).remove(exec_id);
            return Ok(exit);
        }
        let _busy = self.mark_busy(ns, id)?;
        let exit = match t.client.delete("") {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                // The shim is gone: runc's container may remain.
                let rid = ContainerId::new(id)?;
                if let Err(e) = self.runc(ns).delete(&rid, true) {
                    warn!(error = %e, id, "runc delete --force after the shim died");
                }
                t.init.exit().unwrap_or(Exit {
                    exit_status: 255,
                    exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                })
            }
            Err(e) => return Err(e),
        };
        // The exit the shim reported on delete is final even if our watcher has not
        // heard it yet.
        if t.init.exit().is_none() {
            t.init.exit.send_replace(Some(exit));
        }
        strata_snapshotter::mount::unmount_all(&t.dir.join("rootfs"))
            .map_err(|e| e.context("unmount rootfs"))?;
        for name in ["shim.sock", "shim.pid", "init.pid", "config.json"] {
            let _ = fs::remove_file(t.dir.join(name));
        }
        remove_exec_files(&t.dir);
        lock(&self.tasks).remove(&(ns.to_owned(), id.to_owned()));
        self.publish_task(&t, "", events::TASK_DELETE, Some(exit));
        info!(
            namespace = ns,
            id,
            exit_status = exit.exit_status,
            "task deleted"
        );
        Ok(exit)
    }

    /// The exit saved for container `id`'s last task (its init), if any.
    pub fn last_exit(&self, ns: &str, id: &str) -> Option<Exit> {
        shim::read_exit(&shim::exit_path(&self.container_dir(ns, id), ""))
            .ok()
            .flatten()
    }

    /// Finds the tasks an earlier daemon left: a live shim is taken over (its exit is
    /// watched again); a dead one's task is listed as stopped with the exit it saved (or
    /// 255), to be deleted. Blocking.
    ///
    /// # Errors
    /// `Internal` if the containers directory cannot be read.
    pub fn recover(self: &Arc<Self>) -> Result<usize> {
        let mut found = 0;
        for r in self.all_records()? {
            let dir = self.container_dir(&r.namespace, &r.id);
            let Ok(pid) = fs::read_to_string(dir.join("init.pid")) else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<u32>() else {
                continue;
            };
            let client = ShimClient::new(&dir);
            let alive = client.alive();
            let task = Arc::new(Task {
                namespace: r.namespace.clone(),
                id: r.id.clone(),
                dir: dir.clone(),
                client,
                init: Process::new(pid, r.terminal()),
                execs: Mutex::default(),
                starting: Mutex::default(),
            });
            if !alive {
                let exit = shim::read_exit(&shim::exit_path(&dir, "")).ok().flatten();
                task.init.exit.send_replace(Some(exit.unwrap_or(Exit {
                    exit_status: 255,
                    exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                })));
            }
            lock(&self.tasks).insert((r.namespace.clone(), r.id.clone()), task.clone());
            if alive {
                self.watch_exit(&task, "");
            }
            self.recover_execs(&task, alive);
            info!(namespace = %r.namespace, id = %r.id, pid, alive, "task recovered");
            found += 1;
        }
        Ok(found)
    }
}

impl Lifecycle {
    /// The processes exec'd into `task` that were not deleted, from the pid files the
    /// shim keeps until then: each gets the exit the shim saved, or is watched again (a
    /// live shim still reaps it), or, with the shim gone and no saved exit, 255.
    fn recover_execs(self: &Arc<Self>, task: &Arc<Task>, alive: bool) {
        let Ok(entries) = fs::read_dir(&task.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(exec_id) = name
                .strip_prefix("exec-")
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            if strata_proto::ident::validate_identifier("exec id", exec_id).is_err() {
                continue;
            }
            let Some(pid) = read_small(&e.path()).and_then(|b| {
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
            }) else {
                continue;
            };
            let terminal = read_small(&shim::process_file(&task.dir, exec_id, "json"))
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("terminal").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            let p = Process::new(pid, terminal);
            lock(&task.execs).insert(exec_id.to_owned(), p.clone());
            match shim::read_exit(&shim::exit_path(&task.dir, exec_id))
                .ok()
                .flatten()
            {
                Some(exit) => {
                    p.exit.send_replace(Some(exit));
                }
                None if alive => self.watch_exit(task, exec_id),
                None => {
                    p.exit.send_replace(Some(Exit {
                        exit_status: 255,
                        exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                    }));
                }
            }
            info!(id = %task.id, exec_id, pid, "exec recovered");
        }
    }
}

/// A file the shim wrote, read whole if it is at most 1 MiB.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take((1 << 20) + 1)
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() <= 1 << 20).then_some(buf)
}

fn remove_exec_files(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("exec-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn io_error(context: String, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Internal, context).with_source(e)
}

/// Reads a container record; `None` if there is none.
fn read_record(path: &Path) -> Result<Option<ContainerRecord>> {
    let body = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("read {}", path.display()), e)),
    };
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        Error::new(
            ErrorKind::DataLoss,
            format!("container record {}", path.display()),
        )
        .with_source(e)
    })
}

/// [`shim::write_atomic`] with this crate's error.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    shim::write_atomic(path, data).map_err(|e| io_error(format!("write {}", path.display()), e))
}
