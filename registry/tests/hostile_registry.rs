//! The registry client against small local servers that misbehave on purpose: lying
//! digests, oversized and confused manifests, token servers, cross-host redirects,
//! servers that ignore Range, flaky servers and failing mirrors.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use strata_proto::Digest;
use strata_registry::{
    ClientOptions, Credentials, Descriptor, DockerConfig, ErrorKind, HostOptions, OCI_INDEX,
    OCI_MANIFEST, Platform, Reference, RegistryClient, RetryPolicy,
};
use support::*;

fn opts() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        },
        ..ClientOptions::default()
    }
}

fn reference(server: &TestServer, rest: &str) -> Reference {
    Reference::parse(&format!("{}/{rest}", server.hostport())).unwrap()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[tokio::test]
async fn manifest_over_4_mib_is_rejected() {
    let big = {
        let mut v = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":""#.to_vec();
        v.resize(4 * 1024 * 1024 + 1, b'a');
        v
    };
    let body = big.clone();
    let server = TestServer::start(move |r| {
        let reply = Reply::ok(body.clone()).header("Content-Type", OCI_MANIFEST);
        if r.path().ends_with("/chunked") {
            reply.chunked()
        } else {
            reply
        }
    })
    .await;
    let client = RegistryClient::new(opts());
    for tag in ["sized", "chunked"] {
        let err = client
            .resolve(&reference(&server, &format!("app:{tag}")))
            .await
            .unwrap_err();
        assert!(err.is(ErrorKind::ResourceExhausted), "{tag}: {err:?}");
        assert!(chain(&err).contains("larger than 4194304"), "{err:?}");
    }
    // A descriptor announcing more than 4 MiB is refused before any request.
    let before = server.requests().len();
    let d = Descriptor::new(
        OCI_MANIFEST,
        Digest::parse(&sha256(&big)).unwrap(),
        big.len() as u64,
    );
    let err = client
        .fetch_manifest(&reference(&server, "app"), &d)
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::ResourceExhausted), "{err:?}");
    assert_eq!(server.requests().len(), before);
}

#[tokio::test]
async fn digest_mismatches_are_rejected() {
    let img = MemImage::new(1, "amd64");
    let other = MemImage::new(2, "amd64");
    let claimed = sha256(&other.manifest);
    let (m, o, c) = (
        img.manifest.clone(),
        other.manifest.clone(),
        claimed.clone(),
    );
    let bad_config = img.config.iter().map(|b| b ^ 1).collect::<Vec<u8>>();
    let (layer, config_digest) = (img.layer.clone(), sha256(&img.config));
    let server = TestServer::start(move |r| {
        let p = r.path();
        if p.ends_with(&format!("/manifests/{c}")) {
            // Asked for one digest, sends another manifest.
            return Reply::ok(m.clone()).header("Content-Type", OCI_MANIFEST);
        }
        if p.ends_with("/manifests/lying-header") {
            return Reply::ok(m.clone())
                .header("Content-Type", OCI_MANIFEST)
                .header("Docker-Content-Digest", &c);
        }
        if p.ends_with("/manifests/latest") {
            return Reply::ok(m.clone()).header("Content-Type", OCI_MANIFEST);
        }
        if p.ends_with(&format!("/blobs/{config_digest}")) {
            return Reply::ok(bad_config.clone());
        }
        if p.contains("/blobs/") {
            let mut l = layer.clone();
            l[500] ^= 0xff;
            return Reply::ok(l);
        }
        let _ = &o;
        Reply::new(404)
    })
    .await;
    let client = RegistryClient::new(opts());
    let err = client
        .resolve(&reference(&server, &format!("app@{claimed}")))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::DataLoss), "{err:?}");
    let err = client
        .resolve(&reference(&server, "app:lying-header"))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::DataLoss), "{err:?}");
    assert!(chain(&err).contains("claims digest"), "{err:?}");
    // The manifest is fine, its config is not.
    let err = client
        .resolve_image(
            &reference(&server, "app"),
            &Platform::parse("linux/amd64").unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::DataLoss), "{err:?}");
    // A layer whose bytes do not hash to its digest: the stream ends in DataLoss.
    let d = Descriptor::new(
        "application/vnd.oci.image.layer.v1.tar",
        Digest::parse(&sha256(&img.layer)).unwrap(),
        img.layer.len() as u64,
    );
    let s = client
        .fetch_blob(&reference(&server, "app"), &d, None)
        .await
        .unwrap();
    assert!(s.verifies_digest());
    let err = s.try_collect::<Vec<_>>().await.unwrap_err();
    assert!(err.is(ErrorKind::DataLoss), "{err:?}");
    assert!(chain(&err).contains("content has digest"), "{err:?}");
    // Read as AsyncRead, the same failure is an io::Error carrying the registry error.
    let mut s = client
        .fetch_blob(&reference(&server, "app"), &d, None)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let io = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)
        .await
        .unwrap_err();
    let inner = io
        .get_ref()
        .unwrap()
        .downcast_ref::<strata_registry::Error>()
        .unwrap();
    assert!(inner.is(ErrorKind::DataLoss), "{inner:?}");
}

