//! strata's container lifecycle layer: from an unpacked image to a process run by runc.
//!
//! # What the crate will hold
//!
//! ```text
//! strata run ──> containers + tasks service (strata.v1; gRPC, in the daemon)
//!                   │ rootfs mounts from any snapshots.v1 endpoint
//!                   │ spec::generate(image config, rootfs, options) -> config.json
//!                   ▼
//!                one shim process per container ──> runc driver (create/start/kill/delete)
//! ```
//!
//! - a **containers + tasks service**: container records, rootfs preparation through a
//!   snapshots.v1 client, task create/start/wait/kill/delete, events;
//! - the **shim binary**: one per container, it owns the container's stdio and reaps its
//!   exit status so the daemon can restart without killing containers;
//! - a **runc driver**: bundles and runc invocations.
//!
//! # What exists now
//!
//! The foundation every one of those needs: the OCI runtime spec for a container.
//!
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

mod error;
pub mod events;
pub mod image;
pub mod lifecycle;
pub mod runc;
pub mod service;
pub mod shim;
pub mod spec;
pub mod user;

pub use error::{Error, ErrorKind, Result};
pub use image::ContainerConfig;
pub use oci_spec::runtime::Spec;
pub use runc::Runc;
pub use spec::{BindMount, ContainerId, Network, RunOptions, generate};
