//! strata's error kinds and their one mapping to gRPC status codes.

use std::error::Error;

/// What went wrong, in containerd's errdefs vocabulary. Every library error in strata
/// exposes one through [`HasKind`]; the gRPC edge turns it into a [`tonic::Code`] with
/// [`ErrorKind::code`], and clients turn codes back with [`ErrorKind::from_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// The object already exists (for content: the digest is committed).
    AlreadyExists,
    /// The operation is not valid in the object's current state.
    FailedPrecondition,
    /// The request itself is malformed.
    InvalidArgument,
    /// The object is locked by someone else; retry later.
    Unavailable,
    /// An offset or size is outside what the object supports.
    OutOfRange,
    /// A size or count limit was hit.
    ResourceExhausted,
    /// The caller may not do this.
    PermissionDenied,
    /// The caller has no valid credentials.
    Unauthenticated,
    /// The operation is not implemented.
    Unimplemented,
    /// The operation was aborted (conflict).
    Aborted,
    /// The operation was cancelled by the caller.
    Canceled,
    /// The deadline passed.
    DeadlineExceeded,
    /// Stored data is corrupt or lost.
    DataLoss,
    /// A bug or an unexpected failure of the system (I/O, database).
    Internal,
    /// An error with no better kind.
    Unknown,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::InvalidArgument,
        ErrorKind::Unavailable,
        ErrorKind::OutOfRange,
        ErrorKind::ResourceExhausted,
        ErrorKind::PermissionDenied,
        ErrorKind::Unauthenticated,
        ErrorKind::Unimplemented,
        ErrorKind::Aborted,
        ErrorKind::Canceled,
        ErrorKind::DeadlineExceeded,
        ErrorKind::DataLoss,
        ErrorKind::Internal,
        ErrorKind::Unknown,
    ];

    /// The gRPC status code for this kind.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::Canceled => Code::Cancelled,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unknown => Code::Unknown,
        }
    }

    /// The kind for a gRPC status code (the inverse of [`ErrorKind::code`]).
    pub fn from_code(code: tonic::Code) -> ErrorKind {
        use tonic::Code;
        match code {
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::InvalidArgument => ErrorKind::InvalidArgument,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::Unimplemented => ErrorKind::Unimplemented,
            Code::Aborted => ErrorKind::Aborted,
            Code::Cancelled => ErrorKind::Canceled,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::DataLoss => ErrorKind::DataLoss,
            Code::Internal => ErrorKind::Internal,
            Code::Ok | Code::Unknown => ErrorKind::Unknown,
        }
    }
}

/// An error that knows its [`ErrorKind`].
pub trait HasKind {
    /// The error's kind.
    fn kind(&self) -> ErrorKind;
}

/// Turns an error into a gRPC status: the code from its kind, the message from the whole
/// `source()` chain joined by `": "` (containerd's style), so a client sees every cause.
pub fn status_from_error<E>(err: &E) -> tonic::Status
where
    E: HasKind + Error + ?Sized,
{
    tonic::Status::new(err.kind().code(), error_chain(err))
}

/// An error's message and those of its causes, joined by `": "` (containerd's style).
pub fn error_chain<E: Error + ?Sized>(err: &E) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The kind of an error received over gRPC.
pub fn kind_from_status(status: &tonic::Status) -> ErrorKind {
    ErrorKind::from_code(status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_code() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(k.code()), k);
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("commit ingest")]
    struct Outer(#[source] std::io::Error);
    impl HasKind for Outer {
        fn kind(&self) -> ErrorKind {
            ErrorKind::FailedPrecondition
        }
    }

    #[test]
    fn status_carries_the_whole_chain() {
        let e = Outer(std::io::Error::other("disk on fire"));
        let s = status_from_error(&e);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.message(), "commit ingest: disk on fire");
    }
}