#[tokio::test]
async fn index_manifest_confusion_is_rejected() {
    let img = MemImage::new(3, "amd64");
    // An index whose entry says "manifest" but whose target is itself an index.
    let inner_index =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#).into_bytes();
    let outer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        sha256(&inner_index),
        inner_index.len()
    )
    .into_bytes();
    let manifest = img.manifest.clone();
    let inner_digest = sha256(&inner_index);
    let server = TestServer::start(move |r| {
        let p = r.path();
        if p.ends_with("/manifests/wrong-content-type") {
            return Reply::ok(manifest.clone()).header("Content-Type", OCI_INDEX);
        }
        if p.ends_with("/manifests/index-as-manifest") {
            return Reply::ok(outer.clone()).header("Content-Type", OCI_INDEX);
        }
        if p.ends_with(&format!("/manifests/{inner_digest}")) {
            return Reply::ok(inner_index.clone()).header("Content-Type", OCI_INDEX);
        }
        if p.ends_with("/manifests/body-says-index") {
            let body = String::from_utf8(manifest.clone())
                .unwrap()
                .replace(OCI_MANIFEST, OCI_INDEX);
            return Reply::ok(body);
        }
        Reply::new(404)
    })
    .await;
    let client = RegistryClient::new(opts());
    let amd = Platform::parse("linux/amd64").unwrap();
    for (tag, want) in [
        ("wrong-content-type", "Content-Type"),
        (
            "index-as-manifest",
            "expected a manifest but the registry sent an index",
        ),
        ("body-says-index", "structured as a manifest"),
    ] {
        let err = client
            .resolve_image(&reference(&server, &format!("app:{tag}")), &amd)
            .await
            .unwrap_err();
        assert!(err.is(ErrorKind::InvalidArgument), "{tag}: {err:?}");
        assert!(chain(&err).contains(want), "{tag}: {}", chain(&err));
    }
}

