//! A lazy layer's file content: chunks fetched through a [`BlobSource`] as they are read,
//! verified against the TOC, and kept in a content-addressed cache on local disk.
//!
//! Neighbouring missing chunks of one read are fetched in one range request. A chunk
//! that fails verification is never served or cached: the read fails (EIO) and the next
//! read of it fetches it again. Two readers of one missing chunk fetch it once.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::estargz::{Chunk, Node, NodeKind, Tree, decode_chunk};
use crate::remote::{BlobSource, RemoteBlob};
use crate::{Error, ErrorKind, Result};

/// Largest compressed range fetched in one request when coalescing chunks.
const MAX_COALESCED: u64 = 16 << 20;
/// How far past a read's chunks an on-demand fetch reaches, in compressed bytes: the
/// small files next to the one read (a package's other modules) come in the same request.
const READ_AROUND: u64 = 512 << 10;
/// Neighbours larger than this (compressed) are left for when they are read.
const SMALL_NEIGHBOUR: u64 = 32 << 10;
/// Compressed bytes of one piece of the prefetch.
const PREFETCH_PIECE: u64 = 2 << 20;
/// Pieces of the prefetch fetched and inflated at once.
const PREFETCH_WORKERS: usize = 2;
/// Largest range of one background request: small enough that an on-demand read waits
/// little behind it.
const BACKGROUND_STEP: u64 = 4 << 20;

/// The content of one lazy layer.
pub struct LayerReader {
    tree: Tree,
    src: Arc<dyn BlobSource>,
    blob: RemoteBlob,
    chunks: PathBuf,
    fetched: AtomicU64,
    /// Reads served (what passthrough spares).
    reads: AtomicU64,
    /// Chunks being fetched, so a second reader waits for the first.
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// On-demand reads in progress: the background fetch waits while there are any.
    demand: AtomicUsize,
    /// Set when the layer goes away: the background fetch stops.
    stopped: AtomicBool,
    /// Set once every chunk is local: the registry is no longer needed.
    complete: AtomicBool,
    /// Every chunk as (node index, chunk index), in blob order.
    order: Vec<(u32, u32)>,
}

impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerReader")
            .field("blob", &self.blob)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

impl LayerReader {
    /// A reader of `blob`, whose checked TOC is `tree`, caching chunks under `cache`.
    pub fn new(
        tree: Tree,
        src: Arc<dyn BlobSource>,
        blob: RemoteBlob,
        cache: &Path,
    ) -> Result<Self> {
        let chunks = cache.join("chunks");
        std::fs::create_dir_all(&chunks).map_err(|e| Error::io("create", &chunks, e))?;
        let mut order: Vec<(u32, u32)> = Vec::new();
        for (n, node) in tree.nodes.iter().enumerate() {
            for c in 0..node.chunks.len() {
                order.push((n as u32, c as u32));
            }
        }
        let key = |&(n, c): &(u32, u32)| {
            let ch = &tree.nodes[n as usize].chunks[c as usize];
            (ch.blob_offset, ch.inner_offset)
        };
        order.sort_by_key(key);
        // A hard-linked file is one node: its chunks appear once.
        Ok(LayerReader {
            order,
            tree,
            src,
            blob,
            chunks,
            fetched: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            demand: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            complete: AtomicBool::new(false),
        })
    }

    /// The layer's tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The blob served.
    pub fn blob(&self) -> &RemoteBlob {
        &self.blob
    }

