//! `RegistryBlobs`, the snapshotter's `BlobSource` over the registry client: exact ranges
//! from a server that ignores Range, the bounds, and the registry's errors, called from a
//! thread outside the runtime as a FUSE server's would be; lazy reads that outlive their
//! Bearer token (refreshed on the 401, the read never fails).

#[path = "../../registry/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use strata_proto::{Digest, ErrorKind};
use strata_puller::RegistryBlobs;
use strata_puller::registry::{ClientOptions, RegistryClient};
use strata_snapshotter::{BlobSource, RemoteBlob};
use support::{MemImage, Reply, TestServer, sha256};

#[test]
fn ranges_are_exact_and_errors_keep_their_kind() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let img = MemImage::new(9, "amd64");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let served = img.layer.clone();
    let digest = sha256(&img.layer);
    let path = format!("/blobs/{digest}");
    let server = rt.block_on(TestServer::start(move |r| {
        h.fetch_add(1, Ordering::SeqCst);
        if r.path().ends_with(&path) {
            // Ignores Range: the whole blob every time.
            Reply::ok(served.clone())
        } else {
            Reply::new(404)
        }
    }));
    let blobs = RegistryBlobs::new(
        RegistryClient::new(ClientOptions::default()),
        rt.handle().clone(),
    );
    let blob = RemoteBlob {
        reference: format!("{}/lazy/app:1", server.hostport()),
        digest: Digest::parse(&digest).unwrap(),
        size: img.layer.len() as u64,
    };
    for range in [0..1u64, 10..4096, 99_000..100_000, 0..100_000] {
        let got = blobs.read_range(&blob, range.clone()).unwrap();
        assert_eq!(
            got,
            img.layer[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    // An empty range needs no request; one past the end is refused before any.
    let before = hits.load(Ordering::SeqCst);
    assert!(blobs.read_range(&blob, 5..5).unwrap().is_empty());
    let e = blobs.read_range(&blob, 99_999..100_001).unwrap_err();
    assert!(e.is(ErrorKind::OutOfRange), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), before);

    // A blob the registry does not have is NotFound, naming the range and digest.
    let missing = RemoteBlob {
        digest: Digest::parse(&sha256(b"nothing")).unwrap(),
        ..blob.clone()
    };
    let e = blobs.read_range(&missing, 0..10).unwrap_err();
    assert!(e.is(ErrorKind::NotFound), "{e:?}");
    assert!(e.to_string().contains(&missing.digest.to_string()), "{e}");

    // A malformed reference is InvalidArgument, and nothing is asked of any server.
    let before = hits.load(Ordering::SeqCst);
    let bad = RemoteBlob {
        reference: "UPPER/../case".into(),
        ..blob
    };
    let e = blobs.read_range(&bad, 0..10).unwrap_err();
    assert!(e.is(ErrorKind::InvalidArgument), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), before);
}

#[test]
fn an_expired_bearer_token_is_refreshed_during_lazy_reads() {
    use strata_snapshotter::estargz::{TocLimits, WriteOptions, fetch_tree, write_estargz};
    use strata_snapshotter::lazy::LayerReader;
    use strata_testkit::Tar;

    let mut t = Tar::new();
    t.dir("data");
    let files: Vec<Vec<u8>> = (0..5)
        .map(|i| strata_testkit::noise(96 << 10, 7 + i))
        .collect();
    for (i, f) in files.iter().enumerate() {
        t.file(&format!("data/f{i}"), f);
    }
    let mut blob = Vec::new();
    let w = write_estargz(&t.finish()[..], &mut blob, &WriteOptions::default()).unwrap();
    let digest = sha256(&blob);

    // Tokens expire after two blob requests each: T0, T1, ... and the registry accepts
    // only the newest, answering anything else with a Bearer challenge.
    let generation = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let issued = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (g, s, n, body) = (
        generation.clone(),
        served.clone(),
        issued.clone(),
        blob.clone(),
    );
    let realm = Arc::new(std::sync::OnceLock::<String>::new());
    let r2 = realm.clone();
    let server = rt.block_on(TestServer::start(move |r| {
        if r.path().starts_with("/token") {
            n.fetch_add(1, Ordering::SeqCst);
            return Reply::ok(format!(r#"{{"token":"T{}"}}"#, g.load(Ordering::SeqCst)));
        }
        let want = format!("Bearer T{}", g.load(Ordering::SeqCst));
        if r.header("authorization") != Some(want.as_str()) {
            return Reply::new(401).header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="{}",service="reg""#, r2.get().unwrap()),
            );
        }
        if !r.path().ends_with(&digest) {
            return Reply::new(404);
        }
        if s.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            g.fetch_add(1, Ordering::SeqCst);
        }
        Reply::ok(body.clone())
    }));
    realm
        .set(format!("http://{}/token", server.hostport()))
        .unwrap();
    let blobs = Arc::new(RegistryBlobs::new(
        RegistryClient::new(ClientOptions::default()),
        rt.handle().clone(),
    ));
    let remote = RemoteBlob {
        reference: format!("{}/lazy/app:1", server.hostport()),
        digest: Digest::parse(&sha256(&blob)).unwrap(),
        size: blob.len() as u64,
    };
    let tree = fetch_tree(&*blobs, &remote, &w.toc_digest, &TocLimits::default()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let reader = LayerReader::new(tree, blobs, remote, cache.path()).unwrap();
    // Every read succeeds though the token it started with expires on the way.
    for (i, want) in files.iter().enumerate() {
        let dir = reader.tree().lookup(1, b"data").unwrap();
        let ino = reader
            .tree()
            .lookup(u64::from(dir), format!("f{i}").as_bytes())
            .unwrap();
        let got = reader.read(u64::from(ino), 0, want.len() as u32).unwrap();
        assert_eq!(&got, want, "data/f{i}");
    }
    assert!(
        generation.load(Ordering::SeqCst) >= 2,
        "tokens expired during the reads: {} blob requests, {} tokens, {:?}",
        served.load(Ordering::SeqCst),
        issued.load(Ordering::SeqCst),
        server
            .requests()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        issued.load(Ordering::SeqCst),
        generation.load(Ordering::SeqCst) + 1,
        "one fresh token after each expiry"
    );
}