#[tokio::test]
async fn bearer_token_flow_and_realm_policy() {
    let img = MemImage::new(4, "amd64");
    let token_server = TestServer::start(|r| {
        let want = format!("Basic {}", b64("bob:tok-secret"));
        if r.header("authorization") == Some(want.as_str()) {
            Reply::ok(r#"{"token":"T0KEN-abc","expires_in":300}"#)
        } else {
            Reply::new(401)
        }
    })
    .await;
    let realm = format!("http://{}/token", token_server.hostport());
    let registry = TestServer::start(move |r| {
        if r.header("authorization") != Some("Bearer T0KEN-abc") {
            return Reply::new(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="test-registry",scope="repository:team/app:pull""#),
            );
        }
        img.serve(r).unwrap_or(Reply::new(404))
    })
    .await;
    let mut cfg = DockerConfig::default();
    cfg.insert(&registry.hostport(), Credentials::new("bob", "tok-secret"));
    let client = RegistryClient::new(ClientOptions {
        docker_config: cfg,
        ..opts()
    });
    let r = reference(&registry, "team/app");
    let image = client
        .resolve_image(&r, &Platform::parse("linux/amd64").unwrap())
        .await
        .unwrap();
    let s = client
        .fetch_blob(&r, &image.manifest.layers[0], None)
        .await
        .unwrap();
    s.try_collect::<Vec<_>>().await.unwrap();
    let toks = token_server.requests();
    assert_eq!(toks.len(), 1, "token cached for the repository: {toks:?}");
    assert_eq!(
        toks[0].target,
        "/token?service=test-registry&scope=repository%3Ateam%2Fapp%3Apull"
    );

    // Wrong password: the token server's refusal is reported, the password is not.
    let mut cfg = DockerConfig::default();
    cfg.insert(
        &registry.hostport(),
        Credentials::new("bob", "not-the-secret"),
    );
    let client = RegistryClient::new(ClientOptions {
        docker_config: cfg,
        ..opts()
    });
    let err = client.resolve(&r).await.unwrap_err();
    assert!(err.is(ErrorKind::Unauthenticated), "{err:?}");
    assert!(!format!("{err:?}").contains("not-the-secret"), "{err:?}");
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn https_registry_with_http_realm_is_refused() {
    let Some((dir, cert, key)) = self_signed_cert() else {
        eprintln!("SKIP: openssl not available to make a test certificate");
        return;
    };
    let token_server = TestServer::start(|_| Reply::ok(r#"{"token":"t"}"#)).await;
    let realm = format!("http://{}/token", token_server.hostport());
    let registry = TestServer::start_tls(
        move |_| {
            Reply::new(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{realm}",service="s""#),
            )
        },
        &cert,
        &key,
    )
    .await;
    // hosts.toml: the registry over https, trusting the test CA.
    let hosts = dir.path().join("hosts");
    let reg_dir = hosts.join(registry.hostport());
    std::fs::create_dir_all(&reg_dir).unwrap();
    std::fs::write(
        reg_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = \"{}\"\n",
            registry.hostport(),
            cert.display()
        ),
    )
    .unwrap();
    let mut cfg = DockerConfig::default();
    cfg.insert(
        &registry.hostport(),
        Credentials::new("carol", "https-only-pw"),
    );
    let client = RegistryClient::new(ClientOptions {
        hosts: HostOptions {
            hosts_dir: Some(hosts),
            plain_http: false,
        },
        docker_config: cfg,
        ..opts()
    });
    let err = client
        .resolve(&reference(&registry, "app"))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::PermissionDenied), "{err:?}");
    assert!(chain(&err).contains("not https"), "{}", chain(&err));
    assert_eq!(registry.requests().len(), 1, "the TLS registry was reached");
    assert!(
        token_server.requests().is_empty(),
        "credentials went to an http realm"
    );
}

fn self_signed_cert() -> Option<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A leaf certificate (CA:FALSE) trusted directly: webpki refuses a CA as end entity.
    let conf = dir.path().join("openssl.cnf");
    std::fs::write(
        &conf,
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n[dn]\nCN = 127.0.0.1\n[ext]\nbasicConstraints = critical,CA:FALSE\nsubjectAltName = IP:127.0.0.1\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "2", "-config"])
        .arg(&conf)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?
        .status
        .success();
    ok.then_some((dir, cert, key))
}

