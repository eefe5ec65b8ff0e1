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
//!
//! Files: this one opens the store, recovers pending commits and reads blobs; `ingest`
//! holds ingests and the writer; `manage` holds statuses, info, labels, listing and
//! deletion.

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

mod ingest;
mod manage;

use ingest::{RefGuard, read_checkpoint, read_ingest_meta};
pub(crate) use manage::parse_filters;

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
        let f = open_blob(&self.blob_path(digest), digest)?;
        f.read_at(buf, offset)
            .map_err(io("read blob", &self.blob_path(digest)))
    }

    fn reader(&self, scope: &Scope, digest: &Digest) -> Result<Box<dyn crate::api::ReadAt>> {
        self.visible(scope, digest, true)?;
        Ok(Box::new(open_blob(&self.blob_path(digest), digest)?))
    }
}

/// Opens the file of a blob that has a record: a missing file is `DataLoss`.
fn open_blob(path: &Path, digest: &Digest) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::new(
                ErrorKind::DataLoss,
                format!("blob file of {digest} is missing"),
            )
        } else {
            Error::io("open blob", path, e)
        }
    })
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

// Assert the store satisfies the whole contract.
const _: fn() = || {
    fn is_store<T: ContentStore>() {}
    is_store::<LocalStore>();
};
