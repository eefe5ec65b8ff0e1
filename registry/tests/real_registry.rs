//! The registry client against Debian's docker-registry (CNCF distribution), started by
//! tests/harness/lib.sh: resolve by tag and digest, multi-platform indexes, ranged blob
//! fetches, and htpasswd (Basic) authentication.

mod support;

use std::time::Duration;

use futures::TryStreamExt;
use strata_proto::Digest;
use strata_registry::{
    ClientOptions, Credentials, Descriptor, DockerConfig, ErrorKind, ManifestKind, OCI_INDEX,
    OCI_MANIFEST, Platform, Reference, RegistryClient, RetryPolicy,
};
use support::*;

fn quick() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        ..ClientOptions::default()
    }
}

macro_rules! need_registry {
    () => {
        if let Some(why) = registry_unavailable() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

async fn collect(s: strata_registry::BlobStream) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
    chunks.concat()
}

#[tokio::test]
async fn resolves_by_tag_and_digest_and_fetches_blobs() {
    need_registry!();
    let reg = Registry::start();
    let img = reg.push("strata/hello:v1", "hello by tag");
    let client = RegistryClient::new(quick());

    let r = Reference::parse(&format!("{}/strata/hello:v1", reg.hostport)).unwrap();
    let top = client.resolve(&r).await.unwrap();
    assert_eq!(top.kind, ManifestKind::Manifest);
    assert_eq!(top.descriptor.media_type, OCI_MANIFEST);
    assert_eq!(top.descriptor.digest.to_string(), img.manifest_digest);
    assert_eq!(top.descriptor.size, img.manifest_size);
    assert_eq!(
        top.reference.digest().unwrap().to_string(),
        img.manifest_digest
    );

    let image = client.resolve_image(&r, &Platform::host()).await.unwrap();
    assert_eq!(image.manifest.config.digest.to_string(), img.config_digest);
    assert_eq!(
        image.config_body.as_ref(),
        img.blob(&img.config_digest).as_slice()
    );
    assert_eq!(image.config.rootfs.diff_ids.len(), 1);
    assert_eq!(
        image.manifest.layers[0].digest.to_string(),
        img.layer_digest
    );

    // By digest, tag-less.
    let by_digest = Reference::parse(&format!(
        "{}/strata/hello@{}",
        reg.hostport, img.manifest_digest
    ))
    .unwrap();
    let image2 = client
        .resolve_image(&by_digest, &Platform::host())
        .await
        .unwrap();
    assert_eq!(
        image2.manifest_descriptor.digest.to_string(),
        img.manifest_digest
    );

    // Whole layer: verified stream.
    let layer = &image.manifest.layers[0];
    let want = img.blob(&img.layer_digest);
    let s = client.fetch_blob(&r, layer, None).await.unwrap();
    assert!(s.verifies_digest() && s.range_honoured());
    assert_eq!(collect(s).await, want);

    // Ranges: docker-registry answers 206.
    for range in [
        0..1,
        10..1000,
        (want.len() as u64 - 7)..want.len() as u64,
        0..want.len() as u64 - 1,
    ] {
        let s = client
            .fetch_blob(&r, layer, Some(range.clone()))
            .await
            .unwrap();
        assert!(s.range_honoured(), "{range:?}");
        assert_eq!(s.offset(), range.start);
        let got = collect(s).await;
        assert_eq!(
            got,
            want[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    let err = client
        .fetch_blob(&r, layer, Some(5..(want.len() as u64 + 1)))
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::OutOfRange), "{err:?}");

    assert_eq!(
        client.blob_size(&r, &layer.digest).await.unwrap(),
        want.len() as u64
    );

    // A descriptor that lies about the size is caught by the stream.
    let mut short = layer.clone();
    short.size -= 1;
    let err = match client.fetch_blob(&r, &short, None).await {
        Err(e) => e, // caught by Content-Length
        Ok(s) => s.try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert!(err.is(ErrorKind::DataLoss), "{err:?}");

    // Unknown tag and unknown blob: NotFound.
    let missing = Reference::parse(&format!("{}/strata/hello:nope", reg.hostport)).unwrap();
    let err = client.resolve(&missing).await.unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err:?}");
    let ghost = Descriptor::new("x", Digest::parse(&sha256(b"ghost")).unwrap(), 5);
    let err = client.fetch_blob(&r, &ghost, None).await.unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err:?}");
}

#[tokio::test]
async fn multi_platform_index_selects_the_platform() {
    need_registry!();
    let reg = Registry::start();
    let amd = reg.push("strata/multi:amd", "amd64 image");
    let arm = reg.push("strata/multi:arm", "arm64 image");
    let entry = |i: &PushedImage, platform: &str| {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{platform}}}"#,
            i.manifest_digest, i.manifest_size
        )
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{},{}]}}"#,
        entry(&amd, r#"{"os":"linux","architecture":"amd64"}"#),
        entry(
            &arm,
            r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#
        ),
        entry(&amd, r#"{"os":"unknown","architecture":"unknown"}"#),
    );
    assert_eq!(
        put_manifest(
            &reg.hostport,
            "strata/multi",
            "latest",
            OCI_INDEX,
            index.as_bytes()
        ),
        201
    );

    let client = RegistryClient::new(quick());
    let r = Reference::parse(&format!("{}/strata/multi", reg.hostport)).unwrap();
    let top = client.resolve(&r).await.unwrap();
    assert_eq!(top.kind, ManifestKind::Index);
    assert_eq!(top.descriptor.digest.to_string(), sha256(index.as_bytes()));

    for (platform, want) in [
        ("linux/amd64", &amd),
        ("linux/arm64", &arm),
        ("linux/arm64/v8", &arm),
        ("linux/aarch64", &arm),
    ] {
        let img = client
            .resolve_image(&r, &Platform::parse(platform).unwrap())
            .await
            .unwrap();
        assert_eq!(
            img.manifest_descriptor.digest.to_string(),
            want.manifest_digest,
            "{platform}"
        );
        assert_eq!(
            img.manifest.config.digest.to_string(),
            want.config_digest,
            "{platform}"
        );
        assert_eq!(
            img.reference.digest().unwrap().to_string(),
            sha256(index.as_bytes())
        );
    }
    let err = client
        .resolve_image(&r, &Platform::parse("linux/s390x").unwrap())
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err:?}");
    let msg = format!("{err:?}");
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );

    // A single-platform image for another platform is refused too.
    let single = Reference::parse(&format!("{}/strata/multi:amd", reg.hostport)).unwrap();
    let host = Platform::host();
    let other = if host.architecture == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    // (The harness builds images for the host architecture.)
    let err = client
        .resolve_image(&single, &Platform::parse(other).unwrap())
        .await
        .unwrap_err();
    assert!(err.is(ErrorKind::NotFound), "{err:?}");
}

