//! strata's snapshotters.
//!
//! Map of the crate:
//! - [`api`]: the [`Snapshotter`] contract (prepare, view, mounts, commit, remove, stat,
//!   update, usage, walk) and capability traits such as [`Cleanup`].
//! - [`meta`]: the [`MetaStore`] every backend shares: ids, kinds, parent chains, labels
//!   and usage in RocksDB, one atomic batch per operation.
//! - [`driver`]: a backend is a [`Driver`] (storage named by snapshot id: create,
//!   install, mounts, usage, seal at commit, remove, cleanup); [`MetaSnapshotter`] puts
//!   one over the MetaStore and implements [`Snapshotter`], [`Cleanup`] and, for a
//!   [`DiffDriver`], [`Rebase`] once. A new backend is one driver file.
//! - [`overlay`]: the overlayfs backend, laid out and mounted as containerd's.
//! - [`btrfs`]: the btrfs backend: one subvolume per snapshot, made by kernel ioctls, a
//!   layer on a parent is a copy-on-write snapshot of it.
//! - [`native`]: the copying backend, laid out and mounted as containerd's native: each
//!   snapshot a full copy of its parent's tree, mounted with `bind`.
//! - [`copy`]: [`copy_tree`], the exact tree copy native snapshots are made with.
//! - [`backends`]: the one registry of backends ([`Backends`]): each [`Backend`] with its
//!   capabilities, whiteout format and root, routed by snapshotter name (unknown or
//!   empty: the default backend).
//! - [`estargz`]: the eStargz format the lazy backend serves: footer, TOC, verified
//!   chunk reads, and the writer `strata convert` uses.
//! - [`lazy`]: the lazy backend's runtime: a layer as a read-only FUSE filesystem served
//!   from its TOC, chunks fetched, verified and cached as they are read.
//! - [`remote`]: containerd's remote-snapshot handshake over the [`Remote`] capability,
//!   used by the gRPC service and in-process callers alike.
//! - [`observe`]: events as a wrapper: [`Observed`] reports every commit, whichever path
//!   made it (the service, the in-process unpacker), to a [`SnapshotEvents`] sink.
//! - [`service`]: `containerd.services.snapshots.v1` over [`Backends`].
//! - [`client`]: [`GrpcSnapshotter`], the same contract over any snapshots.v1 socket.
//! - [`mount`]: mounting what a snapshotter returns, long overlay chains included.
//! - [`testsuite`]: containerd's conformance cases, for any [`Snapshotter`].
//!
//! A layer import flows: `prepare(key, parent)` -> the driver makes storage under a temp
//! name, the MetaStore gives it an id and the parent chain, the driver renames it to
//! `<id>` and returns mounts -> the caller applies the
//! layer -> `commit(name, key)` measures usage and records it under `name`.

#![warn(missing_docs)]

pub mod api;
#[cfg(feature = "backends")]
pub mod backends;
#[cfg(feature = "backends")]
pub mod btrfs;
pub mod client;
#[cfg(feature = "backends")]
pub mod copy;
#[cfg(feature = "backends")]
pub mod driver;
#[cfg(feature = "backends")]
pub mod estargz;
#[cfg(feature = "backends")]
mod fsutil;
#[cfg(feature = "backends")]
pub mod lazy;
#[cfg(feature = "backends")]
pub mod meta;
pub mod mount;
#[cfg(feature = "backends")]
pub mod native;
pub mod observe;
#[cfg(feature = "backends")]
pub mod overlay;
pub mod remote;
#[cfg(feature = "backends")]
pub mod service;
pub mod testsuite;

pub use api::{Cleanup, Info, Kind, Labels, Mount, Rebase, Remote, Snapshotter, Usage};
#[cfg(feature = "backends")]
pub use backends::{Backend, Backends, Capability, Whiteouts};
#[cfg(feature = "backends")]
pub use btrfs::{BtrfsDriver, BtrfsSnapshotter};
pub use client::GrpcSnapshotter;
#[cfg(feature = "backends")]
pub use copy::copy_tree;
#[cfg(feature = "backends")]
pub use driver::{DiffDriver, Driver, MetaSnapshotter};
#[cfg(feature = "backends")]
pub use fsutil::disk_usage;
#[cfg(feature = "backends")]
pub use meta::{MetaStore, Snapshot};
#[cfg(feature = "backends")]
pub use native::{NativeDriver, NativeSnapshotter};
pub use observe::{Observed, SnapshotEvent, SnapshotEvents};
#[cfg(feature = "backends")]
pub use overlay::{OverlayDriver, OverlayOptions, OverlaySnapshotter};
pub use remote::{BlobSource, RemoteBlob};
pub use strata_proto::{Error, ErrorKind, Result, ResultExt};
