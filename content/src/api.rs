//! The content store's transport-agnostic contract, split as containerd splits it:
//! [`Provider`] (read), [`Ingester`] + [`Writer`] (write), [`IngestManager`] (in-progress
//! writes) and [`Manager`] (info, labels, listing, deletion); [`LeaseManager`] holds
//! leases. [`crate::LocalStore`] implements them on disk, [`crate::GrpcStore`] over
//! containerd's gRPC API, and [`crate::testsuite`] checks any implementation.
//!
//! Every call takes a [`Scope`]: the namespace (or none, for a proxied containerd that
//! does its own namespacing) and the lease that protects what the call creates.
//!
//! Importing a blob is: `writer(ref)` -> `status()` (resume point) -> `write()`... ->
//! `commit(size, expected, labels)`.

use std::time::SystemTime;

use strata_proto::Digest;

use crate::images::Image;
use crate::{Error, Result};

pub(crate) use strata_proto::ident::truncate;
pub use strata_proto::ident::{Labels, Namespace, validate_identifier, validate_labels};

/// Longest ingest ref accepted, in bytes.
pub const MAX_REF_LEN: usize = 4096;
/// Checks an ingest ref: non-empty, at most [`MAX_REF_LEN`] bytes, no control characters,
/// no `..` path component. Refs are never used as paths (ingest dirs are named by a hash
/// of the ref); the rules only keep garbage out of the store and the logs.
pub fn validate_ref(r: &str) -> Result<()> {
    if r.is_empty() {
        return Err(Error::invalid("ingest ref must not be empty"));
    }
    if r.len() > MAX_REF_LEN {
        return Err(Error::invalid(format!(
            "ingest ref is {} bytes, longer than {MAX_REF_LEN}",
            r.len()
        )));
    }
    if r.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "ingest ref {:?} contains a control character",
            truncate(r)
        )));
    }
    if r.starts_with('/') || r.split('/').any(|c| c == "..") {
        return Err(Error::invalid(format!(
            "ingest ref {:?} looks like a path traversal",
            truncate(r)
        )));
    }
    Ok(())
}

/// Who is asking: the namespace of the request and the lease that protects what it creates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// The request's namespace; `None` is the global space a proxied containerd uses (it
    /// does its own namespacing and sends no namespace header).
    pub namespace: Option<Namespace>,
    /// The lease that new content and ingests are added to.
    pub lease: Option<String>,
}

impl Scope {
    /// The global space (no namespace, no lease).
    pub fn global() -> Self {
        Scope::default()
    }

    /// A namespace without a lease. Panics on an invalid name: use with literals.
    pub fn ns(name: &str) -> Self {
        Scope {
            namespace: Some(Namespace::new(name).expect("valid namespace literal")),
            lease: None,
        }
    }

    /// The same scope with a lease.
    pub fn with_lease(mut self, lease: impl Into<String>) -> Self {
        self.lease = Some(lease.into());
        self
    }
}

/// A committed blob as one namespace sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The blob's digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// When the blob was committed into this namespace.
    pub created_at: SystemTime,
    /// When its labels last changed.
    pub updated_at: SystemTime,
    /// Labels.
    pub labels: Labels,
}

/// State of an in-progress ingest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The ingest's ref.
    pub r#ref: String,
    /// Bytes durably written so far: the resume point.
    pub offset: u64,
    /// Expected total size, 0 if unknown.
    pub total: u64,
    /// Expected digest, if given when the ingest started.
    pub expected: Option<Digest>,
    /// When the ingest started.
    pub started_at: SystemTime,
    /// When it was last written.
    pub updated_at: SystemTime,
}

/// Options for opening a writer.
#[derive(Clone, Debug, Default)]
pub struct WriterOptions {
    /// The ingest's ref: one writer per ref at a time.
    pub r#ref: String,
    /// Expected total size, 0 if unknown.
    pub total: u64,
    /// Expected digest, if known.
    pub expected: Option<Digest>,
}

/// Random-access bytes: a committed blob, or an ingest while its writer appends.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns the count, 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