#[tokio::test]
async fn redirected_blob_gets_no_credentials() {
    let img = MemImage::new(5, "amd64");
    let (layer, config) = (img.layer.clone(), img.config.clone());
    let storage = TestServer::start(move |r| {
        for b in [&layer, &config] {
            if r.path().ends_with(&sha256(b)) {
                return Reply::ok(b.clone());
            }
        }
        Reply::new(404)
    })
    .await;
    let storage_url = format!("http://{}/bucket/", storage.hostport());
    let want_auth = format!("Basic {}", b64("dave:dave-pw"));
    let registry = TestServer::start(move |r| {
        if r.header("authorization") != Some(want_auth.as_str()) {
            return Reply::new(401).header("WWW-Authenticate", r#"Basic realm="test""#);
        }
        if let Some((_, digest)) = r.path().split_once("/blobs/") {
            let to = format!("{storage_url}{digest}?X-Signature=very-secret-sig");
            return Reply::new(307).header("Location", &to);
        }
        img.serve(r).unwrap_or(Reply::new(404))
    })
    .await;
    let client = RegistryClient::new(ClientOptions {
        user: Some(Credentials::new("dave", "dave-pw")),
        ..opts()
    });
    let r = reference(&registry, "app");
    let image = client
        .resolve_image(&r, &Platform::parse("linux/amd64").unwrap())
        .await;
    // The config blob is redirected too, so resolve_image already crossed hosts.
    let image = image.unwrap();
    let s = client
        .fetch_blob(&r, &image.manifest.layers[0], None)
        .await
        .unwrap();
    let got: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
    assert_eq!(got.concat().len(), image.manifest.layers[0].size as usize);
    let seen = storage.requests();
    assert!(seen.len() >= 2);
    for req in &seen {
        assert_eq!(
            req.header("authorization"),
            None,
            "credentials leaked to storage: {req:?}"
        );
        assert!(
            req.target.contains("X-Signature"),
            "the signed URL is used as given"
        );
    }
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.header("authorization").is_some())
    );

    // A failing storage host: the error names it without the signed query.
    drop(storage);
    let err = client
        .fetch_blob(&r, &image.manifest.layers[0], None)
        .await
        .unwrap_err();
    let all = format!("{} {err:?}", chain(&err));
    assert!(
        !all.contains("very-secret-sig") && !all.contains("dave-pw"),
        "{all}"
    );
}

#[tokio::test]
async fn range_ignored_by_server_is_handled() {
    let img = MemImage::new(6, "amd64");
    let layer = img.layer.clone();
    let lying_range = Arc::new(AtomicUsize::new(0));
    let lr = lying_range.clone();
    let server = TestServer::start(move |_r| {
        if lr.load(Ordering::SeqCst) == 1 {
            return Reply::new(206)
                .header("Content-Range", "bytes 0-9/100000")
                .body(layer[..10].to_vec());
        }
        Reply::ok(layer.clone()) // ignores Range
    })
    .await;
    let client = RegistryClient::new(opts());
    let r = reference(&server, "app");
    let d = Descriptor::new(
        "x",
        Digest::parse(&sha256(&img.layer)).unwrap(),
        img.layer.len() as u64,
    );
    for range in [10..20u64, 0..1, 99_990..100_000, 1..100_000] {
        let s = client
            .fetch_blob(&r, &d, Some(range.clone()))
            .await
            .unwrap();
        assert!(!s.range_honoured(), "{range:?}");
        assert_eq!(s.len(), range.end - range.start);
        let got: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
        assert_eq!(
            got.concat(),
            img.layer[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    assert!(
        server
            .requests()
            .iter()
            .all(|q| q.header("range").is_some())
    );
    // The suffix range saw the whole blob, so it was verified too.
    let s = client.fetch_blob(&r, &d, Some(5..100_000)).await.unwrap();
    assert!(s.verifies_digest());
    // A 206 for a different range than asked is DataLoss.
    lying_range.store(1, Ordering::SeqCst);
    let err = client.fetch_blob(&r, &d, Some(50..60)).await.unwrap_err();
    assert!(err.is(ErrorKind::DataLoss), "{err:?}");
}

#[tokio::test]
async fn retries_are_bounded() {
    let img = MemImage::new(7, "amd64");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let flaky = TestServer::start(move |r| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            return Reply::new(503);
        }
        img.serve(r).unwrap_or(Reply::new(404))
    })
    .await;
    let client = RegistryClient::new(opts());
    client.resolve(&reference(&flaky, "app")).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let always = TestServer::start(|_| Reply::new(503)).await;
    let err = client
        .resolve(&reference(&always, "app"))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::Unavailable), "{err:?}");
    assert_eq!(err.http_status(), Some(503));
    assert_eq!(always.requests().len(), 4, "max_attempts");

    let limited = TestServer::start(|_| Reply::new(429).header("Retry-After", "3600")).await;
    let start = std::time::Instant::now();
    let err = client
        .resolve(&reference(&limited, "app"))
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(429));
    assert_eq!(limited.requests().len(), 4);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "Retry-After is capped"
    );

    // Connection refused: retried, then Unavailable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = Reference::parse(&format!("{dead}/app")).unwrap();
    let err = client.resolve(&r).await.unwrap_err();
    assert!(err.is(ErrorKind::Unavailable), "{err:?}");
}

