//! eStargz, the lazily pullable gzip layer format: a tar split into gzip members at
//! every file payload (and every chunk of a large one), with a table of contents and a
//! footer naming where it is. Any gzip reader extracts it as an ordinary layer.
//!
//! - [`footer`](mod@footer): the 51-byte footer (the TOC's offset).
//! - [`toc`]: the TOC's JSON and the checked [`Tree`] a lazy mount serves.
//! - [`read`]: fetching and verifying the TOC and single chunks through a
//!   [`BlobSource`](crate::BlobSource).
//! - [`write`](mod@write): rewriting a tar stream as eStargz (what `strata convert --estargz` does
//!   per layer).

pub mod footer;
pub mod read;
pub mod toc;
pub mod write;

pub use footer::{FOOTER_SIZE, footer, parse_footer};
pub use read::{check_toc_digest, decode_chunk, fetch_toc, fetch_toc_json, fetch_tree, toc_json};
pub use toc::{Chunk, Node, NodeKind, ROOT, TocEntry, TocJson, TocLimits, Tree};
pub use write::{WriteOptions, Written, write_estargz};

/// The layer annotation (and, inherited, snapshot label) naming the TOC's digest.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The layer annotation with the uncompressed size of the layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
