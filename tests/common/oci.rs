//! Building OCI and Docker images from raw layer bytes and pushing them to a real
//! docker-registry over HTTP with `curl`: blobs (POST an upload, PUT its location with the
//! digest), manifests and indexes. Layers can be gzip, zstd or plain; descriptors and
//! configs can lie (diff_id, size, digest); and for what the registry itself refuses to
//! accept (blobs whose bytes differ from their digest, malformed manifests), the registry's
//! filesystem storage is written directly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
pub use strata_testkit::{Tar, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Standard base64 (for `config.json` auths).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The architecture of this host as an image platform names it.
pub fn host_arch() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "amd64".to_owned());
    match out.as_str() {
        "i386" => "386".into(),
        "armhf" | "armel" => "arm".into(),
        "ppc64el" => "ppc64le".into(),
        _ => out,
    }
}

// ---- Images -----------------------------------------------------------------------------

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => strata_testkit::gzip(tar),
            Compression::Zstd => strata_testkit::zstd(tar),
        }
    }

    pub fn media_type(self, docker: bool) -> &'static str {
        match (self, docker) {
            (Compression::None, false) => OCI_LAYER,
            (Compression::Gzip, false) => OCI_LAYER_GZIP,
            (Compression::Zstd, false) => OCI_LAYER_ZSTD,
            (Compression::None, true) => "application/vnd.docker.image.rootfs.diff.tar",
            (Compression::Gzip, true) => DOCKER_LAYER_GZIP,
            (Compression::Zstd, true) => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }
}

/// One layer: its uncompressed tar, how it is shipped, and optional lies.
#[derive(Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub compression: Compression,
    /// The blob as shipped; `None` = `tar` compressed with `compression`.
    pub blob: Option<Vec<u8>>,
    /// Media type in the manifest; `None` = the compression's.
    pub media_type: Option<String>,
    /// diff_id in the config; `None` = the tar's real one.
    pub diff_id: Option<String>,
    /// Size in the manifest descriptor; `None` = the blob's.
    pub size: Option<i64>,
    /// Digest in the manifest descriptor; `None` = the blob's.
    pub digest: Option<String>,
    /// Annotations of the manifest descriptor (an eStargz TOC digest, say).
    pub annotations: Vec<(String, String)>,
}

impl Layer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Self {
        Layer {
            tar,
            compression,
            blob: None,
            media_type: None,
            diff_id: None,
            size: None,
            digest: None,
            annotations: Vec::new(),
        }
    }

    pub fn blob(&self) -> Vec<u8> {
        self.blob
            .clone()
            .unwrap_or_else(|| self.compression.compress(&self.tar))
    }
}

/// An image to build: layers bottom first, OCI or Docker media types, a platform.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub docker: bool,
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    /// The run config (`Entrypoint`, `Cmd`, `Env`, `User`, `WorkingDir`, `Labels`...);
    /// `None` = `{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}`.
    pub config: Option<Value>,
}

/// A built image: every document and blob, with their digests.
#[derive(Clone, Debug)]
pub struct Built {
    pub manifest: Vec<u8>,
    pub manifest_type: &'static str,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// (digest, bytes) of every layer blob, bottom first.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The real diff_ids (sha256 of each uncompressed tar).
    pub diff_ids: Vec<String>,
    pub platform: Value,
}

impl Image {
    /// An OCI image for this host's platform.
    pub fn new(layers: Vec<Layer>) -> Self {
        Image {
            layers,
            docker: false,
            os: "linux".into(),
            arch: host_arch(),
            variant: None,
            config: None,
        }
    }

    /// Sets the run config (the config document's `config` object).
    pub fn config(mut self, config: Value) -> Self {
        self.config = Some(config);
        self
    }

    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    pub fn arch(mut self, arch: &str, variant: Option<&str>) -> Self {
        self.arch = arch.into();
        self.variant = variant.map(str::to_owned);
        self
    }

    pub fn build(&self) -> Built {
        let blobs: Vec<(String, Vec<u8>)> = self
            .layers
            .iter()
            .map(|l| {
                let b = l.blob();
                (sha256(&b), b)
            })
            .collect();
        let diff_ids: Vec<String> = self.layers.iter().map(|l| sha256(&l.tar)).collect();
        let mut platform = json!({"os": self.os, "architecture": self.arch});
        if let Some(v) = &self.variant {
            platform["variant"] = json!(v);
        }
        let mut config = json!({
            "architecture": self.arch,
            "os": self.os,
            "config": self.config.clone()
                .unwrap_or_else(|| json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]})),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().zip(&diff_ids)
                    .map(|(l, d)| l.diff_id.clone().unwrap_or_else(|| d.clone()))
                    .collect::<Vec<_>>(),
            },
            "history": [{"created_by": "strata tests/common/oci.rs"}],
        });
        if let Some(v) = &self.variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = sha256(&config);
        let (manifest_type, config_type) = if self.docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let layers: Vec<Value> = self
            .layers
            .iter()
            .zip(&blobs)
            .map(|(l, (d, b))| {
                let mut desc = json!({
                    "mediaType": l.media_type.clone()
                        .unwrap_or_else(|| l.compression.media_type(self.docker).to_owned()),
                    "digest": l.digest.clone().unwrap_or_else(|| d.clone()),
                    "size": l.size.unwrap_or(b.len() as i64),
                });
                if !l.annotations.is_empty() {
                    let a: serde_json::Map<String, Value> = l
                        .annotations
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect();
                    desc["annotations"] = Value::Object(a);
                }
                desc
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        Built {
            manifest_digest: sha256(&manifest),
            manifest,
            manifest_type,
            config_digest,
            config,
            blobs,
            diff_ids,
            platform,
        }
    }
}

