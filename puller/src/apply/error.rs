//! The layer applier's error: what went wrong, the entry or stream offset it concerns, and
//! the cause as `source()`. [`ApplyError::kind`] gives its errdefs kind; callers match on the variants
//! (a refusal, a limit, a layer that needs the layers below).

use std::fmt;
use std::io;

use strata_proto::ErrorKind;
use strata_proto::HasKind;

use crate::Compression;

/// Result of decompressing or applying a layer.
pub type ApplyResult<T, E = ApplyError> = std::result::Result<T, E>;

/// A limit of [`Limits`](crate::Limits) that a layer exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Uncompressed bytes of the layer stream.
    TotalBytes,
    /// Number of tar entries.
    Entries,
    /// Size of one PAX extension header or GNU long name/link.
    HeaderSize,
    /// Length of a path or link target.
    PathLength,
    /// Length of one path component.
    ComponentLength,
    /// The zstd window a frame asks for.
    ZstdWindow,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::TotalBytes => "uncompressed layer size",
            Limit::Entries => "number of entries",
            Limit::HeaderSize => "extension header size",
            Limit::PathLength => "path length",
            Limit::ComponentLength => "path component length",
            Limit::ZstdWindow => "zstd window size",
        })
    }
}

/// An entry's name as it appears in errors and logs: lossy UTF-8, control characters
/// escaped, cut to 200 characters, so a hostile name cannot flood or forge log lines.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryName(String);

impl EntryName {
    const MAX_CHARS: usize = 200;

    /// The display form of raw name bytes.
    pub fn new(raw: &[u8]) -> Self {
        let lossy = String::from_utf8_lossy(raw);
        let mut out = String::new();
        for (i, c) in lossy.chars().enumerate() {
            if i == Self::MAX_CHARS {
                out.push_str("...");
                break;
            }
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        EntryName(out)
    }

    /// The sanitized name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

impl fmt::Debug for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error of decompressing or applying a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The media type names no layer format this crate reads.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    /// The compressed stream is corrupt (or hostile: bad checksums, bad frames).
    #[error("corrupt {format} stream")]
    Decompress {
        /// The compression format being decoded.
        format: Compression,
        /// The decoder's complaint.
        #[source]
        source: io::Error,
    },
    /// The tar stream is malformed: truncated, a bad header checksum or number field, a
    /// dangling extension header.
    #[error("malformed tar at byte {offset}: {reason}")]
    Malformed {
        /// Offset of the offending header in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry was refused: it would act outside the root, or it is otherwise invalid
    /// or unsupported.
    #[error("entry {path}: {reason}")]
    Refused {
        /// The entry.
        path: EntryName,
        /// Why it was refused.
        reason: String,
        /// The system's error, where one led to the refusal.
        #[source]
        source: Option<io::Error>,
    },
    /// The entry's result depends on the layers below, which an extraction in
    /// [`WhiteoutMode::OverlayDetached`](crate::WhiteoutMode::OverlayDetached) cannot see;
    /// the layer must be applied again over them.
    #[error("entry {path}: {reason}, which depends on the layers below")]
    NeedsLowerLayers {
        /// The entry.
        path: EntryName,
        /// What it needs from below.
        reason: &'static str,
    },
    /// The layer exceeded one of the configured [`Limits`](crate::Limits).
    #[error("{what} exceeds the limit of {limit}{}", at.as_ref().map(|p| format!(" at entry {p}")).unwrap_or_default())]
    LimitExceeded {
        /// Which limit.
        what: Limit,
        /// The limit's value.
        limit: u64,
        /// The entry, where one is known.
        at: Option<EntryName>,
    },
    /// Reading the layer stream failed (the blob source, not its content).
    #[error("read layer stream")]
    Read(#[source] io::Error),
    /// A filesystem operation under the root failed.
    #[error("entry {path}: {op}")]
    Io {
        /// The entry being applied.
        path: EntryName,
        /// The operation.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The root directory cannot be opened.
    #[error("open layer root {0}")]
    Root(String, #[source] io::Error),
}

impl ApplyError {
    /// The errdefs kind: `InvalidArgument` for hostile or malformed input,
    /// `ResourceExhausted` for a limit, `Internal` for I/O.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApplyError::UnsupportedMediaType(_)
            | ApplyError::Decompress { .. }
            | ApplyError::Malformed { .. }
            | ApplyError::Refused { .. } => ErrorKind::InvalidArgument,
            ApplyError::LimitExceeded { .. } => ErrorKind::ResourceExhausted,
            ApplyError::NeedsLowerLayers { .. } => ErrorKind::FailedPrecondition,
            ApplyError::Read(_) | ApplyError::Io { .. } | ApplyError::Root(..) => {
                ErrorKind::Internal
            }
        }
    }

    pub(crate) fn refused(path: &[u8], reason: impl Into<String>) -> Self {
        ApplyError::Refused {
            path: EntryName::new(path),
            reason: reason.into(),
            source: None,
        }
    }
}

impl HasKind for ApplyError {
    fn kind(&self) -> ErrorKind {
        ApplyError::kind(self)
    }
}
