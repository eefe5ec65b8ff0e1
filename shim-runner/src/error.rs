//! The shim-runner crate's error: a matchable kind, a context message, and the cause.

use std::fmt;

pub use strata_proto::ErrorKind;
use strata_proto::HasKind;

/// Result alias for the shim-runner crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of spec generation or user resolution. The message names what was being
/// done and to what (a USER value, a file inside the rootfs); the cause is `source()`.
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

    /// A malformed input (image config, option, USER value).
    pub(crate) fn invalid(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, context)
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
