//! Test support: real docker-registry through tests/harness/lib.sh, and tiny HTTP(S)
//! servers that play hostile registries, token servers and storage backends.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The repository root (the workspace), found at run time: cargo sets
/// `CARGO_MANIFEST_DIR` for test processes, and a test binary reused from a shared target
/// dir may have been compiled in another checkout (one since deleted).
pub fn repo_root() -> PathBuf {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    Path::new(&dir).parent().unwrap().to_owned()
}

/// Runs a tests/harness/lib.sh function; returns its stdout, trimmed.
pub fn harness(func: &str, args: &[&str]) -> Result<String, String> {
    let lib = repo_root().join("tests/harness/lib.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {}; \"$@\"", lib.display()))
        .arg("_")
        .arg(func)
        .args(args)
        .output()
        .map_err(|e| format!("run bash: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{func} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Why the real-registry tests cannot run here, if they cannot.
pub fn registry_unavailable() -> Option<String> {
    for bin in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/curl",
    ] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} not installed (scripts/install-deps.sh)"));
        }
    }
    None
}

/// A docker-registry started by the harness in a temp dir; stopped on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub hostport: String,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-reg")
            .tempdir()
            .unwrap();
        let wd = dir.path().to_str().unwrap().to_owned();
        let hostport = harness("start_registry", &[&wd]).unwrap();
        Registry { dir, hostport }
    }

    pub fn wd(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Pushes a test image; returns (manifest digest, manifest size).
    pub fn push(&self, repo_tag: &str, text: &str) -> PushedImage {
        let digest = harness(
            "build_push_test_image",
            &[self.wd(), &self.hostport, repo_tag, text],
        )
        .unwrap();
        let read = |f: &str| {
            std::fs::read_to_string(self.dir.path().join(f))
                .unwrap()
                .trim()
                .to_owned()
        };
        let sizes = read("sizes");
        let size_of = |what: &str| -> u64 {
            sizes
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{what} ")))
                .unwrap()
                .parse()
                .unwrap()
        };
        let safe: String = repo_tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        PushedImage {
            manifest_digest: digest,
            manifest_size: size_of("manifest"),
            config_digest: read("config.digest"),
            config_size: size_of("config"),
            layer_digest: read("layer.digest"),
            layer_size: size_of("layer"),
            blobs: self
                .dir
                .path()
                .join("images")
                .join(safe)
                .join("oci/blobs/sha256"),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = harness("stop_all", &[self.wd()]);
    }
}

/// What build_push_test_image pushed.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub config_size: u64,
    pub layer_digest: String,
    pub layer_size: u64,
    pub blobs: PathBuf,
}

impl PushedImage {
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(self.blobs.join(digest.strip_prefix("sha256:").unwrap())).unwrap()
    }
}

/// PUTs a manifest (or index) with curl; returns the HTTP status.
pub fn put_manifest(
    hostport: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> u16 {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .arg("-H")
        .arg(format!("Content-Type: {media_type}"))
        .arg("--data-binary")
        .arg(format!("@{}", f.path().display()))
        .arg(format!("http://{hostport}/v2/{repo}/manifests/{reference}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// One request as the test server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }
}

/// The test server's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Chunked transfer encoding instead of Content-Length.
    pub chunked: bool,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
        }
    }

    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(200).body(body)
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        self.body = b.into();
        self
    }

    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1 that records every request.
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> TestServer {
        Self::start_inner(Arc::new(handler), None).await
    }

    /// The same over TLS with the given PEM certificate and key.
    pub async fn start_tls(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
        cert_pem: &Path,
        key_pem: &Path,
    ) -> TestServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(key_pem).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::start_inner(
            Arc::new(handler),
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
        )
        .await
    }

    async fn start_inner(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let reqs = reqs.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(sock).await {
                                serve_one(s, handler, reqs).await;
                            }
                        }
                        None => serve_one(sock, handler, reqs).await,
                    }
                });
            }
        });
        TestServer {
            addr,
            requests,
            task,
        }
    }

    pub fn hostport(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    handler: Handler,
    reqs: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 65536 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rec = Recorded {
        method,
        target,
        headers,
    };
    reqs.lock().unwrap().push(rec.clone());
    let reply = handler(&rec);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if reply.chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
    }
    if s.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    if rec.method != "HEAD" {
        if reply.chunked {
            for c in reply.body.chunks(64 * 1024) {
                let _ = s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
                let _ = s.write_all(c).await;
                let _ = s.write_all(b"\r\n").await;
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        } else {
            let _ = s.write_all(&reply.body).await;
        }
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// A small OCI image held in memory for the test servers.
pub struct MemImage {
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl MemImage {
    pub fn new(seed: u8, arch: &str) -> MemImage {
        let layer: Vec<u8> = (0..100_000u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha256(&layer)
        )
        .into_bytes();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            sha256(&config),
            config.len(),
            sha256(&layer),
            layer.len()
        )
        .into_bytes();
        MemImage {
            layer,
            config,
            manifest,
        }
    }

    /// Serves this image like a registry would (repo-agnostic).
    pub fn serve(&self, r: &Recorded) -> Option<Reply> {
        let p = r.path();
        if p.contains("/manifests/") {
            if p.ends_with("/manifests/latest")
                || p.ends_with(&format!("/manifests/{}", sha256(&self.manifest)))
            {
                return Some(
                    Reply::ok(self.manifest.clone())
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                        .header("Docker-Content-Digest", &sha256(&self.manifest)),
                );
            }
            return Some(Reply::new(404));
        }
        for b in [&self.config, &self.layer] {
            if p.ends_with(&format!("/blobs/{}", sha256(b))) {
                return Some(Reply::ok(b.clone()));
            }
        }
        None
    }
}
