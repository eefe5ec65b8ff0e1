//! The registry client's error: a matchable kind, a context message, and the cause.
//!
//! Context messages never contain credentials, tokens or URL query strings (blob
//! redirects carry signed queries); [`redact_url`] is the one way URLs enter messages.

use std::fmt;

pub use strata_proto::ErrorKind;
use strata_proto::HasKind;

/// Result alias for the registry client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the registry client.
///
/// The message is a sentence fragment naming the operation and the object (reference,
/// host, digest); it never repeats its cause, which is available as `source()`, and never
/// contains a secret.
pub struct Error {
    kind: ErrorKind,
    context: String,
    status: Option<u16>,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a context message and no cause.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            status: None,
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Records the HTTP status the registry answered with.
    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Shorthand for `InvalidArgument`.
    pub fn invalid(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, context)
    }

    /// Shorthand for `DataLoss`: the registry sent bytes that fail verification.
    pub fn data_loss(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::DataLoss, context)
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the error is of `kind`.
    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }

    /// The HTTP status code behind the error, when a registry answered.
    pub fn http_status(&self) -> Option<u16> {
        self.status
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

/// `scheme://authority/path` of `uri`, without userinfo, query or fragment: what may
/// appear in a message or a log line.
pub fn redact_url(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or("?");
    let port = uri
        .port()
        .map(|p| format!(":{}", p.as_str()))
        .unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("{scheme}://{host}{port}{}", uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_drops_userinfo_and_query() {
        let u: http::Uri =
            "https://user:pw@storage.example:8443/blob/x?X-Amz-Signature=s3cr3t#frag"
                .parse()
                .unwrap();
        let r = redact_url(&u);
        assert_eq!(r, "https://storage.example:8443/blob/x");
    }
}
