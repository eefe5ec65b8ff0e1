//! strata's one error type: a matchable [`ErrorKind`], a context message, and the cause.
//!
//! Every library crate returns [`Error`]. The message is a sentence fragment naming the
//! operation and the object (digest, key, path, reference); it never repeats its cause,
//! which is `source()`. [`Error::context`] wraps an error in a higher-level message and
//! keeps its kind, so a `NotFound` from the content store is still `NotFound` when the
//! puller reports it as "fetch layer 2". Display shows this error's message only; Debug
//! (and [`error_chain`](crate::error_chain), which the gRPC edge sends) shows the whole
//! chain.
//!
//! Typed errors stay where callers match on variants (the layer applier's refusals, the
//! digest parser); they implement [`HasKind`] and enter this type through
//! [`Error::caused_by`], keeping their kind.

use std::fmt;
use std::path::Path;

use crate::errdefs::{ErrorKind, HasKind};

/// Result alias used by every strata library crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The boxed cause of an [`Error`].
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of any strata library crate.
pub struct Error {
    kind: ErrorKind,
    context: String,
    http_status: Option<u16>,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a context message and no cause.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            http_status: None,
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Wraps this error in a higher-level message, keeping its kind (and HTTP status).
    pub fn context(self, context: impl Into<String>) -> Self {
        Error {
            kind: self.kind,
            context: context.into(),
            http_status: self.http_status,
            source: Some(Box::new(self)),
        }
    }

    /// A typed error as the cause of `context`, keeping its kind.
    pub fn caused_by<E>(context: impl Into<String>, err: E) -> Self
    where
        E: HasKind + std::error::Error + Send + Sync + 'static,
    {
        Error::new(err.kind(), context).with_source(err)
    }

    /// An I/O failure while doing `op` on `path`; the kind comes from [`kind_of_io`].
    pub fn io(op: &str, path: &Path, err: std::io::Error) -> Self {
        Error::new(kind_of_io(&err), format!("{op} {}", path.display())).with_source(err)
    }

    /// An I/O failure while doing `op` (no path involved); the kind comes from
    /// [`kind_of_io`].
    pub fn io_op(op: impl Into<String>, err: std::io::Error) -> Self {
        Error::new(kind_of_io(&err), op).with_source(err)
    }

    /// A failure of a metadata database while doing `op`.
    pub fn db(op: &str, err: impl Into<Source>) -> Self {
        Error::new(ErrorKind::Internal, format!("metadata database: {op}")).with_source(err)
    }

    /// A stored record (`what`) that does not decode.
    pub fn corrupt(what: &str, err: impl Into<Source>) -> Self {
        Error::new(ErrorKind::DataLoss, format!("decode stored {what}")).with_source(err)
    }

    /// Shorthand for `InvalidArgument`.
    pub fn invalid(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, context)
    }

    /// Shorthand for `NotFound`.
    pub fn not_found(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, context)
    }

    /// Shorthand for `AlreadyExists`.
    pub fn already_exists(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::AlreadyExists, context)
    }

    /// Shorthand for `FailedPrecondition`.
    pub fn precondition(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::FailedPrecondition, context)
    }

    /// Shorthand for `DataLoss`: bytes that fail verification.
    pub fn data_loss(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::DataLoss, context)
    }

    /// Shorthand for `Internal` with a cause.
    pub fn internal(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::new(ErrorKind::Internal, context).with_source(source)
    }

    /// Records the HTTP status a remote server (a registry) answered with.
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    /// The HTTP status behind the error, when a remote server answered.
    pub fn http_status(&self) -> Option<u16> {
        self.http_status
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the error is of `kind`.
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }

    /// This error's own message, without its causes.
    pub fn message(&self) -> &str {
        &self.context
    }
}

/// The one table from I/O errors to kinds: a missing file is `NotFound`, a refused
/// permission `PermissionDenied`, a full disk or quota `ResourceExhausted`; anything else
/// is `Internal` (an unexpected failure of the system, not of the request).
pub fn kind_of_io(err: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match err.kind() {
        Io::NotFound => ErrorKind::NotFound,
        Io::PermissionDenied => ErrorKind::PermissionDenied,
        Io::StorageFull | Io::QuotaExceeded => ErrorKind::ResourceExhausted,
        _ => ErrorKind::Internal,
    }
}

/// `.context()` on results, keeping the error's kind.
pub trait ResultExt<T> {
    /// Wraps the error in `context`, keeping its kind.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// Wraps the error in a lazily built context, keeping its kind.
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
    fn with_context<C: Into<String>>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, crate::error_chain(self))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::new(ErrorKind::from_code(s.code()), s.message().to_owned())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        crate::status_from_error(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_kind_and_chains_messages() {
        let e = Error::io(
            "open",
            Path::new("/x"),
            std::io::Error::from_raw_os_error(libc_enospc()),
        )
        .context("write blob sha256:ab");
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(e.to_string(), "write blob sha256:ab");
        let chain = crate::error_chain(&e);
        assert!(
            chain.starts_with("write blob sha256:ab: open /x: "),
            "{chain}"
        );
        assert!(format!("{e:?}").starts_with("ResourceExhausted: write blob"));
    }

    fn libc_enospc() -> i32 {
        28
    }

    #[test]
    fn io_table() {
        use std::io::{Error as E, ErrorKind as K};
        assert_eq!(kind_of_io(&E::from(K::NotFound)), ErrorKind::NotFound);
        assert_eq!(
            kind_of_io(&E::from(K::PermissionDenied)),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            kind_of_io(&E::from(K::QuotaExceeded)),
            ErrorKind::ResourceExhausted
        );
        assert_eq!(kind_of_io(&E::other("x")), ErrorKind::Internal);
    }

    #[test]
    fn status_round_trip_keeps_kind() {
        let s = tonic::Status::from(Error::not_found("blob sha256:00").context("read"));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "read: blob sha256:00");
        let back = Error::from(s);
        assert!(back.is(ErrorKind::NotFound));
    }

    #[test]
    fn http_status_survives_context() {
        let e = Error::new(ErrorKind::Unavailable, "GET /v2/")
            .with_http_status(503)
            .context("resolve");
        assert_eq!(e.http_status(), Some(503));
    }
}
