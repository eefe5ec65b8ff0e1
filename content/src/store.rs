//! The on-disk content store.
//!
//! ```text
//! <root>/content/
//!   blobs/<alg>/<hex>                 committed blobs, mode 0444, named by a validated digest
//!   ingest/<sha256(ns "\n" ref)>/     one dir per in-progress write (never named by the ref)
//!     ref, namespace, startedat, total, expected    written once, before the dir is renamed
//!                                                   into place from a ".tmp-" sibling
//!     data                                          the bytes so far
//!     checkpoint                                    "<offset> <digest of data[..offset]>",
//!                                                   written (tmp + rename) after fdatasync(data)
//! <root>/meta/                        RocksDB, see `meta`
//! ```
//!
//! **Resume.** Only bytes covered by a checkpoint are trusted: reopening an ingest re-hashes
//! `data[..checkpoint]`, truncates anything after it (a tail written after the last
//! fdatasync may be garbage after a power loss) and resumes there; a checkpoint that does
//! not verify restarts the ingest at 0. A writer checkpoints on close and every
//! [`StoreOptions::checkpoint_interval`] bytes, so a kill -9 loses at most that much.
//!
//! **Commit**, in order: fdatasync(data); check size and digest (a mismatch leaves the
//! ingest usable); if the blob exists, record it in the namespace or return
//! `AlreadyExists`; otherwise write a `PendingCommit` to the database, chmod 0444, rename
//! data into `blobs/`, fsync `blobs/<alg>/`, remove the ingest dir, and in one synced batch
//! write the record and drop the pending entry. Only then is the commit acknowledged.
//! On open, a pending commit whose blob is in place is rolled forward (its record written);
//! one whose blob is not is dropped, leaving the ingest as it was.
//!
//! **Namespaces.** A named namespace sees the blobs it has a record for, as containerd's
//! metadata layer does. The global space (no namespace: a proxied containerd) sees every
//! blob on disk, as containerd's local store does; a blob it has observed (Info, Read,
//! `AlreadyExists`, commit) gets a global record, and the garbage collector never touches
//! blobs with a global record. A blob file is deleted only when its last record goes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rocksdb::WriteBatch;
use sha2::{Digest as _, Sha256, Sha512};
use strata_proto::filter::{Adaptor, Filter, label_field};
use strata_proto::time::{from_nanos, to_nanos};
use strata_proto::{Algorithm, Digest};
use tracing::{debug, info, warn};

use crate::api::{
    ContentStore, Info, IngestManager, Ingester, Labels, Manager, Namespace, Provider, Scope,
    Status, Writer, WriterOptions, truncate, validate_labels, validate_ref,
};
use crate::meta::{self, ContentRecord, Meta, NamespaceRecord, PendingCommit, enc};
use crate::{Error, ErrorKind, Result};

/// containerd's namespace label that makes a namespace's content shareable under the
/// isolated policy.
pub const SHAREABLE_LABEL: &str = "containerd.io/namespace.shareable";

/// How content committed in one namespace is offered to writers in another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SharingPolicy {
    /// A writer with an expected digest that another namespace already has commits without
    /// re-upload (containerd's default).
    #[default]
    Shared,
    /// Every namespace uploads its own copy of the bytes, unless the blob is held by a
    /// namespace labelled `containerd.io/namespace.shareable=true`.
    Isolated,
}

/// Options of a [`LocalStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Cross-namespace sharing policy.
    pub sharing: SharingPolicy,
    /// How long an unleased ingest of a named namespace lives after its last write.
    pub ingest_expiry: Duration,
    /// Bytes between durable checkpoints of an open ingest.
    pub checkpoint_interval: u64,
    /// Test hook: name of a commit step at which the process kills itself.
    pub failpoint: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sharing: SharingPolicy::Shared,
            ingest_expiry: Duration::from_secs(24 * 3600),
            // Small enough that an interrupted pull of a typical layer resumes; the
            // checkpoint's fdatasync runs on a thread of its own.
            checkpoint_interval: 16 << 20,
            failpoint: None,
        }
    }
}

/// Bytes between `sync_file_range` writeback kicks, so the final fdatasync has little left.
const WRITEBACK_CHUNK: u64 = 8 << 20;
/// Writes at least this large hash and copy on two threads.
const PARALLEL_WRITE_MIN: usize = 256 << 10;

/// The on-disk content store. Cheap to clone.
#[derive(Clone)]
pub struct LocalStore {
    pub(crate) inner: Arc<Inner>,
}

type IngestKey = (String, String);

pub(crate) struct Inner {
    pub(crate) blobs: PathBuf,
    pub(crate) ingest: PathBuf,
    pub(crate) meta: Meta,
    pub(crate) opts: StoreOptions,
    /// Open writers by (namespace, ref), with their live offset.
    open: Mutex<HashMap<IngestKey, Arc<AtomicU64>>>,
    /// Commits and deletes hold it shared; garbage collection holds it exclusively.
    pub(crate) gc_lock: RwLock<()>,
}

pub(crate) fn ns_str(scope: &Scope) -> &str {
    scope.namespace.as_ref().map_or("", Namespace::as_str)
}

