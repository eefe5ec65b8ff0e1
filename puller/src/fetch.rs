//! Fetching a blob into the content store: resumable, verified, deduplicated.
//!
//! The ingest ref is derived from the digest, so an interrupted pull (network error, kill
//! -9, restart) resumes from the ingest's last durable offset with an HTTP range request,
//! and two pulls of the same blob at once share one download: the second finds the ref
//! held (`Unavailable`), waits, and then finds the blob committed (`AlreadyExists`). The
//! content store verifies size and digest at commit; nothing unverified becomes a blob.

use std::io::Read;
use std::time::{Duration, Instant};

use strata_content::{
    ErrorKind as ContentKind, Ingester, Labels, LocalStore, Scope, WriterOptions,
};
use strata_proto::{Digest, ErrorKind};

use crate::pull::{PullError, PullResult};

/// A blob to fetch: what a descriptor says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Media type.
    pub media_type: String,
    /// Digest; the bytes must hash to it.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// Where blob bytes come from (a registry, a mirror).
pub trait BlobSource: Send + Sync {
    /// Opens `blob` at `offset`. Returns the reader and the offset it really starts at:
    /// `offset`, or 0 when the server ignored the range request.
    fn open(&self, blob: &Blob, offset: u64) -> PullResult<(Box<dyn Read + Send>, u64)>;
}

/// How a fetch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The blob was already in the store (or another pull committed it meanwhile).
    Exists,
    /// The blob was downloaded (perhaps resuming an earlier partial download).
    Downloaded,
}

/// Attempts to reopen the source after a read error before giving up.
const MAX_RESUMES: u32 = 5;
/// How long to wait for another pull holding the same blob's ingest.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The ingest ref of a blob's download: the same for every pull of it, so downloads
/// resume and deduplicate.
pub fn ingest_ref(digest: &Digest) -> String {
    format!("fetch-{digest}")
}

/// Downloads `blob` from `src` into `store` (committed with `labels`), calling `progress`
/// with the bytes stored so far.
pub fn fetch_blob(
    store: &LocalStore,
    scope: &Scope,
    blob: &Blob,
    src: &dyn BlobSource,
    labels: &Labels,
    progress: &dyn Fn(u64),
) -> PullResult<Fetched> {
    let deadline = Instant::now() + MAX_WAIT;
    let mut w = loop {
        let opts = WriterOptions {
            r#ref: ingest_ref(&blob.digest),
            total: blob.size,
            expected: Some(blob.digest.clone()),
        };
        match store.writer(scope, opts) {
            Ok(w) => break w,
            Err(e) if e.kind() == ContentKind::AlreadyExists => {
                progress(blob.size);
                return Ok(Fetched::Exists);
            }
            Err(e) if e.kind() == ContentKind::Unavailable && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(PullError::from_content("open ingest", e)),
        }
    };
    let mut offset = w
        .status()
        .map_err(|e| PullError::from_content("ingest status", e))?
        .offset;
    if offset > blob.size {
        w.truncate(0)
            .map_err(|e| PullError::from_content("reset oversized ingest", e))?;
        offset = 0;
    }
    progress(offset);
    let mut buf = vec![0u8; 1 << 20];
    let mut resumes = 0;
    while offset < blob.size {
        let (mut r, start) = src.open(blob, offset)?;
        // A server that ignores Range sends the whole blob: skip what we already have.
        if start < offset {
            std::io::copy(&mut (&mut r).take(offset - start), &mut std::io::sink()).map_err(
                |e| PullError::new(ErrorKind::Unavailable, "skip to resume offset").with_source(e),
            )?;
        }
        let err = loop {
            let want = usize::try_from(blob.size - offset)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            match r.read(&mut buf[..want]) {
                Ok(0) => {
                    break Some(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("blob ended at {offset} of {} bytes", blob.size),
                    ));
                }
                Ok(n) => {
                    w.write(&buf[..n])
                        .map_err(|e| PullError::from_content("write ingest", e))?;
                    offset += n as u64;
                    progress(offset);
                    if offset == blob.size {
                        break None;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = err {
            resumes += 1;
            if resumes > MAX_RESUMES {
                return Err(PullError::new(
                    ErrorKind::Unavailable,
                    format!("fetch {}: gave up after {MAX_RESUMES} resumes", blob.digest),
                )
                .with_source(e));
            }
            tracing::warn!(digest = %blob.digest, offset, error = %e, "fetch interrupted; resuming");
        }
    }
    // A longer body than the descriptor says is never read past `size`; a different one
    // fails the digest check here and the ingest restarts on the next pull.
    match w.commit(blob.size, Some(&blob.digest), labels.clone()) {
        Ok(_) => Ok(Fetched::Downloaded),
        Err(e) if e.kind() == ContentKind::AlreadyExists => Ok(Fetched::Exists),
        Err(e) => {
            if e.kind() == ContentKind::FailedPrecondition {
                // The bytes do not match: start over next time rather than resume them.
                let _ = w.truncate(0);
            }
            Err(PullError::new(
                ErrorKind::InvalidArgument,
                format!("blob {} from the registry does not verify", blob.digest),
            )
            .with_source(e))
        }
    }
}
