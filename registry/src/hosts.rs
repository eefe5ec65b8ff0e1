//! Where a registry's requests go: containerd's `hosts.toml` (mirrors, per-host TLS and
//! headers), `--plain-http`, and the loopback rule.
//!
//! Layout, as containerd reads it (`config_path` / `--hosts-dir`):
//! ```text
//! <hosts dir>/<registry>/hosts.toml     e.g. docker.io/, 127.0.0.1:5000/
//! <hosts dir>/_default/hosts.toml       for registries without their own directory
//! ```
//! ```toml
//! server = "https://registry-1.docker.io"        # upstream, tried last
//! capabilities = ["pull", "resolve"]             # of the server (default: all)
//! [host."https://mirror.example"]                # mirrors, tried first, in file order
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = false
//!   ca = "/etc/certs/mirror.pem"                 # or a list
//!   override_path = false                        # true: use the URL path as is, no "/v2"
//!   [host."https://mirror.example".header]
//!     x-custom = "1"
//! [host."http://10.0.0.1:5000"]                  # http:// = plain http
//! ```
//! Without a file the registry itself is the only host: `https://<registry>/v2`
//! (`docker.io` means `registry-1.docker.io`), or plain http with `--plain-http` or when
//! the registry is `localhost` or a loopback address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::redact::redact_url;
use crate::reference::{DOCKER_HUB, validate_domain};
use strata_proto::{Error, ErrorKind, Result};

const HOSTS_FILE_MAX: u64 = 1 << 20;

/// What a host may be used for (containerd's `HostCapabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve tags to digests.
    pub resolve: bool,
    /// Push (`strata convert` writes its images there).
    pub push: bool,
}

impl Capabilities {
    /// Every capability.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };

    /// Fetching by digest only.
    pub const PULL: Capabilities = Capabilities {
        pull: true,
        resolve: false,
        push: false,
    };

    /// Pushing only.
    pub const PUSH: Capabilities = Capabilities {
        pull: false,
        resolve: false,
        push: true,
    };

    /// Whether every capability in `need` is present.
    pub fn contains(self, need: Capabilities) -> bool {
        (self.pull || !need.pull) && (self.resolve || !need.resolve) && (self.push || !need.push)
    }
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain http.
    Http,
    /// TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One place to send a registry's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host[:port]` as in the URL.
    pub authority: String,
    /// API root, normally `/v2` (no trailing slash).
    pub path: String,
    /// What the host may be used for.
    pub capabilities: Capabilities,
    /// Accept any server certificate (still encrypts).
    pub skip_verify: bool,
    /// Extra CA certificate files (PEM) trusted for this host.
    pub ca: Vec<PathBuf>,
    /// Extra headers sent with every request to this host.
    pub headers: Vec<(String, String)>,
    /// `false` for a mirror, `true` for the registry's own server: `--user` credentials
    /// go only to the latter.
    pub is_upstream: bool,
}

impl RegistryHost {
    /// `scheme://authority/path` of the API root.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme.as_str(), self.authority, self.path)
    }
}

/// How to find a registry's hosts.
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// containerd-style hosts directory; `None` = no per-host configuration.
    pub hosts_dir: Option<PathBuf>,
    /// Use plain http for registries without a `hosts.toml` (`--plain-http`).
    pub plain_http: bool,
}

/// The hosts to try for `registry`, mirrors first and the server last.
pub fn hosts_for(registry: &str, opts: &HostOptions) -> Result<Vec<RegistryHost>> {
    validate_domain(registry)
        .map_err(|why| Error::invalid(format!("bad registry name {registry:?}: {why}")))?;
    if let Some(dir) = &opts.hosts_dir {
        for sub in [registry, "_default"] {
            let path = dir.join(sub).join("hosts.toml");
            match read_capped(&path)? {
                Some(text) => {
                    return parse_hosts_toml(registry, &text, opts).map_err(|e| prefix(e, &path));
                }
                None => continue,
            }
        }
    }
    Ok(vec![default_host(registry, opts)])
}