fn io(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    let op = op.to_owned();
    move |e| Error::io(&op, &path, e)
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", path))
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl LocalStore {
    /// Opens (creating if needed) the store under `root` (`root/content`, `root/meta`) and
    /// recovers from an interrupted run: leftover temp dirs go, pending commits are rolled
    /// forward or back.
    pub fn open(root: &Path, opts: StoreOptions) -> Result<Self> {
        let content = root.join("content");
        let blobs = content.join("blobs");
        let ingest = content.join("ingest");
        for d in [root, &content, &blobs, &ingest] {
            fs::create_dir_all(d).map_err(io("create directory", d))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io("chmod", root))?;
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = blobs.join(alg.as_str());
            fs::create_dir_all(&d).map_err(io("create directory", &d))?;
        }
        let meta = Meta::open(&root.join("meta"))?;
        let store = LocalStore {
            inner: Arc::new(Inner {
                blobs,
                ingest,
                meta,
                opts,
                open: Mutex::new(HashMap::new()),
                gc_lock: RwLock::new(()),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    fn recover(&self) -> Result<()> {
        let inner = &self.inner;
        for entry in fs::read_dir(&inner.ingest).map_err(io("read directory", &inner.ingest))? {
            let entry = entry.map_err(io("read directory", &inner.ingest))?;
            let name = entry.file_name();
            if name.to_string_lossy().contains(".tmp-") {
                let p = entry.path();
                fs::remove_dir_all(&p).map_err(io("remove temp ingest", &p))?;
            }
        }
        for (k, v) in inner.meta.scan(b"p/")? {
            let key = String::from_utf8_lossy(&k[2..]).into_owned();
            let Ok(digest) = Digest::parse(&key) else {
                warn!(key, "dropping malformed pending commit");
                inner.meta.write({
                    let mut b = WriteBatch::default();
                    b.delete(&k);
                    b
                })?;
                continue;
            };
            let pending = <PendingCommit as prost::Message>::decode(&*v)
                .map_err(|e| Error::corrupt("pending commit", e))?;
            let mut batch = WriteBatch::default();
            batch.delete(&k);
            if self.blob_path(&digest).exists() {
                info!(%digest, "rolling interrupted commit forward");
                let rec = pending.record.unwrap_or_default();
                let ns = pending.namespace.as_str();
                let ckey = meta::content_key(ns, &digest.to_string());
                if !inner.meta.exists(&ckey)? {
                    batch.put(ckey, enc(&rec));
                }
                if !pending.lease.is_empty() {
                    batch.put(
                        meta::resource_key(ns, &pending.lease, "content", &digest.to_string()),
                        b"",
                    );
                    batch.delete(meta::resource_key(
                        ns,
                        &pending.lease,
                        "ingests",
                        &pending.r#ref,
                    ));
                }
                let idir = inner.ingest_dir(ns, &pending.r#ref);
                if idir.exists() {
                    fs::remove_dir_all(&idir).map_err(io("remove ingest", &idir))?;
                }
            } else {
                info!(%digest, "dropping commit interrupted before its rename");
            }
            inner.meta.write(batch)?;
        }
        Ok(())
    }

    /// Path of a committed blob (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// Path of the data file of ingest `ref` in `scope` (it may not exist). A reader may
    /// follow what a writer has written so far, up to the writer's reported offset: the
    /// puller extracts a layer while it downloads. Writes land with `pwrite` directly,
    /// never buffered, and the file is only ever truncated to 0 by the writer itself.
    pub fn ingest_data_path(&self, scope: &Scope, r: &str) -> Result<PathBuf> {
        validate_ref(r)?;
        Ok(self.inner.ingest_dir(ns_str(scope), r).join("data"))
    }

    /// Options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Sets the labels of a namespace (e.g. [`SHAREABLE_LABEL`]).
    pub fn set_namespace_labels(&self, ns: &Namespace, labels: &Labels) -> Result<()> {
        validate_labels(labels)?;
        let mut b = WriteBatch::default();
        b.put(
            meta::namespace_key(ns.as_str()),
            enc(&NamespaceRecord {
                labels: meta::labels_to_map(labels),
            }),
        );
        self.inner.meta.write(b)
    }

    fn failpoint(&self, name: &str) {
        if self.inner.opts.failpoint.as_deref() == Some(name) {
            warn!(name, "failpoint reached: killing the process");
            // SAFETY: kill(2) on our own pid with a valid signal has no memory effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    /// The record of `digest` in the namespace, or for the global space a record made
    /// from the file (and stored, so the blob is protected from now on when `adopt`).
    fn visible(&self, scope: &Scope, digest: &Digest, adopt: bool) -> Result<ContentRecord> {
        let inner = &self.inner;
        let ns = ns_str(scope);
        let key = meta::content_key(ns, &digest.to_string());
        if let Some(rec) = inner.meta.get::<ContentRecord>(&key, "content record")? {
            return Ok(rec);
        }
        if scope.namespace.is_some() {
            return Err(Error::not_found(format!("content {digest}")));
        }
        let path = inner.blob_path(digest);
        let md = match fs::metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(format!("content {digest}")));
            }
            Err(e) => return Err(Error::io("stat blob", &path, e)),
        };
        let t = to_nanos(md.modified().unwrap_or_else(|_| now()));
        let rec = ContentRecord {
            size: md.len(),
            created_ns: t,
            updated_ns: t,
            labels: HashMap::new(),
        };
        if adopt {
            let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
            if inner.blob_path(digest).exists() {
                let mut b = WriteBatch::default();
                b.put(key, enc(&rec));
                inner.meta.write(b)?;
            }
        }
        Ok(rec)
    }

    /// Whether any namespace holding `digest` is labelled shareable.
    fn shareable_elsewhere(&self, digest: &Digest) -> Result<bool> {
        let d = digest.to_string();
        for (k, v) in self.inner.meta.scan(b"n/")? {
            let rec = <NamespaceRecord as prost::Message>::decode(&*v)
                .map_err(|e| Error::corrupt("namespace record", e))?;
            if rec.labels.get(SHAREABLE_LABEL).map(String::as_str) == Some("true") {
                let ns = String::from_utf8_lossy(&k[2..]).into_owned();
                if self.inner.meta.exists(&meta::content_key(&ns, &d))? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn lock_ref(&self, ns: &str, r: &str) -> Result<RefGuard> {
        let key = (ns.to_owned(), r.to_owned());
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.contains_key(&key) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("ref {:?} is locked by another writer", truncate(r)),
            ));
        }
        let offset = Arc::new(AtomicU64::new(0));
        open.insert(key.clone(), offset.clone());
        Ok(RefGuard {
            inner: self.inner.clone(),
            key,
            offset,
        })
    }

    fn check_lease(&self, scope: &Scope) -> Result<()> {
        if let Some(l) = &scope.lease
            && !self.inner.meta.exists(&meta::lease_key(ns_str(scope), l))?
        {
            return Err(Error::not_found(format!("lease {:?}", truncate(l))));
        }
        Ok(())
    }
}

impl Inner {
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    pub(crate) fn ingest_dir(&self, ns: &str, r: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(ns.as_bytes());
        h.update(b"\n");
        h.update(r.as_bytes());
        self.ingest.join(hex::encode(h.finalize()))
    }

    pub(crate) fn is_open(&self, ns: &str, r: &str) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(ns.to_owned(), r.to_owned()))
    }

    /// Whether any record (global or any namespace) holds `digest`.
    pub(crate) fn has_any_record(&self, digest: &str) -> Result<bool> {
        for (k, _) in self.meta.scan(b"c/")? {
            if k.ends_with(digest.as_bytes()) && k[k.len() - digest.len() - 1] == b'/' {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes a blob file whose last record is gone. Caller holds the gc lock.
    pub(crate) fn remove_blob_file(&self, digest: &Digest) -> Result<()> {
        let p = self.blob_path(digest);
        match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(dir) = p.parent() {
                    fsync_dir(dir)?;
                }
                debug!(%digest, "removed blob");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove blob", &p, e)),
        }
    }
}

/// Holds a ref for an open writer; releases it on drop.
struct RefGuard {
    inner: Arc<Inner>,
    key: IngestKey,
    offset: Arc<AtomicU64>,
}

impl Drop for RefGuard {
    fn drop(&mut self) {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// Static facts of an ingest, stored once in its dir.
struct IngestMeta {
    r#ref: String,
    namespace: String,
    started_at: SystemTime,
    total: u64,
    expected: Option<Digest>,
}

fn read_small(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    File::open(path)?.take(8192).read_to_string(&mut s)?;
    Ok(s)
}

fn read_ingest_meta(dir: &Path) -> Option<IngestMeta> {
    let r = read_small(&dir.join("ref")).ok()?;
    let namespace = read_small(&dir.join("namespace")).ok()?;
    let started: u64 = read_small(&dir.join("startedat"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let total: u64 = read_small(&dir.join("total")).ok()?.trim().parse().ok()?;
    let expected = match read_small(&dir.join("expected")).ok()?.trim() {
        "" => None,
        s => Some(Digest::parse(s).ok()?),
    };
    Some(IngestMeta {
        r#ref: r,
        namespace,
        started_at: from_nanos(started),
        total,
        expected,
    })
}

/// The durable checkpoint of an ingest: offset and digest of `data[..offset]`.
fn read_checkpoint(dir: &Path) -> Option<(u64, Digest)> {
    let s = read_small(&dir.join("checkpoint")).ok()?;
    let (off, d) = s.trim().split_once(' ')?;
    Some((off.parse().ok()?, Digest::parse(d).ok()?))
}

fn write_checkpoint(dir: &Path, offset: u64, digest: &Digest) -> Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp).map_err(io("create checkpoint", &tmp))?;
    f.write_all(format!("{offset} {digest}\n").as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(io("write checkpoint", &tmp))?;
    let dst = dir.join("checkpoint");
    fs::rename(&tmp, &dst).map_err(io("rename checkpoint", &dst))
}

fn sha256_digest(h: &Sha256) -> Digest {
    Digest::from_bytes(Algorithm::Sha256, &h.clone().finalize()).expect("sha256 length")
}

/// Hashes the first `len` bytes of `f` into a fresh hasher; `None` if the file is shorter.
fn hash_prefix(f: &File, len: u64) -> std::io::Result<Option<Sha256>> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let want = usize::try_from((len - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(None);
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Some(h))
}

fn hash_file_sha512(path: &Path) -> Result<Digest> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_bytes(Algorithm::Sha512, &h.finalize()).expect("sha512 length"))
}

impl Provider for LocalStore {
    fn info(&self, scope: &Scope, digest: &Digest) -> Result<Info> {
        let rec = self.visible(scope, digest, true)?;
        Ok(to_info(digest.clone(), &rec))
    }

    fn read_at(
        &self,
        scope: &Scope,
        digest: &Digest,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let rec = self.visible(scope, digest, true)?;
        if offset > rec.size {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("read of {digest} at {offset} past its end {}", rec.size),
            ));
        }
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::DataLoss,
                    format!("blob file of {digest} is missing"),
                )
            } else {
                Error::io("open blob", &path, e)
            }
        })?;
        f.read_at(buf, offset).map_err(io("read blob", &path))
    }
}