impl Built {
    /// The descriptor of this image's manifest, for an index entry.
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.manifest_type,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
            "platform": self.platform,
        })
    }
}

/// An index (OCI) or manifest list (Docker) of `entries` (descriptors).
pub fn index(entries: &[Value], docker: bool) -> (Vec<u8>, &'static str) {
    let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "manifests": entries,
    }))
    .unwrap();
    (body, mt)
}

// ---- A docker-registry ------------------------------------------------------------------

/// A running docker-registry (started by the caller) whose storage is `data`.
#[derive(Clone, Debug)]
pub struct Registry {
    pub hostport: String,
    /// `rootdirectory` of its filesystem storage.
    pub data: PathBuf,
    /// `user:password` for its htpasswd auth, if any.
    pub user: Option<String>,
}

/// Runs curl with `args`, `body` on stdin; returns (status code, response headers, body).
fn curl(user: Option<&str>, args: &[&str], body: Option<&[u8]>) -> (u16, String, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-D", "/dev/stderr"]);
    if let Some(u) = user {
        // From stdin would clash with the body: a config file on fd 3 is overkill for a
        // test registry, so the credentials go on the command line.
        cmd.args(["-u", u]);
    }
    cmd.args(args)
        .args(["-w", "\n%{http_code}"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run curl");
    let mut stdin = child.stdin.take().unwrap();
    let data = body.map(<[u8]>::to_vec).unwrap_or_default();
    let t = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    t.join().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stdout = out.stdout;
    let nl = stdout.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&stdout[nl + 1..])
        .trim()
        .parse()
        .unwrap();
    stdout.truncate(nl);
    (
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout,
    )
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim_end_matches('\r').trim())
    })
}

impl Registry {
    pub fn new(hostport: &str, data: &Path) -> Self {
        Registry {
            hostport: hostport.to_owned(),
            data: data.to_owned(),
            user: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v2/{path}", self.hostport)
    }

    /// Uploads a blob (POST an upload, PUT the bytes with their digest); returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let (code, headers, body) = curl(
            self.user.as_deref(),
            &[
                "-X",
                "POST",
                "-o",
                "/dev/null",
                &self.url(&format!("{repo}/blobs/uploads/")),
            ],
            None,
        );
        assert_eq!(code, 202, "start upload: {headers} {body:?}");
        let loc = header(&headers, "location").expect("a Location").to_owned();
        let loc = if loc.starts_with('/') {
            format!("http://{}{loc}", self.hostport)
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        let (code, headers, body) = curl(
            self.user.as_deref(),
            &[
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                "@-",
                &put,
            ],
            Some(data),
        );
        assert_eq!(
            code,
            201,
            "upload {digest}: {headers} {}",
            String::from_utf8_lossy(&body)
        );
        digest
    }

    /// Puts a manifest or index under `reference` (a tag or digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let (code, headers, resp) = self.try_push_manifest(repo, reference, media_type, body);
        assert_eq!(
            code,
            201,
            "put manifest {repo}:{reference}: {headers} {}",
            String::from_utf8_lossy(&resp)
        );
        sha256(body)
    }

    pub fn try_push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        curl(
            self.user.as_deref(),
            &[
                "-X",
                "PUT",
                "-H",
                &format!("Content-Type: {media_type}"),
                "--data-binary",
                "@-",
                &self.url(&format!("{repo}/manifests/{reference}")),
            ],
            Some(body),
        )
    }

    /// Pushes the config, the layer blobs and the manifest (tagged `tag`); returns the
    /// manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, img: &Built) -> String {
        self.push_blob(repo, &img.config);
        for (_, b) in &img.blobs {
            self.push_blob(repo, b);
        }
        self.push_manifest(repo, tag, img.manifest_type, &img.manifest)
    }

    /// GETs `/v2/<path>`: (status, body).
    pub fn get(&self, path: &str, accept: &str) -> (u16, Vec<u8>) {
        let (code, _, body) = curl(
            self.user.as_deref(),
            &["-H", &format!("Accept: {accept}"), &self.url(path)],
            None,
        );
        (code, body)
    }

    /// Where the registry stores blob `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Replaces the stored bytes of blob `digest` (which must have been pushed) with
    /// `data`, behind the registry's back, and checks that it now serves them.
    pub fn overwrite_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        let p = self.blob_path(digest);
        assert!(p.exists(), "{} not stored", p.display());
        std::fs::write(&p, data).unwrap();
        let (code, body) = self.get(&format!("{repo}/blobs/{digest}"), "*/*");
        assert_eq!(code, 200);
        assert!(
            body == data,
            "the registry does not serve the overwritten blob"
        );
    }

    /// Stores `body` as a manifest of `repo` tagged `tag` directly in the registry's
    /// storage (for documents the registry would refuse on PUT); returns its digest.
    pub fn plant_manifest(&self, repo: &str, tag: &str, body: &[u8]) -> String {
        let digest = sha256(body);
        let hex = digest.strip_prefix("sha256:").unwrap();
        let blob = self.blob_path(&digest);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, body).unwrap();
        let repo_dir = self.data.join("docker/registry/v2/repositories").join(repo);
        for link in [
            repo_dir.join(format!("_manifests/revisions/sha256/{hex}/link")),
            repo_dir.join(format!("_manifests/tags/{tag}/current/link")),
            repo_dir.join(format!("_manifests/tags/{tag}/index/sha256/{hex}/link")),
        ] {
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::fs::write(link, &digest).unwrap();
        }
        digest
    }
}
