//! The snapshotter crate's error: a matchable kind, a context message, and the cause.

use std::fmt;

pub use strata_proto::ErrorKind;
use strata_proto::HasKind;

/// Result alias for the snapshotter crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of a snapshotter or its metadata store. The message names the operation and
/// the snapshot; the cause is `source()`.
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a context message.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// Attaches the cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A metadata database failure.
    pub(crate) fn db(op: &str, err: rocksdb::Error) -> Self {
        Error::new(ErrorKind::Internal, format!("snapshot metadata: {op}")).with_source(err)
    }

    /// A stored record that does not decode.
    pub(crate) fn corrupt(what: &str, err: prost::DecodeError) -> Self {
        Error::new(ErrorKind::DataLoss, format!("decode stored {what}")).with_source(err)
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
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
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}
