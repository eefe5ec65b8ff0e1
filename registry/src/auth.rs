//! Credentials and registry authentication: `~/.docker/config.json`, `--user`, and the
//! `WWW-Authenticate` challenges of the Basic and Bearer (token) schemes.
//!
//! Where credentials may go (enforced by the client, decided here):
//! - to the host they are stored for (config.json is keyed by host; `--user` belongs to
//!   the reference's own registry, never to a mirror);
//! - to a Bearer token realm only over https, unless the registry itself is plain http
//!   ([`realm_allowed`]);
//! - never across a redirect to another origin, never into a message or a log line
//!   ([`Credentials`]'s `Debug` shows the user only).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::hosts::Scheme;
use strata_proto::{Error, ErrorKind, Result};

const CONFIG_MAX: u64 = 4 << 20;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Parses `user:pass` (the `--user` flag). The password may contain `:`.
    pub fn parse_user_pass(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::new(u, p)),
            _ => Err(Error::invalid("credentials must be USER:PASSWORD")),
        }
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The `Authorization` header value for Basic authentication.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", STANDARD.encode(raw))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The `auths` of a Docker `config.json`: credentials keyed by registry host.
#[derive(Clone, Default)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("hosts", &self.auths.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, RawAuth>,
}

#[derive(Deserialize)]
struct RawAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Loads the file at [`DockerConfig::default_path`]; a missing file is an empty config.
    pub fn load_default() -> Result<Self> {
        match Self::default_path() {
            Some(p) => Self::load(&p),
            None => Ok(DockerConfig::default()),
        }
    }

    /// Loads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerConfig::default());
            }
            Err(e) => {
                return Err(
                    Error::new(ErrorKind::Internal, format!("open {}", path.display()))
                        .with_source(e),
                );
            }
        };
        let mut buf = Vec::new();
        f.take(CONFIG_MAX + 1).read_to_end(&mut buf).map_err(|e| {
            Error::new(ErrorKind::Internal, format!("read {}", path.display())).with_source(e)
        })?;
        if buf.len() as u64 > CONFIG_MAX {
            return Err(Error::invalid(format!("{} is too large", path.display())));
        }
        Self::parse(&buf).map_err(|e| Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Parses the JSON text of a `config.json`.
    pub fn parse(json: &[u8]) -> Result<Self> {
        // serde_json's error could quote a fragment of the file (a password): drop it.
        let raw: RawConfig = serde_json::from_slice(json)
            .map_err(|e| Error::invalid(format!("malformed docker config (line {})", e.line())))?;
        let mut auths = BTreeMap::new();
        for (key, a) in raw.auths {
            let creds = if let Some(enc) = a.auth.filter(|s| !s.is_empty()) {
                let dec = STANDARD
                    .decode(enc.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        Error::invalid(format!("docker config: bad auth for {key:?}"))
                    })?;
                Credentials::parse_user_pass(&dec)
                    .map_err(|_| Error::invalid(format!("docker config: bad auth for {key:?}")))?
            } else if let (Some(u), Some(p)) = (a.username, a.password) {
                Credentials::new(u, p)
            } else {
                continue;
            };
            auths.insert(normalize_key(&key), creds);
        }
        Ok(DockerConfig { auths })
    }

    /// Adds or replaces the credentials of `host`.
    pub fn insert(&mut self, host: &str, creds: Credentials) {
        self.auths.insert(normalize_key(host), creds);
    }

    /// The credentials stored for `host` (an authority such as `ghcr.io` or
    /// `127.0.0.1:5000`); Docker Hub's aliases are one host.
    pub fn credentials_for(&self, host: &str) -> Option<&Credentials> {
        self.auths.get(&normalize_key(host))
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`, `http://h:5000/x` -> `h:5000`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        other => other.to_ascii_lowercase(),
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `basic`, `bearer`.
    pub scheme: String,
    /// Parameters, names lowercased: `realm`, `service`, `scope`.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` header into its challenges (RFC 9110 §11.6.1).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if start == i {
            break;
        }
        let token = &header[start..i];
        // "name=" after a scheme is a parameter of the current challenge.
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            i = j + 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i] as char);
                    i += 1;
                }
                i += 1;
                v
            } else {
                let vs = i;
                while i < b.len() && b[i] != b',' && b[i] != b' ' {
                    i += 1;
                }
                header[vs..i].to_owned()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
        if i >= b.len() {
            break;
        }
    }
    out
}

