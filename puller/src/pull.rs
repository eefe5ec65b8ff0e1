//! Pulling an image: resolve, fetch into the content store, unpack into a snapshotter,
//! record the image. [`PullError`] is the pipeline's error: one errdefs kind for the gRPC
//! edge, a message naming the step, and the cause.

use std::fmt;

use strata_proto::{ErrorKind, HasKind};

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias of the pull pipeline.
pub type PullResult<T> = std::result::Result<T, PullError>;

/// An error of the pull pipeline.
pub struct PullError {
    kind: ErrorKind,
    context: String,
    source: Option<Source>,
}

impl PullError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        PullError {
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

    /// Bad input (image, reference, layer).
    pub fn invalid(context: impl Into<String>) -> Self {
        PullError::new(ErrorKind::InvalidArgument, context)
    }

    /// A local I/O failure.
    pub fn internal(context: &str, e: std::io::Error) -> Self {
        PullError::new(ErrorKind::Internal, context).with_source(e)
    }

    /// A snapshotter error, keeping its kind.
    pub fn from_snapshot(context: &str, e: strata_snapshotter::Error) -> Self {
        PullError::new(e.kind(), context).with_source(e)
    }

    /// A content store error, keeping its kind.
    pub fn from_content(context: &str, e: strata_content::Error) -> Self {
        PullError::new(e.kind(), context).with_source(e)
    }

    /// An unpack error of layer `i`, keeping its kind.
    pub fn from_apply(i: usize, e: crate::Error) -> Self {
        PullError::new(e.kind(), format!("unpack layer {i}")).with_source(e)
    }

    /// The errdefs kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl HasKind for PullError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl fmt::Debug for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.context)?;
        let mut s = self.source.as_deref().map(|s| s as &dyn std::error::Error);
        while let Some(e) = s {
            write!(f, ": {e}")?;
            s = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for PullError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}