/// Reads committed blobs.
pub trait Provider: Send + Sync {
    /// The blob's info as `scope` sees it.
    ///
    /// # Contract
    /// `NotFound` when the blob is not visible in the scope.
    fn info(&self, scope: &Scope, digest: &Digest) -> Result<Info>;

    /// Reads up to `buf.len()` bytes at `offset`; returns the count, 0 at the end.
    ///
    /// # Contract
    /// `NotFound` when the blob is not visible; `OutOfRange` when `offset` is past its end.
    fn read_at(&self, scope: &Scope, digest: &Digest, offset: u64, buf: &mut [u8])
    -> Result<usize>;

    /// A random-access reader of the blob, checked visible once when opened (a layer is
    /// read through one of these without a lookup per read).
    ///
    /// # Contract
    /// `NotFound` when the blob is not visible in the scope.
    fn reader(&self, scope: &Scope, digest: &Digest) -> Result<Box<dyn ReadAt>>;
}

/// Opens writers.
pub trait Ingester: Send + Sync {
    /// Opens (or resumes) the ingest `opts.ref`.
    ///
    /// # Contract
    /// - `Unavailable` while another writer holds the same ref.
    /// - `AlreadyExists` when `opts.expected` is already committed and visible.
    /// - An existing ingest is resumed at its last durable offset (see [`Writer::status`]);
    ///   one whose stored state does not verify is discarded and restarted at 0.
    /// - Under the shared content policy, a blob committed in another namespace is offered
    ///   as an ingest already at `offset == size` that commits without re-upload.
    fn writer(&self, scope: &Scope, opts: WriterOptions) -> Result<Box<dyn Writer>>;

    /// The bytes written so far to ingest `ref`, readable while its writer appends, up to
    /// the offset the writer reported (a puller extracts a layer while it downloads).
    ///
    /// # Contract
    /// `NotFound` when there is no such ingest; `Unimplemented` where the store cannot
    /// offer it (over gRPC): a follower then waits for the commit and reads the blob.
    fn ingest_reader(&self, scope: &Scope, r#ref: &str) -> Result<Box<dyn ReadAt>>;
}

/// An open ingest. Dropping it releases the ref (as [`Writer::close`] does).
pub trait Writer: Send {
    /// Current state; `offset` is where the next write lands.
    fn status(&self) -> Result<Status>;

    /// Digest of the bytes written so far.
    fn digest(&self) -> Digest;

    /// Appends `data` at the current offset.
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Discards everything after `size`; only 0 is supported (`InvalidArgument` otherwise).
    fn truncate(&mut self, size: u64) -> Result<()>;

    /// Verifies and commits the ingest as a blob.
    ///
    /// # Contract
    /// - `FailedPrecondition` when `size` (if non-zero) or `expected` (if given) does not
    ///   match; the ingest stays as it was and can be written further or truncated.
    /// - `AlreadyExists` when the blob is already committed in the scope; the ingest is
    ///   removed.
    /// - On success the blob is durable before this returns, and the ingest is gone.
    fn commit(&mut self, size: u64, expected: Option<&Digest>, labels: Labels) -> Result<Digest>;

