//! Fetching a blob into the content store: resumable, verified, deduplicated.
//!
//! The ingest ref is derived from the digest, so an interrupted pull (network error, kill
//! -9, restart) resumes from the ingest's last durable offset with an HTTP range request,
//! and two pulls of the same blob at once share one download: the second finds the ref
//! held (`Unavailable`), waits, and then finds the blob committed (`AlreadyExists`). The
//! content store verifies size and digest at commit; nothing unverified becomes a blob.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use strata_content::{
    ContentStore, ErrorKind as ContentKind, Labels, ReadAt, Scope, WriterOptions,
};
use strata_proto::{Digest, ErrorKind};

use crate::{Error, Result, ResultExt};

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
pub trait FetchSource: Send + Sync {
    /// Opens `blob` at `offset`. Returns the reader and the offset it really starts at:
    /// `offset`, or 0 when the server ignored the range request.
    fn open(&self, blob: &Blob, offset: u64) -> Result<(Box<dyn Read + Send>, u64)>;

    /// Opens exactly the bytes `range` of `blob`, for one chunk of a parallel download;
    /// `None` when the source cannot serve a range by itself (the default; a server that
    /// ignores ranges): the download then goes on in one stream.
    fn open_range(
        &self,
        blob: &Blob,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        let _ = (blob, range);
        Ok(None)
    }
}

/// Blobs with at least this much left to fetch are downloaded in parallel chunks.
pub const CHUNKED_MIN: u64 = 32 << 20;
/// Size of one chunk of a parallel download.
const CHUNK: u64 = 4 << 20;
/// Chunks in flight at once: the memory a large blob's download holds is `WINDOW * CHUNK`.
const WINDOW: usize = 4;

/// Reads bytes `start..end` of `blob` from `src` into `buf` (reused), reopening the
/// range where a connection breaks; `None` when the source serves no ranges.
fn fetch_range(
    src: &dyn FetchSource,
    blob: &Blob,
    start: u64,
    end: u64,
    mut buf: Vec<u8>,
) -> Result<Option<Vec<u8>>> {
    buf.resize((end - start) as usize, 0);
    let mut filled = 0;
    let mut resumes = 0;
    loop {
        let at = start + filled as u64;
        let Some(mut r) = src.open_range(blob, at..end)? else {
            return Ok(None);
        };
        let err = loop {
            if filled == buf.len() {
                return Ok(Some(buf));
            }
            match r.read(&mut buf[filled..]) {
                Ok(0) => {
                    break std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("range ended at {} of {end}", start + filled as u64),
                    );
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        };
        resumes += 1;
        if resumes > MAX_RESUMES {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "fetch {} bytes {start}-{end}: gave up after {MAX_RESUMES} resumes",
                    blob.digest
                ),
            )
            .with_source(err));
        }
        tracing::warn!(digest = %blob.digest, start, end, error = %err, "chunk interrupted; resuming");
    }
}

/// Downloads `offset..blob.size` in [`CHUNK`]s, [`WINDOW`] at once, and writes them in
/// order. Returns the offset reached: `blob.size`, or less when the source turned out to
/// serve no ranges (the caller goes on in one stream from there).
fn fetch_chunks(
    w: &mut dyn strata_content::Writer,
    blob: &Blob,
    src: &dyn FetchSource,
    mut offset: u64,
    follow: Option<&Follow>,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    // Buffers go round: fresh memory is slow to touch in a VM, and reuse bounds it.
    let free = Mutex::new(Vec::<Vec<u8>>::new());
    std::thread::scope(|s| {
        let spawn = |start: u64| {
            let end = (start + CHUNK).min(blob.size);
            let buf = free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            s.spawn(move || fetch_range(src, blob, start, end, buf))
        };
        let mut next = offset;
        let mut pending = std::collections::VecDeque::new();
        while pending.len() < WINDOW && next < blob.size {
            pending.push_back(spawn(next));
            next += CHUNK;
        }
        while let Some(h) = pending.pop_front() {
            let chunk = h.join().unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Internal,
                    "a download thread panicked",
                ))
            })?;
            // Chunks still in flight finish before the scope ends; their bytes are dropped.
            let Some(chunk) = chunk else {
                return Ok(offset);
            };
            w.write(&chunk).context("write ingest")?;
            offset += chunk.len() as u64;
            free.lock().unwrap_or_else(|e| e.into_inner()).push(chunk);
            if let Some(f) = follow {
                f.advance(offset);
            }
            progress(offset);
            if next < blob.size {
                pending.push_back(spawn(next));
                next += CHUNK;
            }
        }
        Ok(offset)
    })
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

