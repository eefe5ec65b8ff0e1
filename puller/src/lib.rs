//! strata's puller: from a registry into the content store and a snapshotter.
//!
//! Map of the crate:
//! - [`registry`]: the OCI/Docker registry client (the `strata-registry` crate). [`registry::Reference`] parses and
//!   normalises image references, [`registry::hosts`] reads containerd's `hosts.toml`
//!   (mirrors, plain http, `skip_verify`), [`registry::auth`] finds credentials
//!   (`~/.docker/config.json`, `--user`) and answers Basic and Bearer challenges,
//!   [`registry::RegistryClient`] sends requests (retries, redirects, credential
//!   confinement), resolves a reference to a platform's manifest and config, and streams
//!   blobs with HTTP Range.
//! - [`remote`]: [`RegistryBlobs`], the snapshotter's `BlobSource` (ranged reads of
//!   layer blobs for a lazy backend) over the registry client.
//! - [`fetch`]: [`fetch_blob`] downloads a blob into the content store, resuming from
//!   the ingest's durable offset and sharing one download between concurrent pulls.
//! - [`decompress`]: [`open_layer`] turns a layer blob into its uncompressed tar by
//!   media type or magic bytes: gzip, zstd (window capped) or plain.
//! - [`apply`]: [`apply_layer`] extracts that tar into a snapshot's directory safely
//!   (nothing outside the root is ever touched), converting whiteouts for overlay
//!   upper directories or deleting for full-copy snapshots, and returns the diff_id.
//! - [`unpack`]: [`Unpacker`] commits an image's layers under their chainIDs, in
//!   parallel on a Rebase-capable snapshotter.
//! - [`pull`](mod@pull): the whole pipeline (over any `ImageContentStore`); `source`:
//!   the registry as the fetch's source; [`gc`]: removal of the snapshots the puller made
//!   that no image references; [`service`]: pulls and image records as
//!   `strata.v1.Images`.
//! - [`Limits`]: the bounds a hostile layer runs into; [`ApplyError`]: what went wrong
//!   while unpacking, matchable by variant, with an errdefs [`ErrorKind`]. Everything
//!   else returns strata's one [`Error`].
//!
//! A pull flows: `RegistryClient::resolve_image` -> [`fetch_blob`] for the manifest,
//! config and layers (in parallel) -> [`Unpacker::unpack`] (`prepare` -> `apply_layer` ->
//! diff_id check -> `syncfs` -> `commit(chainID)`) -> image record.

#![warn(missing_docs)]

pub mod apply;
pub mod convert;
pub mod decompress;
pub mod fetch;
pub mod gc;
mod lazy;
mod limits;
pub mod local;
pub mod pull;
mod readahead;
pub mod remote;
mod source;
/// The registry client (the `strata-registry` crate).
pub use strata_registry as registry;
pub mod service;
pub mod unpack;

pub use apply::{ApplyError, ApplyResult, ApplyStats, EntryName, Limit, WhiteoutMode, apply_layer};
pub use decompress::{Compression, DecodeError, open_layer};
pub use fetch::{Blob, FetchSource, Fetched, fetch_blob};
pub use limits::Limits;
pub use pull::{Progress, PullRequest, UnpackTo, pull};
pub use remote::RegistryBlobs;
pub use strata_proto::{Error, ErrorKind, Result, ResultExt};
pub use unpack::{Layer, UnpackEvent, Unpacker, chain_ids};
