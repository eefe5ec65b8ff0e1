//! `local::resolve`: from an image record in the content store to one platform's config
//! and top chainID, with hostile documents the store may hold (containerd writes there).

use std::time::SystemTime;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use strata_content::api::{Ingester, Labels, Namespace, Scope, WriterOptions};
use strata_content::{Image, LocalStore, StoreOptions, Target};
use strata_proto::{Digest, ErrorKind};
use strata_puller::local::resolve;
use strata_puller::registry::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Platform};
use strata_puller::unpack::chain_ids;

const NS: &str = "local";

fn digest_of(b: &[u8]) -> Digest {
    Digest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(b)))).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: LocalStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        Fixture { _dir: dir, store }
    }

    fn blob(&self, body: &[u8]) -> Digest {
        let d = digest_of(body);
        let w = self.store.writer(
            &Scope::ns(NS),
            WriterOptions {
                r#ref: format!("t-{d}"),
                total: body.len() as u64,
                expected: Some(d.clone()),
            },
        );
        let mut w = match w {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return d,
            Err(e) => panic!("writer: {e:?}"),
        };
        w.write(body).unwrap();
        match w.commit(body.len() as u64, Some(&d), Labels::new()) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => panic!("commit: {e:?}"),
        }
        d
    }

    fn json_blob(&self, v: &Value) -> (Digest, usize) {
        let b = serde_json::to_vec(v).unwrap();
        (self.blob(&b), b.len())
    }

    fn record(&self, name: &str, media_type: &str, d: &Digest, size: usize) {
        self.store
            .put_image(
                &Namespace::new(NS).unwrap(),
                &Image {
                    name: name.into(),
                    target: Target {
                        media_type: media_type.into(),
                        digest: d.clone(),
                        size: size as u64,
                    },
                    labels: Labels::new(),
                    created_at: SystemTime::now(),
                    updated_at: SystemTime::now(),
                },
            )
            .unwrap();
    }

    fn resolve(&self, name: &str) -> Result<strata_puller::local::LocalImage, ErrorKind> {
        resolve(
            &self.store,
            &Namespace::new(NS).unwrap(),
            name,
            &Platform::parse("linux/amd64").unwrap(),
        )
        .map_err(|e| e.kind())
    }
}

fn diff(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

/// A config and a manifest of `layers` layers; returns the manifest's digest and size.
fn image(f: &Fixture, layers: usize, diff_ids: usize, config_extra: &Value) -> (Digest, usize) {
    let mut config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": (0..diff_ids).map(|i| diff(i as u8)).collect::<Vec<_>>()},
    });
    if let (Some(c), Some(extra)) = (config.as_object_mut(), config_extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    let (cd, cs) = f.json_blob(&config);
    let layer_descs: Vec<Value> = (0..layers)
        .map(|i| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": diff(100 + i as u8), "size": 10}))
        .collect();
    f.json_blob(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd.to_string(), "size": cs},
        "layers": layer_descs,
    }))
}

#[test]
fn a_manifest_resolves_to_its_config_and_top_chain_id() {
    let f = Fixture::new();
    let (md, ms) = image(&f, 2, 2, &json!({}));
    f.record("example.com/a:1", OCI_MANIFEST, &md, ms);
    let img = f.resolve("example.com/a:1").unwrap();
    assert_eq!(img.manifest, md);
    assert_eq!(img.diff_ids.len(), 2);
    assert_eq!(
        img.chain_id,
        chain_ids(&[
            Digest::parse(&diff(0)).unwrap(),
            Digest::parse(&diff(1)).unwrap()
        ])[1]
    );
    let cfg: Value = serde_json::from_slice(&img.config).unwrap();
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
}

