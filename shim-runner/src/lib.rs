//! strata's container lifecycle layer: from an unpacked image to a process run by runc.
//!
//! ```text
//! strata run ──> Containers / Tasks / Events (strata.v1 gRPC in the daemon: service, lifecycle)
//!                   │ rootfs: Prepare/Mounts on the image's top chainID through any
//!                   │         snapshots.v1 endpoint (strata's own socket, containerd's)
//!                   │ spec::generate(image config, rootfs, options) -> config.json
//!                   ▼
//!                one strata-shim per container (shim) ──> runc driver (runc)
//! ```
//!
//! - [`service`]: the `strata.v1` Containers, Tasks and Events gRPC services, over
//! - [`lifecycle`]: [`lifecycle::Lifecycle`], container records, rootfs preparation and
//!   mounting, tasks and their shims, exit watching, and the recovery of the tasks of an
//!   earlier daemon;
//! - [`events`]: the event bus (containerd's topics), fed by tasks, containers, pulls and
//!   snapshot commits.
//! - [`image`]: [`ContainerConfig`], the `config` part of an image config JSON (entrypoint,
//!   cmd, env, user, working dir, labels, stop signal), parsed with a size bound.
//! - [`spec`]: [`generate`] turns a [`ContainerConfig`], a mounted rootfs and
//!   [`RunOptions`] into an [`oci_spec::runtime::Spec`] with containerd 1.6's Linux
//!   defaults and Docker's command-line semantics. Image labels never change it.
//! - [`user`]: [`user::resolve`] turns a USER value into uid, gid and additional gids
//!   using the rootfs's own `/etc/passwd` and `/etc/group`, read with `openat2`
//!   confined to the rootfs.
//!
//! - [`runc`]: [`Runc`], the driver over the `runc` binary (create, start, state, kill,
//!   pause, resume, ps, exec, delete), with runc's own message in its errors, and
//!   [`runc::become_subreaper`] + [`runc::wait_exit`], which give a shim the exit status
//!   of a container's init although runc double-forks.
//!
//! - [`shim`]: the per-container shim (the `strata-shim` binary, [`shim::server`]) and
//!   the daemon's side of it, [`shim::spawn`] and [`shim::ShimClient`]: a socket per
//!   container, output in a framed log, exit statuses saved before anyone hears them.
//!
//! Errors are one [`Error`] with an [`ErrorKind`] (containerd's errdefs vocabulary).

#![warn(missing_docs)]

pub mod events;
pub mod image;
pub mod lifecycle;
pub mod runc;
pub mod service;
pub mod shim;
pub mod spec;
pub mod user;

pub use image::ContainerConfig;
pub use oci_spec::runtime::Spec;
pub use runc::Runc;
pub use spec::{BindMount, ContainerId, Network, RunOptions, generate};
pub use strata_proto::{Error, ErrorKind, Result, ResultExt};
