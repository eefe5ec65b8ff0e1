//! The lazy backend's runtime: a committed layer served as a read-only FUSE filesystem
//! from its eStargz TOC ([`crate::estargz`]), its content fetched chunk by chunk as it is
//! read ([`LayerReader`]), verified and cached on local disk.
//!
//! - [`ahead`]: the TOCs of an image's upper layers, fetched while the lower ones mount.
//! - [`backend`]: [`LazySnapshotter`], the `lazy` backend: overlay snapshots whose
//!   layers are mounted lazily in containerd's remote-snapshot handshake.
//! - [`reader`]: [`LayerReader`]: chunk fetch (coalesced), verification, cache, prefetch.
//! - [`fs`]: [`LazyFs`], the FUSE filesystem over a reader (on `fuser`; why is there).
//! - [`mounter`]: who serves a mount: [`InProcess`], or the daemon's own server
//!   processes, behind [`LayerMounter`].
//! - [`mount`]: [`LazyMount`], a mounted layer, unmounted when dropped.

pub mod ahead;
pub mod backend;
pub mod fs;
pub mod mount;
pub mod mounter;
pub mod reader;

pub use backend::{LazyDriver, LazyLayer, LazyOptions, LazySnapshotter};
pub use fs::LazyFs;
pub use mount::LazyMount;
pub use mounter::{InProcess, LayerMounter, MountSpec, MountedLayer, serve, tree_usage};
pub use reader::LayerReader;
