//! Names that come off the wire, validated once: containerd's identifier rules for
//! namespaces, container, exec and lease ids, and its label limits. Every crate takes
//! these from here, so a namespace that reached a path or a cgroup name was checked by
//! the same code that checks a lease id.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Error, MAX_LABEL_SIZE, NAMESPACE_HEADER, Result};

/// Labels of an object (content, snapshot, image, container), ordered by key.
pub type Labels = BTreeMap<String, String>;

/// Longest identifier, as containerd's.
pub const MAX_IDENTIFIER_LEN: usize = 76;

/// At most 64 characters of `s`, for messages about hostile input.
pub fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks containerd's identifier rules: alphanumerics separated by single `.`, `_` or
/// `-`, starting and ending with an alphanumeric, at most 76 bytes. `what` names the
/// identifier in the message.
pub fn validate_identifier(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(format!(
            "{what} is {} bytes, longer than {MAX_IDENTIFIER_LEN}",
            s.len()
        )));
    }
    let b = s.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    let ok = b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || sep(c))
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]));
    if !ok {
        return Err(Error::invalid(format!(
            "{what} {:?} is not a valid identifier",
            truncate(s)
        )));
    }
    Ok(())
}

/// Checks every label against containerd's size limit (key and value together at most
/// 4096 bytes) and rejects empty keys.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::invalid("label key must not be empty"));
        }
        if k.len() + v.len() > MAX_LABEL_SIZE {
            return Err(Error::invalid(format!(
                "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
                k.len() + v.len(),
                truncate(k)
            )));
        }
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Validates `s` as a ", $what, ".")]
            ///
            /// # Errors
            /// `InvalidArgument` if it breaks the identifier rules.
            pub fn new(s: &str) -> Result<Self> {
                validate_identifier($what, s)?;
                Ok($name(s.to_owned()))
            }

            /// The identifier.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

identifier!(
    /// A validated namespace name.
    Namespace,
    "namespace"
);
identifier!(
    /// A validated container id, safe in a path, a cgroup name and a hostname.
    ContainerId,
    "container id"
);
identifier!(
    /// A validated exec (process) id within a container.
    ExecId,
    "exec id"
);
identifier!(
    /// A validated lease id.
    LeaseId,
    "lease id"
);

/// The namespace a gRPC request names in its `containerd-namespace` header: `None`
/// without the header (or with an empty one: containerd's proxied calls), an error when
/// it is not ASCII or not a valid namespace.
pub fn namespace_from_metadata(
    md: &tonic::metadata::MetadataMap,
) -> std::result::Result<Option<Namespace>, tonic::Status> {
    match header(md, NAMESPACE_HEADER)? {
        None => Ok(None),
        Some(ns) => Namespace::new(&ns)
            .map(Some)
            .map_err(|e| crate::status_from_error(&e)),
    }
}

/// A request header as a string: `None` when absent or empty, `InvalidArgument` when it
/// is not ASCII.
pub fn header(
    md: &tonic::metadata::MetadataMap,
    key: &str,
) -> std::result::Result<Option<String>, tonic::Status> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| (!s.is_empty()).then(|| s.to_owned()))
            .map_err(|_| tonic::Status::invalid_argument(format!("{key} header is not ASCII"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_containerds_rules() {
        for ok in ["a", "default", "k8s.io", "a-b_c.d", "A1"] {
            assert!(Namespace::new(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(77);
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "../x",
            "a b",
            "é",
            long.as_str(),
        ] {
            let e = ContainerId::new(bad).unwrap_err();
            assert!(e.is(crate::ErrorKind::InvalidArgument), "{bad:?}");
        }
        assert_eq!(ExecId::new("exec-1").unwrap().as_str(), "exec-1");
        assert_eq!(format!("{:?}", LeaseId::new("l1").unwrap()), "LeaseId(l1)");
    }

    #[test]
    fn labels_are_bounded() {
        let mut l = Labels::new();
        l.insert("k".into(), "v".repeat(MAX_LABEL_SIZE - 1));
        assert!(validate_labels(&l).is_ok());
        l.insert("k".into(), "v".repeat(MAX_LABEL_SIZE));
        assert!(validate_labels(&l).is_err());
        let mut empty = Labels::new();
        empty.insert(String::new(), "v".into());
        assert!(validate_labels(&empty).is_err());
    }

    #[test]
    fn namespace_header() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(namespace_from_metadata(&md).unwrap(), None);
        md.insert(NAMESPACE_HEADER, "k8s.io".parse().unwrap());
        assert_eq!(
            namespace_from_metadata(&md).unwrap().unwrap().as_str(),
            "k8s.io"
        );
        md.insert(NAMESPACE_HEADER, "../etc".parse().unwrap());
        let s = namespace_from_metadata(&md).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }
}
