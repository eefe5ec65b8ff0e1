//! strata's container lifecycle layer: from an unpacked image to a process run by runc.
//!
//! ```text
//! strata run ──> Containers / Tasks / Events (strata.v1 gRPC in the daemon: service, lifecycle)
//!                   │ image: an ImageResolver (the daemon's, over its content store)
//!                   │ rootfs: Prepare/Mounts on the image's top chainID through any
//!                   │         snapshots.v1 endpoint (strata's own socket, containerd's)
//!                   │ spec::generate(image config, rootfs, options) -> config.json
//!                   ▼
//!                one strata-shim per container (strata-shim crate) ──> runc
//! ```
//!
//! - [`service`]: the `strata.v1` Containers, Tasks and Events gRPC services, over
//! - [`lifecycle`]: [`lifecycle::Lifecycle`], container records, rootfs preparation and
//!   mounting, tasks and their shims, exit watching, and the recovery of the tasks of an
//!   earlier daemon;
//! - [`images`]: [`ImageResolver`], where the lifecycle finds pulled images;
//! - [`events`]: the event bus (containerd's topics), fed by tasks, containers, pulls and
//!   snapshot commits.
//!
//! Spec generation, the runc driver and the shim itself are the `strata-shim` crate,
//! re-exported here as [`image`], [`spec`], [`user`], [`runc`] and [`shim`]. This crate
//! links no content store and no registry client: images come through [`ImageResolver`]
//! and rootfs mounts over snapshots.v1.
//!
//! Errors are one [`Error`] with an [`ErrorKind`] (containerd's errdefs vocabulary).

#![warn(missing_docs)]

pub mod events;
pub mod images;
pub mod lifecycle;
pub mod service;

pub use images::{ImageResolver, ResolvedImage};
pub use strata_proto::{Error, ErrorKind, Result, ResultExt};
pub use strata_shim::{
    BindMount, ContainerConfig, ContainerId, Network, RunOptions, Runc, Spec, generate, image,
    runc, shim, spec, user,
};