#[tokio::test]
async fn mirrors_are_tried_in_order_and_fall_back() {
    let img = MemImage::new(8, "amd64");
    let order = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let (o1, o2, o3) = (order.clone(), order.clone(), order.clone());
    let missing = TestServer::start(move |_| {
        o1.lock().unwrap().push("missing");
        Reply::new(404)
    })
    .await;
    let liar_body = MemImage::new(9, "amd64").manifest;
    let liar = TestServer::start(move |r| {
        o2.lock().unwrap().push("liar");
        // Right tag, wrong bytes under the claimed digest.
        Reply::ok(liar_body.clone())
            .header("Content-Type", OCI_MANIFEST)
            .header("Docker-Content-Digest", &sha256(r.target.as_bytes()))
    })
    .await;
    let upstream = TestServer::start(move |r| {
        o3.lock().unwrap().push("upstream");
        img.serve(r).unwrap_or(Reply::new(404))
    })
    .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reg_dir = dir.path().join(upstream.hostport());
    std::fs::create_dir_all(&reg_dir).unwrap();
    std::fs::write(
        reg_dir.join("hosts.toml"),
        format!(
            "server = \"http://{up}\"\n\n[host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{missing}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{liar}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{liar}\".header]\n    x-mirror = \"liar\"\n",
            up = upstream.hostport(),
            missing = missing.hostport(),
            liar = liar.hostport(),
        ),
    )
    .unwrap();
    let client = RegistryClient::new(ClientOptions {
        hosts: HostOptions {
            hosts_dir: Some(dir.path().to_owned()),
            plain_http: false,
        },
        ..opts()
    });
    let r = reference(&upstream, "app");
    let image = client
        .resolve_image(&r, &Platform::parse("linux/amd64").unwrap())
        .await
        .unwrap();
    let log = order.lock().unwrap().clone();
    assert_eq!(&log[..3], ["missing", "liar", "upstream"], "{log:?}");
    assert_eq!(liar.requests()[0].header("x-mirror"), Some("liar"));
    assert_eq!(
        image.reference.digest().unwrap(),
        &image.root.descriptor.digest
    );

    // A pull-only mirror is used for blobs but never to resolve a tag.
    let pull_only = TestServer::start(|_| Reply::new(500)).await;
    std::fs::write(
        reg_dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            upstream.hostport(),
            pull_only.hostport()
        ),
    )
    .unwrap();
    client.resolve(&r).await.unwrap();
    assert!(pull_only.requests().is_empty());
    let s = client
        .fetch_blob(&r, &image.manifest.layers[0], None)
        .await
        .unwrap();
    s.try_collect::<Vec<_>>().await.unwrap();
    assert_eq!(
        pull_only.requests().len(),
        4,
        "tried (with retries) before the server"
    );
}
