//! strata's content store.
//!
//! Map of the crate:
//! - [`api`]: the transport-agnostic contract ([`Provider`], [`Ingester`] + [`Writer`],
//!   [`IngestManager`], [`Manager`], [`LeaseManager`]) and its value types.
//! - [`LocalStore`] (module `store`): blobs and resumable ingests on disk, metadata
//!   (labels, namespaces, leases) in RocksDB (module `meta`), with the durable commit
//!   sequence and crash recovery documented in `store`.
//! - [`images`]: image records (name -> manifest/index descriptor), roots of the GC.
//! - `leases`: leases and the garbage collector ([`LocalStore::garbage_collect`]).
//! - [`service`]: `containerd.services.content.v1` and `leases.v1` gRPC services over any
//!   [`LocalStore`].
//! - [`GrpcStore`] (module `client`): the same contract implemented over gRPC, so
//!   [`testsuite`] runs against the daemon exactly as against the local store.
//!
//! A pull's blob flows: `Ingester::writer(ref)` -> `Writer::status` (resume offset) ->
//! `Writer::write`... -> `Writer::commit` (fsync, verify, rename, record) -> readable
//! through `Provider`.

#![warn(missing_docs)]

pub mod api;
mod client;

pub mod images;
mod leases;
mod meta;
pub mod service;
mod store;
pub mod testsuite;

pub use api::{
    ContentStore, ImageContentStore, ImageStore, Info, IngestManager, Ingester, Labels, Lease,
    LeaseManager, Manager, Namespace, Provider, ReadAt, Resource, Scope, Status, Writer,
    WriterOptions,
};
pub use client::GrpcStore;
pub use images::{Image, Target};
pub use leases::{GC_EXPIRE, GC_FLAT, GC_REF_CONTENT, GC_ROOT, GcReport, parse_rfc3339};
pub use meta::open_versioned as open_versioned_db;
pub use store::{LocalStore, SHAREABLE_LABEL, SharingPolicy, StoreOptions};
pub use strata_proto::{Error, ErrorKind, Result, ResultExt};