/// Lets a reader consume a blob while [`fetch_blob`] downloads it, so a layer extracts
/// behind its download rather than after it. The reader reads the ingest file back (from
/// the page cache): a slow reader never holds the download back, and nothing is buffered
/// in memory. The reader sees end of file only once the blob is committed and verified.
#[derive(Default)]
pub struct Follow {
    state: Mutex<FollowState>,
    cv: Condvar,
}

#[derive(Default)]
enum FollowState {
    /// The fetch has not opened its ingest yet.
    #[default]
    Pending,
    /// `written` bytes of the ingest file are in place.
    Growing { file: Arc<dyn ReadAt>, written: u64 },
    /// Committed and verified: the rest is read from the store's blob.
    Done { blob: Arc<dyn ReadAt> },
    /// The fetch failed (or never ran); the message says why.
    Failed(String),
}

impl Follow {
    fn set(&self, s: FollowState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
        self.cv.notify_all();
    }

    fn advance(&self, to: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let FollowState::Growing { written, .. } = &mut *st {
            *written = to;
            self.cv.notify_all();
        }
    }

    /// Marks the fetch failed unless it finished: readers get an error instead of
    /// waiting forever (say, for a layer never fetched because another failed).
    pub fn abandon(&self, why: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*st, FollowState::Pending | FollowState::Growing { .. }) {
            *st = FollowState::Failed(why.to_owned());
            self.cv.notify_all();
        }
    }

    /// Waits until the blob is committed and verified, or its fetch failed.
    pub fn wait_verified(&self) -> Result<(), String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*st {
                FollowState::Done { .. } => return Ok(()),
                FollowState::Failed(why) => return Err(why.clone()),
                _ => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// A reader of the blob from its first byte.
    pub fn reader(&self) -> FollowReader<'_> {
        FollowReader {
            follow: self,
            pos: 0,
            blob: None,
        }
    }
}

/// Reads a [`Follow`]ed blob as it arrives.
pub struct FollowReader<'a> {
    follow: &'a Follow,
    pos: u64,
    blob: Option<Arc<dyn ReadAt>>,
}

impl Read for FollowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(b) = &self.blob {
                let n = b.read_at(buf, self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            let f = &self.follow;
            let st = f.state.lock().unwrap_or_else(|e| e.into_inner());
            match &*st {
                FollowState::Growing { file, written } if *written > self.pos => {
                    let (file, n) = (file.clone(), (*written - self.pos).min(buf.len() as u64));
                    drop(st);
                    let n = file.read_at(&mut buf[..n as usize], self.pos)?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "ingest file shorter than its writer reported",
                        ));
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                FollowState::Done { blob } => {
                    // The store's blob is what was verified: read the rest from it.
                    self.blob = Some(blob.clone());
                }
                FollowState::Failed(why) => return Err(std::io::Error::other(why.clone())),
                FollowState::Pending | FollowState::Growing { .. } => {
                    drop(f.cv.wait(st).unwrap_or_else(|e| e.into_inner()));
                }
            }
        }
    }
}

/// Signals a [`Follow`] when a fetch ends: done on success (with a reader of the
/// committed blob), failed on any error path.
struct FollowGuard<'a> {
    follow: Option<&'a Follow>,
    store: &'a dyn ContentStore,
    scope: &'a Scope,
    digest: &'a Digest,
    ok: bool,
}

