//! Running one container with runc, with nothing of strata's stores linked in: this crate
//! is all the per-container `strata-shim` process needs (it links neither RocksDB nor
//! TLS), plus what the daemon uses to drive it.
//!
//! ```text
//! image config JSON --image::ContainerConfig--> spec::generate(config, rootfs, options)
//!   --> config.json in a state dir --shim::spawn--> strata-shim --runc driver--> runc
//! ```
//!
//! - [`image`]: [`ContainerConfig`], the `config` part of an image config JSON (entrypoint,
//!   cmd, env, user, working dir, labels, stop signal), parsed with a size bound.
//! - [`spec`]: [`generate`] turns a [`ContainerConfig`], a mounted rootfs and
//!   [`RunOptions`] into an [`oci_spec::runtime::Spec`] with containerd 1.6's Linux
//!   defaults and Docker's command-line semantics. Image labels never change it.
//! - [`user`]: [`user::resolve`] turns a USER value into uid, gid and additional gids
//!   using the rootfs's own `/etc/passwd` and `/etc/group`, read with `openat2`
//!   confined to the rootfs.
//! - [`runc`]: [`Runc`], the driver over the `runc` binary (create, start, state, kill,
//!   pause, resume, ps, exec, delete), with runc's own message in its errors, and
//!   [`runc::become_subreaper`] + [`runc::wait_exit`], which give a shim the exit status
//!   of a container's init although runc double-forks.
//! - [`shim`]: the per-container shim (the `strata-shim` binary, [`shim::server`]) and
//!   the daemon's side of it, [`shim::spawn`] and [`shim::ShimClient`]: a socket per
//!   container, output in a framed log, exit statuses saved before anyone hears them.
//!
//! Errors are strata's one [`Error`] with an [`ErrorKind`] (containerd's errdefs
//! vocabulary).

#![warn(missing_docs)]

pub mod image;
pub mod runc;
pub mod shim;
pub mod spec;
pub mod user;

pub use image::ContainerConfig;
pub use oci_spec::runtime::Spec;
pub use runc::Runc;
pub use spec::{BindMount, ContainerId, Network, RunOptions, generate};
pub use strata_proto::{Error, ErrorKind, Result, ResultExt};