    /// Makes what was written durable and releases the ref.
    fn close(self: Box<Self>) -> Result<()>;
}

/// Manages in-progress ingests.
pub trait IngestManager: Send + Sync {
    /// Status of the ingest `ref`; `NotFound` if there is none.
    fn status(&self, scope: &Scope, r#ref: &str) -> Result<Status>;

    /// All ingests of the scope matching `filters` (field `ref`).
    fn list_statuses(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Status>>;

    /// Removes the ingest `ref`; `NotFound` if there is none, `Unavailable` if it is open.
    fn abort(&self, scope: &Scope, r#ref: &str) -> Result<()>;
}

/// Manages committed blobs.
pub trait Manager: Send + Sync {
    /// Updates labels, as containerd: `fieldpaths` of `labels` or `labels.<key>`; empty
    /// means all mutable fields. A label set to an absent or empty value is removed.
    ///
    /// # Contract
    /// `InvalidArgument` for any other field path; `NotFound` when the blob is not visible.
    fn update(
        &self,
        scope: &Scope,
        digest: &Digest,
        labels: Labels,
        fieldpaths: &[String],
    ) -> Result<Info>;

    /// Calls `f` for every visible blob matching `filters` (fields `digest`, `size`,
    /// `labels.*`).
    fn walk(
        &self,
        scope: &Scope,
        filters: &[String],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()>;

    /// Removes the blob from the scope; `NotFound` when it is not visible.
    fn delete(&self, scope: &Scope, digest: &Digest) -> Result<()>;
}

/// A whole content store.
pub trait ContentStore: Provider + Ingester + IngestManager + Manager {}
impl<T: Provider + Ingester + IngestManager + Manager + ?Sized> ContentStore for T {}

/// Image records, per namespace: a name pointing at a manifest or index, a GC root.
///
/// # Contract
/// `NotFound` for a name that has no record; `InvalidArgument` for a name or labels that
/// break the rules (see [`crate::images`]).
pub trait ImageStore: Send + Sync {
    /// Creates or replaces the image `image.name` in `ns`; keeps the creation time of a
    /// record it replaces. Returns the stored record.
    fn put_image(&self, ns: &Namespace, image: &Image) -> Result<Image>;
    /// The image `name` in `ns`.
    fn get_image(&self, ns: &Namespace, name: &str) -> Result<Image>;
    /// Images of `ns` matching `filters`, by name.
    fn list_images(&self, ns: &Namespace, filters: &[String]) -> Result<Vec<Image>>;
    /// Removes the image `name` from `ns`.
    fn delete_image(&self, ns: &Namespace, name: &str) -> Result<()>;
    /// Every image of every namespace, as `(namespace, image)`.
    fn all_images(&self) -> Result<Vec<(String, Image)>>;
}

/// What a pull writes to and reads from: blobs and their labels, ingests, leases and
/// image records. [`crate::LocalStore`] is one; any store implementing the parts is.
pub trait ImageContentStore: ContentStore + LeaseManager + ImageStore {}
impl<T: ContentStore + LeaseManager + ImageStore + ?Sized> ImageContentStore for T {}

/// A lease: protects the resources added to it from garbage collection until deleted or
/// expired (label `containerd.io/gc.expire`, RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease id.
    pub id: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// Labels.
    pub labels: Labels,
}

/// A resource held by a lease: `content` (id = digest), `ingests` (id = ref) or
/// `snapshots/<snapshotter>` (id = key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    /// The resource id.
    pub id: String,
    /// The resource type.
    pub r#type: String,
}

/// Manages leases, per namespace.
pub trait LeaseManager: Send + Sync {
    /// Creates a lease; `AlreadyExists` if the id is taken, `InvalidArgument` for a bad id.
    fn create_lease(&self, scope: &Scope, id: &str, labels: Labels) -> Result<Lease>;
    /// Deletes a lease; with `sync`, collects garbage before returning.
    fn delete_lease(&self, scope: &Scope, id: &str, sync: bool) -> Result<()>;
    /// Lists leases matching `filters` (fields `id`, `labels.*`).
    fn list_leases(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Lease>>;
    /// Adds a resource to a lease.
    fn add_resource(&self, scope: &Scope, id: &str, resource: Resource) -> Result<()>;
    /// Removes a resource from a lease.
    fn delete_resource(&self, scope: &Scope, id: &str, resource: Resource) -> Result<()>;
    /// The resources of a lease.
    fn list_resources(&self, scope: &Scope, id: &str) -> Result<Vec<Resource>>;
}

/// Reads a whole blob through a [`Provider`], in 1 MiB reads.
pub fn read_all(p: &dyn Provider, scope: &Scope, digest: &Digest) -> Result<Vec<u8>> {
    let info = p.info(scope, digest)?;
    let mut out = vec![0u8; usize::try_from(info.size).unwrap_or(usize::MAX)];
    let mut off = 0usize;
    while off < out.len() {
        let end = (off + (1 << 20)).min(out.len());
        let n = p.read_at(scope, digest, off as u64, &mut out[off..end])?;
        if n == 0 {
            return Err(Error::new(
                crate::ErrorKind::DataLoss,
                format!("blob {digest} ended at {off} of {} bytes", info.size),
            ));
        }
        off += n;
    }
    Ok(out)
}