/// Starts docker-registry with htpasswd auth over the storage of `reg` (stopped first).
struct AuthRegistry {
    child: std::process::Child,
    hostport: String,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_htpasswd_registry(wd: &std::path::Path, user: &str, pass: &str) -> Option<AuthRegistry> {
    let out = std::process::Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    std::fs::write(wd.join("htpasswd"), &out.stdout).unwrap();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {wd}/registry-data\nhttp:\n  addr: 127.0.0.1:0\n  secret: strata-auth-test\nauth:\n  htpasswd:\n    realm: strata-test\n    path: {wd}/htpasswd\n",
        wd = wd.display()
    );
    std::fs::write(wd.join("auth-registry.yml"), cfg).unwrap();
    let log = wd.join("auth-registry.log");
    let child = std::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(wd.join("auth-registry.yml"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let mut reg = AuthRegistry {
        child,
        hostport: String::new(),
    };
    for _ in 0..300 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(i) = text.find("listening on 127.0.0.1:") {
            let rest = &text[i + "listening on ".len()..];
            let hp: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            reg.hostport = hp;
            return Some(reg);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "htpasswd registry did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[tokio::test]
async fn basic_auth_with_config_json_and_user_flag() {
    need_registry!();
    if std::process::Command::new("htpasswd")
        .arg("-h")
        .output()
        .is_err()
    {
        eprintln!("SKIP: htpasswd not installed (apache2-utils, scripts/install-deps.sh)");
        return;
    }
    let reg = Registry::start();
    let img = reg.push("strata/private:v1", "private image");
    harness("stop_registry", &[reg.wd()]).unwrap();
    let auth = start_htpasswd_registry(reg.dir.path(), "alice", "s3cret-Passw0rd").unwrap();
    let r = Reference::parse(&format!("{}/strata/private:v1", auth.hostport)).unwrap();

    // Anonymous: a clear Unauthenticated error.
    let err = RegistryClient::new(quick()).resolve(&r).await.unwrap_err();
    assert!(err.is(ErrorKind::Unauthenticated), "{err:?}");
    assert!(format!("{err:?}").contains("no credentials"), "{err:?}");

    // config.json credentials for this host.
    let json = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        auth.hostport,
        base64_encode("alice:s3cret-Passw0rd")
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), &json).unwrap();
    let cfg = DockerConfig::load(&dir.path().join("config.json")).unwrap();
    let client = RegistryClient::new(ClientOptions {
        docker_config: cfg,
        ..quick()
    });
    let image = client.resolve_image(&r, &Platform::host()).await.unwrap();
    assert_eq!(
        image.manifest_descriptor.digest.to_string(),
        img.manifest_digest
    );
    let layer = client
        .fetch_blob(&r, &image.manifest.layers[0], Some(3..40))
        .await
        .unwrap();
    assert_eq!(collect(layer).await, img.blob(&img.layer_digest)[3..40]);

    // --user.
    let client = RegistryClient::new(ClientOptions {
        user: Some(Credentials::parse_user_pass("alice:s3cret-Passw0rd").unwrap()),
        ..quick()
    });
    client.resolve(&r).await.unwrap();

    // Wrong password: Unauthenticated, user named, password nowhere.
    let client = RegistryClient::new(ClientOptions {
        user: Some(Credentials::parse_user_pass("alice:WRONG-pw-1234").unwrap()),
        ..quick()
    });
    let err = client.resolve(&r).await.unwrap_err();
    assert!(err.is(ErrorKind::Unauthenticated), "{err:?}");
    let all = format!("{err} | {err:?} | {:?}", client);
    assert!(
        all.contains("rejected the credentials") && all.contains("alice"),
        "{all}"
    );
    assert!(
        !all.contains("WRONG-pw-1234") && !all.contains("s3cret"),
        "{all}"
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
