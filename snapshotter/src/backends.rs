//! The one registry of snapshotter backends: each [`Backend`] holds its snapshotter, the
//! capabilities it implements, the whiteout format its layers are stored in, and what
//! `strata version` reports of it. The gRPC service, the puller and the daemon all route
//! through [`Backends`]; none keeps a map of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::{Cleanup, Rebase, Remote, Snapshotter};
use crate::driver::{DiffDriver, Driver, MetaSnapshotter};
use crate::observe::{Observed, SnapshotEvents};
use crate::remote::Targets;

/// An optional feature a backend implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// [`Rebase`]: commit onto a parent at commit time (parallel unpack).
    Rebase,
    /// [`Cleanup`]: remove storage no snapshot refers to.
    Cleanup,
    /// [`Remote`]: an indexed lookup of committed layer targets (the remote-snapshot
    /// handshake).
    Remote,
}

impl Capability {
    /// The name `strata version` prints (containerd's capability spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Rebase => "rebase",
            Capability::Cleanup => "cleanup",
            Capability::Remote => "remote",
        }
    }
}

/// How a backend's layers store deletions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Whiteouts {
    /// Overlay whiteouts (0:0 character devices, `trusted.overlay.opaque`): each layer is
    /// a diff the kernel merges.
    Overlay,
    /// Deleted in place: each snapshot is a full tree.
    Delete,
}

impl Whiteouts {
    /// The name `strata version` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Whiteouts::Overlay => "overlay",
            Whiteouts::Delete => "delete",
        }
    }
}

/// One backend and what it can do.
#[derive(Clone)]
pub struct Backend {
    snapshotter: Arc<dyn Snapshotter>,
    cleanup: Option<Arc<dyn Cleanup + Send + Sync>>,
    rebase: Option<Arc<dyn Rebase + Send + Sync>>,
    remote: Option<Arc<dyn Remote + Send + Sync>>,
    whiteouts: Whiteouts,
    root: Option<PathBuf>,
}

impl Backend {
    /// A backend with no capabilities (any [`Snapshotter`], a remote one included).
    pub fn new(snapshotter: Arc<dyn Snapshotter>, whiteouts: Whiteouts) -> Self {
        Backend {
            snapshotter,
            cleanup: None,
            rebase: None,
            remote: None,
            whiteouts,
            root: None,
        }
    }

    /// A driver-based backend of full trees: [`Cleanup`] and [`Remote`], whiteouts
    /// deleted.
    pub fn of<D: Driver>(s: Arc<MetaSnapshotter<D>>) -> Self {
        Backend::new(s.clone(), Whiteouts::Delete)
            .with_cleanup(s.clone())
            .with_remote(s)
    }

    /// A driver-based backend of diffs: [`Cleanup`], [`Remote`] and [`Rebase`], overlay
    /// whiteouts.
    pub fn of_diffs<D: DiffDriver>(s: Arc<MetaSnapshotter<D>>) -> Self {
        Backend::new(s.clone(), Whiteouts::Overlay)
            .with_cleanup(s.clone())
            .with_remote(s.clone())
            .with_rebase(s)
    }

    /// Adds the [`Remote`] capability.
    pub fn with_remote(mut self, r: Arc<dyn Remote + Send + Sync>) -> Self {
        self.remote = Some(r);
        self
    }

    /// The [`Remote`] capability, if implemented.
    pub fn remote(&self) -> Option<&Arc<dyn Remote + Send + Sync>> {
        self.remote.as_ref()
    }

    /// Where the remote-snapshot handshake looks targets up: the [`Remote`] index, or a
    /// scan of committed snapshots for a backend without one.
    pub fn targets(&self) -> Targets<'_> {
        match &self.remote {
            Some(r) => Targets::Indexed(&**r),
            None => Targets::Scan(&*self.snapshotter),
        }
    }

    /// Adds the [`Cleanup`] capability.
    pub fn with_cleanup(mut self, c: Arc<dyn Cleanup + Send + Sync>) -> Self {
        self.cleanup = Some(c);
        self
    }

    /// Adds the [`Rebase`] capability.
    pub fn with_rebase(mut self, r: Arc<dyn Rebase + Send + Sync>) -> Self {
        self.rebase = Some(r);
        self
    }

    /// Records the backend's root directory (reported by `strata version`).
    pub fn with_root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_owned());
        self
    }

    /// The snapshotter.
    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    /// The [`Cleanup`] capability, if implemented.
    pub fn cleanup(&self) -> Option<&Arc<dyn Cleanup + Send + Sync>> {
        self.cleanup.as_ref()
    }

    /// The [`Rebase`] capability, if implemented.
    pub fn rebase(&self) -> Option<&Arc<dyn Rebase + Send + Sync>> {
        self.rebase.as_ref()
    }

    /// How its layers store deletions.
    pub fn whiteouts(&self) -> Whiteouts {
        self.whiteouts
    }

    /// Its root directory, where it has one.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// This backend wrapped so that its commits are reported to `events` on behalf of
    /// namespace `ns` (see [`Observed`]); `snapshotter` is the name the client used.
    pub fn observed(
        &self,
        events: Arc<dyn SnapshotEvents>,
        ns: &str,
        snapshotter: &str,
    ) -> Observed {
        Observed::new(
            self.snapshotter.clone(),
            self.rebase.clone(),
            events,
            ns,
            snapshotter,
        )
    }

    /// The capabilities it implements, in a stable order.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut caps = Vec::new();
        if self.rebase.is_some() {
            caps.push(Capability::Rebase);
        }
        if self.cleanup.is_some() {
            caps.push(Capability::Cleanup);
        }
        if self.remote.is_some() {
            caps.push(Capability::Remote);
        }
        caps
    }
}

/// The backends, by snapshotter name, and the one unknown or empty names go to (so a
/// containerd proxy plugin of any name works).
#[derive(Clone)]
pub struct Backends {
    by_name: BTreeMap<String, Backend>,
    default: String,
}

impl Backends {
    /// No backends yet; `default` names the one unknown names route to.
    pub fn new(default: impl Into<String>) -> Self {
        Backends {
            by_name: BTreeMap::new(),
            default: default.into(),
        }
    }

    /// Adds (or replaces) the backend `name`.
    pub fn insert(&mut self, name: impl Into<String>, backend: Backend) {
        self.by_name.insert(name.into(), backend);
    }

    /// Builder form of [`Backends::insert`].
    pub fn with(mut self, name: impl Into<String>, backend: Backend) -> Self {
        self.insert(name, backend);
        self
    }

    /// The name of the default backend.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The backend `name` routes to: itself if configured, else the default.
    pub fn route_name(&self, name: &str) -> String {
        if self.by_name.contains_key(name) {
            name.to_owned()
        } else {
            self.default.clone()
        }
    }

    /// The backend a request for `name` goes to (see [`Backends::route_name`]).
    pub fn route(&self, name: &str) -> Option<&Backend> {
        self.by_name
            .get(name)
            .or_else(|| self.by_name.get(&self.default))
    }

    /// The backend named exactly `name`.
    pub fn get(&self, name: &str) -> Option<&Backend> {
        self.by_name.get(name)
    }

    /// Every backend, by name in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Backend)> {
        self.by_name.iter().map(|(n, b)| (n.as_str(), b))
    }
}
