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
//! The module's files, one job each: this one holds the [`Lifecycle`] itself, its
//! options and requests; `containers` creates (image, rootfs, spec), records and deletes
//! containers; `tasks` runs them under their shims (start, kill, exec, exits);
//! `recovery` finds the tasks of an earlier daemon.
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

mod containers;
mod recovery;
mod tasks;

use containers::write_atomic;
use recovery::remove_exec_files;
pub use tasks::{Process, Task, log_path};

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
}