/// Whether a token realm may be contacted (with credentials) for a registry reached over
/// `registry_scheme`: https always; http only when the registry itself is plain http.
pub fn realm_allowed(registry_scheme: Scheme, realm: &http::Uri) -> bool {
    match realm.scheme_str() {
        Some("https") => true,
        Some("http") => registry_scheme == Scheme::Http,
        _ => false,
    }
}

/// A registry token response.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) token: Option<String>,
    pub(crate) access_token: Option<String>,
    pub(crate) expires_in: Option<u64>,
}

/// `application/x-www-form-urlencoded` escaping for token query parameters.
pub(crate) fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_lookup_and_redaction() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"aHViOmh1YnB3"},
            "127.0.0.1:5000":{"auth":"dTpwOnc="},
            "http://Mirror.Example:8080/v2/":{"username":"m","password":"mp"},
            "empty.example":{}
        },"credsStore":"desktop"}"#;
        let c = DockerConfig::parse(json).unwrap();
        assert_eq!(c.credentials_for("docker.io").unwrap().username(), "hub");
        assert_eq!(
            c.credentials_for("registry-1.docker.io").unwrap().password,
            "hubpw"
        );
        let local = c.credentials_for("127.0.0.1:5000").unwrap();
        assert_eq!((local.username(), local.password.as_str()), ("u", "p:w"));
        assert_eq!(
            c.credentials_for("mirror.example:8080").unwrap().username(),
            "m"
        );
        assert!(c.credentials_for("127.0.0.1:5001").is_none());
        assert!(c.credentials_for("empty.example").is_none());
        let dbg = format!("{local:?} {c:?}");
        assert!(!dbg.contains("p:w") && !dbg.contains("hubpw"), "{dbg}");
    }

    #[test]
    fn malformed_config_does_not_echo_secrets() {
        for bad in [
            &br#"{"auths":{"h":{"auth":"!!!notbase64-secretpw"}}}"#[..],
            br#"{"auths":{"h":{"auth":"c2VjcmV0cHc="}}}"#, // "secretpw": no colon
            br#"{"auths":{"h":{"auth":"secretpw"#,
            br#"{"auths":[1, "secretpw"]}"#,
        ] {
            let e = DockerConfig::parse(bad).unwrap_err();
            assert!(!format!("{e} {e:?}").contains("secretpw"), "{e:?}");
        }
    }

    #[test]
    fn user_flag() {
        let c = Credentials::parse_user_pass("bob:pa:ss").unwrap();
        assert_eq!(
            c.basic_header(),
            format!("Basic {}", STANDARD.encode("bob:pa:ss"))
        );
        assert!(Credentials::parse_user_pass("nopass").is_err());
        assert!(Credentials::parse_user_pass(":x").is_err());
    }

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.example/token");
        assert_eq!(c[0].params["scope"], "repository:a/b:pull,push");
        let c = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer realm="https://x", error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].params["error"], "insufficient_scope");
        let c = parse_challenges(r#"basic realm=plain, Bearer realm="a\"b""#);
        assert_eq!(c[0].params["realm"], "plain");
        assert_eq!(c[1].params["realm"], "a\"b");
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges("\"unterminated").is_empty());
        let c = parse_challenges("Bearer realm=\"unterminated");
        assert_eq!(c[0].params["realm"], "unterminated");
    }

    #[test]
    fn realm_policy() {
        let https: http::Uri = "https://auth.example/token".parse().unwrap();
        let http_realm: http::Uri = "http://auth.example/token".parse().unwrap();
        let other: http::Uri = "ftp://auth.example/token".parse().unwrap();
        assert!(realm_allowed(Scheme::Https, &https));
        assert!(realm_allowed(Scheme::Http, &https));
        assert!(!realm_allowed(Scheme::Https, &http_realm));
        assert!(realm_allowed(Scheme::Http, &http_realm));
        assert!(!realm_allowed(Scheme::Http, &other));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            form_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