    /// Compressed bytes fetched from the source so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn cached(&self, c: &Chunk) -> PathBuf {
        self.chunks.join(c.digest.hex())
    }

    /// The cache file holding all of `node`'s content, when it is one verified chunk
    /// that is local: a file the kernel can read the node from directly (passthrough).
    pub fn whole_file(&self, node: &Node) -> Option<PathBuf> {
        match node.chunks.as_slice() {
            [c] if c.file_offset == 0 && c.size == node.size => {
                let p = self.cached(c);
                p.exists().then_some(p)
            }
            _ => None,
        }
    }

    /// Whether every chunk of `node` is in the cache.
    pub fn is_local(&self, node: &Node) -> bool {
        node.chunks.iter().all(|c| self.cached(c).exists())
    }

    /// Reads served by [`LayerReader::read`] so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Up to `size` bytes of file `ino` from `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let node = self
            .tree
            .node(ino)
            .ok_or_else(|| Error::not_found(format!("inode {ino}")))?;
        if node.kind != NodeKind::File {
            return Err(Error::invalid("not a regular file"));
        }
        if offset >= node.size {
            return Ok(Vec::new());
        }
        let end = node.size.min(offset + u64::from(size));
        // The chunks overlapping offset..end, in order.
        let first = node
            .chunks
            .partition_point(|c| c.file_offset + c.size <= offset);
        let last = node.chunks.partition_point(|c| c.file_offset < end);
        let wanted = &node.chunks[first..last];
        // A hit costs a stat per chunk read, not one per neighbour.
        if !wanted.iter().all(|c| self.cached(c).exists()) {
            self.demand.fetch_add(1, Ordering::SeqCst);
            let ensured = self.ensure(self.with_neighbours(wanted).into_iter());
            self.demand.fetch_sub(1, Ordering::SeqCst);
            ensured?;
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for c in wanted {
            let from = offset.max(c.file_offset) - c.file_offset;
            let to = end.min(c.file_offset + c.size) - c.file_offset;
            let path = self.cached(c);
            let f = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            let at = out.len();
            out.resize(at + (to - from) as usize, 0);
            f.read_exact_at(&mut out[at..], from)
                .map_err(|e| Error::io("read", &path, e))?;
        }
        Ok(out)
    }

    /// `wanted` (consecutive chunks of one file) and the small chunks that follow them in
    /// the blob, adjacent, up to [`READ_AROUND`] bytes from the first.
    fn with_neighbours<'a>(&'a self, wanted: &'a [Chunk]) -> Vec<&'a Chunk> {
        let mut out: Vec<&Chunk> = wanted.iter().collect();
        let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else {
            return out;
        };
        let chunk = |&(n, c): &(u32, u32)| &self.tree.nodes[n as usize].chunks[c as usize];
        let key = |c: &Chunk| (c.blob_offset, c.inner_offset);
        let mut pos = self.order.partition_point(|e| key(chunk(e)) <= key(last));
        let mut prev = last;
        while let Some(e) = self.order.get(pos) {
            let c = chunk(e);
            let adjacent = c.blob_offset == prev.blob_end || c.blob_offset == prev.blob_offset;
            let small = c.blob_end - c.blob_offset <= SMALL_NEIGHBOUR;
            if !adjacent || !small || c.blob_end.saturating_sub(first.blob_offset) > READ_AROUND {
                break;
            }
            out.push(c);
            prev = c;
            pos += 1;
        }
        out
    }

    /// Brings `chunks` (in blob order) into the cache.
    fn ensure<'a>(&self, chunks: impl Iterator<Item = &'a Chunk>) -> Result<()> {
        let missing: Vec<&Chunk> = chunks.filter(|c| !self.cached(c).exists()).collect();
        let mut i = 0;
        while i < missing.len() {
            // A run of members adjacent in the blob, fetched in one request.
            let mut j = i + 1;
            while j < missing.len()
                && (missing[j].blob_offset == missing[j - 1].blob_end
                    || missing[j].blob_offset == missing[j - 1].blob_offset)
                && missing[j].blob_end - missing[i].blob_offset <= MAX_COALESCED
            {
                j += 1;
            }
            self.fetch_run(&missing[i..j])?;
            i = j;
        }
        Ok(())
    }

    fn lock(&self, c: &Chunk) -> Arc<Mutex<()>> {
        let mut m = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(c.digest.hex().to_owned()).or_default().clone()
    }

    fn fetch_run(&self, run: &[&Chunk]) -> Result<()> {
        // One lock per distinct digest (identical files share chunks), taken in digest
        // order, so two runs over the same chunks never wait on each other in a cycle.
        let mut keys: Vec<&Chunk> = run.to_vec();
        keys.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        keys.dedup_by(|a, b| a.digest == b.digest);
        let locks: Vec<_> = keys
            .iter()
            .map(|c| (c.digest.hex(), self.lock(c)))
            .collect();
        let mut guards: HashMap<&str, _> = locks
            .iter()
            .map(|(d, l)| (*d, l.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        // Another reader may have fetched them while this one waited.
        let run: Vec<&&Chunk> = run.iter().filter(|c| !self.cached(c).exists()).collect();
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let (start, end) = (first.blob_offset, last.blob_end);
        let t = std::time::Instant::now();
        let bytes = self.src.read_range(&self.blob, start..end)?;
        let fetched_in = t.elapsed();
        self.fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != end - start {
            return Err(Error::data_loss(format!(
                "blob {} answered {} bytes for range {start}..{end}",
                self.blob.digest,
                bytes.len()
            )));
        }
        // Each chunk is released as soon as it is stored: a read of it need not wait for
        // the rest of a long run (a prefetch) to be decoded.
        let last_use: HashMap<&str, usize> = run
            .iter()
            .enumerate()
            .map(|(i, c)| (c.digest.hex(), i))
            .collect();
        for (i, c) in run.iter().enumerate() {
            let member = &bytes[(c.blob_offset - start) as usize..(c.blob_end - start) as usize];
            let data = decode_chunk(member, c).map_err(|e| {
                e.context(format!("blob {} at {}", self.blob.digest, c.blob_offset))
            })?;
            self.store(c, &data)?;
            if last_use.get(c.digest.hex()) == Some(&i) {
                guards.remove(c.digest.hex());
            }
        }
        tracing::debug!(start, len = end - start, chunks = run.len(), ?fetched_in, took = ?t.elapsed(), "fetched");
        Ok(())
    }

    fn store(&self, c: &Chunk, data: &[u8]) -> Result<()> {
        let path = self.cached(c);
        let tmp = tempfile::NamedTempFile::new_in(&self.chunks)
            .map_err(|e| Error::io("create", &self.chunks, e))?;
        tmp.as_file()
            .write_all_at(data, 0)
            .map_err(|e| Error::io("write", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("rename", &path, e.error))?;
        Ok(())
    }

    /// Fetches the prioritized range (everything before `.prefetch.landmark`) and caches
    /// every chunk in it; returns the bytes fetched (none when the layer has no landmark).
    /// The range goes in pieces of a few MiB, in order, two at a time:
    /// inflating it is most of the work, and the workload waiting for its first files
    /// leaves a core idle.
    pub fn prefetch(&self) -> Result<u64> {
        let Some(end) = self.tree.prefetch else {
            return Ok(0);
        };
        let mut chunks: Vec<&Chunk> = self
            .tree
            .nodes
            .iter()
            .flat_map(|n| n.chunks.iter())
            .filter(|c| c.blob_end <= end)
            .collect();
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        let mut pieces: Vec<&[&Chunk]> = Vec::new();
        let mut rest = &chunks[..];
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .position(|c| c.blob_end - first.blob_offset > PREFETCH_PIECE)
                .unwrap_or(rest.len())
                .max(1);
            let (piece, tail) = rest.split_at(n);
            pieces.push(piece);
            rest = tail;
        }
        let before = self.fetched_bytes();
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..PREFETCH_WORKERS {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(piece) = pieces.get(i) else { return };
                        if let Err(e) = self.ensure(piece.iter().copied()) {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            return;
                        }
                    }
                });
            }
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(self.fetched_bytes() - before),
        }
    }

    /// Whether every chunk of the layer is local.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Whether [`LayerReader::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops the background fetch (the layer is being removed).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Brings every chunk of the layer into the cache, in blob order, a few MiB per
    /// request, never while an on-demand read is waiting; failures are retried with
    /// backoff until it succeeds or [`LayerReader::stop`] is called. After it, reads
    /// need no registry.
    pub fn fetch_all(&self) -> Result<()> {
        let mut chunks: Vec<&Chunk> = self
            .tree
            .nodes
            .iter()
            .flat_map(|n| n.chunks.iter())
            .collect();
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        chunks.dedup_by_key(|c| c.digest.clone());
        let mut i = 0;
        let mut backoff = Duration::from_millis(100);
        while i < chunks.len() {
            if self.stopped.load(Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::Canceled, "layer removed"));
            }
            if self.demand.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let start = chunks[i].blob_offset;
            let mut j = i + 1;
            while j < chunks.len() && chunks[j].blob_end - start <= BACKGROUND_STEP {
                j += 1;
            }
            match self.ensure(chunks[i..j].iter().copied()) {
                Ok(()) => {
                    i = j;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::debug!(blob = %self.blob.digest, error = %e, ?backoff, "background fetch retries");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.complete.store(true, Ordering::SeqCst);
        Ok(())
    }
}