pub(crate) fn to_info(digest: Digest, rec: &ContentRecord) -> Info {
    Info {
        digest,
        size: rec.size,
        created_at: from_nanos(rec.created_ns),
        updated_at: from_nanos(rec.updated_ns),
        labels: meta::map_to_labels(&rec.labels),
    }
}

impl Ingester for LocalStore {
    fn writer(&self, scope: &Scope, opts: WriterOptions) -> Result<Box<dyn Writer>> {
        validate_ref(&opts.r#ref)?;
        self.check_lease(scope)?;
        let ns = ns_str(scope).to_owned();
        let guard = self.lock_ref(&ns, &opts.r#ref)?;

        if let Some(expected) = &opts.expected {
            let in_scope = meta::content_key(&ns, &expected.to_string());
            if self.inner.meta.exists(&in_scope)? {
                self.lease_content(scope, expected)?;
                return Err(Error::already_exists(format!("content {expected}")));
            }
            let on_disk = fs::metadata(self.blob_path(expected)).ok();
            if let Some(md) = on_disk {
                if scope.namespace.is_none() {
                    self.visible(scope, expected, true)?;
                    return Err(Error::already_exists(format!("content {expected}")));
                }
                let share = self.inner.opts.sharing == SharingPolicy::Shared
                    || self.shareable_elsewhere(expected)?;
                if share && (opts.total == 0 || opts.total == md.len()) {
                    return Ok(Box::new(LocalWriter {
                        store: self.clone(),
                        scope: scope.clone(),
                        state: WriterState::Shared {
                            digest: expected.clone(),
                            size: md.len(),
                        },
                        r#ref: opts.r#ref,
                        total: md.len(),
                        expected: Some(expected.clone()),
                        started_at: now(),
                        updated_at: now(),
                        guard,
                    }));
                }
            }
        }
        let (dir, r) = self.open_ingest(scope, &opts)?;
        if let Some(l) = &scope.lease {
            let mut b = WriteBatch::default();
            b.put(meta::resource_key(&ns, l, "ingests", &opts.r#ref), b"");
            self.inner.meta.write(b)?;
        }
        guard.offset.store(r.offset, Ordering::Relaxed);
        let updated = r
            .file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| now());
        Ok(Box::new(LocalWriter {
            store: self.clone(),
            scope: scope.clone(),
            r#ref: opts.r#ref,
            total: r.meta.total,
            expected: r.meta.expected.clone(),
            started_at: r.meta.started_at,
            updated_at: updated,
            state: WriterState::Ingest(Box::new(r.into_state(dir))),
            guard,
        }))
    }
}

impl LocalStore {
    fn lease_content(&self, scope: &Scope, digest: &Digest) -> Result<()> {
        if let Some(l) = &scope.lease {
            let mut b = WriteBatch::default();
            b.put(
                meta::resource_key(ns_str(scope), l, "content", &digest.to_string()),
                b"",
            );
            self.inner.meta.write(b)?;
        }
        Ok(())
    }

    /// Opens or resumes the ingest dir of `opts.ref`.
    fn open_ingest(&self, scope: &Scope, opts: &WriterOptions) -> Result<(PathBuf, Resumed)> {
        let ns = ns_str(scope);
        let dir = self.inner.ingest_dir(ns, &opts.r#ref);
        if dir.exists() {
            match self.resume(&dir, ns, opts) {
                Ok(Some(r)) => return Ok((dir, r)),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cannot resume ingest, will recreate"),
            }
            fs::remove_dir_all(&dir).map_err(io("remove stale ingest", &dir))?;
        }
        // Build the ingest in a temp dir and rename it into place, so a crash never leaves a
        // half-written ingest behind.
        let tmp = self.inner.ingest.join(format!(
            "{}.tmp-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io("remove temp ingest", &tmp))?;
        }
        fs::create_dir(&tmp).map_err(io("create ingest", &tmp))?;
        let started = now();
        let files: [(&str, String); 5] = [
            ("ref", opts.r#ref.clone()),
            ("namespace", ns.to_owned()),
            ("startedat", to_nanos(started).to_string()),
            ("total", opts.total.to_string()),
            (
                "expected",
                opts.expected
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        ];
        for (name, content) in files {
            let p = tmp.join(name);
            fs::write(&p, content).map_err(io("write ingest file", &p))?;
        }
        let empty = sha256_digest(&Sha256::new());
        write_checkpoint(&tmp, 0, &empty)?;
        let data = tmp.join("data");
        File::create(&data).map_err(io("create ingest data", &data))?;
        fs::rename(&tmp, &dir).map_err(io("rename ingest into place", &dir))?;
        let file = open_data(&dir)?;
        let w = Resumed {
            file,
            hasher: Sha256::new(),
            offset: 0,
            meta: IngestMeta {
                r#ref: opts.r#ref.clone(),
                namespace: ns.to_owned(),
                started_at: started,
                total: opts.total,
                expected: opts.expected.clone(),
            },
        };
        Ok((dir, w))
    }

    /// Resumes an existing ingest; `None` when it must be recreated.
    fn resume(&self, dir: &Path, ns: &str, opts: &WriterOptions) -> Result<Option<Resumed>> {
        let Some(meta) = read_ingest_meta(dir) else {
            warn!(dir = %dir.display(), "ingest metadata unreadable, will recreate");
            return Ok(None);
        };
        if meta.r#ref != opts.r#ref || meta.namespace != ns {
            warn!(dir = %dir.display(), "ingest belongs to another ref, will recreate");
            return Ok(None);
        }
        if opts.total > 0 && meta.total > 0 && opts.total != meta.total {
            warn!(
                stored = meta.total,
                requested = opts.total,
                "ingest total differs, will recreate"
            );
            return Ok(None);
        }
        let file = open_data(dir)?;
        let (mut offset, want) = read_checkpoint(dir).unwrap_or((0, sha256_digest(&Sha256::new())));
        let data = dir.join("data");
        let mut hasher = match hash_prefix(&file, offset).map_err(io("read ingest", &data))? {
            Some(h) if sha256_digest(&h) == want => h,
            _ => {
                warn!(ref_ = %truncate(&opts.r#ref), offset, "ingest data does not match its checkpoint, restarting at 0");
                offset = 0;
                write_checkpoint(dir, 0, &sha256_digest(&Sha256::new()))?;
                Sha256::new()
            }
        };
        let len = file.metadata().map_err(io("stat", &data))?.len();
        if len != offset {
            // Bytes past the checkpoint were never made durable: they may be garbage.
            debug!(len, offset, "dropping unverified ingest tail");
            file.set_len(offset).map_err(io("truncate ingest", &data))?;
        }
        if offset == 0 {
            hasher = Sha256::new();
        }
        let mut meta = meta;
        if meta.total == 0 {
            meta.total = opts.total;
        }
        if meta.expected.is_none() {
            meta.expected = opts.expected.clone();
        }
        Ok(Some(Resumed {
            file,
            hasher,
            offset,
            meta,
        }))
    }
}

fn open_data(dir: &Path) -> Result<File> {
    let data = dir.join("data");
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&data)
        .map_err(io("open ingest data", &data))
}

struct Resumed {
    file: File,
    hasher: Sha256,
    offset: u64,
    meta: IngestMeta,
}

impl Resumed {
    fn into_state(self, dir: PathBuf) -> IngestState {
        IngestState {
            dir,
            file: self.file,
            hasher: self.hasher,
            offset: self.offset,
            checkpointed: self.offset,
            requested: self.offset,
            kicked: self.offset,
            background: None,
        }
    }
}

struct IngestState {
    dir: PathBuf,
    file: File,
    hasher: Sha256,
    offset: u64,
    /// Offset of the last durable checkpoint.
    checkpointed: u64,
    /// Offset of the last checkpoint started (in the background or not).
    requested: u64,
    /// Offset up to which writeback has been started.
    kicked: u64,
    /// A checkpoint running in the background; yields its offset.
    background: Option<std::thread::JoinHandle<Result<u64>>>,
}

enum WriterState {
    /// A real ingest on disk.
    Ingest(Box<IngestState>),
    /// A blob another namespace holds, offered at `offset == size` (shared policy).
    Shared { digest: Digest, size: u64 },
    /// Committed (with the blob's digest) or failed beyond repair; writes error.
    Done(Option<Digest>),
}

struct LocalWriter {
    store: LocalStore,
    scope: Scope,
    r#ref: String,
    total: u64,
    expected: Option<Digest>,
    started_at: SystemTime,
    updated_at: SystemTime,
    state: WriterState,
    guard: RefGuard,
}

impl IngestState {
    /// Makes everything written durable and records it, waiting for both.
    fn checkpoint(&mut self) -> Result<()> {
        self.join_background()?;
        let data = self.dir.join("data");
        self.file.sync_data().map_err(io("fdatasync", &data))?;
        write_checkpoint(&self.dir, self.offset, &sha256_digest(&self.hasher))?;
        self.checkpointed = self.offset;
        self.requested = self.offset;
        Ok(())
    }

    /// Waits for a background checkpoint, if one runs.
    fn join_background(&mut self) -> Result<()> {
        if let Some(h) = self.background.take() {
            let off = h
                .join()
                .map_err(|_| Error::new(ErrorKind::Internal, "checkpoint thread panicked"))??;
            self.checkpointed = self.checkpointed.max(off);
        }
        Ok(())
    }

    /// Starts a checkpoint of the bytes so far on a background thread, so hashing and
    /// copying go on while the disk catches up; at most one runs at a time.
    fn checkpoint_in_background(&mut self) -> Result<()> {
        if self.background.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        self.join_background()?;
        let data = self.dir.join("data");
        let file = self.file.try_clone().map_err(io("dup", &data))?;
        let (dir, offset, digest) = (self.dir.clone(), self.offset, sha256_digest(&self.hasher));
        self.requested = offset;
        self.background = Some(std::thread::spawn(move || {
            file.sync_data().map_err(io("fdatasync", &data))?;
            write_checkpoint(&dir, offset, &digest)?;
            Ok(offset)
        }));
        Ok(())
    }

    /// Starts writeback of what was written since the last kick, without waiting.
    fn kick_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let len = self.offset - self.kicked;
        // SAFETY: sync_file_range only reads the fd and the integer range; a failure is
        // harmless (the final fdatasync does the work).
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                i64::try_from(self.kicked).unwrap_or(0),
                i64::try_from(len).unwrap_or(0),
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.kicked = self.offset;
    }
}

impl LocalWriter {
    /// Turns a shared writer into a real ingest holding a copy of the shared blob, so it
    /// can be appended to or truncated.
    fn materialize(&mut self, copy: bool) -> Result<&mut IngestState> {
        if let WriterState::Shared { digest, .. } = &self.state {
            let digest = digest.clone();
            let opts = WriterOptions {
                r#ref: self.r#ref.clone(),
                total: 0,
                expected: None,
            };
            let (dir, r) = self.store.open_ingest(&self.scope, &opts)?;
            let mut st = r.into_state(dir);
            st.file.set_len(0).map_err(io("truncate ingest", &st.dir))?;
            st.offset = 0;
            st.checkpointed = 0;
            st.requested = 0;
            st.kicked = 0;
            st.hasher = Sha256::new();
            let mut state = WriterState::Ingest(Box::new(st));
            if copy {
                let src = self.store.blob_path(&digest);
                let mut f = File::open(&src).map_err(io("open blob", &src))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(io("read blob", &src))?;
                    if n == 0 {
                        break;
                    }
                    write_into(&mut state, &buf[..n], &self.guard, u64::MAX)?;
                }
            }
            self.expected = None;
            self.state = state;
        }
        match &mut self.state {
            WriterState::Ingest(st) => Ok(st),
            _ => Err(Error::precondition("writer is closed")),
        }
    }
}

fn write_into(state: &mut WriterState, data: &[u8], guard: &RefGuard, interval: u64) -> Result<()> {
    let WriterState::Ingest(st) = state else {
        return Err(Error::precondition("writer is closed"));
    };
    let path = st.dir.join("data");
    let (file, offset, hasher) = (&st.file, st.offset, &mut st.hasher);
    let written = if data.len() >= PARALLEL_WRITE_MIN {
        // Hashing and copying into the page cache each take about as long as the other;
        // on two cores they overlap, reading the same borrowed buffer.
        std::thread::scope(|s| {
            let writer = s.spawn(|| file.write_all_at(data, offset));
            hasher.update(data);
            writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")))
        })
    } else {
        hasher.update(data);
        file.write_all_at(data, offset)
    };
    if let Err(e) = written {
        // The hasher has seen bytes that may not be on disk: the ingest must be resumed
        // from its checkpoint, so refuse further use of this writer.
        *state = WriterState::Done(None);
        return Err(Error::io("write ingest data", &path, e));
    }
    let WriterState::Ingest(st) = state else {
        unreachable!("checked above");
    };
    st.offset += data.len() as u64;
    guard.offset.store(st.offset, Ordering::Relaxed);
    if st.offset - st.kicked >= WRITEBACK_CHUNK {
        st.kick_writeback();
    }
    if st.offset - st.requested >= interval {
        st.checkpoint_in_background()?;
    }
    Ok(())
}

impl Writer for LocalWriter {
    fn status(&self) -> Result<Status> {
        let offset = match &self.state {
            WriterState::Ingest(st) => st.offset,
            WriterState::Shared { size, .. } => *size,
            WriterState::Done(_) => return Err(Error::precondition("writer is closed")),
        };
        Ok(Status {
            r#ref: self.r#ref.clone(),
            offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        })
    }

    fn digest(&self) -> Digest {
        match &self.state {
            WriterState::Ingest(st) => sha256_digest(&st.hasher),
            WriterState::Shared { digest, .. } => digest.clone(),
            WriterState::Done(Some(d)) => d.clone(),
            WriterState::Done(None) => sha256_digest(&Sha256::new()),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.materialize(true)?;
        let interval = self.store.inner.opts.checkpoint_interval;
        write_into(&mut self.state, data, &self.guard, interval)?;
        self.updated_at = now();
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        if size != 0 {
            return Err(Error::invalid(format!(
                "truncate to {size}: only truncation to 0 is supported"
            )));
        }
        let st = self.materialize(false)?;
        // A checkpoint still running for the old bytes must land before the new one.
        st.join_background()?;
        let data = st.dir.join("data");
        st.file.set_len(0).map_err(io("truncate ingest", &data))?;
        st.offset = 0;
        st.checkpointed = 0;
        st.kicked = 0;
        st.hasher = Sha256::new();
        st.checkpoint()?;
        self.guard.offset.store(0, Ordering::Relaxed);
        self.updated_at = now();
        Ok(())
    }

    fn commit(&mut self, size: u64, expected: Option<&Digest>, labels: Labels) -> Result<Digest> {
        validate_labels(&labels)?;
        let store = self.store.clone();
        let inner = &store.inner;
        let ns = ns_str(&self.scope).to_owned();
        let t = to_nanos(now());
        let record = ContentRecord {
            size: 0,
            created_ns: t,
            updated_ns: t,
            labels: meta::labels_to_map(&labels),
        };
        let st = match &mut self.state {
            WriterState::Done(_) => return Err(Error::precondition("writer is closed")),
            WriterState::Shared { digest, size: have } => {
                if size != 0 && size != *have {
                    return Err(Error::precondition(format!(
                        "{:?} failed size validation: {have} != {size}",
                        truncate(&self.r#ref)
                    )));
                }
                if let Some(e) = expected
                    && e != digest
                {
                    return Err(Error::precondition(format!(
                        "{:?} unexpected digest {digest}, expected {e}",
                        truncate(&self.r#ref)
                    )));
                }
                let digest = digest.clone();
                let rec = ContentRecord {
                    size: *have,
                    ..record
                };
                let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
                let key = meta::content_key(&ns, &digest.to_string());
                if inner.meta.exists(&key)? {
                    self.state = WriterState::Done(Some(digest.clone()));
                    return Err(Error::already_exists(format!("content {digest}")));
                }
                let mut b = WriteBatch::default();
                b.put(key, enc(&rec));
                if let Some(l) = &self.scope.lease {
                    b.put(
                        meta::resource_key(&ns, l, "content", &digest.to_string()),
                        b"",
                    );
                }
                inner.meta.write(b)?;
                self.state = WriterState::Done(Some(digest.clone()));
                return Ok(digest);
            }
            WriterState::Ingest(st) => st,
        };
        let data = st.dir.join("data");
        // A checkpoint (fdatasync + digest) rather than a bare fdatasync: should the commit
        // not finish, the whole ingest resumes instead of restarting.
        if st.checkpointed != st.offset {
            st.checkpoint()?;
        } else {
            st.file.sync_data().map_err(io("fdatasync", &data))?;
        }
        if size != 0 && size != st.offset {
            return Err(Error::precondition(format!(
                "unexpected commit size {}, expected {size}",
                st.offset
            )));
        }
        let mut digest = sha256_digest(&st.hasher);
        if let Some(e) = expected {
            if e.algorithm() == Algorithm::Sha512 {
                digest = hash_file_sha512(&data)?;
            }
            if *e != digest {
                return Err(Error::precondition(format!(
                    "unexpected commit digest {digest}, expected {e}"
                )));
            }
        }
        let rec = ContentRecord {
            size: st.offset,
            ..record
        };
        let dkey = digest.to_string();
        let ckey = meta::content_key(&ns, &dkey);
        let blob = inner.blob_path(&digest);
        let dir = st.dir.clone();
        let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        if let Some(l) = &self.scope.lease {
            batch.put(meta::resource_key(&ns, l, "content", &dkey), b"");
            batch.delete(meta::resource_key(&ns, l, "ingests", &self.r#ref));
        }
        if blob.exists() {
            fs::remove_dir_all(&dir).map_err(io("remove ingest", &dir))?;
            self.state = WriterState::Done(Some(digest.clone()));
            if inner.meta.exists(&ckey)? {
                inner.meta.write(batch)?;
                return Err(Error::already_exists(format!("content {digest}")));
            }
            if self.scope.namespace.is_none() {
                // Adopt it: the client now relies on this blob.
                batch.put(ckey, enc(&rec));
                inner.meta.write(batch)?;
                return Err(Error::already_exists(format!("content {digest}")));
            }
            batch.put(ckey, enc(&rec));
            inner.meta.write(batch)?;
            return Ok(digest);
        }
        let pending = PendingCommit {
            namespace: ns.clone(),
            record: Some(rec.clone()),
            lease: self.scope.lease.clone().unwrap_or_default(),
            r#ref: self.r#ref.clone(),
        };
        let mut pb = WriteBatch::default();
        pb.put(meta::pending_key(&dkey), enc(&pending));
        inner.meta.write(pb)?;
        store.failpoint("commit-before-rename");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o444))
            .map_err(io("chmod", &data))?;
        fs::rename(&data, &blob).map_err(io("rename blob into place", &blob))?;
        fsync_dir(blob.parent().unwrap_or(&inner.blobs))?;
        store.failpoint("commit-after-rename");
        fs::remove_dir_all(&dir).map_err(io("remove ingest", &dir))?;
        batch.put(ckey, enc(&rec));
        batch.delete(meta::pending_key(&dkey));
        inner.meta.write(batch)?;
        store.failpoint("commit-after-record");
        self.state = WriterState::Done(Some(digest.clone()));
        debug!(%digest, size = rec.size, "committed");
        Ok(digest)
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        if let WriterState::Ingest(st) = &mut self.state
            && st.checkpointed != st.offset
        {
            st.checkpoint()?;
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let WriterState::Ingest(st) = &mut self.state
            && st.checkpointed != st.offset
            && let Err(e) = st.checkpoint()
        {
            warn!(error = %e, "checkpoint on drop failed");
        }
    }
}

struct StatusAdaptor<'a>(&'a Status);
impl Adaptor for StatusAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.0.r#ref.clone()),
            _ => None,
        }
    }
}

pub(crate) struct InfoAdaptor<'a>(pub(crate) &'a Info);
impl Adaptor for InfoAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("digest") if path.len() == 1 => Some(self.0.digest.to_string()),
            Some("size") if path.len() == 1 => Some(self.0.size.to_string()),
            Some("labels") => label_field(path, &self.0.labels),
            _ => None,
        }
    }
}

pub(crate) fn parse_filters(filters: &[String]) -> Result<Filter> {
    Filter::parse_all(filters).map_err(|e| Error::invalid("parse filters").with_source(e))
}

impl LocalStore {
    /// Status of the ingest in `dir`, if it belongs to `ns`.
    fn ingest_status(&self, dir: &Path, ns: &str) -> Option<Status> {
        let meta = read_ingest_meta(dir)?;
        if meta.namespace != ns {
            return None;
        }
        let live = self
            .inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_owned(), meta.r#ref.clone()))
            .map(|o| o.load(Ordering::Relaxed));
        let data_md = fs::metadata(dir.join("data")).ok();
        let offset = live
            .or_else(|| read_checkpoint(dir).map(|(o, _)| o))
            .unwrap_or(0);
        let updated = data_md
            .and_then(|m| m.modified().ok())
            .unwrap_or(meta.started_at);
        Some(Status {
            r#ref: meta.r#ref,
            offset,
            total: meta.total,
            expected: meta.expected,
            started_at: meta.started_at,
            updated_at: updated,
        })
    }