#[test]
fn an_index_resolves_to_the_platforms_manifest_and_names_are_normalised() {
    let f = Fixture::new();
    let (amd, amd_size) = image(&f, 1, 1, &json!({}));
    let (arm, arm_size) = image(&f, 2, 2, &json!({"architecture": "arm64"}));
    let (id, is) = f.json_blob(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": arm.to_string(), "size": arm_size, "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": OCI_MANIFEST, "digest": amd.to_string(), "size": amd_size, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }));
    f.record("docker.io/library/busybox:latest", OCI_INDEX, &id, is);
    // The short name a user types means the recorded, normalised one.
    let img = f.resolve("busybox").unwrap();
    assert_eq!(img.manifest, amd);
    let none = resolve(
        &f.store,
        &Namespace::new(NS).unwrap(),
        "busybox",
        &Platform::parse("linux/s390x").unwrap(),
    )
    .unwrap_err();
    assert_eq!(none.kind(), ErrorKind::NotFound);
}

#[test]
fn hostile_documents_are_refused() {
    let f = Fixture::new();
    // No such image; a malformed name.
    assert_eq!(
        f.resolve("example.com/none:1").unwrap_err(),
        ErrorKind::NotFound
    );
    assert_eq!(
        f.resolve("UPPER/Case:!!").unwrap_err(),
        ErrorKind::InvalidArgument
    );

    // Layers and diff_ids disagree.
    let (md, ms) = image(&f, 2, 1, &json!({}));
    f.record("example.com/mismatch:1", OCI_MANIFEST, &md, ms);
    assert_eq!(
        f.resolve("example.com/mismatch:1").unwrap_err(),
        ErrorKind::InvalidArgument
    );

    // No layers at all.
    let (md, ms) = image(&f, 0, 0, &json!({}));
    f.record("example.com/empty:1", OCI_MANIFEST, &md, ms);
    assert_eq!(
        f.resolve("example.com/empty:1").unwrap_err(),
        ErrorKind::InvalidArgument
    );

    // A record claiming a manifest that is an index, and an index naming an index.
    let (amd, amd_size) = image(&f, 1, 1, &json!({}));
    let (inner, inner_size) = f.json_blob(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": amd.to_string(), "size": amd_size, "platform": {"os": "linux", "architecture": "amd64"}}],
    }));
    f.record("example.com/lying:1", OCI_MANIFEST, &inner, inner_size);
    assert_eq!(
        f.resolve("example.com/lying:1").unwrap_err(),
        ErrorKind::InvalidArgument
    );
    let (outer, outer_size) = f.json_blob(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": inner.to_string(), "size": inner_size, "platform": {"os": "linux", "architecture": "amd64"}}],
    }));
    f.record("example.com/nested:1", OCI_INDEX, &outer, outer_size);
    assert!(f.resolve("example.com/nested:1").is_err());

    // Garbage, and a config that is not JSON.
    let g = f.blob(b"\x00\x01not json");
    f.record("example.com/garbage:1", OCI_MANIFEST, &g, 10);
    assert_eq!(
        f.resolve("example.com/garbage:1").unwrap_err(),
        ErrorKind::InvalidArgument
    );
    let bad_config = f.blob(b"{\"rootfs\": 7}");
    let (md, ms) = f.json_blob(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": bad_config.to_string(), "size": 13},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff(1), "size": 1}],
    }));
    f.record("example.com/badconfig:1", OCI_MANIFEST, &md, ms);
    assert_eq!(
        f.resolve("example.com/badconfig:1").unwrap_err(),
        ErrorKind::InvalidArgument
    );

    // A config over the 4 MiB document limit is never read into memory.
    let mut big = b"{\"pad\":\"".to_vec();
    big.resize(5 << 20, b'a');
    big.extend_from_slice(b"\"}");
    let big_d = f.blob(&big);
    let (md, ms) = f.json_blob(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": big_d.to_string(), "size": big.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff(1), "size": 1}],
    }));
    f.record("example.com/big:1", OCI_MANIFEST, &md, ms);
    assert_eq!(
        f.resolve("example.com/big:1").unwrap_err(),
        ErrorKind::ResourceExhausted
    );

    // A manifest whose blob is missing from the store.
    f.record(
        "example.com/missing:1",
        OCI_MANIFEST,
        &digest_of(b"absent"),
        6,
    );
    assert_eq!(
        f.resolve("example.com/missing:1").unwrap_err(),
        ErrorKind::NotFound
    );
}