impl Drop for FollowGuard<'_> {
    fn drop(&mut self) {
        let Some(f) = self.follow else { return };
        if !self.ok {
            f.abandon("the blob's download failed");
            return;
        }
        match self.store.reader(self.scope, self.digest) {
            Ok(r) => f.set(FollowState::Done { blob: Arc::from(r) }),
            Err(e) => f.abandon(&format!(
                "open committed blob: {}",
                strata_proto::error_chain(&e)
            )),
        }
    }
}

/// Downloads `blob` from `src` into `store` (committed with `labels`), calling `progress`
/// with the bytes stored so far. `follow`, when given, lets a reader consume the blob as
/// it arrives.
pub fn fetch_blob(
    store: &dyn ContentStore,
    scope: &Scope,
    blob: &Blob,
    src: &dyn FetchSource,
    labels: &Labels,
    progress: &dyn Fn(u64),
    follow: Option<&Follow>,
) -> Result<Fetched> {
    let mut guard = FollowGuard {
        follow,
        store,
        scope,
        digest: &blob.digest,
        ok: false,
    };
    let started = Instant::now();
    let deadline = started + MAX_WAIT;
    let r#ref = ingest_ref(&blob.digest);
    let mut w = loop {
        let opts = WriterOptions {
            r#ref: r#ref.clone(),
            total: blob.size,
            expected: Some(blob.digest.clone()),
        };
        match store.writer(scope, opts) {
            Ok(w) => break w,
            Err(e) if e.kind() == ContentKind::AlreadyExists => {
                progress(blob.size);
                guard.ok = true;
                return Ok(Fetched::Exists);
            }
            Err(e) if e.kind() == ContentKind::Unavailable && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.context("open ingest")),
        }
    };
    let mut offset = w.status().context("ingest status")?.offset;
    if offset > blob.size {
        w.truncate(0).context("reset oversized ingest")?;
        offset = 0;
    }
    // A store that cannot show an ingest while it grows leaves the follower waiting for
    // the commit.
    if let Some(f) = follow
        && offset < blob.size
        && let Ok(file) = store.ingest_reader(scope, &r#ref)
    {
        f.set(FollowState::Growing {
            file: Arc::from(file),
            written: offset,
        });
    }
    progress(offset);
    if blob.size - offset >= CHUNKED_MIN {
        offset = fetch_chunks(&mut *w, blob, src, offset, follow, progress)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut resumes = 0;
    while offset < blob.size {
        let (mut r, start) = src.open(blob, offset)?;
        // A server that ignores Range sends the whole blob: skip what we already have.
        if start < offset {
            std::io::copy(&mut (&mut r).take(offset - start), &mut std::io::sink()).map_err(
                |e| Error::new(ErrorKind::Unavailable, "skip to resume offset").with_source(e),
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
                    w.write(&buf[..n]).context("write ingest")?;
                    offset += n as u64;
                    if let Some(f) = follow {
                        f.advance(offset);
                    }
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
                return Err(Error::new(
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
    let committed = w.commit(blob.size, Some(&blob.digest), labels.clone());
    tracing::debug!(digest = %blob.digest, size = blob.size, ms = started.elapsed().as_millis() as u64, "blob fetched");
    match committed {
        Ok(_) => {
            guard.ok = true;
            Ok(Fetched::Downloaded)
        }
        Err(e) if e.kind() == ContentKind::AlreadyExists => {
            guard.ok = true;
            Ok(Fetched::Exists)
        }
        Err(e) => {
            if e.kind() == ContentKind::FailedPrecondition {
                // The bytes do not match: start over next time rather than resume them.
                let _ = w.truncate(0);
            }
            Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("blob {} from the registry does not verify", blob.digest),
            )
            .with_source(e))
        }
    }
}
