//! Image references: `[registry/]repository[:tag][@digest]`, validated and normalised the
//! way Docker and containerd do (`busybox` -> `docker.io/library/busybox:latest`).
//!
//! Grammar (from `distribution/reference`):
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := ( host | "[" ipv6 "]" ) [ ":" port ]      host := label ( "." label )*
//! path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! ```
//! The first component is a domain when it contains `.` or `:`, is `localhost`, or has an
//! uppercase letter; otherwise the registry is `docker.io`, where a one-component path
//! gets the `library/` prefix. The whole name is at most 255 characters.

use std::fmt;
use std::str::FromStr;

use strata_proto::Digest;

use strata_proto::{Error, Result};

/// The registry Docker Hub references are normalised to.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;
// Longer input is rejected before any parsing: a name, a tag and a sha512 digest fit.
const INPUT_MAX: usize = NAME_MAX + 1 + TAG_MAX + 1 + 7 + 128;

/// A validated, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `s`, applying Docker Hub normalisation and the default tag.
    pub fn parse(s: &str) -> Result<Self> {
        parse(s).map_err(|why| {
            // The input is echoed only when it is short and printable: it may be hostile.
            let shown = if s.len() <= 300 && s.chars().all(|c| c.is_ascii_graphic()) {
                format!(" {s:?}")
            } else {
                String::new()
            };
            Error::invalid(format!("invalid image reference{shown}: {why}"))
        })
    }

    /// The registry: `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry: `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the input had neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository and tag, pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, the image's name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What goes after `/manifests/` in the URL: the digest when pinned, else the tag.
    pub(crate) fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

fn parse(s: &str) -> std::result::Result<Reference, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.len() > INPUT_MAX {
        return Err(format!("longer than {INPUT_MAX} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@[]".contains(*c)))
    {
        return Err(format!("character {c:?} is not allowed"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => {
            let digest = Digest::parse(d).map_err(|e| format!("bad digest: {e}"))?;
            (rest, Some(digest))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/' (a domain's port comes before).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let (n, t) = rest.split_at(last_slash + i);
            (n, Some(&t[1..]))
        }
        None => (rest, None),
    };
    if let Some(t) = tag {
        validate_tag(t)?;
    }
    if name.is_empty() {
        return Err("empty repository name".into());
    }
    let (registry, mut path) = split_domain(name);
    let registry = match registry {
        Some(d) => {
            validate_domain(d)?;
            if d == "index.docker.io" {
                DOCKER_HUB
            } else {
                d
            }
            .to_owned()
        }
        None => DOCKER_HUB.to_owned(),
    };
    let owned;
    if registry == DOCKER_HUB && !path.contains('/') {
        owned = format!("library/{path}");
        path = &owned;
    }
    for comp in path.split('/') {
        validate_component(comp)?;
    }
    if registry.len() + 1 + path.len() > NAME_MAX {
        return Err(format!("name longer than {NAME_MAX} characters"));
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_owned()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_owned()),
    };
    Ok(Reference {
        registry,
        repository: path.to_owned(),
        tag,
        digest,
    })
}

/// Docker's rule for whether the first component names a registry.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn validate_tag(t: &str) -> std::result::Result<(), String> {
    let ok_first = t
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok_first
        || t.len() > TAG_MAX
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(format!(
            "bad tag (1-{TAG_MAX} of [A-Za-z0-9_.-], not starting with '.' or '-')"
        ));
    }
    Ok(())
}

/// Validates `host[:port]` or `[ipv6][:port]`.
pub(crate) fn validate_domain(d: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 address".to_string())?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("bad IPv6 address {ip:?}"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| "garbage after IPv6 address".to_string())?,
            ),
        };
        (None, port)
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(host) = host {
        let labels_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return Err(format!("bad registry host {host:?}"));
        }
    }
    if let Some(p) = port {
        let n: u32 = if !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()) {
            p.parse().unwrap_or(0)
        } else {
            0
        };
        if !(1..=65535).contains(&n) {
            return Err(format!("bad port {p:?} (1-65535)"));
        }
    }
    Ok(())
}

fn validate_component(c: &str) -> std::result::Result<(), String> {
    if c.is_empty() {
        return Err("empty path component".into());
    }
    if c.len() > NAME_MAX {
        return Err(format!("path component longer than {NAME_MAX} characters"));
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err(format!("repository {c:?} must be lowercase"));
    }
    // [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let bad = || format!("bad path component {c:?}");
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        if i == b.len() {
            return Ok(());
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_hub_normalisation() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("ghcr.io/o/r/x:1", "ghcr.io/o/r/x:1"),
            ("localhost/foo", "localhost/foo:latest"),
            ("localhost:5000/foo:bar", "localhost:5000/foo:bar"),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
            ("[::1]:5000/a", "[::1]:5000/a:latest"),
            ("a__b/c.d-e--f_g", "docker.io/a__b/c.d-e--f_g:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.object(), D);
        let r = Reference::parse(&format!("127.0.0.1:5000/x:t@{D}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "x");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/x:t@{D}"));
    }

    #[test]
    fn hostile_references_are_rejected_clearly() {
        let long = "a".repeat(300);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            ("Busybox".into(), "must be lowercase"),
            ("docker.io/Library/busybox".into(), "must be lowercase"),
            ("../etc/passwd".into(), "bad registry host"),
            ("library/../x".into(), "bad path component"),
            ("example.com/../x".into(), "bad path component"),
            ("example.com/a/./b".into(), "bad path component"),
            ("a//b".into(), "empty path component"),
            ("a/".into(), "empty path component"),
            (format!("example.com/{long}"), "longer than 255"),
            (
                format!("x/{}", "abcdefghi/".repeat(30) + "z"),
                "longer than 255",
            ),
            ("busybox:".into(), "bad tag"),
            ("busybox:-x".into(), "bad tag"),
            (format!("busybox:{}", "t".repeat(129)), "bad tag"),
            ("busybox@sha256:abc".into(), "bad digest"),
            (format!("busybox@sha256:{}", "a".repeat(63)), "bad digest"),
            (format!("busybox@md5:{}", "a".repeat(32)), "bad digest"),
            (format!("busybox@{}", D.to_uppercase()), "bad digest"),
            (format!("busybox@{D}@{D}"), "bad digest"),
            ("busybox; rm -rf /".into(), "not allowed"),
            ("busybox\n".into(), "not allowed"),
            ("busy%2fbox".into(), "not allowed"),
            ("host/x?y=1".into(), "not allowed"),
            ("example.com:0/x".into(), "bad port"),
            ("example.com:65536/x".into(), "bad port"),
            ("example.com:99999999/x".into(), "bad port"),
            ("example.com:/x".into(), "bad port"),
            ("example.com:ab/x".into(), "bad port"),
            ("-bad.com/x".into(), "bad registry host"),
            ("ex..com/x".into(), "bad registry host"),
            ("[::g]:5000/x".into(), "bad IPv6"),
            ("[::1/x".into(), "unterminated"),
            (":tag".into(), "empty repository"),
            ("@".into(), "bad digest"),
            ("a".repeat(2000), "longer than"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(&input).expect_err(&input);
            assert!(err.is(crate::ErrorKind::InvalidArgument));
            let msg = err.to_string();
            assert!(msg.contains(want), "{input:?}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}
