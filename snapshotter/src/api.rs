//! The snapshotter contract, as containerd's `snapshots.Snapshotter`.
//!
//! Importing a layer is: `prepare(key, parent)` -> mount the returned mounts, apply the
//! layer -> `commit(name, key)`; the committed `name` is the parent of the next layer. A
//! container's rootfs is `prepare(key, top)` (or `view` for read-only), `remove(key)` when
//! done. Keys are opaque strings; containerd sends `<ns>/<seq>/<key>`.

use std::time::SystemTime;

use crate::Result;

/// Labels of a snapshot, ordered by key.
pub use strata_proto::ident::Labels;

/// What a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Read-only view of a committed parent; cannot be committed.
    View,
    /// Writable; committing it makes a committed snapshot.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    /// containerd's filter spelling (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A snapshot's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Key (active, view) or name (committed).
    pub name: String,
    /// Name of the committed parent, if any.
    pub parent: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Creation time.
    pub created_at: SystemTime,
    /// Last change of labels (or creation).
    pub updated_at: SystemTime,
    /// Labels.
    pub labels: Labels,
}

/// Disk usage of a snapshot's own layer (not its parents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// A mount, as containerd's `containerd.types.Mount`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type (`bind`, `overlay`, ...).
    pub r#type: String,
    /// Source path or device.
    pub source: String,
    /// Target path (usually empty: the caller chooses).
    pub target: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// A snapshotter backend.
///
/// # Contract
/// - `NotFound`: the key, name or parent does not exist.
/// - `AlreadyExists`: the key or name is taken (by a snapshot of any kind).
/// - `InvalidArgument`: the parent is not committed, a key is empty, or an update names
///   an immutable field.
/// - `FailedPrecondition`: removing a snapshot with children, committing a non-active one.
/// - Every operation is atomic: on error, nothing changed.
pub trait Snapshotter: Send + Sync {
    /// Metadata of a snapshot by key or name.
    fn stat(&self, key: &str) -> Result<Info>;

    /// Updates labels with containerd's field-mask semantics (`labels`, `labels.<k>`;
    /// an empty mask replaces all labels; anything else is `InvalidArgument`).
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;

    /// Disk usage of the snapshot's own layer.
    fn usage(&self, key: &str) -> Result<Usage>;

    /// Mounts of an active snapshot or view.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Creates a writable snapshot on `parent` (a committed snapshot) and returns its mounts.
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Creates a read-only view on `parent` and returns its mounts.
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Commits the active snapshot `key` as `name`; `key` stops existing.
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Removes a snapshot that has no children.
    fn remove(&self, key: &str) -> Result<()>;

    /// Calls `f` for every snapshot matching `filters` (`name`, `parent`, `kind`,
    /// `labels.*`; OR across filters, AND within one). `f` may call `stat`.
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()>;
}

/// Backends whose layers do not depend on their parent's contents (overlayfs: an upper
/// dir is a diff), so a snapshot prepared without a parent can be committed onto one.
/// This is containerd's `rebase` capability; it lets layers be unpacked in parallel and
/// chained at commit.
pub trait Rebase {
    /// Commits `key` as `name` with `parent` as its parent; `key` must have been prepared
    /// without a parent or on `parent`.
    fn commit_onto(&self, name: &str, key: &str, parent: &str, labels: Labels) -> Result<()>;
}

/// Backends that keep directories of their own and can drop those no metadata refers to.
pub trait Cleanup {
    /// Removes unreferenced directories; never follows a path a container could change.
    fn cleanup(&self) -> Result<()>;
}

/// Backends that answer containerd's remote-snapshot handshake from an index: which
/// committed snapshots carry `containerd.io/snapshot.ref=<target>` (the chainID a layer
/// is committed as). A lazy backend plugs in here by committing targets itself. The
/// handshake built on it is [`check_target`](crate::remote::check_target).
pub trait Remote {
    /// Committed snapshots labelled `containerd.io/snapshot.ref=<target>`.
    fn targets(&self, target: &str) -> Result<Vec<Info>>;
}

/// A shared snapshotter is a snapshotter (the service and its clients hold backends in
/// `Arc`s).
impl<T: Snapshotter + ?Sized> Snapshotter for std::sync::Arc<T> {
    fn stat(&self, key: &str) -> Result<Info> {
        (**self).stat(key)
    }
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        (**self).update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        (**self).usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        (**self).mounts(key)
    }
    fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        (**self).prepare(key, parent, labels)
    }
    fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        (**self).view(key, parent, labels)
    }
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        (**self).commit(name, key, labels)
    }
    fn remove(&self, key: &str) -> Result<()> {
        (**self).remove(key)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        (**self).walk(filters, f)
    }
}