fn prefix(e: Error, path: &Path) -> Error {
    Error::new(e.kind(), format!("{}", path.display())).with_source(e)
}

fn read_capped(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(
                Error::new(ErrorKind::Internal, format!("open {}", path.display())).with_source(e),
            );
        }
    };
    let mut buf = String::new();
    f.take(HOSTS_FILE_MAX + 1)
        .read_to_string(&mut buf)
        .map_err(|e| Error::invalid(format!("read {}", path.display())).with_source(e))?;
    if buf.len() as u64 > HOSTS_FILE_MAX {
        return Err(Error::invalid(format!(
            "{} is larger than {HOSTS_FILE_MAX} bytes",
            path.display()
        )));
    }
    Ok(Some(buf))
}

/// The registry's own server when no `hosts.toml` applies.
pub fn default_host(registry: &str, opts: &HostOptions) -> RegistryHost {
    let authority = if registry == DOCKER_HUB {
        "registry-1.docker.io".to_owned()
    } else {
        registry.to_owned()
    };
    let scheme = if opts.plain_http || is_loopback(host_of(registry)) {
        Scheme::Http
    } else {
        Scheme::Https
    };
    RegistryHost {
        scheme,
        authority,
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: Vec::new(),
        headers: Vec::new(),
        is_upstream: true,
    }
}

fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: BTreeMap<String, toml::Spanned<HostSettings>>,
    // The server's settings sit at the top level (serde's flatten cannot deny unknown keys).
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    client: Option<toml::Value>,
    header: Option<BTreeMap<String, OneOrMany>>,
    override_path: Option<bool>,
    #[allow(dead_code)]
    dial_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostSettings {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    client: Option<toml::Value>,
    header: Option<BTreeMap<String, OneOrMany>>,
    override_path: Option<bool>,
    // Accepted for compatibility with containerd's files; dial timeouts come from
    // ClientOptions.
    #[allow(dead_code)]
    dial_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Parses a `hosts.toml` for `registry`: mirrors in file order, then the server.
pub fn parse_hosts_toml(
    registry: &str,
    text: &str,
    opts: &HostOptions,
) -> Result<Vec<RegistryHost>> {
    let file: HostsFile =
        toml::from_str(text).map_err(|e| Error::invalid("malformed hosts.toml").with_source(e))?;
    let mut mirrors: Vec<(usize, RegistryHost)> = Vec::new();
    for (url, spanned) in file.host {
        let start = spanned.span().start;
        let host = build_host(&url, spanned.into_inner(), false, Capabilities::ALL)?;
        mirrors.push((start, host));
    }
    // BTreeMap order is alphabetical; containerd tries mirrors in the order written.
    mirrors.sort_by_key(|(start, _)| *start);
    let mut hosts: Vec<RegistryHost> = mirrors.into_iter().map(|(_, h)| h).collect();
    let settings = HostSettings {
        capabilities: file.capabilities,
        skip_verify: file.skip_verify,
        ca: file.ca,
        client: file.client,
        header: file.header,
        override_path: file.override_path,
        dial_timeout: None,
    };
    let server = match file.server {
        Some(url) => build_host(&url, settings, true, Capabilities::ALL)?,
        None => {
            let mut h = default_host(registry, opts);
            apply_settings(&mut h, settings)?;
            h
        }
    };
    hosts.push(server);
    Ok(hosts)
}

fn build_host(
    url: &str,
    settings: HostSettings,
    is_upstream: bool,
    default_caps: Capabilities,
) -> Result<RegistryHost> {
    // The URL is echoed only without userinfo: it may carry a password.
    let parsed = url.parse::<http::Uri>();
    let shown = match &parsed {
        Ok(u) => redact_url(u),
        Err(_) if !url.contains('@') => url.chars().take(200).collect(),
        Err(_) => "<unparsable>".to_owned(),
    };
    let bad = |why: &str| Error::invalid(format!("bad host URL {shown:?}: {why}"));
    let uri = parsed.map_err(|_| bad("not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err(bad("scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.as_str();
    if authority.contains('@') {
        return Err(bad("credentials in URLs are not allowed"));
    }
    validate_domain(authority).map_err(|why| bad(&why))?;
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("query or fragment not allowed"));
    }
    let path = uri.path().trim_end_matches('/');
    if path
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.contains('%'))
    {
        return Err(bad("bad path"));
    }
    let mut host = RegistryHost {
        scheme,
        authority: authority.to_owned(),
        path: path.to_owned(),
        capabilities: default_caps,
        skip_verify: false,
        ca: Vec::new(),
        headers: Vec::new(),
        is_upstream,
    };
    let override_path = settings.override_path.unwrap_or(false);
    apply_settings(&mut host, settings)?;
    if !override_path && !host.path.ends_with("/v2") {
        host.path.push_str("/v2");
    }
    Ok(host)
}