    /// Every ingest dir with its namespace and status.
    pub(crate) fn all_ingests(&self) -> Result<Vec<(PathBuf, String, Status)>> {
        let mut out = Vec::new();
        let root = &self.inner.ingest;
        for e in fs::read_dir(root).map_err(io("read directory", root))? {
            let e = e.map_err(io("read directory", root))?;
            let p = e.path();
            if p.to_string_lossy().contains(".tmp-") {
                continue;
            }
            if let Some(m) = read_ingest_meta(&p) {
                let ns = m.namespace.clone();
                if let Some(s) = self.ingest_status(&p, &ns) {
                    out.push((p, ns, s));
                }
            }
        }
        Ok(out)
    }
}

impl IngestManager for LocalStore {
    fn status(&self, scope: &Scope, r: &str) -> Result<Status> {
        validate_ref(r)?;
        let ns = ns_str(scope);
        let dir = self.inner.ingest_dir(ns, r);
        self.ingest_status(&dir, ns)
            .filter(|s| s.r#ref == r)
            .ok_or_else(|| Error::not_found(format!("ingest {:?}", truncate(r))))
    }

    fn list_statuses(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Status>> {
        let filter = parse_filters(filters)?;
        let ns = ns_str(scope);
        let mut out: Vec<Status> = self
            .all_ingests()?
            .into_iter()
            .filter(|(_, n, s)| n == ns && filter.matches(&StatusAdaptor(s)))
            .map(|(_, _, s)| s)
            .collect();
        out.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
        Ok(out)
    }

    fn abort(&self, scope: &Scope, r: &str) -> Result<()> {
        validate_ref(r)?;
        let ns = ns_str(scope);
        // Holding the ref while removing keeps a writer from opening it concurrently.
        let _guard = self.lock_ref(ns, r)?;
        let dir = self.inner.ingest_dir(ns, r);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found(format!("ingest {:?}", truncate(r))))
            }
            Err(e) => Err(Error::io("remove ingest", &dir, e)),
        }
    }
}

