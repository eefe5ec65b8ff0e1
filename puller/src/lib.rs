//! strata's puller.
//!
//! Map of the crate (so far, the unpacking core; the registry client and the pull
//! pipeline build on it):
//! - [`decompress`]: [`open_layer`] turns a layer blob into its uncompressed tar by
//!   media type or magic bytes: gzip, zstd (window capped) or plain.
//! - [`apply`]: [`apply_layer`] extracts that tar into a snapshot's directory safely
//!   (nothing outside the root is ever touched), converting whiteouts for overlay
//!   upper directories or deleting for full-copy snapshots, and returns the diff_id.
//! - [`Limits`]: the bounds a hostile layer runs into; [`Error`]: what went wrong,
//!   with an errdefs [`ErrorKind`] for the gRPC edge.
//!
//! A layer unpack flows: `Snapshotter::prepare(key, parent)` -> mount or locate the
//! directory -> `apply_layer(open_layer(media_type, blob, &limits)?, dir, mode, &limits)`
//! -> compare `diff_id` with the image config -> sync -> `commit(chain_id, key)`.

#![warn(missing_docs)]

pub mod apply;
pub mod decompress;
mod error;
pub mod fetch;
mod limits;
pub mod pull;
pub mod unpack;

pub use apply::{ApplyStats, WhiteoutMode, apply_layer};
pub use decompress::{Compression, DecodeError, open_layer};
pub use error::{EntryName, Error, ErrorKind, Limit, Result};
pub use fetch::{Blob, BlobSource, Fetched, fetch_blob};
pub use limits::Limits;
pub use pull::{PullError, PullResult};
pub use unpack::{Layer, UnpackEvent, Unpacker, chain_ids};