fn apply_settings(host: &mut RegistryHost, s: HostSettings) -> Result<()> {
    if s.client.is_some() {
        return Err(Error::new(
            ErrorKind::Unimplemented,
            format!(
                "host {}: client certificates are not supported",
                host.authority
            ),
        ));
    }
    if let Some(caps) = s.capabilities {
        let mut c = Capabilities::default();
        for cap in caps {
            match cap.as_str() {
                "pull" => c.pull = true,
                "resolve" => c.resolve = true,
                "push" => c.push = true,
                other => {
                    return Err(Error::invalid(format!(
                        "host {}: unknown capability {other:?}",
                        host.authority
                    )));
                }
            }
        }
        host.capabilities = c;
    }
    if let Some(v) = s.skip_verify {
        host.skip_verify = v;
    }
    if let Some(ca) = s.ca {
        host.ca = ca.into_vec().into_iter().map(PathBuf::from).collect();
    }
    if let Some(h) = s.header {
        for (name, values) in h {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Error::invalid(format!(
                    "host {}: bad header name",
                    host.authority
                )));
            }
            for v in values.into_vec() {
                if http::HeaderValue::from_str(&v).is_err() {
                    return Err(Error::invalid(format!(
                        "host {}: bad value for header {name}",
                        host.authority
                    )));
                }
                host.headers.push((name.clone(), v));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> HostOptions {
        HostOptions::default()
    }

    #[test]
    fn defaults_follow_registry_and_loopback() {
        let h = hosts_for("docker.io", &opts()).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "https://registry-1.docker.io/v2");
        for local in ["localhost:5000", "127.0.0.1:5000", "127.9.9.9", "[::1]:80"] {
            assert_eq!(
                hosts_for(local, &opts()).unwrap()[0].scheme,
                Scheme::Http,
                "{local}"
            );
        }
        assert_eq!(
            hosts_for("ghcr.io", &opts()).unwrap()[0].scheme,
            Scheme::Https
        );
        let plain = HostOptions {
            plain_http: true,
            ..opts()
        };
        assert_eq!(
            hosts_for("ghcr.io", &plain).unwrap()[0].base_url(),
            "http://ghcr.io/v2"
        );
        assert!(hosts_for("../etc", &opts()).is_err());
        assert!(hosts_for("a/b", &opts()).is_err());
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_server() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://zz-mirror.example"]
  capabilities = ["pull", "resolve"]

[host."http://aa-mirror.example:5000/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  [host."http://aa-mirror.example:5000/prefix".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."https://mm.example/custom"]
  override_path = true
  ca = ["/a.pem", "/b.pem"]
"#;
        let h = parse_hosts_toml("docker.io", text, &opts()).unwrap();
        let urls: Vec<String> = h.iter().map(|h| h.base_url()).collect();
        assert_eq!(
            urls,
            [
                "https://zz-mirror.example/v2",
                "http://aa-mirror.example:5000/prefix/v2",
                "https://mm.example/custom",
                "https://registry-1.docker.io/v2",
            ]
        );
        assert_eq!(
            h[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        assert!(!h[1].capabilities.resolve && h[1].skip_verify);
        assert_eq!(h[1].headers.len(), 3);
        assert_eq!(h[2].ca.len(), 2);
        assert!(h[3].is_upstream && !h[0].is_upstream);
        assert_eq!(h[3].capabilities, Capabilities::ALL);
    }

    #[test]
    fn server_defaults_and_top_level_settings() {
        let h = parse_hosts_toml("127.0.0.1:5000", "capabilities = [\"pull\"]\n", &opts()).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "http://127.0.0.1:5000/v2");
        assert!(!h[0].capabilities.resolve);
        let h = parse_hosts_toml("ghcr.io", "", &opts()).unwrap();
        assert_eq!(h[0].base_url(), "https://ghcr.io/v2");
    }

    #[test]
    fn hostile_hosts_files_are_rejected() {
        let cases = [
            ("server = ", "malformed"),
            ("server = 1", "malformed"),
            ("[host.\"https://m\"\n", "malformed"),
            ("server = \"ftp://x\"", "scheme"),
            ("server = \"registry.example\"", "scheme"),
            ("server = \"https://user:pw@x.example\"", "credentials"),
            ("server = \"https://x.example?q=1\"", "query"),
            ("server = \"https://x.example/../../etc\"", "bad path"),
            ("server = \"https://x.example:99999\"", "bad port"),
            ("server = \"https://x.example:999999999999\"", "bad port"),
            ("server = \"https://u:p@\"", "unparsable"),
            ("server = \"https://x.example:0\"", "bad port"),
            ("server = \"https://bad_host\"", "bad registry host"),
            (
                "[host.\"https://m.example\"]\ncapabilities = [\"fly\"]",
                "unknown capability",
            ),
            (
                "[host.\"https://m.example\"]\nskip-verify = true",
                "malformed",
            ),
            (
                "[host.\"https://m.example\"]\nclient = [\"/c.pem\"]",
                "client certificates",
            ),
            (
                "[host.\"https://m.example\".header]\n\"bad header\" = \"x\"",
                "bad header name",
            ),
            (
                "[host.\"https://m.example\".header]\nx = \"a\\nb\"",
                "bad value",
            ),
            (
                "[host.\"https://m.example\"]\ncapabilities = \"pull\"",
                "malformed",
            ),
            ("unknown = 1", "malformed"),
        ];
        for (text, want) in cases {
            let err = parse_hosts_toml("docker.io", text, &opts()).expect_err(text);
            let mut msg = err.to_string();
            let mut src = std::error::Error::source(&err);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            assert!(msg.contains(want), "{text:?}: {msg}");
            assert!(!msg.contains("pw@"), "{msg}");
        }
    }

    #[test]
    fn hosts_dir_lookup_and_default_dir() {
        let dir = tempfile::tempdir().unwrap();
        let o = HostOptions {
            hosts_dir: Some(dir.path().to_owned()),
            plain_http: false,
        };
        assert_eq!(
            hosts_for("ghcr.io", &o).unwrap()[0].base_url(),
            "https://ghcr.io/v2"
        );
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://cache.example\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("127.0.0.1:5000")).unwrap();
        std::fs::write(
            dir.path().join("127.0.0.1:5000/hosts.toml"),
            "server = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        let h = hosts_for("ghcr.io", &o).unwrap();
        assert_eq!(h[0].base_url(), "http://cache.example/v2");
        assert_eq!(h[1].base_url(), "https://ghcr.io/v2");
        let h = hosts_for("127.0.0.1:5000", &o).unwrap();
        assert_eq!(h.len(), 1);
        std::fs::write(
            dir.path().join("127.0.0.1:5000/hosts.toml"),
            vec![b'#'; (HOSTS_FILE_MAX + 10) as usize],
        )
        .unwrap();
        assert!(
            hosts_for("127.0.0.1:5000", &o)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }
}