fn blob_digests(blobs: &Path) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let d = blobs.join(alg.as_str());
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", &d, e)),
        };
        for e in rd {
            let e = e.map_err(io("read directory", &d))?;
            let name = e.file_name();
            if let Ok(dg) = Digest::parse(&format!("{alg}:{}", name.to_string_lossy())) {
                out.push(dg);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl LocalStore {
    /// Digests of every blob file on disk.
    pub(crate) fn blob_digests(&self) -> Result<Vec<Digest>> {
        blob_digests(&self.inner.blobs)
    }
}

impl Manager for LocalStore {
    fn update(
        &self,
        scope: &Scope,
        digest: &Digest,
        labels: Labels,
        fieldpaths: &[String],
    ) -> Result<Info> {
        let _shared = self.inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut rec = self.visible(scope, digest, false)?;
        let mut cur = meta::map_to_labels(&rec.labels);
        if fieldpaths.is_empty() {
            cur = labels;
        } else {
            for p in fieldpaths {
                if p == "labels" {
                    cur = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => cur.insert(k.to_owned(), v.clone()),
                        None => cur.remove(k),
                    };
                } else {
                    return Err(Error::invalid(format!(
                        "cannot update {:?} field on content info {digest}",
                        truncate(p)
                    )));
                }
            }
        }
        cur.retain(|_, v| !v.is_empty());
        validate_labels(&cur)?;
        rec.labels = meta::labels_to_map(&cur);
        rec.updated_ns = to_nanos(now()).max(rec.updated_ns + 1);
        let mut b = WriteBatch::default();
        b.put(
            meta::content_key(ns_str(scope), &digest.to_string()),
            enc(&rec),
        );
        self.inner.meta.write(b)?;
        Ok(to_info(digest.clone(), &rec))
    }

    fn walk(
        &self,
        scope: &Scope,
        filters: &[String],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()> {
        let filter = parse_filters(filters)?;
        let mut infos = Vec::new();
        if scope.namespace.is_some() {
            let prefix = meta::content_prefix(ns_str(scope));
            for (k, v) in self.inner.meta.scan(&prefix)? {
                let Ok(d) = Digest::parse(&String::from_utf8_lossy(&k[prefix.len()..])) else {
                    continue;
                };
                let rec = <ContentRecord as prost::Message>::decode(&*v)
                    .map_err(|e| Error::corrupt("content record", e))?;
                infos.push(to_info(d, &rec));
            }
        } else {
            for d in self.blob_digests()? {
                match self.visible(scope, &d, false) {
                    Ok(rec) => infos.push(to_info(d, &rec)),
                    Err(e) if e.is(ErrorKind::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for info in infos {
            if filter.matches(&InfoAdaptor(&info)) {
                f(info)?;
            }
        }
        Ok(())
    }

    fn delete(&self, scope: &Scope, digest: &Digest) -> Result<()> {
        let inner = &self.inner;
        let _excl = inner.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let ns = ns_str(scope);
        let key = meta::content_key(ns, &digest.to_string());
        let recorded = inner.meta.exists(&key)?;
        if !recorded && (scope.namespace.is_some() || !inner.blob_path(digest).exists()) {
            return Err(Error::not_found(format!("content {digest}")));
        }
        if recorded {
            let mut b = WriteBatch::default();
            b.delete(&key);
            inner.meta.write(b)?;
        }
        if !inner.has_any_record(&digest.to_string())? {
            inner.remove_blob_file(digest)?;
        }
        Ok(())
    }
}

// Assert the store satisfies the whole contract.
const _: fn() = || {
    fn is_store<T: ContentStore>() {}
    is_store::<LocalStore>();
};
