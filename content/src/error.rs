//! The content crate's error: a matchable kind, a context message, and the cause.

use std::fmt;
use std::path::Path;

pub use strata_proto::ErrorKind;
use strata_proto::HasKind;

/// Result alias for the content crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the content store.
///
/// The message is a sentence fragment naming the operation and the object (digest, ref,
/// path); it never repeats its cause, which is available as `source()`.
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a context message and no cause.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An I/O failure while doing `op` on `path`.
    pub fn io(op: &str, path: &Path, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                ErrorKind::ResourceExhausted
            }
            _ => ErrorKind::Internal,
        };
        Error::new(kind, format!("{op} {}", path.display())).with_source(err)
    }

    /// A failure of the metadata database.
    pub fn db(op: &str, err: rocksdb::Error) -> Self {
        Error::new(ErrorKind::Internal, format!("metadata database: {op}")).with_source(err)
    }

    /// A stored metadata record that does not decode.
    pub(crate) fn corrupt(what: &str, err: prost::DecodeError) -> Self {
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

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the error is of `kind`.
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
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
        write!(f, "{:?}: {}", self.kind, self.context)?;
        let mut src = self.source.as_deref().map(|s| s as &dyn std::error::Error);
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::new(strata_proto::kind_from_status(&s), s.message().to_owned())
    }
}
